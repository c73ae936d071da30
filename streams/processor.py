"""One batch of input records, end to end: decode, reject, count in Redis, output.

The processor knows nothing of Faust: it takes records (anything with offset, key and value,
by partition) and a callable that produces records. The worker feeds it whole fetches in three
steps that overlap across batches, `prepare` (decode), `count` (the Redis script, through the
worker's lane) and `output`, and commits a batch's offsets only after its `output` returned,
i.e. after Redis holds the batch's effects and the DLQ and output records are acknowledged. A crash anywhere before that redelivers the
batch, and the Redis script's identities make the second pass count nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import msgspec
import numpy as np

from streams.clock import RedisClock
from streams.events import (
    OCCURRED_AT,
    UNREADABLE_BATCH,
    ContactEvent,
    OrderEvent,
    Rejection,
    UnreadableBatch,
    decode_contacts,
    decode_orders,
)
from streams.hold import ContactHold, Partition
from streams.kafka import DEFAULT_MAX_MESSAGE_BYTES, permanent_error
from streams.lane import ScriptLane
from streams.metrics import WorkerMetrics
from streams.output import OutputRecord, Shrink
from streams.retry import Health, Retrying, retry_forever
from streams.settings import Settings
from streams.state import (
    REDIS_ERRORS,
    BatchResult,
    Labels,
    RedisState,
    ScriptBatch,
    redis_permanent,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
# Produces records (key, value, headers) to a topic, making a refused one smaller by the rule
# given (streams/output.py); returns once all are acknowledged.
SendMany = Callable[[str, list[OutputRecord], Shrink | None], Awaitable[None]]
# A health probe that gets no answer within this long marks its dependency as failing.
PROBE_TIMEOUT_SECONDS = 2.0
# Bytes a record batch of one record takes beyond its key, value and headers' own bytes: the
# batch header (61) and the record's varints and attributes (at most 5 + 1 + 10 + 5 + 5 + 5 + 5),
# plus 10 per header's two lengths; rounded up.
RECORD_OVERHEAD_BYTES = 128
HEADER_OVERHEAD_BYTES = 10
# Records decoded between two yields to the event loop (about 5 ms of CPU).
DECODE_CHUNK = 500


class Record(Protocol):
    """A fetched record as the processor reads it (aiokafka's record batches' own records);
    its partition comes with it."""

    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Prepared:
    """A decoded batch waiting for its Redis call."""

    now: float
    started: float
    script_batch: ScriptBatch
    rejected: list[tuple[Partition, Record, Rejection]]


def utc_texts(times: list[float]) -> list[str]:
    """Epoch seconds as RFC 3339 UTC texts, as `datetime.fromtimestamp(t, UTC)` gives them
    (microseconds rounded half to even, then '.ffffff' unless 0) with `Z`, in one numpy call."""
    fraction, whole = np.modf(np.asarray(times, dtype=np.float64))
    micros = whole.astype(np.int64) * 1_000_000 + np.round(fraction * 1e6).astype(np.int64)
    texts = np.datetime_as_string(micros.astype("datetime64[us]"), unit="us").tolist()
    return [text[:-7] + "Z" if text.endswith(".000000") else text + "Z" for text in texts]


class AttributedRecord(msgspec.Struct, gc=False):
    """A record of the attributed-contacts topic for a contact joined to its order."""

    contact_id: str
    occurred_at: str
    cause: str
    order_id: str
    order_occurred_at: str
    delay_seconds: float
    attributed: bool
    reason: None
    attributes: msgspec.Raw  # the JSON object {dimension: value}


class UnattributedRecord(msgspec.Struct, gc=False):
    """A record of the attributed-contacts topic for a contact without an order."""

    contact_id: str
    occurred_at: str
    cause: str
    attributed: bool
    reason: str


_OUTPUT_JSON = msgspec.json.Encoder()


class BatchProcessor:
    def __init__(
        self,
        settings: Settings,
        state: RedisState,
        metrics: WorkerMetrics,
        send_many: SendMany,
        kafka_transient: tuple[type[BaseException], ...] = (),
        topic_limit: Callable[[str], Awaitable[int]] | None = None,
    ) -> None:
        """`topic_limit(topic)`: the topic's record batch limit (`max.message.bytes`) as the
        broker reports it; without it the DLQ's is taken to be Kafka's default."""
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self.send_many = send_many
        self.kafka_transient = kafka_transient
        self.topic_limit = topic_limit
        self.clock = RedisClock()
        self._dlq_limit: int | None = None
        self.health = Health()
        self.topics = (settings.topic_orders, settings.topic_contacts)
        self.hold = ContactHold(behind_records=settings.batch_size,
                                release_limit=settings.batch_size)

    def redis_retrying(self) -> Retrying:
        return Retrying(self.health, "redis", self.metrics.redis_errors.inc, redis_permanent)

    async def redis_call(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_forever(operation, what=what, transient=REDIS_ERRORS,
                                   retrying=self.redis_retrying())

    async def kafka_call(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_forever(
            operation, what=what, transient=self.kafka_transient,
            retrying=Retrying(self.health, "kafka", self.metrics.kafka_errors.inc,
                              permanent_error))

    async def dlq_limit(self) -> int:
        """The DLQ topic's record batch limit, asked of the broker once (Kafka's default when
        it cannot be asked: a smaller limit still makes the broker refuse, and the record is
        then cut further)."""
        if self._dlq_limit is None:
            limit = DEFAULT_MAX_MESSAGE_BYTES
            if self.topic_limit is not None:
                try:
                    limit = await asyncio.wait_for(self.topic_limit(self.settings.topic_dlq),
                                                   PROBE_TIMEOUT_SECONDS * 5)
                except (*self.kafka_transient, TimeoutError) as exc:
                    log.info("cannot read max.message.bytes of %s (%s: %s); DLQ records are cut "
                             "to Kafka's default %d bytes", self.settings.topic_dlq,
                             type(exc).__name__, exc, limit)
            self._dlq_limit = limit
        return self._dlq_limit

    async def probe(self, dependency: str, check: Callable[[], Awaitable[Any]]) -> None:
        """One health check, bounded by PROBE_TIMEOUT_SECONDS, so readiness follows a
        dependency even while no batch runs (an idle or stalled fetch makes no call that could
        fail) or a call is still waiting out its socket timeout."""
        if dependency == "redis":
            transient, count_error = REDIS_ERRORS, self.metrics.redis_errors.inc
        else:
            transient, count_error = self.kafka_transient, self.metrics.kafka_errors.inc
        try:
            await asyncio.wait_for(check(), PROBE_TIMEOUT_SECONDS)
        except (*transient, TimeoutError) as exc:
            count_error()
            detail = str(exc) or f"no answer within {PROBE_TIMEOUT_SECONDS:g}s"
            self.health.fail(dependency, "probe", f"probe: {type(exc).__name__}: {detail}")
        else:
            self.health.probe_succeeded(dependency)

    async def prepare(self, fetched: list[tuple[Partition, list[Record]]],
                      lags: Mapping[Partition, int] | None = None) -> Prepared:
        """Decode one batch (CPU only), given as each partition's records in offset order: the
        worker does this for the next batch while the previous batch's script runs in Redis.
        Each partition's records are decoded in runs of up to DECODE_CHUNK (one msgspec call
        each, streams/events.py), with a yield to the event loop between runs, so a script
        call that returns meanwhile is followed at once by the next.
        The contacts go through `self.hold`, which may keep some for a later batch; `lags`
        (records not read yet per assigned orders partition) tells it whether the orders are
        behind. Without `lags` nothing is held. Times are Redis's (streams/clock.py)."""
        if not self.clock.synced:
            await self.redis_call(self.sync_clock, "read the clock")
        now, started = self.clock.now(), time.perf_counter()
        orders = self.state.unique_orders()
        contacts: list[tuple[Partition, int, ContactEvent]] = []
        rejected: list[tuple[Partition, Record, Rejection]] = []
        latest: dict[int, float] = {}  # orders partition -> latest event time in this batch
        orders_topic = self.topics[0]
        runs = [(partition, records[first:first + DECODE_CHUNK])
                for partition, records in fetched for first in range(0, len(records), DECODE_CHUNK)]
        for i, (source, run) in enumerate(runs):
            if i:
                await asyncio.sleep(0)
            topic, partition = source
            values = [record.value or b"" for record in run]
            if topic == orders_topic:
                decoded = decode_orders(values, now)
                kept = [event for event in decoded if type(event) is OrderEvent]
                if kept:
                    orders.add(kept)
                    latest[partition] = max(latest.get(partition, -math.inf),
                                            max(map(OCCURRED_AT, kept)))
            else:
                decoded = decode_contacts(values, now)
                kept = [(source, record.offset, event)
                        for record, event in zip(run, decoded) if type(event) is ContactEvent]
                contacts += kept
            if len(kept) < len(run):
                rejected += [(source, record, unreadable(source, record)
                              if type(record) is UnreadableBatch else event)
                             for record, event in zip(run, decoded) if type(event) is Rejection]
        hold = self.hold
        for partition, time_read in latest.items():
            hold.read_orders((orders_topic, partition), time_read)
        held_before = hold.held_total
        released, fetched_at = hold.pass_on(contacts, hold.watermark(lags or {}), now)
        self.metrics.contacts_held.inc(hold.held_total - held_before)
        self.metrics.held_contacts.set(hold.count())
        return Prepared(now, started, self.state.prepare(orders, released, now, fetched_at),
                        rejected)

    async def sync_clock(self) -> None:
        await self.clock.sync(self.state.client)

    def new_lane(self) -> ScriptLane:
        """The script calls of one run of the worker's drain loop, applied in its batch order
        (a lane closed with batches in flight leaves them to be redelivered)."""
        return ScriptLane(self.state, self.redis_retrying())

    async def count(self, prepared: Prepared, lane: ScriptLane) -> BatchResult:
        """Count one decoded batch in Redis (the batch's one script call, after the calls of
        the batches before it in `lane`), observe its events' lag, then let its events and
        arguments go: the batch may wait a while for its output
        (worker.MAX_BATCHES_OUTPUTTING), and only the script needed them."""
        batch = prepared.script_batch
        result = await lane.count(batch)
        self.metrics.observe_lag(self.topics, batch.orders, batch.contacts, batch.now)
        batch.release()
        return result

    async def output(self, prepared: Prepared, result: BatchResult) -> None:
        """The counted batch's metrics, output and DLQ records; returns once Kafka has them,
        so the caller may commit the batch's offsets."""
        rejected = prepared.rejected
        await self.emit(result)
        for (topic, _), record, rejection in rejected:
            self.metrics.rejected.labels(topic, rejection.reason).inc(
                record.offset - record.first_offset + 1 if rejection is UNREADABLE_BATCH else 1)
        if rejected:
            limit = await self.dlq_limit()
            dlq_records = [dlq_record(partition, record, rejection, limit)
                           for partition, record, rejection in rejected]
            await self.kafka_call(lambda: self.send_many(self.settings.topic_dlq, dlq_records,
                                                         shrink_dlq_record), "produce to DLQ")
        self.metrics.batches.inc()
        self.metrics.batch_seconds.observe(time.perf_counter() - prepared.started)

    async def expire_pending(self) -> None:
        """Count contacts whose join grace has passed, and fold the queued pair counts; any
        worker may run it at any time."""
        result = await self.redis_call(self.state.expire_pending, "expire pending")
        if result.unattributed:
            await self.emit(result)
        await self.redis_call(self.state.fold_pairs, "fold pair counts")

    async def emit(self, result: BatchResult) -> None:
        """Update the counters and produce every counted contact to the attributed topic,
        named by the registries the result's ids belong to. When Redis no longer has those
        (a rollback lost them, and with them that call's counts), nothing is named wrong:
        the result is left out, and logged."""
        labels = await self.redis_call(lambda: self.state.labels(result), "read labels")
        if labels is None:
            log.warning("Redis lost the label registries of %d counted contacts (a rollback: a "
                        "crash without appendfsync always, a restore or a failover); their "
                        "counts are lost with them: replay the minutes before it "
                        "(docs/upgrade-and-replay.md)",
                        len(result.attributed) + len(result.unattributed))
            return
        self.metrics.count(result, labels, self.topics)
        await self.produce_contacts(result, labels)

    async def produce_contacts(self, result: BatchResult, labels: Labels) -> None:
        """Produce the output records, then drop them from the Redis outbox once acknowledged."""
        ids = result.outbox_ids
        if not ids:
            return
        records = self._contact_records(result, labels)
        await self.kafka_call(lambda: self.send_many(self.settings.topic_attributed, records, None),
                              "produce contacts")
        await self.redis_call(lambda: self.state.outbox_done(ids), "outbox ack")

    async def produce_orphans(self, older_than: float) -> int:
        """Produce output records a crashed worker left in the outbox (at-least-once output)."""
        results = await self.redis_call(
            lambda: self.state.outbox_orphans(older_than), "read outbox")
        for result in results:
            labels = await self.redis_call(partial(self.state.labels, result), "read labels")
            log.info("producing %d output records left by a stopped worker",
                     len(result.attributed) + len(result.unattributed))
            if labels is None:  # written before a rollback that lost their registries
                log.warning("their label registries are lost; dropped")
                await self.redis_call(partial(self.state.outbox_done, result.outbox_ids),
                                      "outbox ack")
                continue
            await self.produce_contacts(result, labels)
        return sum(len(result.outbox_ids) for result in results)

    @staticmethod
    def _contact_records(result: BatchResult, labels: Labels) -> list[OutputRecord]:
        """One output record per counted contact, keyed by contact_id. Built as structs and
        encoded by msgspec, times formatted all at once: a dict per record and orjson took
        twice as long (bench/README, session 9)."""
        encode, cause, attributes = _OUTPUT_JSON.encode, labels.cause, labels.attributes_json
        attributed, unattributed = result.attributed, result.unattributed
        contact_times = utc_texts([c.contact_time for c in attributed]
                                  + [c.contact_time for c in unattributed])
        order_times = utc_texts([c.order_time for c in attributed])
        records: list[OutputRecord] = [
            (contact.contact_id.encode(), encode(AttributedRecord(
                contact.contact_id, contact_time, cause(contact.cause_id), contact.order_id,
                order_time, round(contact.contact_time - contact.order_time, 3), True, None,
                msgspec.Raw(attributes(contact.values)))), [])
            for contact, contact_time, order_time in zip(attributed, contact_times, order_times)]
        records += [
            (contact.contact_id.encode(), encode(UnattributedRecord(
                contact.contact_id, contact_time, cause(contact.cause_id), False,
                contact.reason)), [])
            for contact, contact_time in zip(unattributed, contact_times[len(attributed):])]
        return records


