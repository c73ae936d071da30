"""`cpo demo` as a user runs it: a subprocess against the real embedded broker and Redis.

The demo runs with stdout not a terminal (status lines instead of the live view) and writes a
JSON report (`--report`): the exporter's smallest window sampled about once a second, the
incident on the demo's clock, and the PIDs of everything it started. The test checks the
incident in those samples, cross-checks the samples against its own scrapes of the exporter,
decodes the PNG, and looks for any process the demo left behind.

The statistics: the demo's default incident gives orders with carrier=cargox six times the
where_is_my_order contacts. Within one window the test compares that value's rate with the rate
of the rest of the carriers. Orders in the window are counted exactly; the contacts are
independent rare events, so each count n is Poisson and ln(n) has a standard deviation of about
1/sqrt(n). The log of the ratio of the two rates therefore has a standard deviation of
sigma = sqrt(1/n_value + 1/n_rest), and the test allows SIGMAS of it. At the demo's 150 orders/s
a 30 s window holds about 60 contacts of the value and 80 of the rest: sigma ~ 0.17, so the band
for a factor of 6 is about [3, 12]. A correct pipeline fails it with a probability below 1e-4.
A pipeline that lost the incident (ratio ~1), applied it to every carrier, or attributed
contacts to the wrong orders lands far outside it. The same ratio in the last window before the
incident must be 1 within its own band, which is wide (about [0.2, 5]): at the base rate the
value has only about 10 contacts in a window. It shows the rise came with the incident.
Contacts in the window from orders placed before the incident would dilute the ratio: the window
starts MARGIN seconds after the incident does, and at the demo's time scale fewer than 3 % of
where_is_my_order contacts come more than 10 s after their order (median delay 2 s).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import psutil
import pytest

from streams.buckets import window_bounds
from streams.processes import parse_metrics, select
from streams.settings import parse_duration

DURATION = 60
SIGMAS = 4
MARGIN = 10.0  # seconds between the incident's start and a window that measures it
MIN_CONTACTS = 20  # per side during the incident: about 4 sigma below what the demo gives
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class DemoRun:
    """`cpo demo` in its own session (like a terminal's job), its output read line by line."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.report_path = tmp_path / "report.json"
        self.chart_path = tmp_path / "chart.png"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CPO_")}
        clean["TMPDIR"] = str(tmp_path)  # the demo's logs and the servers' dirs
        # Ctrl-C must reach the demo as it does a terminal's foreground job, even when the
        # tests run as a background job (`make test &`, nohup): a shell without job control
        # starts those with SIGINT ignored, a child inherits that, and Python keeps it ignored.
        # A handled SIGINT is reset to the default in the child.
        inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "demo", "--report", str(self.report_path),
             "--chart", str(self.chart_path), *args],
            env={**clean, **(env or {})}, cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        signal.signal(signal.SIGINT, inherited)
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.process.stdout, self.lines),
                                              (self.process.stderr, self.errors))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for_line(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in self.lines if text in line), None)
            if found or self.process.poll() is not None:
                break
            time.sleep(0.2)
        assert found, f"no line with {text!r}; output so far:\n" + "\n".join(self.lines)
        return found

    def finish(self, timeout: float) -> tuple[int, str, dict]:
        """(exit status, stderr, report) once the demo has exited."""
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise AssertionError(f"the demo did not exit within {timeout:.0f}s; its output:\n"
                                 + "\n".join([*self.lines[-15:], *self.errors[-15:]])) from None
        for reader in self.readers:
            reader.join(5)
        return status, "\n".join(self.errors), orjson.loads(self.report_path.read_bytes())


def scrape_while_running(run: DemoRun, url: str) -> dict[float, dict]:
    """{refresh timestamp: samples} of the exporter, every half second until the demo exits;
    only the few metrics compared, since parsing all of them would cost a lot of CPU."""
    keep = ("cpo_exporter_last_refresh_timestamp_seconds", "cpo_window_orders{",
            "cpo_defect_rate{")
    seen: dict[float, dict] = {}
    while run.process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                samples = parse_metrics(select(response.read().decode(), keep))
        except OSError:
            time.sleep(0.5)
            continue
        refreshed = samples.get(("cpo_exporter_last_refresh_timestamp_seconds", ()))
        if refreshed:
            seen[refreshed] = samples
        time.sleep(0.5)
    return seen


def ratio_band(value: tuple[float, float], rest: tuple[float, float], factor: float,
               min_contacts: int) -> tuple[float, float, float]:
    """(observed ratio of the rates, low, high): factor times exp(+-SIGMAS sigma)."""
    (n_value, o_value), (n_rest, o_rest) = value, rest
    assert n_value >= min_contacts and n_rest >= min_contacts, (value, rest)
    sigma = math.sqrt(1 / n_value + 1 / n_rest)
    ratio = (n_value / o_value) / (n_rest / o_rest)
    return ratio, factor * math.exp(-SIGMAS * sigma), factor * math.exp(SIGMAS * sigma)


