"""One batch of input records, end to end: decode, reject, count in Redis, output.

The processor knows nothing of Faust: it takes records (anything with topic, partition, offset
and value) and two callables to produce and flush. The worker feeds it whole fetches and
commits the offsets only after `process` returns, i.e. after Redis holds the batch's effects
and the DLQ and output records are acknowledged. A crash anywhere before that redelivers the
batch, and the Redis script's identities make the second pass count nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable, Protocol, TypeVar

import orjson
import redis.exceptions

from streams.events import ContactEvent, OrderEvent, Rejection, decode_contact, decode_order
from streams.metrics import WorkerMetrics
from streams.settings import Settings
from streams.state import BatchResult, Labels, RedisState

log = logging.getLogger(__name__)

T = TypeVar("T")
Send = Callable[[str, bytes | None, bytes, list[tuple[str, bytes]]], Awaitable[Any]]
REDIS_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                   redis.exceptions.BusyLoadingError, OSError)
MAX_BACKOFF_SECONDS = 5.0


class Record(Protocol):
    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass
class Health:
    """What readiness reports: the last fault per dependency, or None."""

    redis_fault: str | None = None
    kafka_fault: str | None = None

    @property
    def ready(self) -> bool:
        return self.redis_fault is None and self.kafka_fault is None


async def retry_forever(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    transient: tuple[type[BaseException], ...],
    on_fault: Callable[[str | None], None],
    count_error: Callable[[], None],
) -> T:
    """Run `operation` until it succeeds, backing off on transient errors.

    The first failure of an episode is logged once at WARNING, the recovery once at INFO;
    `on_fault(reason)` / `on_fault(None)` let readiness follow the fault while it lasts.
    """
    delay = 0.1
    failing_since: float | None = None
    while True:
        try:
            result = await operation()
        except transient as exc:
            count_error()
            if failing_since is None:
                failing_since = time.monotonic()
                log.warning("%s failed (%s: %s); retrying with backoff", what,
                            type(exc).__name__, exc)
                on_fault(f"{what}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            continue
        if failing_since is not None:
            log.info("%s recovered after %.1fs", what, time.monotonic() - failing_since)
            on_fault(None)
        return result


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat().replace("+00:00", "Z")


class BatchProcessor:
    def __init__(
        self,
        settings: Settings,
        state: RedisState,
        metrics: WorkerMetrics,
        send: Send,
        flush: Callable[[], Awaitable[Any]],
        kafka_transient: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self.send = send
        self.flush = flush
        self.kafka_transient = kafka_transient
        self.health = Health()
        self.topics = (settings.topic_orders, settings.topic_contacts)

    def _set_redis_fault(self, reason: str | None) -> None:
        self.health.redis_fault = reason

    def _set_kafka_fault(self, reason: str | None) -> None:
        self.health.kafka_fault = reason

    async def redis_call(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_forever(
            operation, what=f"redis {what}", transient=REDIS_TRANSIENT,
            on_fault=self._set_redis_fault, count_error=self.metrics.redis_errors.inc)

    async def kafka_call(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_forever(
            operation, what=f"kafka {what}", transient=self.kafka_transient,
            on_fault=self._set_kafka_fault, count_error=self.metrics.kafka_errors.inc)

    async def process(self, records: Iterable[Record]) -> None:
        """Decode, count and output one batch; returns once every effect is durable."""
        started = time.perf_counter()
        now = time.time()
        orders: list[OrderEvent] = []
        contacts: list[ContactEvent] = []
        rejected: list[tuple[Record, Rejection]] = []
        orders_topic, contacts_topic = self.topics
        for record in records:
            if record.topic == orders_topic:
                event = decode_order(record.value or b"", now)
                target: list = orders
            else:
                event = decode_contact(record.value or b"", now)
                target = contacts
            if isinstance(event, Rejection):
                rejected.append((record, event))
            else:
                target.append(event)
        self._observe_lag(orders, orders_topic, now)
        self._observe_lag(contacts, contacts_topic, now)

        result = await self.redis_call(
            lambda: self.state.apply_batch(orders, contacts, now), "apply batch")
        await self.emit(result)
        for record, rejection in rejected:
            self.metrics.rejected.labels(record.topic, rejection.reason).inc()
        if rejected:
            await self.kafka_call(lambda: self._send_rejections(rejected), "produce to DLQ")
        await self.kafka_call(self.flush, "flush producer")
        self.metrics.batches.inc()
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def expire_pending(self) -> None:
        """Count contacts whose join grace has passed; any worker may run it at any time."""
        now = time.time()
        result = await self.redis_call(lambda: self.state.expire_pending(now), "expire pending")
        if result.unattributed:
            await self.emit(result)

    async def emit(self, result: BatchResult) -> None:
        """Update the counters and produce every counted contact to the attributed topic."""
        labels = await self.redis_call(lambda: self.state.labels(result), "read labels")
        self.metrics.count(result, labels, self.topics)
        await self.produce_contacts(result, labels)

    async def produce_contacts(self, result: BatchResult, labels: Labels) -> None:
        """Produce the output records, then drop them from the Redis outbox once acknowledged."""
        ids = result.outbox_ids
        if not ids:
            return
        await self.kafka_call(lambda: self._send_contacts(result, labels), "produce contacts")
        await self.kafka_call(self.flush, "flush producer")
        await self.redis_call(lambda: self.state.outbox_done(ids), "outbox ack")

    async def produce_orphans(self, older_than: float) -> int:
        """Produce output records a crashed worker left in the outbox (at-least-once output)."""
        result = await self.redis_call(
            lambda: self.state.outbox_orphans(older_than), "read outbox")
        if result.outbox_ids:
            labels = await self.redis_call(lambda: self.state.labels(result), "read labels")
            log.info("producing %d output records left by a stopped worker",
                     len(result.attributed) + len(result.unattributed))
            await self.produce_contacts(result, labels)
        return len(result.outbox_ids)

    async def _send_contacts(self, result: BatchResult, labels: Labels) -> None:
        topic = self.settings.topic_attributed
        for contact in result.attributed:
            value = {
                "contact_id": contact.contact_id,
                "occurred_at": rfc3339(contact.contact_time),
                "cause": labels.cause(contact.cause_id),
                "order_id": contact.order_id,
                "order_occurred_at": rfc3339(contact.order_time),
                "delay_seconds": round(contact.contact_time - contact.order_time, 3),
                "attributed": True,
                "reason": None,
                "attributes": {labels.dimensions[d]: labels.value(d, v) for d, v in contact.pairs},
            }
            await self.send(topic, contact.contact_id.encode(), orjson.dumps(value), [])
        for contact in result.unattributed:
            value = {
                "contact_id": contact.contact_id,
                "occurred_at": rfc3339(contact.contact_time),
                "cause": labels.cause(contact.cause_id),
                "attributed": False,
                "reason": contact.reason,
            }
            await self.send(topic, contact.contact_id.encode(), orjson.dumps(value), [])

    async def _send_rejections(self, rejected: list[tuple[Record, Rejection]]) -> None:
        for record, rejection in rejected:
            headers = [
                ("cpo-error-reason", rejection.reason.encode()),
                ("cpo-source-topic", record.topic.encode()),
                ("cpo-source-partition", str(record.partition).encode()),
                ("cpo-source-offset", str(record.offset).encode()),
            ]
            if rejection.event_id:
                headers.append(("cpo-event-id", rejection.event_id.encode()))
            await self.send(self.settings.topic_dlq, getattr(record, "key", None),
                            record.value or b"", headers)

    def _observe_lag(self, events: list, topic: str, now: float) -> None:
        if events:
            histogram = self.metrics.event_lag.labels(topic)
            for event in events:
                histogram.observe(max(0.0, now - event.occurred_at))
