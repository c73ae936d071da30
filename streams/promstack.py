"""Debian's Prometheus and Alertmanager on free loopback ports, for tests and the demo.

Each server is a `streams.local` child process in a temp dir of its own (config, rules, data),
ready only when `/-/ready` answers 200, and always reaped on `stop()`. Queries go through the
HTTP API with urllib, so nothing beyond the standard library is needed to read results.

    files = rules.write(rules.render(rules.load_config(), 30), tmp_dir)  # short windows
    with Alertmanager(am_config) as am, Prometheus(
            scrape_config({"cpo-worker": [worker], "cpo-exporter": [exporter]},
                          alertmanager=am.address), files) as prometheus:
        prometheus.query('cause:cpo_defect_rate:ratio_rate5m')
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from streams.local import LocalInfraError, _Server

HTTP_TIMEOUT = 5.0


class PromQueryError(RuntimeError):
    """Prometheus answered a query with an error; the message has its type and text."""


def _binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LocalInfraError(f"{name} not found: run apt-get install -y {package}")
    return path


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
        return json.load(response)


def _ready(base_url: str) -> bool:
    """True when `/-/ready` answers 200 (Prometheus: the TSDB is open and rules are loaded)."""
    try:
        with urllib.request.urlopen(f"{base_url}/-/ready", timeout=1) as response:
            return response.status == 200
    except OSError:  # refused, reset, or an HTTP error status while starting
        return False


def scrape_config(jobs: Mapping[str, Iterable[str]], alertmanager: str | None = None,
                  rule_files: Iterable[str] = (), interval: str = "1s") -> dict[str, Any]:
    """A prometheus.yml as a dict: one static job per name, scraped and evaluated every `interval`.

    `jobs` maps a job name (e.g. `cpo-worker`) to its `host:port` targets.
    """
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": list(rule_files),
        "scrape_configs": [
            {"job_name": name, "static_configs": [{"targets": list(targets)}]}
            for name, targets in jobs.items()
        ],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config


class Prometheus(_Server):
    """`prometheus` with `config` (a prometheus.yml dict) and copies of `rule_files`.

    The rule files are copied into the temp dir and listed in the config, replacing its
    `rule_files`, so the server reads exactly what the caller passed. `resend_delay` is how soon
    a firing alert is sent again: Prometheus drops the first sends made before it has discovered
    the Alertmanager, and its default of 1m would hold the alert back that long.
    """

    name = "prometheus"

    def __init__(self, config: Mapping[str, Any], rule_files: Iterable[Path] = (),
                 port: int | None = None, workdir: str | Path | None = None,
                 resend_delay: str = "2s"):
        self.binary = _binary("prometheus", "prometheus")
        self.resend_delay = resend_delay
        super().__init__(port, workdir)
        rules_dir = self.workdir / "rules"
        rules_dir.mkdir(exist_ok=True)
        names = []
        for path in rule_files:
            shutil.copy(path, rules_dir / Path(path).name)
            names.append(f"rules/{Path(path).name}")
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump({**config, "rule_files": names}),
                                    encoding="utf-8")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        return [self.binary, f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
                f"--rules.alert.resend-delay={self.resend_delay}"]

    def _ready(self) -> bool:
        return _ready(self.url)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant query's result list (`metric` and `value` per sample).

        Raises PromQueryError when Prometheus rejects the query (bad syntax, unknown function).
        """
        params = {"query": promql} if at is None else {"query": promql, "time": str(at)}
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            body = _get_json(url)
        except urllib.error.HTTPError as exc:
            try:
                body = json.load(exc)
            except ValueError:
                raise PromQueryError(f"{promql}: HTTP {exc.code}") from None
        if body.get("status") != "success":
            raise PromQueryError(f"{promql}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The first sample's value of an instant query, or None when it returns nothing."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts (`/api/v1/alerts`)."""
        return _get_json(f"{self.url}/api/v1/alerts")["data"]["alerts"]

    def rule_groups(self) -> list[dict[str, Any]]:
        """Loaded rule groups with each rule's health and last error (`/api/v1/rules`)."""
        return _get_json(f"{self.url}/api/v1/rules")["data"]["groups"]

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with their health (`/api/v1/targets`)."""
        return _get_json(f"{self.url}/api/v1/targets")["data"]["activeTargets"]


class Alertmanager(_Server):
    """`prometheus-alertmanager` with `config` (an alertmanager.yml dict), clustering off."""

    name = "alertmanager"

    def __init__(self, config: Mapping[str, Any], port: int | None = None,
                 workdir: str | Path | None = None):
        self.binary = _binary("prometheus-alertmanager", "prometheus-alertmanager")
        super().__init__(port, workdir)
        self.config_path = self.workdir / "alertmanager.yml"
        self.config_path.write_text(yaml.safe_dump(dict(config)), encoding="utf-8")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """host:port, as Prometheus's `alerting` config wants it."""
        return f"{self.host}:{self.port}"

    def _command(self) -> list[str]:
        # An empty cluster address turns off the gossip port (9094 by default), which could clash.
        return [self.binary, f"--config.file={self.config_path}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}", "--cluster.listen-address="]

    def _ready(self) -> bool:
        return _ready(self.url)

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (`/api/v2/alerts`)."""
        return _get_json(f"{self.url}/api/v2/alerts")