def split(point: dict, value: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """(contacts, orders) of the value and of every other value of its dimension."""
    counts = point["focus"]
    rest = [counts[v] for v in counts if v != value]
    return tuple(counts[value]), (sum(c for c, _ in rest), sum(o for _, o in rest))


def leftovers(report: dict, demo_pid: int) -> list[str]:
    """Processes the demo started that still run: by PID, by process group, by server port."""
    groups = {demo_pid, *report["pids"].values()}  # the servers share the demo's group
    ports = [address.rsplit(":", 1)[1].split("/")[0] for address in report["servers"].values()]
    left = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            command = " ".join(process.info["cmdline"] or [])
            if (process.pid in report["pids"].values() or os.getpgid(process.pid) in groups
                    or (("tansu" in command or "redis-server" in command)
                        and any(f":{port}" in command for port in ports))):
                left.append(f"{process.pid} {command}")
        except (psutil.Error, ProcessLookupError):
            continue
    return left


def check_chart(run: DemoRun, report: dict) -> None:
    import matplotlib.image

    assert report["chart"] == str(run.chart_path.resolve())
    assert run.chart_path.read_bytes()[:8] == PNG_SIGNATURE
    height, width = matplotlib.image.imread(run.chart_path).shape[:2]
    assert height > 400 and width > 800


@pytest.mark.alone
def test_demo_shows_the_incident_and_leaves_nothing_behind(tmp_path: Path) -> None:
    run = DemoRun(tmp_path, "--duration", str(DURATION))
    url = run.wait_for_line("exporter metrics http", timeout=120).split()[-1]
    scraped = scrape_while_running(run, url)
    status, stderr, report = run.finish(timeout=60)
    assert status == 0, stderr + "\n".join(run.lines)
    assert report["ended"] == "duration"
    assert any(line.startswith("cpo demo +") and "CPO(" in line for line in run.lines)

    # (1) the incident: its value against the rest of its dimension, before and during it
    incident = report["incidents"][0]
    origin, window = report["origin"], parse_duration(report["window"])
    start, end = origin + incident["start"], origin + incident["end"]
    points = report["points"]
    bounds = [window_bounds(origin + p["t"], window) for p in points]
    before = [p for p, (_, right) in zip(points, bounds) if right <= start]
    during = [p for p, (left, _) in zip(points, bounds)
              if left >= start + MARGIN and origin + p["t"] <= end]
    assert before and during, [p["t"] for p in points]
    value, rest = split(during[-1], incident["value"])
    ratio, low, high = ratio_band(value, rest, incident["multiplier"], MIN_CONTACTS)
    assert low <= ratio <= high, (ratio, low, high, value, rest)
    value, rest = split(before[-1], incident["value"])
    ratio, low, high = ratio_band(value, rest, 1.0, min_contacts=1)
    assert low <= ratio <= high, (ratio, low, high, value, rest)

    # the report holds what the exporter served: compare every refresh both have seen
    common = [p for p in points if p["refreshed_at"] in scraped]
    assert common, "no refresh both the demo and the test scraped"
    label = (("window", report["window"]),)
    for p in common:
        samples = scraped[p["refreshed_at"]]
        assert samples[("cpo_window_orders", label)] == p["orders"]
        served = {dict(k[1])["cause"]: v for k, v in samples.items()
                  if k[0] == "cpo_defect_rate" and dict(k[1])["window"] == report["window"]}
        assert served == p["rates"]

    # (2) the chart, (3) no process left
    check_chart(run, report)
    assert set(report["pids"]) == {"kafka", "redis", "worker-0", "worker-1", "exporter",
                                   "simulator"}
    assert leftovers(report, run.process.pid) == []


def test_ctrl_c_in_a_terminal_stops_everything(tmp_path: Path) -> None:
    """A terminal sends SIGINT to the whole foreground process group, servers included."""
    run = DemoRun(tmp_path)
    run.wait_for_line("exporter metrics http", timeout=120)
    os.killpg(run.process.pid, signal.SIGINT)
    status, stderr, report = run.finish(timeout=60)
    assert status == 0, stderr
    assert report["ended"] == "signal"
    assert any("chart written to" in line for line in run.lines)
    check_chart(run, report)
    assert leftovers(report, run.process.pid) == []


def one_line_failure(tmp_path: Path, env: dict[str, str]) -> str:
    """The demo's whole output when it cannot start: one line on stderr, nothing started."""
    run = DemoRun(tmp_path, env=env)
    status, stderr, report = run.finish(timeout=60)
    assert status == 2, stderr
    assert run.lines == [] and len(stderr.splitlines()) == 1, (run.lines, stderr)
    assert report["pids"] == {} and report["ended"].startswith("error")
    return stderr


def test_a_missing_redis_server_is_one_line_with_the_fix(tmp_path: Path) -> None:
    python_only = str(Path(sys.executable).parent)
    line = one_line_failure(tmp_path, {"PATH": python_only})
    assert "redis-server not found" in line and "apt-get install -y redis-server" in line


def test_a_taken_port_is_one_line_with_the_fix(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        line = one_line_failure(tmp_path, {"CPO_EXPORTER_PORT": str(port)})
    assert f"port {port} (CPO_EXPORTER_PORT) is in use" in line
    assert "unset it" in line
