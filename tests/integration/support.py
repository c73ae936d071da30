"""Helpers for integration tests: produce, consume, poll Redis, wait with a readable failure."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TypeVar

import orjson
import redis
from kafka import KafkaConsumer, KafkaProducer

from streams.kafka import kafka_python_config
from streams.processes import Child
from streams.settings import Settings, load_settings
from streams.state import count_identities
from tests.integration import reference

T = TypeVar("T")


def dataset_settings(base: Settings, grace: str) -> Settings:
    """`base` shaped for `reference.generate`'s dataset: its windows, dimensions and label bound,
    small batches (several per phase), and the given join grace."""
    return load_settings(
        {**base.as_env(), "CPO_WINDOWS": reference.WINDOWS, "CPO_JOIN_GRACE": grace,
         "CPO_MAX_VALUES": str(reference.MAX_VALUES),
         "CPO_DIMENSIONS": ",".join(reference.DIMENSIONS), "CPO_BATCH_SIZE": "500"})


def topic_for(settings: Settings, kind: str) -> str:
    return settings.topic_orders if kind == "orders" else settings.topic_contacts


def produce(settings: Settings, records: Iterable[tuple[str, bytes | None, bytes]],
            pace: float = 0.0, on_progress: Callable[[int], None] | None = None) -> int:
    """Send (kind, key, value) records in order; `pace` seconds between chunks of 200."""
    producer = KafkaProducer(**kafka_python_config(settings), linger_ms=5, acks="all")
    sent = 0
    for kind, key, value in records:
        producer.send(topic_for(settings, kind), key=key, value=value)
        sent += 1
        if sent % 200 == 0:
            if on_progress:
                on_progress(sent)
            if pace:
                producer.flush()
                time.sleep(pace)
    producer.flush()
    producer.close()
    return sent


def consume_all(settings: Settings, topic: str, expected: int, timeout: float = 60.0) -> list:
    """Every record of `topic` from the beginning; waits until at least `expected` are read
    and then until nothing more arrives for a couple of seconds."""
    consumer = KafkaConsumer(topic, **kafka_python_config(settings), auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=2000)
    records: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = list(consumer)
            records += batch
            if len(records) >= expected and not batch:
                break
    finally:
        consumer.close()
    return records


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll `check` until it returns a truthy value; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} "
                                 f"(last: {value!r})")
        time.sleep(interval)
        value = check()
    return value


def wait_for(get: Callable[[], T], expected: T, timeout: float, what: str) -> None:
    """Poll `get` until it returns `expected`; a failure shows the last value it returned."""
    seen: list = [None]

    def check() -> bool:
        seen[0] = get()
        return seen[0] == expected

    try:
        wait_until(check, timeout, what)
    except AssertionError:
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: "
                             f"last {seen[0]!r}, expected {expected!r}") from None


def wait_drained(client: redis.Redis, data: reference.Dataset, timeout: float) -> None:
    """Every order and contact of `data` counted, no contact waiting, the outbox empty."""
    wait_for(lambda: count_identities(client, "o"), len(data.orders), timeout,
             f"{len(data.orders)} orders in Redis")
    wait_for(lambda: count_identities(client, "c"), len(data.contacts), timeout,
             f"{len(data.contacts)} contacts in Redis")
    wait_for(lambda: client.zcard("cpo:pq"), 0, timeout, "no contact waiting for its order")
    wait_for(lambda: client.xlen("cpo:outbox"), 0, timeout, "an empty outbox")


def stored_pair_counts(client: redis.Redis) -> Counter:
    """The pair buckets (`cpo:pb:<res>:<start>`) in the keys of `reference.pair_counts`, their
    ids read back through the registries (id 0 is `other`)."""
    dimensions = {int(i): name for name, i in client.hgetall("cpo:reg:dim").items()}
    causes = {int(i): name for name, i in client.hgetall("cpo:reg:cause").items()}
    values = {(d, int(i)): name for d in dimensions
              for name, i in client.hgetall(f"cpo:reg:v:{d}").items()}

    def named(d: str, v: str) -> tuple[str, str]:
        return dimensions[int(d)], values.get((int(d), int(v)), "other")

    counts: Counter = Counter()
    for key in client.scan_iter(match="cpo:pb:*"):
        start = int(key.rsplit(":", 1)[1])
        for name, n in client.hgetall(key).items():
            kind, *ids = name.split(":")
            group = "orders" if kind == "p" else causes.get(int(ids.pop(0)), "other")
            counts[(start, group, frozenset((named(*ids[:2]), named(*ids[2:]))))] += int(n)
    return counts


def exported_windows(exporter: Child) -> dict:
    """The exporter's windowed samples (counts and rates)."""
    return {k: v for k, v in exporter.scrape().items()
            if k[0].startswith(("cpo_window", "cpo_defect_rate"))}


def summed(workers: list[Child], prefix: str = "cpo_") -> dict:
    """Worker samples summed across workers, as `sum` in PromQL would."""
    total: dict = {}
    for worker in workers:
        for key, value in worker.scrape().items():
            if key[0].startswith(prefix):
                total[key] = total.get(key, 0.0) + value
    return total


def check_outputs(settings: Settings, data: reference.Dataset, expected: reference.Expected,
                  exactly_once: bool) -> None:
    rejected = sum(data.rejected.values())
    dlq = consume_all(settings, settings.topic_dlq, rejected)
    reason_by_origin: dict[tuple, str] = {}
    for record in dlq:
        headers = {k: v.decode() for k, v in record.headers}
        origin = (headers["cpo-source-topic"], headers["cpo-source-partition"],
                  headers["cpo-source-offset"])
        reason_by_origin[origin] = headers["cpo-error-reason"]
    reasons: dict = {}
    for (topic, _, _), reason in reason_by_origin.items():
        kind = "orders" if topic == settings.topic_orders else "contacts"
        reasons[(kind, reason)] = reasons.get((kind, reason), 0) + 1
    assert reasons == dict(data.rejected)  # every bad record, with its reason
    if exactly_once:
        assert len(dlq) == rejected

    out = consume_all(settings, settings.topic_attributed, len(expected.outputs))
    records: dict[str, dict] = {}
    for record in out:
        value = orjson.loads(record.value)
        if value["contact_id"] in records:
            assert records[value["contact_id"]] == value  # a redelivery repeats, never differs
        records[value["contact_id"]] = value
    if exactly_once:
        assert len(out) == len(expected.outputs)
    missing, extra = set(expected.outputs) - set(records), set(records) - set(expected.outputs)
    assert not missing and not extra, (len(missing), sorted(missing)[:5], sorted(extra)[:5])
    for contact_id, want in expected.outputs.items():
        got = records[contact_id]
        assert {k: got.get(k) for k in want} == want, contact_id
