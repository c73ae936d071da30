"""End to end: an injected incident is named by the exporter's root-cause endpoint, by
`cpo_root_cause_score` and by `cpo explain`, through the real broker, Redis, a worker and the
exporter.

Event time does the waiting: the simulator writes an hour-old baseline (carrier=cargox as
costly as every other carrier) and, in the current hour, cargox with 8x where_is_my_order. With
CPO_WINDOWS=5m,1h the 1h window is analysed with pairs, against the hour before it (the
"recent" baseline; nothing a week ago). Both phases sit well inside their windows even if the
5-minute bucket boundary moves while the test runs.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from streams.incidents import Incident
from streams.local import free_port
from streams.processes import Child, Pipeline, cpo_command
from streams.settings import Settings, load_settings
from streams.simulate import SimConfig, encode, generate, record_key
from streams.state import count_identities
from tests.integration.support import produce, wait_for, wait_until

CAUSE = "where_is_my_order"
TARGET = ("carrier", "cargox")  # the third carrier (12% of orders), not the biggest
RCA_EVERY = "2"


@pytest.fixture
def settings(pipeline_settings: Settings) -> Settings:
    return load_settings({**pipeline_settings.as_env(), "CPO_WINDOWS": "5m,1h"})


def records(now: float) -> tuple[list[tuple[str, bytes | None, bytes]], int, int]:
    """(kind, key, value) of both phases, and the distinct valid orders and contacts."""
    config = SimConfig(rate=3.0, seed=8, time_scale=86400.0, diurnal_amplitude=0.0)
    incident = Incident(name="cargox", match=(TARGET,), cause=CAUSE, multiplier=8.0)
    phases = [generate(config, now - 100 * 60, 30 * 60),  # the previous hour window
              generate(replace(config, seed=9, incidents=(incident,)), now - 40 * 60, 39 * 60)]
    out, ids = [], {"orders": set(), "contacts": set()}
    for phase in phases:
        for topic, event in phase:
            out.append((topic, record_key(topic, event), encode(event)))
            if not isinstance(event, bytes):
                ids[topic].add(event["order_id" if topic == "orders" else "contact_id"])
    return out, len(ids["orders"]), len(ids["contacts"])


def root_cause_scores(exporter: Child) -> list[tuple[float, str, str]]:
    """(score, dimension, value) of the cause in the 1h window, best first."""
    scores = [(value, dict(labels)["dimension"], dict(labels)["value"])
              for (name, labels), value in exporter.scrape().items()
              if name == "cpo_root_cause_score"
              and dict(labels)["cause"] == CAUSE and dict(labels)["window"] == "1h"]
    return sorted(scores, reverse=True)


def test_injected_incident_is_named(settings: Settings, tmp_path: Path) -> None:
    now = time.time()
    data, orders, contacts = records(now)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    with Pipeline(settings, tmp_path) as pipeline:
        worker = pipeline.worker(0, free_port())
        exporter = Child("exporter", cpo_command("exporter", "--refresh", "1", "--rca-every",
                                                 RCA_EVERY),
                         pipeline.env, settings.exporter_port, tmp_path / "exporter.log").start()
        pipeline.children.append(exporter)
        for child in (worker, exporter):
            child.wait_ready()
        produce(settings, data)
        wait_for(lambda: count_identities(client, "o"), orders, 60, f"{orders} orders")
        wait_for(lambda: count_identities(client, "c"), contacts, 60, f"{contacts} contacts")
        counted_at = time.time()

        # The endpoint, from counts (baseline included) read after every count landed.
        url = exporter.url(f"/api/v1/root-causes?cause={CAUSE}&window=1h")

        def fresh() -> dict | None:
            with urllib_open(url) as response:
                body = json.loads(response.read())
            return body if body["baseline"]["read_at"] >= counted_at else None

        body = wait_until(fresh, 60, "an analysis after the last count", interval=1.0)
        top = body["candidates"][0]
        assert (top["segment"], top["is_defect"]) == (dict([TARGET]), True), body["summary"]
        assert body["is_significant_rise"] and body["pairs"], body["summary"]
        assert (body["baseline"]["recent_windows"], body["baseline"]["week_ago"]) == (1, False)
        assert top["current_rate"] > 3 * top["baseline_rate"]
        assert 0.5 < top["score"] <= 1.0
        assert body["summary"].startswith(f"{CAUSE} rose ")
        assert "of the rise comes from carrier=cargox" in body["summary"]

        # The metric, from the analysis loop (every RCA_EVERY seconds, rising causes only).
        scores = wait_until(lambda: root_cause_scores(exporter), 30, "a root-cause score")
        assert scores[0][1:] == TARGET, scores

        # `cpo explain` asks the same endpoint.
        explained = subprocess.run(
            cpo_command("explain", "--cause", CAUSE, "--window", "1h", "--exporter",
                        exporter.url("")),
            env=pipeline.env, capture_output=True, text=True, timeout=60, check=False)
        assert explained.returncode == 0, explained.stderr
        sentence, *rest = explained.stdout.splitlines()
        assert sentence.startswith(f"{CAUSE} rose ") and "carrier=cargox" in sentence
        table = "\n".join(rest)
        assert "carrier=cargox" in table and "values and pairs of values" in table


def urllib_open(url: str):
    import urllib.request

    return urllib.request.urlopen(url, timeout=30)
