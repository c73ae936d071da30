"""Child processes of the pipeline (`cpo worker`, `cpo exporter`, ...), started and stopped
cleanly: used by `cpo demo`, the benchmark and the integration tests.

Each child runs in its own process group, so stopping it also stops anything it started,
and `stop_all` leaves no process behind (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

from prometheus_client.parser import text_string_to_metric_families

from streams.settings import Settings

Sample = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    port: int | None
    log_path: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    _log: IO | None = field(default=None, repr=False)

    def start(self) -> Child:
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until `/readyz` answers 200; raise with the log's tail if the child died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url("/readyz"), timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def scrape(self, names: tuple[str, ...] = (), window: str | None = None,
               timeout: float = 5.0) -> dict[Sample, float]:
        """The samples of /metrics; with `names`, only those `select` keeps."""
        with urllib.request.urlopen(self.url("/metrics"), timeout=timeout) as response:
            text = response.read().decode()
        return parse_metrics(select(text, names, window) if names else text)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, as the fault tests need it."""
        if self.alive:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()


def select(text: str, names: tuple[str, ...], window: str | None = None) -> str:
    """The sample lines of a /metrics text whose name starts with one of `names` and, if they
    have a window label, whose window is `window`. Parsing all of a loaded exporter's output
    (every window, contact counts too: ~5,000 samples) costs 0.1–0.25 s of CPU."""
    label = f'window="{window}"'
    return "\n".join(line for line in text.splitlines() if line.startswith(names)
                     and (window is None or 'window="' not in line or label in line))


def parse_metrics(text: str) -> dict[Sample, float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def cpo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli", *args]


class Pipeline:
    """Workers and exporters of one pipeline, sharing its settings."""

    def __init__(self, settings: Settings, log_dir: Path, extra_env: dict[str, str] | None = None):
        self.settings = settings
        self.log_dir = log_dir
        self.env = {**os.environ, **settings.as_env(), **(extra_env or {})}
        self.children: list[Child] = []

    def _start(self, name: str, args: list[str], port: int | None,
               env: dict[str, str] | None = None) -> Child:
        child = Child(name, args, {**self.env, **(env or {})}, port,
                      self.log_dir / f"{name}.log").start()
        self.children.append(child)
        return child

    def worker(self, index: int, port: int, env: dict[str, str] | None = None) -> Child:
        """Worker `index`; `env` adds to the pipeline's environment for this one only."""
        return self._start(f"worker-{index}", cpo_command("worker", "--metrics-port", str(port)),
                           port, env)

    def exporter(self, refresh: float = 1.0) -> Child:
        return self._start("exporter", cpo_command("exporter", "--refresh", str(refresh)),
                           self.settings.exporter_port)

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
