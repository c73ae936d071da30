"""`cpo worker`: the Faust application whose consumer hands whole fetches to the batch processor.

Faust owns the application: the consumer group and partition assignment, the consumer thread,
flow control during rebalances, offset commits, timers, the web server and signal handling.
Faust's per-record stream path costs hundreds of microseconds per record on this hardware
(bench/README.md), so the consumer's drain loop is replaced: instead of dispatching each
message through the conductor to a stream, it passes each fetch (up to CPO_BATCH_SIZE records
across the assigned partitions) through `BatchProcessor`'s prepare, count and output steps,
and then commits the fetch's offsets through Faust's own commit path. The private Faust and
aiokafka attributes this needs are listed and checked in streams/private_api.py.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from collections import deque
from collections.abc import Iterator
from itertools import chain, dropwhile, islice
from typing import Any

import aiokafka
import faust
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.errors import CorruptRecordException as KafkaCorruptRecord
from aiokafka.errors import KafkaError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from kafka.errors import KafkaError as KafkaPythonError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams import private_api
from streams.events import UnreadableBatch
from streams.hold import ContactHold
from streams.kafka import (
    compression_type,
    faust_broker_settings,
    missing_codecs,
    topic_max_message_bytes,
)
from streams.lane import DEPTH
from streams.metrics import WorkerMetrics
from streams.output import BatchSender
from streams.processor import PROBE_TIMEOUT_SECONDS, BatchProcessor, Prepared
from streams.settings import Settings, load_settings
from streams.state import REDIS_ERRORS, RedisState, connect

log = logging.getLogger("streams.worker")
EXPIRE_INTERVAL_SECONDS = 1.0
GAUGE_INTERVAL_SECONDS = 5.0
PROBE_INTERVAL_SECONDS = 2.5  # > PROBE_TIMEOUT_SECONDS: a probe never overlaps the next
OUTBOX_SWEEP_SECONDS = 10.0
# A live worker acknowledges its outbox entries within one batch; older ones are orphans.
OUTBOX_ORPHAN_SECONDS = 60.0
# Counted batches whose output and commit may be in flight at once (memory and redelivery stay
# bounded while Kafka is slow). An output takes a produce round trip and a Redis call that
# queues behind the running script: a median 190 ms per batch on the benchmark, longer than a
# batch's script, so outputs overlap.
MAX_BATCHES_OUTPUTTING = 4
# Script calls in flight at once: one runs in Redis, the next waits in Redis's queue, so Redis
# goes from one batch to the next without waiting for the worker (bench/README, session 9).
MAX_BATCHES_COUNTING = DEPTH
GC_YOUNG_THRESHOLD = 50_000  # allocations between young collections (CPython's default: 700)


class LightPartitionRecords(aiokafka_fetcher.PartitionRecords):
    """aiokafka's records of a fetched partition, handed out as many at a time as asked for:
    the record batches' own records (aiokafka's C `DefaultRecord`: offset, key, value), sliced
    off, instead of one `ConsumerRecord` (a Python dataclass of 11 fields) per record through a
    generator. It runs in Faust's consumer thread, which holds the GIL the main thread needs:
    a record made anew cost that thread 0.1 µs more (bench/README, session 10).
    The worker's consumer has no deserializers (Faust deserializes, and here nobody does) and
    reads uncommitted, so no transaction markers are to be applied; control batches are
    skipped, as aiokafka does. A record batch that cannot be read is handed out as one
    `UnreadableBatch` (streams/events.py) instead of raising, which would crash every worker
    that takes over the partition."""

    def __init__(self, tp: Any, records: Any, aborted_transactions: Any, fetch_offset: int,
                 key_deserializer: Any, value_deserializer: Any, check_crcs: bool,
                 isolation_level: int) -> None:
        if key_deserializer is not None or value_deserializer is not None:
            raise RuntimeError("LightPartitionRecords: the consumer has a deserializer")
        if isolation_level == aiokafka_fetcher.READ_COMMITTED:
            raise RuntimeError("LightPartitionRecords: the consumer reads committed records")
        super().__init__(tp, records, aborted_transactions, fetch_offset, None, None,
                         check_crcs, isolation_level)
        self._batch: Iterator[Any] | None = None  # the current record batch's records left
        self._batch_end = fetch_offset  # the offset after the current record batch

    def take(self, limit: int | None) -> list[Any]:
        """The next records, up to `limit` (None: all), one slice per record batch; the rest of
        a batch stays in its buffer. `next_fetch_offset` follows them."""
        taken: list[Any] = []
        while limit is None or len(taken) < limit:
            if self._batch is None and not self._next_batch(taken):
                break
            if self._batch is None:  # unreadable: stood in for in `taken`
                continue
            wanted = None if limit is None else limit - len(taken)
            try:
                records = list(islice(self._batch, wanted))
            except MemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 (the payload's bytes: every try fails alike)
                self._unreadable(taken, self._batch_end, exc)
                continue
            taken += records
            if wanted is None or len(records) < wanted:  # the batch is done
                self._batch = None
                self.next_fetch_offset = self._batch_end
            else:
                self.next_fetch_offset = records[-1].offset + 1
        return taken

    def _next_batch(self, taken: list[Any]) -> bool:
        """Open the next record batch that is not a control batch, from `next_fetch_offset` on
        (a fetch may start inside its first batch); False when there is none. A batch whose CRC
        is wrong is not opened: it is put in `taken` as unreadable."""
        records = self._records
        while records.has_next():
            batch = records.next_batch()
            if self._check_crcs and not batch.validate_crc():
                self._unreadable(taken, batch.next_offset, KafkaCorruptRecord("invalid CRC"))
                return True
            if batch.is_control_batch:
                self.next_fetch_offset = batch.next_offset
                continue
            start = self.next_fetch_offset
            # chain: the batch is decompressed at the first record taken, in `take`'s guard
            self._batch = dropwhile(lambda record, start=start: record.offset < start,
                                    chain.from_iterable((batch,)))
            self._batch_end = batch.next_offset
            return True
        return False

    def _unreadable(self, taken: list[Any], batch_end: int, exc: Exception) -> None:
        """The rest of the current batch cannot be read (decompressed, parsed, or its CRC
        checked): one UnreadableBatch stands in for it in `taken`, and the records go on after
        it (a batch the worker cannot read must not stop its partition)."""
        taken.append(UnreadableBatch(self.next_fetch_offset, batch_end - 1,
                                           f"{type(exc).__name__}: {exc}"))
        self._batch = None
        self.next_fetch_offset = batch_end

    def __next__(self) -> Any:
        taken = self.take(1)
        if not taken:
            raise StopIteration
        return taken[0]


class LightFetchResult(aiokafka_fetcher.FetchResult):
    """aiokafka's fetched partition, handing its records out by `LightPartitionRecords.take`
    rather than one iteration step each."""

    def getall(self, max_records: int | None = None) -> list[Any]:
        if not self.check_assignment(self._topic_partition) or not self.has_more():
            return []
        records = self._partition_records.take(max_records)
        self._update_position()
        if max_records is None or len(records) < max_records:
            self._partition_records = None  # all taken
        return records


def use_light_records() -> None:
    """Make this process's aiokafka consumers hand out their record batches' own records (the
    worker's only consumer is Faust's, whose records only `BatchConsumer` reads)."""
    aiokafka_fetcher.PartitionRecords = LightPartitionRecords
    aiokafka_fetcher.FetchResult = LightFetchResult


# How long the broker may hold a fetch that finds no new data. aiokafka keeps one fetch in
# flight per broker, so a partition with data (just handed over, or resumed by the contact
# hold) waits behind a fetch of partitions without: with Faust's fixed 1,500 ms a backfill
# stalled for up to 1.5 s at a time, and p99 event-to-metric latency at 5,000 events/s was
# 0.85 s on the embedded broker, 0.10 s with 100 ms (bench/README, session 8). An idle
# consumer sends 10 fetches a second per broker instead of 0.7.
FETCH_MAX_WAIT_MS = 100


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, whose aiokafka consumer waits at most FETCH_MAX_WAIT_MS per
    fetch (Faust passes a literal 1,500 ms, with no setting for it)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        if not hasattr(consumer, "_fetch_max_wait_ms"):  # read by AIOKafkaConsumer.start
            raise RuntimeError(f"aiokafka {aiokafka.__version__} has no AIOKafkaConsumer."
                               "_fetch_max_wait_ms, which the worker sets; install the aiokafka "
                               "release this project was tested with (0.14)")
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with a drain loop that works per fetch, not per record.

    A batch goes through three steps, and they overlap: batch N+2 is fetched and decoded (the
    worker's CPU) while batch N+1's script runs in Redis (another process) and the output
    records of batch N and earlier go to Kafka (round trips). A batch's script call goes out
    as soon as the batch is decoded, even while the previous one still runs: Redis queues it
    and starts it the moment the previous one ends, instead of idling until the worker's event
    loop has read that reply and sent the next. The calls are applied in batch order, whatever
    fails in between (`streams/lane.py`): the first event of an order_id wins within a
    partition. Outputs of several batches run at once, in any order; offsets are committed in
    batch order, each only after its batch's effects are durable. Counting a batch before the previous one is
    committed is safe: after a crash both are redelivered, and the script's identities count
    nothing twice.

    In a backfill, contacts that are ahead of the orders in event time are held for a later
    batch (`streams/hold.py`): their partition is paused meanwhile, and its commit stops at the
    first held offset.
    """

    def _new_consumer_thread(self) -> BatchConsumerThread:  # as Faust's, with a short wait
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        processor: BatchProcessor = self.app.processor  # type: ignore[attr-defined]
        hold = processor.hold
        lane = processor.new_lane()  # this loop's script calls, in batch order
        uncounted: deque[asyncio.Future] = deque()  # script calls not returned yet
        outputs: deque[asyncio.Future] = deque()  # output and commit of counted batches
        paused: set[TP] = set()  # contacts partitions paused here while contacts are held
        try:
            while not (self.should_stop or fetcher.should_stop):
                while outputs and outputs[0].done():  # a failed batch stops the loop now
                    outputs.popleft().result()
                records, active = await self._wait_next_records(0.0 if hold.due_left else 1.0)
                if self.should_stop:
                    continue
                fetched = [(tp, tp_records) for tp, tp_records in (records or {}).items()
                           if tp_records and (active is None or tp in active)]
                if not fetched and not hold.held:  # held contacts may be due: go on
                    continue
                for tp, tp_records in fetched:
                    hold.read((tp.topic, tp.partition), tp_records[-1].offset + 1)
                assigned = self.assignment()
                prepared = await processor.prepare(fetched, self._orders_lags(assigned, hold))
                del records, fetched  # decoded: keep no fetched record over the next fetch
                offsets = {TP(*partition): offset
                           for partition, offset in hold.commit_offsets().items()}
                self._pause_held(assigned, hold, paused)
                batch = prepared.script_batch
                if not (batch.orders or batch.contacts or prepared.rejected or offsets):
                    continue  # held contacts checked, none due
                while len(uncounted) >= MAX_BATCHES_COUNTING:
                    await uncounted.popleft()
                while len(outputs) >= MAX_BATCHES_OUTPUTTING:  # Kafka sets the pace too
                    await outputs.popleft()
                counting = asyncio.ensure_future(processor.count(prepared, lane))
                uncounted.append(counting)
                previous = outputs[-1] if outputs else None
                outputs.append(asyncio.ensure_future(
                    self._output(processor, prepared, counting, previous, offsets)))
            for step in outputs:
                await step
        except (asyncio.CancelledError, *self.consumer_stopped_errors):
            # As Faust's own drain loop: stopping is not a crash (otherwise a worker stopped
            # after a broker outage, with the rebalancing flag still set, exits with status 1).
            if self.app.should_stop:
                return
            raise
        finally:
            for step in (*uncounted, *outputs):  # stopping: uncommitted batches are redelivered
                if not step.done():
                    step.cancel()
            await lane.close()

    def _orders_lags(self, assigned: set[TP], hold: ContactHold) -> dict[TP, int]:
        """Records not read yet per assigned orders partition, from the high watermark of the
        partition's last fetch response (known without a request)."""
        orders_topic = self.app.processor.topics[0]  # type: ignore[attr-defined]
        lags: dict[TP, int] = {}
        for tp in assigned:
            if tp.topic == orders_topic:
                highwater = self.highwater(tp)
                if highwater is not None:
                    position = hold.next_offsets.get(tp) or self._committed_offset.get(tp) or 0
                    lags[tp] = highwater - position
        return lags

    def _pause_held(self, assigned: set[TP], hold: ContactHold, paused: set[TP]) -> None:
        """Stop fetching the contacts partitions whose contacts are held (memory stays at one
        fetch per partition), and fetch again those whose contacts are all out. Partitions
        Faust paused itself (a rebalance) are left to Faust."""
        held = {TP(*partition) for partition in hold.holding()} & assigned
        pause = held - self._paused_partitions
        if pause:
            self.pause_partitions(pause)
            paused |= pause
        resume = paused - held
        if resume:
            self.resume_partitions(resume & assigned)
            paused -= resume

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.app.processor.hold.forget(revoked)  # type: ignore[attr-defined]
        await super().on_partitions_revoked(revoked)

    async def _output(self, processor: BatchProcessor, prepared: Prepared,
                      counting: asyncio.Future, previous: asyncio.Future | None,
                      offsets: dict[TP, int]) -> None:
        await processor.output(prepared, await counting)  # overlaps other batches' outputs
        if previous is not None:
            await previous  # commits in batch order
        for tp, offset in offsets.items():
            self._read_offset[tp] = offset - 1
        await processor.kafka_call(lambda: self._commit_offsets(offsets), "commit offsets")


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class PipelineApp(faust.App):
    """A Faust app whose transport is `BatchTransport`."""

    processor: BatchProcessor

    def _new_transport(self) -> BatchTransport:
        return BatchTransport(self.conf.broker_consumer, self)


