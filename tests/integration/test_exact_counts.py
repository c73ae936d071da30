"""Two real workers and the exporter against the real broker and Redis: every counter, every
windowed rate, the root-cause pair buckets, the DLQ and the attributed-contacts topic equal an
independent computation, with and without a worker killed (SIGKILL) mid-stream and restarted."""

from __future__ import annotations

import glob
import math
import threading
import time
from datetime import datetime
from pathlib import Path

import orjson
import pytest
import redis

from streams.buckets import COARSE_SECONDS
from streams.local import free_port
from streams.processes import Child, Pipeline
from streams.settings import Settings
from streams.state import count_identities
from tests.integration import reference
from tests.integration.support import (
    check_outputs,
    dataset_settings,
    exported_windows,
    produce,
    stored_pair_counts,
    summed,
    wait_for,
    wait_until,
)

GRACE = "20s"
# Enough orders that each orders partition takes several fetches (aiokafka fetches up to 1 MiB
# per partition, and drains a fetch partition by partition): the contacts are then read while
# the orders are still behind, as in a real backfill.
BACKFILL_ORDERS = 30_000


@pytest.fixture
def settings(pipeline_settings: Settings) -> Settings:
    return dataset_settings(pipeline_settings, GRACE)


def run_pipeline(settings: Settings, tmp_path: Path, kill_mid_stream: bool,
                 worker_env: tuple[dict[str, str], dict[str, str]] = ({}, {})) -> None:
    now = time.time()
    data = reference.generate(now)
    assert reference.window_edges_are_clear(data, now, horizon=300)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    distinct_orders = len(data.orders) - len(data.late_order_ids)

    with Pipeline(settings, tmp_path) as pipeline:
        ports = [free_port(), free_port()]
        workers = [pipeline.worker(i, port, env) for i, (port, env) in
                   enumerate(zip(ports, worker_env))]
        exporter = pipeline.exporter(refresh=0.5)
        for child in [*workers, exporter]:
            child.wait_ready()

        # Phase 1: orders, produced over a few seconds; one worker is killed mid-stream.
        producer = threading.Thread(target=produce, args=(settings, data.orders_phase, 0.5))
        producer.start()
        if kill_mid_stream:
            wait_until(lambda: count_identities(client, "o") > distinct_orders // 4, 60,
                       "a quarter of the orders in Redis", interval=0.1)
            workers[0].kill()
            assert count_identities(client, "o") < distinct_orders  # the kill was mid-stream
            time.sleep(1)
            workers[0] = pipeline.worker(0, ports[0], worker_env[0])
        producer.join()
        wait_for(lambda: count_identities(client, "o"), distinct_orders, 120,
                   f"{distinct_orders} orders in Redis")

        # Phase 2: contacts; those of the late orders and of unknown orders wait for the join.
        produce(settings, data.contacts_phase)
        waiting = len(data.late_order_ids) + 100
        wait_for(lambda: count_identities(client, "c"), len(data.contacts), 120,
                   f"{len(data.contacts)} contacts in Redis")
        assert client.zcard("cpo:pq") == waiting

        # Phase 3: the late orders arrive within the grace; unknown ones expire after it.
        produce(settings, data.late_orders_phase)
        check_counts(settings, data, client, workers, exporter, exactly_once=not kill_mid_stream)


def check_counts(settings: Settings, data: reference.Dataset, client: redis.Redis,
                 workers: list[Child], exporter: Child, exactly_once: bool) -> dict:
    """Once every contact has met its order or expired: the exported windows, the pair
    buckets, the workers' counters (unless one was killed) and the output topics equal the
    reference computation. Returns the workers' summed counters."""
    wait_for(lambda: client.zcard("cpo:pq"), 0, 120, "no contact waiting for its order")
    wait_for(lambda: client.xlen("cpo:outbox"), 0, 90, "an empty outbox")
    for child in workers:
        child.wait_ready()
    time.sleep(1.5)  # one more exporter refresh after the last write

    exported = exported_windows(exporter)
    check_time = time.time()
    registered = reference.registered_values(exported)
    assert len(registered["warehouse"]) == reference.MAX_VALUES - 1
    assert registered["carrier"] == set(reference.VALUES["carrier"])
    expected = reference.compute(data, check_time,
                                 registered, (settings.topic_orders, settings.topic_contacts))
    assert exported == expected.windows

    wait_for(lambda: client.llen("cpo:pbq"), 0, 30, "every pair count folded")
    assert stored_pair_counts(client) == reference.pair_counts(data, registered, COARSE_SECONDS)

    counters = summed(workers)
    if exactly_once:  # a killed worker's process counters die with it
        actual = {k: v for k, v in counters.items() if k in expected.totals
                  or k[0] in {name for name, _ in expected.totals}}
        assert actual == {k: float(v) for k, v in expected.totals.items()}
    check_outputs(settings, data, expected, exactly_once=exactly_once)
    return counters


def test_two_workers_count_exactly(settings: Settings, tmp_path: Path) -> None:
    run_pipeline(settings, tmp_path, kill_mid_stream=False)


def test_counts_stay_exact_when_a_worker_is_killed_mid_stream(
        settings: Settings, tmp_path: Path) -> None:
    run_pipeline(settings, tmp_path, kill_mid_stream=True)


def offset_clock(offset: str) -> dict[str, str]:
    """The environment that runs a process with its wall clock `offset` ("+2h") from the
    host's (libfaketime; monotonic clocks stay true, as NTP leaves them)."""
    libraries = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    assert libraries, "libfaketime is missing: run scripts/bootstrap (Debian package faketime)"
    return {"LD_PRELOAD": libraries[0], "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def test_workers_whose_clocks_are_off_count_exactly(settings: Settings, tmp_path: Path) -> None:
    """One worker's clock two hours ahead, the other's 90 minutes behind (issue 21 item 8):
    join deadlines, identity stamps and the fine-bucket horizon follow Redis's clock, so every
    count and window is still exact (a worker's own clock would expire the other's waiting
    contacts at once, reject events as from the future, or skip the fine buckets)."""
    clocks = (offset_clock("+2h"), offset_clock("-90m"))
    run_pipeline(settings, tmp_path, kill_mid_stream=False, worker_env=clocks)


def event_time(record: tuple[str, bytes | None, bytes]) -> float:
    try:
        return datetime.fromisoformat(orjson.loads(record[2])["occurred_at"]).timestamp()
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return -math.inf  # a malformed record: first, rejected whenever it comes


def test_a_backfill_counts_exactly_while_contacts_are_held(
        settings: Settings, tmp_path: Path) -> None:
    """Both topics preloaded, the orders in event-time order as a replayed log is: the worker
    holds back the contacts that are ahead of its orders (streams/hold.py), and every count is
    still exact."""
    now = time.time()
    data = reference.generate(now, n_orders=BACKFILL_ORDERS)
    assert reference.window_edges_are_clear(data, now, horizon=300)
    data.orders_phase.sort(key=event_time)  # stable: a changed order stays after the original
    produce(settings, [*data.orders_phase, *data.contacts_phase, *data.late_orders_phase])
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)

    with Pipeline(settings, tmp_path) as pipeline:
        worker = pipeline.worker(0, free_port())
        exporter = pipeline.exporter(refresh=0.5)
        for child in (worker, exporter):
            child.wait_ready()
        wait_for(lambda: count_identities(client, "c"), len(data.contacts), 120,
                 f"{len(data.contacts)} contacts in Redis")
        counters = check_counts(settings, data, client, [worker], exporter, exactly_once=True)
    assert counters[("cpo_contacts_held_total", ())] > 0
