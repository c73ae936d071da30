"""streams.promstack against Debian's real Prometheus and Alertmanager (no mocks).

A tiny exporter (prometheus_client) is scraped every second; an always-firing rule travels
Prometheus -> Alertmanager -> a webhook receiver in this test. The generated rules, at short
windows, load and evaluate without error in the real server.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from streams import rules
from streams.local import free_port
from streams.promstack import Alertmanager, Prometheus, PromQueryError, scrape_config
from tests.integration.support import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def static_exporter() -> Iterator[str]:
    """host:port of a /metrics endpoint serving `cpo_test_value 42`."""
    registry = CollectorRegistry()
    Gauge("cpo_test_value", "A constant for the test", registry=registry).set(42)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def webhook() -> Iterator[tuple[str, queue.Queue]]:
    """A webhook receiver: its URL and a queue of the JSON payloads Alertmanager posts."""
    received: queue.Queue = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.put(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()
    thread.join()


def test_query_returns_the_scraped_value_and_stop_leaves_no_process(static_exporter):
    prometheus = Prometheus(scrape_config({"static": [static_exporter]}))
    with prometheus:
        pid = prometheus.pid
        value = wait_until(lambda: prometheus.value('cpo_test_value{job="static"}'), 30,
                           "the scraped gauge")
        assert value == 42
        assert [t["health"] for t in prometheus.targets()] == ["up"]
        with pytest.raises(PromQueryError, match="parse error"):
            prometheus.query("sum(")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not prometheus.workdir.exists()


def test_an_always_firing_rule_reaches_the_webhook_through_alertmanager(tmp_path, webhook):
    url, received = webhook
    rule_file = tmp_path / "always.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "test", "interval": "1s", "rules": [
        {"alert": "AlwaysFiring", "expr": "vector(1)",
         "labels": {"severity": "page", "cause": "test_cause"},
         "annotations": {"summary": "always"}}]}]}))
    alertmanager = Alertmanager({
        "route": {"receiver": "hook", "group_by": ["alertname", "cause"], "group_wait": "1s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "hook", "webhook_configs": [{"url": url}]}],
    })
    with alertmanager:
        config = scrape_config({}, alertmanager=alertmanager.address)
        with Prometheus(config, [rule_file]) as prometheus:
            payload = received.get(timeout=60)
            assert prometheus.alerts()[0]["state"] == "firing"
        am_alerts = alertmanager.alerts()
    assert payload["receiver"] == "hook" and payload["status"] == "firing"
    [alert] = payload["alerts"]
    assert alert["labels"] == {"alertname": "AlwaysFiring", "severity": "page",
                               "cause": "test_cause"}
    assert [a["labels"]["alertname"] for a in am_alerts] == ["AlwaysFiring"]


def test_the_short_window_rules_load_and_evaluate_in_prometheus(tmp_path, static_exporter):
    config = rules.load_config(ROOT / "deploy" / "rules.yaml")
    files = rules.write(rules.render(config, 30), tmp_path)
    jobs = {config["jobs"]["worker"]: [static_exporter], config["jobs"]["exporter"]: []}
    with Prometheus(scrape_config(jobs), files) as prometheus:

        def evaluated_groups() -> list[dict]:
            groups = prometheus.rule_groups()
            done = all(g["lastEvaluation"] > "0001-01-01T00:00:00Z" for g in groups)
            return groups if groups and done else []

        groups = wait_until(evaluated_groups, 30, "every rule group evaluated once")
        loaded = sorted(rule["name"] for group in groups for rule in group["rules"])
        unhealthy = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"]
                     if r["health"] != "ok"]
    expected = sorted(rule.get("record") or rule["alert"]
                      for text in rules.render(config, 30).values()
                      for group in yaml.safe_load(text)["groups"] for rule in group["rules"])
    assert loaded == expected
    assert unhealthy == []