def create_app(settings: Settings) -> PipelineApp:
    app = PipelineApp(
        settings.group_id,
        **faust_broker_settings(settings),
        value_serializer="raw",
        key_serializer="raw",
        # Tansu holds the first JoinGroup for about half the session timeout (notes).
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        broker_rebalance_timeout=30.0,
        broker_max_poll_records=settings.batch_size,
        broker_commit_every=10**9,  # offsets are committed per batch by BatchConsumer
        broker_commit_interval=3600.0,
        consumer_auto_offset_reset="earliest",
        producer_linger=0.005,
        producer_max_batch_size=1024 * 1024,
        producer_max_request_size=16 * 1024 * 1024,  # DLQ records are cut to the DLQ's limit
        producer_acks=-1,
        producer_compression_type=compression_type(settings),
        topic_allow_declare=False,
        topic_partitions=settings.partitions,
        web_enabled=True,
        web_port=settings.metrics_port,
        web_bind=settings.bind_address,
        web_host=settings.bind_address,
        store="memory://",
        datadir=settings.data_dir,
        table_cleanup_interval=3600.0,
    )
    metrics = WorkerMetrics()
    state = RedisState(connect(settings), settings)

    sender = BatchSender(lambda: app.producer._ensure_producer())
    app.processor = BatchProcessor(
        settings, state, metrics, sender.send,
        kafka_transient=(KafkaError, KafkaPythonError, ConnectionError, asyncio.TimeoutError),
        topic_limit=lambda topic: topic_max_message_bytes(settings, topic),
    )
    app.topics.add(app.topic(settings.topic_orders, settings.topic_contacts,
                             value_serializer="raw", key_serializer="raw"))
    _add_timers(app, settings)
    _add_pages(app, metrics)
    return app