def unreadable(source: Partition, batch: UnreadableBatch) -> Rejection:
    """The rejection of a record batch no worker can read, logged with where it is."""
    log.warning("%s partition %d offsets %d-%d: a record batch that cannot be read (%s); "
                "skipped, reported to the DLQ as unreadable_batch. Its records stay in the "
                "topic: read them with a client that can, and produce them again",
                source[0], source[1], batch.first_offset, batch.offset, batch.error)
    return UNREADABLE_BATCH


def record_bytes(record: OutputRecord) -> int:
    """An upper bound of the bytes `record` takes in a record batch of its own (uncompressed),
    what the broker compares with the topic's `max.message.bytes`."""
    key, value, headers = record
    return (RECORD_OVERHEAD_BYTES + len(key or b"") + len(value)
            + sum(HEADER_OVERHEAD_BYTES + len(name) + len(text) for name, text in headers))


ORIGINAL_SIZE = "cpo-original-size"


def dlq_record(source: Partition, record: Record, rejection: Rejection,
               limit: int) -> OutputRecord:
    """A rejected record as it came, with the reason and origin in headers. One that would not
    fit the DLQ topic's `limit` is cut to fit, without its key, its original size in a header:
    a record the broker refuses would stop its partition for good."""
    topic, partition = source
    headers = [
        ("cpo-error-reason", rejection.reason.encode()),
        ("cpo-source-topic", topic.encode()),
        ("cpo-source-partition", str(partition).encode()),
    ]
    if type(record) is UnreadableBatch:  # no bytes to carry: where they are, and the error
        headers += [("cpo-source-offset", str(record.first_offset).encode()),
                    ("cpo-source-offset-last", str(record.offset).encode()),
                    ("cpo-error-detail", record.error.encode())]
    else:
        headers.append(("cpo-source-offset", str(record.offset).encode()))
    if rejection.event_id:
        headers.append(("cpo-event-id", rejection.event_id.encode()))
    out: OutputRecord = (record.key, record.value or b"", headers)
    if record_bytes(out) > limit:
        value = out[1]
        headers.append((ORIGINAL_SIZE, str(len(value)).encode()))
        room = max(0, limit - record_bytes((None, b"", headers)))
        out = (None, value[:room], headers)
    return out


def shrink_dlq_record(record: OutputRecord) -> OutputRecord | None:
    """Half of a DLQ record's value, for a DLQ whose limit is below what the worker was told;
    None once there is nothing left to cut."""
    _, value, headers = record
    if not value:
        return None
    if not any(name == ORIGINAL_SIZE for name, _ in headers):
        headers = [*headers, (ORIGINAL_SIZE, str(len(value)).encode())]
    return None, value[:len(value) // 2], headers
