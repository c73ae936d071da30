"""The exporter's reads of Redis: one consistent snapshot of buckets and label registries, and
a process that outlives whatever it finds there (issue 21, item 9).

Workers write buckets with registry ids; the exporter names them through the registries. Read
in two steps, a flush (Redis lost, then rebuilt by the workers with other ids) between the
steps names counts with the wrong registry, or with none: a KeyError ended the process."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from pathlib import Path

import redis

from streams.buckets import FINE_SECONDS, bucket_key, bucket_start
from streams.processes import Pipeline
from streams.settings import Settings, load_settings
from streams.state import connect
from streams.windows import read_windows
from tests.integration.support import wait_until

ORDERS = {"acme": 2, "bolt": 1}  # orders per carrier, whatever their value ids


def write_state(client: redis.Redis, now: float, first: str, second: str) -> None:
    """Registries and one bucket holding ORDERS, atomically, after a flush: `first` has value
    id 1 and `second` id 2."""
    ids = {first: 1, second: 2}
    pipe = client.pipeline(transaction=True)
    pipe.flushdb()
    pipe.hset("cpo:reg:dim", "carrier", 1)
    pipe.hset("cpo:reg:v:1", mapping=ids)
    pipe.hset("cpo:reg:cause", "late", 1)
    pipe.hset(bucket_key(FINE_SECONDS, bucket_start(now, FINE_SECONDS)),
              mapping={"o": 3, "c:1": 1, **{f"o:1:{ids[name]}": n for name, n in ORDERS.items()}})
    pipe.execute()


def rebuild_forever(url: str, now: float) -> None:
    """Flush and rebuild the state over and over, the ids of acme and bolt swapped each time."""
    client = redis.Redis.from_url(url, decode_responses=True)
    while True:
        write_state(client, now, "bolt", "acme")
        write_state(client, now, "acme", "bolt")


def test_a_read_is_one_snapshot_while_redis_is_flushed_and_rebuilt(redis_db_url: str) -> None:
    """Another process rebuilds the state again and again, the ids swapped each time; every
    read must name the counts as the state does."""
    now = time.time()
    write_state(redis.Redis.from_url(redis_db_url), now, "acme", "bolt")

    async def read_many() -> list[dict]:
        reader = connect(load_settings({"CPO_REDIS_URL": redis_db_url}))
        try:
            seen: list[dict] = []
            started = None  # reads when the first rebuild was seen (the writer takes a while)
            while started is None or len(seen) < started + 500:
                counts = await read_windows(reader, now, {"5m": 300.0})
                seen.append(dict(counts["5m"].orders_by_value))
                if started is None and await reader.hget("cpo:reg:v:1", "bolt") == "1":
                    started = len(seen)  # the writer runs
            return seen
        finally:
            await reader.aclose()

    writer = multiprocessing.get_context("spawn").Process(
        target=rebuild_forever, args=(redis_db_url, now), daemon=True)
    writer.start()
    try:
        seen = asyncio.run(read_many())
    finally:
        writer.kill()
        writer.join()
    named = {("carrier", name): n for name, n in ORDERS.items()}
    assert [s for s in seen if s != named] == []


def test_the_exporter_outlives_counts_it_cannot_name(pipeline_settings: Settings,
                                                      tmp_path: Path) -> None:
    """A bucket field whose dimension is in no registry (as a read between a flush and the
    rebuild could see it) is left out, and the rest is still served."""
    settings = load_settings({**pipeline_settings.as_env(), "CPO_WINDOWS": "5m"})
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    now = time.time()
    write_state(client, now, "acme", "bolt")
    client.hset(bucket_key(FINE_SECONDS, bucket_start(now, FINE_SECONDS)),
                mapping={"o:9:1": 5, "a:1:9:1": 1})
    with Pipeline(settings, tmp_path) as pipeline:
        exporter = pipeline.exporter(refresh=0.2)
        exporter.wait_ready(timeout=60)
        samples = wait_until(
            lambda: exporter.scrape(("cpo_window_orders",)) or None, 30, "exported orders")
        time.sleep(1)  # a few more refreshes
        assert exporter.alive, exporter.log_tail()
        samples = exporter.scrape(("cpo_window_orders",))
    by_value = {dict(labels)["value"]: value for (name, labels), value in samples.items()
                if name == "cpo_window_orders_by_attribute"}
    assert by_value == ORDERS
    assert samples[("cpo_window_orders", (("window", "5m"),))] == 3