def _add_timers(app: PipelineApp, settings: Settings) -> None:
    processor = app.processor

    @app.timer(EXPIRE_INTERVAL_SECONDS)
    async def expire_pending() -> None:
        """Every worker sweeps; the Redis script makes each expiry happen exactly once."""
        await processor.expire_pending()

    @app.timer(OUTBOX_SWEEP_SECONDS)
    async def produce_orphans() -> None:
        """Output records whose worker died between Redis and Kafka are produced again."""
        await processor.produce_orphans(older_than=OUTBOX_ORPHAN_SECONDS)

    async def kafka_metadata() -> None:
        producer = app.producer._producer  # its aiokafka producer; Faust has no public handle
        if producer is not None:
            await producer.client.fetch_all_metadata()

    @app.timer(PROBE_INTERVAL_SECONDS)
    async def probe_dependencies() -> None:
        """Readiness follows Redis and Kafka even while no batch runs: one TIME (which also
        keeps the worker's clock on Redis's), one Metadata."""
        await asyncio.gather(processor.probe("redis", processor.sync_clock),
                             processor.probe("kafka", kafka_metadata))
        processor.metrics.ready.set(1 if processor.health.ready else 0)

    @app.timer(GAUGE_INTERVAL_SECONDS)
    async def refresh_gauges() -> None:
        metrics = processor.metrics
        try:
            pending = await asyncio.wait_for(processor.state.pending_count(),
                                             PROBE_TIMEOUT_SECONDS)
        except (*REDIS_ERRORS, TimeoutError):
            pass  # the probe reports the fault; the gauge keeps its last value meanwhile
        else:
            metrics.pending_contacts.set(pending)
        consumer = app.consumer
        assigned = [tp for tp in consumer.assignment() if tp.topic in processor.topics]
        if not assigned:
            return
        try:  # one ListOffsets request for all assigned partitions
            highwaters = await asyncio.wait_for(consumer.highwaters(*assigned),
                                                PROBE_TIMEOUT_SECONDS)
        except (*processor.kafka_transient, TimeoutError) as exc:  # the gauge waits a round
            log.debug("reading high watermarks failed: %s", exc)
            return
        for tp, highwater in highwaters.items():
            committed = consumer._committed_offset.get(tp) or 0
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, highwater - committed))


