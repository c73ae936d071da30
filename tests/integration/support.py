"""Helpers for integration tests: produce, consume, poll Redis, wait with a readable failure."""

from __future__ import annotations

import time
from typing import Callable, Iterable, TypeVar

import redis
from kafka import KafkaConsumer, KafkaProducer

from streams.kafka import kafka_python_config
from streams.settings import Settings

T = TypeVar("T")


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


def count_keys(client: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in client.scan_iter(match=pattern, count=5000))