def _add_pages(app: PipelineApp, metrics: WorkerMetrics) -> None:
    processor = app.processor

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(metrics.registry),
                         headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.text("ok\n")

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        health = processor.health
        if health.ready:
            return web.text("ready\n")
        reasons = "\n".join(r for r in (health.fault("redis"), health.fault("kafka")) if r)
        return web.text(f"not ready\n{reasons}\n", status=503)


def tune_garbage_collector() -> None:
    """A batch allocates about 20 objects per record. At CPython's default thresholds (a young
    collection every 700 allocations) the collector ran ~1,200 times per 250,000 records and
    took ~3 µs of CPU per record (bench/README.md). Collect young objects every 50,000
    allocations instead, and keep the objects made at start-up out of every collection."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="override CPO_METRICS_PORT (one host, several workers)")


def run(args: argparse.Namespace) -> int:
    overrides = {"metrics_port": str(args.metrics_port)} if args.metrics_port else {}
    settings = load_settings(**overrides)
    missing = missing_codecs()
    if missing:
        print(f"cpo worker: cannot read {', '.join(missing)}-compressed record batches: install "
              "the package's dependencies (pip install cramjam python-snappy lz4 zstandard)",
              file=sys.stderr)
        return 2
    private_api.check()
    use_light_records()
    app = create_app(settings)
    tune_garbage_collector()
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
    return 0
