"""The benchmark's phases, in one run against one broker and one Redis.

1. Generate a realistic mix with the simulator (orders, contacts, duplicates, malformed
   records; event time within the last hour) and preload it with aiokafka's batch API.
2. Baseline: the bare consumer of `bench.baseline` reads every preloaded record, right before
   each pipeline phase (each phase's ratio is taken against the run just before it).
3. `cpo worker` x2 with the exporter, fresh consumer group and Redis DB: timed from the first
   count in Redis to the last count visible in the exporter (the expected totals are the
   distinct valid orders and contacts), so worker start-up and Tansu's JoinGroup stall are
   reported apart.
4. `cpo worker` x1, the same way on a fresh group and DB; then, with that worker caught up,
   event-to-metric latency at a paced input rate; then the Redis memory of the orders' join
   state. (Two workers go first because the latency phase adds records to the topics.)

Worker process trees are sampled every 200 ms for RSS; the CPU time of the workers, Redis and
the embedded broker is read at both ends of the timed window. Nothing here judges a figure:
`bench.report` derives the rates and compares them with the targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import orjson
import psutil
import redis

from bench.baseline import consume
from bench.report import (
    TOTALS_SAMPLES,
    BaselineResult,
    DataSummary,
    LatencyResult,
    PipelineResult,
    RedisMemory,
    exporter_totals,
)
from streams.buckets import COARSE_SECONDS, bucket_key, bucket_start
from streams.events import Rejection, decode_contact, decode_order
from streams.local import EmbeddedKafka, EmbeddedRedis, free_port, with_redis_db
from streams.processes import Child, Pipeline
from streams.settings import SETTINGS, Settings, load_settings
from streams.simulate import SimConfig, encode, generate, record_key, rfc3339
from streams.state import count_identities, identity_key
from streams.topics import create_topics

# The data: a flat hourly rate over the last hour, ~0.2 contacts per order (the simulator's
# delays divided by TIME_SCALE, so most contacts of the hour are sent within it), and the
# simulator's default 1% duplicates and 0.1% malformed records.
DATA_SPAN = 3600.0  # seconds of event time, ending DATA_END_MARGIN before the run
DATA_END_MARGIN = 60.0
CONTACTS_PER_ORDER = 0.25  # before the contacts that fall after the span are dropped
TIME_SCALE = 600.0  # e.g. where_is_my_order's 48 h median delay becomes 4.8 min
WINDOWS = "5m,1h,1d"  # the 1d window holds every preloaded event for the whole run
LATENCY_TIME_SCALE = 20_000.0  # contacts of the paced phase follow their orders within seconds

EXPORTER_REFRESH = 0.5  # seconds; bounds how late the exporter shows the last count
POLL_INTERVAL = 0.1  # seconds between reads of the counts in Redis or the exporter
LATENCY_POLL_INTERVAL = 0.02
LATENCY_SAMPLE_EVERY = 40  # orders; 5,000 events/s gives ~100 samples/s
LATENCY_TICK = 0.01  # the paced producer sends what is due every tick
LATENCY_DRAIN_TIMEOUT = 30.0  # after the last send, sampled orders still not visible are lost
# Only the oldest outstanding samples are polled, which keeps this process and Redis light when
# the worker falls behind; a sample seen out of order is then timed late, never early.
LATENCY_POLL_MAX_KEYS = 200
RSS_INTERVAL = 0.2
STALL_TIMEOUT = 120.0  # seconds without a new count before a phase is abandoned
EXPORTER_TIMEOUT = 30.0
PROGRESS_EVERY = 2.0
PRODUCE_CONCURRENCY = 16  # record batches in flight during the preload
MAX_BATCH_BYTES = 1 << 20
ORDER_KEY_PREFIX = "cpo:o:"  # the order identity hashes, cpo:o:<shard>
# Redis DBs of the two pipeline runs, flushed before use (DB 0 is left alone).
REDIS_DB_ONE_WORKER, REDIS_DB_TWO_WORKERS = 1, 2
PACKAGES = ("faust-streaming", "aiokafka", "kafka-python", "redis", "hiredis", "orjson",
            "prometheus-client", "psutil", "mode-streaming")


class BenchError(RuntimeError):
    """A phase could not finish; the message says what to look at."""


@dataclass
class Options:
    events: int = 500_000
    partitions: int = 8
    seed: int = 1
    latency_rate: float = 5000.0
    latency_seconds: float = 30.0
    log_dir: Path | None = None


class Progress:
    """One stderr line per PROGRESS_EVERY seconds for a long phase, and one when it ends."""

    def __init__(self, label: str, total: int | None = None, unit: str = "records") -> None:
        self.label, self.total, self.unit = label, total, unit
        self.began = self.last = time.monotonic()
        self.last_done = 0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY:
            speed = (done - self.last_done) / (now - self.last)
            self.last, self.last_done = now, done
            of = f"/{self.total:,}" if self.total else ""
            say(f"{self.label}: {done:,}{of} {self.unit} ({speed:,.0f}/s)")

    def finish(self, detail: str) -> None:
        say(f"{self.label}: {detail} in {time.monotonic() - self.began:.1f} s")


def say(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


# ---- infrastructure and settings -----------------------------------------------------------


@dataclass
class Servers:
    bootstrap: str
    redis_url: str
    kafka_pid: int | None  # the embedded broker's, for its CPU time; None when external
    kafka: str  # "embedded tansu" | "external"
    redis: str


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    """CPO_KAFKA_BOOTSTRAP / CPO_REDIS_URL when set, otherwise an embedded Tansu broker and
    redis-server on free ports, stopped at the end."""
    with contextlib.ExitStack() as stack:
        bootstrap = os.environ.get("CPO_KAFKA_BOOTSTRAP")
        redis_url = os.environ.get("CPO_REDIS_URL")
        kafka_pid = None
        described = ("external" if bootstrap else "embedded tansu",
                     "external" if redis_url else "embedded redis-server")
        if not bootstrap:
            kafka = stack.enter_context(EmbeddedKafka())
            bootstrap, kafka_pid = kafka.bootstrap, kafka.pid
        if not redis_url:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        yield Servers(bootstrap, redis_url, kafka_pid, *described)


class Bench:
    """Names and settings of one run: its own topics, consumer groups and Redis DBs."""

    def __init__(self, servers: Servers, options: Options, log_dir: Path) -> None:
        self.servers = servers
        self.log_dir = log_dir
        self.suffix = uuid.uuid4().hex[:8]
        self.base = {
            "kafka_bootstrap": servers.bootstrap,
            "redis_url": servers.redis_url,
            "topic_orders": f"bench-orders-{self.suffix}",
            "topic_contacts": f"bench-contacts-{self.suffix}",
            "topic_attributed": f"bench-attributed-{self.suffix}",
            "topic_dlq": f"bench-dlq-{self.suffix}",
            "partitions": str(options.partitions),
            "windows": WINDOWS,
            "bind_address": "127.0.0.1",
        }

    def settings(self, group: str, db: int = 0) -> Settings:
        """CPO_* settings from the environment, with this run's names, ports and DB."""
        metrics_port = free_port()
        exporter_port = free_port()
        while exporter_port == metrics_port:
            exporter_port = free_port()
        return load_settings(**{
            **self.base, "redis_url": with_redis_db(self.base["redis_url"], db),
            "group_id": f"cpo-bench-{self.suffix}-{group}",
            "metrics_port": str(metrics_port), "exporter_port": str(exporter_port)})

    def redis(self, db: int) -> redis.Redis:
        return redis.Redis.from_url(with_redis_db(self.base["redis_url"], db),
                                    decode_responses=True)


# ---- data -----------------------------------------------------------------------------------

Record = tuple[int, int, bytes | None, bytes]  # (0 orders | 1 contacts, partition, key, value)


def sim_config(events: int, seed: int) -> SimConfig:
    """An order rate that yields `events` records within DATA_SPAN, with 10% to spare."""
    per_order = 1 + CONTACTS_PER_ORDER + 0.011  # duplicates and malformed records
    return SimConfig(rate=events / DATA_SPAN / per_order * 1.1, seed=seed, time_scale=TIME_SCALE,
                     diurnal_amplitude=0.0, total_cpo=CONTACTS_PER_ORDER)


def partition_of(key: bytes | None, index: int, partitions: int) -> int:
    """By key like a keyed producer (crc32, which is cheap); unkeyed records round-robin."""
    return (zlib.crc32(key) if key is not None else index) % partitions


def generate_data(options: Options, now: float) -> tuple[list[Record], DataSummary]:
    """The preload: `options.events` records of the simulator and what they must count to."""
    started = time.monotonic()
    start = now - DATA_END_MARGIN - DATA_SPAN
    progress = Progress("generate", options.events)
    records: list[Record] = []
    order_ids: set[str] = set()
    contact_ids: set[str] = set()
    malformed = orders = total_bytes = 0
    first, last = math.inf, -math.inf  # of the valid events
    events = itertools.islice(generate(sim_config(options.events, options.seed), start,
                                       DATA_SPAN), options.events)
    for index, (topic, event) in enumerate(events):
        value, key = encode(event), record_key(topic, event)
        is_order = topic == "orders"
        decoded = decode_order(value, now) if is_order else decode_contact(value, now)
        if isinstance(decoded, Rejection):
            malformed += 1
        else:
            (order_ids if is_order else contact_ids).add(
                decoded.order_id if is_order else decoded.contact_id)
            first, last = min(first, decoded.occurred_at), max(last, decoded.occurred_at)
        orders += is_order
        total_bytes += len(value)
        records.append((0 if is_order else 1, partition_of(key, index, options.partitions),
                        key, value))
        if index % 1000 == 0:
            progress(index)
    if len(records) < options.events:
        raise BenchError(f"the simulator gave {len(records):,} of {options.events:,} records; "
                         "raise the order rate in bench.harness.sim_config")
    if not order_ids:
        raise BenchError(f"no valid order among {len(records):,} records; raise --events")
    summary = DataSummary(
        records=len(records), orders=orders, contacts=len(records) - orders, malformed=malformed,
        distinct_orders=len(order_ids), distinct_contacts=len(contact_ids), bytes=total_bytes,
        event_time_start=first, event_time_end=last,
        generate_seconds=time.monotonic() - started, preload_seconds=0.0)
    progress.finish(f"{summary.records:,} records: {summary.distinct_orders:,} orders, "
                    f"{summary.distinct_contacts:,} contacts, {malformed:,} malformed, "
                    f"the rest duplicates")
    return records, summary


async def preload(settings: Settings, records: list[Record]) -> float:
    """Produce the records with aiokafka's batch API (no future per record); seconds taken."""
    from aiokafka import AIOKafkaProducer

    from streams.kafka import aiokafka_config

    topics = (settings.topic_orders, settings.topic_contacts)
    producer = AIOKafkaProducer(**aiokafka_config(settings), acks=1, linger_ms=50,
                                max_batch_size=MAX_BATCH_BYTES,
                                max_request_size=4 * MAX_BATCH_BYTES)
    await producer.start()
    progress = Progress("preload", len(records))
    in_flight = asyncio.Semaphore(PRODUCE_CONCURRENCY)
    sent = 0

    async def send(batch: Any, topic: int, partition: int, size: int) -> None:
        nonlocal sent
        async with in_flight:
            delivered = await producer.send_batch(batch, topics[topic], partition=partition)
            await delivered
        sent += size
        progress(sent)

    try:
        started = time.monotonic()
        open_batches: dict[tuple[int, int], tuple[Any, int]] = {}
        tasks = []
        for topic, partition, key, value in records:
            batch, size = open_batches.get((topic, partition)) or (producer.create_batch(), 0)
            if batch.append(key=key, value=value, timestamp=None) is None:
                tasks.append(asyncio.ensure_future(send(batch, topic, partition, size)))
                batch, size = producer.create_batch(), 0
                batch.append(key=key, value=value, timestamp=None)
                await asyncio.sleep(0)  # let the full batch go out while the rest is built
            open_batches[(topic, partition)] = (batch, size + 1)
        tasks += [asyncio.ensure_future(send(batch, topic, partition, size))
                  for (topic, partition), (batch, size) in open_batches.items()]
        await asyncio.gather(*tasks)
        seconds = time.monotonic() - started
    finally:
        await producer.stop()
    progress.finish(f"{sent:,} records produced")
    return seconds


# ---- measuring a running pipeline -------------------------------------------------------------


class RedisCounts:
    """Orders and contacts counted so far in an event-time span: the `o` and `c:<cause id>`
    fields of the span's coarse buckets, read with one pipelined HMGET per bucket. Cheap enough
    to poll every 100 ms, unlike a full window read."""

    def __init__(self, client: redis.Redis, start: float, end: float, max_causes: int) -> None:
        self.client = client
        first = bucket_start(start, COARSE_SECONDS)
        last = bucket_start(end, COARSE_SECONDS)
        self.keys = [bucket_key(COARSE_SECONDS, s)
                     for s in range(first, last + COARSE_SECONDS, COARSE_SECONDS)]
        self.fields = ["o", *(f"c:{cause_id}" for cause_id in range(max_causes))]

    def read(self) -> tuple[int, int]:
        with self.client.pipeline(transaction=False) as pipe:
            for key in self.keys:
                pipe.hmget(key, self.fields)
            replies = pipe.execute()
        orders = sum(int(reply[0] or 0) for reply in replies)
        contacts = sum(int(n) for reply in replies for n in reply[1:] if n)
        return orders, contacts


def _process_tree(pid: int) -> list[psutil.Process]:
    try:
        process = psutil.Process(pid)
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def process_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of the processes and their live children."""
    total = 0.0
    for pid in pids:
        for process in _process_tree(pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
    return total


def redis_cpu(client: redis.Redis) -> float:
    """The Redis server's CPU seconds (INFO), so it works for an external server too."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass
class CpuClock:
    """CPU seconds of the workers, Redis and the embedded broker, read at one moment; the
    difference of two readings says where a phase's time went."""

    workers: float
    redis: float
    broker: float | None

    @classmethod
    def read(cls, worker_pids: list[int], client: redis.Redis,
             broker_pid: int | None) -> CpuClock:
        return cls(process_cpu(worker_pids), redis_cpu(client),
                   process_cpu([broker_pid]) if broker_pid else None)


class RssSampler:
    """Peak RSS of each watched process tree, sampled every RSS_INTERVAL in a thread."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, pid: int) -> None:
        self.peaks.setdefault(pid, 0)

    def _run(self) -> None:
        while not self._stop.wait(RSS_INTERVAL):
            for pid in list(self.peaks):
                rss = 0
                for process in _process_tree(pid):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        rss += process.memory_info().rss
                self.peaks[pid] = max(self.peaks[pid], rss)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _check_alive(children: list[Child]) -> None:
    for child in children:
        if not child.alive:
            raise BenchError(f"{child.name} exited with status {child.process.returncode}; "
                             f"its log {child.log_path} ends:\n{child.log_tail()}")


@dataclass
class Counted:
    """When the counts in Redis started and finished (time.monotonic()), the CPU spent in
    between, and the count about once a second in between."""

    first: float
    last: float
    cpu_first: CpuClock
    cpu_last: CpuClock
    timeline: list[tuple[float, int]]


def wait_counted(counts: RedisCounts, expected: tuple[int, int], children: list[Child],
                 clock: Callable[[], CpuClock], label: str) -> Counted:
    """Poll Redis every POLL_INTERVAL until it holds the expected (orders, contacts)."""
    target = sum(expected)
    progress = Progress(label, target, "counted")
    started = time.monotonic()
    first: float | None = None
    cpu_first: CpuClock | None = None
    timeline: list[tuple[float, int]] = []
    last_change, last_total = started, 0
    while True:
        now = time.monotonic()
        orders, contacts = counts.read()
        total = orders + contacts
        if first is None and total > 0:
            first, cpu_first = now, clock()
            say(f"{label}: first count {now - started:.1f} s after start")
        if first is not None and (not timeline or now - first >= timeline[-1][0] + 1.0):
            timeline.append((round(now - first, 2), total))
        if (orders, contacts) == expected:
            timeline.append((round(now - first, 2), total))
            return Counted(first, now, cpu_first, clock(), timeline)
        if orders > expected[0] or contacts > expected[1]:
            raise BenchError(f"{label}: counted {orders:,} orders and {contacts:,} contacts, more "
                             f"than the {expected[0]:,} and {expected[1]:,} sent: a record was "
                             "counted twice; run the exactness tests (tests/integration)")
        if total != last_total:
            last_change, last_total = now, total
        elif now - last_change > STALL_TIMEOUT:
            raise BenchError(f"{label}: stuck at {orders:,}/{expected[0]:,} orders and "
                             f"{contacts:,}/{expected[1]:,} contacts for {STALL_TIMEOUT:.0f}s; "
                             f"see the logs in {children[0].log_path.parent}")
        _check_alive(children)
        if first is not None:
            progress(total)
        time.sleep(POLL_INTERVAL)


def wait_visible(exporter: Child, expected: tuple[int, int],
                 window: str) -> tuple[float, float | None]:
    """Poll the exporter until its window shows the expected totals: (time.monotonic(), the
    duration of the exporter's last read of Redis)."""
    deadline = time.monotonic() + EXPORTER_TIMEOUT
    shown = None
    while time.monotonic() < deadline:
        _check_alive([exporter])
        with contextlib.suppress(OSError):  # not serving yet
            samples = exporter.scrape((*TOTALS_SAMPLES, "cpo_exporter_scrape_seconds"), window)
            shown = exporter_totals(samples, window)
            if shown == expected:
                return time.monotonic(), samples.get(("cpo_exporter_scrape_seconds", ()))
        time.sleep(POLL_INTERVAL)
    raise BenchError(f"the exporter shows (orders, contacts) = {shown} in window {window}, not "
                     f"{expected}, {EXPORTER_TIMEOUT:.0f}s after Redis held them; see "
                     f"{exporter.log_path}")


def largest_window(settings: Settings) -> str:
    seconds = settings.window_seconds()
    return max(seconds, key=seconds.__getitem__)


During = Callable[[Settings, list[Child], Child], Any]


def run_pipeline(bench: Bench, data: DataSummary, workers: int, db: int,
                 during: During | None = None) -> tuple[PipelineResult, Any]:
    """Start `workers` workers and the exporter on a fresh group and Redis DB, time them through
    the preloaded data, then call `during(settings, workers, exporter)` while they still run."""
    settings = bench.settings(f"{workers}w", db)
    client = bench.redis(db)
    client.flushdb()
    counts = RedisCounts(client, data.event_time_start, data.event_time_end, settings.max_causes)
    expected = (data.distinct_orders, data.distinct_contacts)
    log_dir = bench.log_dir / f"{workers}w"
    log_dir.mkdir(parents=True, exist_ok=True)
    label = f"{workers} worker{'s' if workers > 1 else ''}"
    say(f"{label}: starting (logs in {log_dir})")
    with Pipeline(settings, log_dir, {"CPO_WORKDIR": str(log_dir)}) as pipeline, \
            RssSampler() as sampler:
        spawned = time.monotonic()
        children = [pipeline.worker(i, free_port()) for i in range(workers)]
        pids = [child.process.pid for child in children]
        for pid in pids:
            sampler.watch(pid)
        exporter = pipeline.exporter(refresh=EXPORTER_REFRESH)
        counted = wait_counted(
            counts, expected, [*children, exporter],
            lambda: CpuClock.read(pids, client, bench.servers.kafka_pid), label)
        visible, exporter_read = wait_visible(exporter, expected, largest_window(settings))
        say(f"{label}: all {sum(expected):,} counted in {counted.last - counted.first:.1f} s, "
            f"visible in the exporter after {visible - counted.first:.1f} s")
        extra = during(settings, children, exporter) if during else None
        peaks = [sampler.peaks[pid] for pid in pids]
    client.close()
    used, at_first = counted.cpu_last, counted.cpu_first
    return PipelineResult(
        workers=workers, records=data.records, seconds=visible - counted.first,
        redis_seconds=counted.last - counted.first, startup_seconds=counted.first - spawned,
        cpu_seconds=used.workers - at_first.workers,
        redis_cpu_seconds=used.redis - at_first.redis,
        broker_cpu_seconds=(used.broker - at_first.broker
                            if used.broker is not None and at_first.broker is not None
                            else None),
        exporter_read_seconds=exporter_read, peak_rss_bytes=peaks,
        timeline=counted.timeline), extra


# ---- latency ----------------------------------------------------------------------------------


class LatencyProbe:
    """Sends events at a fixed rate, each stamped with its send time, and polls Redis for the
    join state (field order_id of `cpo:o:<shard>`, written by the same script call that adds
    the order to the window counts) of every LATENCY_SAMPLE_EVERY-th order."""

    def __init__(self, settings: Settings, rate: float, events: list[tuple[str, Any]]) -> None:
        import redis.asyncio as aioredis

        self.settings = settings
        self.rate = rate
        self.events = events
        self.client = aioredis.from_url(settings.redis_url)
        self.outstanding: dict[str, float] = {}  # sampled order_id -> send time, oldest first
        self.latencies: list[float | None] = []
        self.acks: list[float] = []  # send to broker acknowledgement, of the sampled orders
        self.sending_seconds = 0.0
        self.max_send_gap = 0.0  # longest pause of the sender: this process starved or blocked
        self.done_sending = False

    async def run(self) -> None:
        from aiokafka import AIOKafkaProducer

        from streams.kafka import aiokafka_config

        producer = AIOKafkaProducer(**aiokafka_config(self.settings), linger_ms=5, acks=1)
        await producer.start()
        try:
            await asyncio.gather(self._send(producer), self._poll())
        finally:
            await producer.stop()
            await self.client.aclose()

    async def _send(self, producer: Any) -> None:
        """Every LATENCY_TICK, send what is due (event i at i / rate seconds), stamped with the
        tick's time, as one record batch per partition: aiokafka's per-record `send` costs
        ~100 us of this process's CPU, enough to miss the pace on a shared machine."""
        topics = {"orders": self.settings.topic_orders, "contacts": self.settings.topic_contacts}
        partitions = self.settings.partitions
        progress = Progress("latency", len(self.events), "events sent")
        deliveries = []
        seen_orders: set[str] = set()
        began = last_tick = time.monotonic()
        sent = 0
        while sent < len(self.events):
            now = time.monotonic()
            self.max_send_gap = max(self.max_send_gap, now - last_tick)
            last_tick = now
            due = min(len(self.events), int((now - began) * self.rate) + 1)
            sent_at = time.time()
            stamp = rfc3339(sent_at)
            batches: dict[tuple[str, int], Any] = {}
            sampled: dict[tuple[str, int], int] = {}
            for index in range(sent, due):
                topic, event = self.events[index]
                value, key = event, record_key(topic, event)
                target = (topic, partition_of(key, index, partitions))
                if isinstance(event, dict):  # malformed records (bytes) go as they are
                    value = orjson.dumps({**event, "occurred_at": stamp})
                    order_id = event.get("order_id") if topic == "orders" else None
                    if order_id and order_id not in seen_orders:  # not a duplicate
                        if len(seen_orders) % LATENCY_SAMPLE_EVERY == 0:
                            self.outstanding[order_id] = sent_at
                            sampled[target] = sampled.get(target, 0) + 1
                        seen_orders.add(order_id)
                batch = batches.get(target) or batches.setdefault(target, producer.create_batch())
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    deliveries.append(await producer.send_batch(batch, topics[topic],
                                                                partition=target[1]))
                    batch = batches[target] = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            for (topic, partition), batch in batches.items():
                delivery = await producer.send_batch(batch, topics[topic], partition=partition)
                for _ in range(sampled.get((topic, partition), 0)):
                    delivery.add_done_callback(
                        lambda _, t=sent_at: self.acks.append(time.time() - t))
                deliveries.append(delivery)
            sent = due
            progress(sent)
            await asyncio.sleep(LATENCY_TICK)
        self.sending_seconds = time.monotonic() - began
        await asyncio.gather(*deliveries)
        self.done_sending = True

    async def _poll(self) -> None:
        """Every LATENCY_POLL_INTERVAL, one pipelined HEXISTS per outstanding sample."""
        drain_until = math.inf
        while (self.outstanding or not self.done_sending) and time.monotonic() < drain_until:
            keys = list(itertools.islice(self.outstanding, LATENCY_POLL_MAX_KEYS))
            if keys:
                async with self.client.pipeline(transaction=False) as pipe:
                    for order_id in keys:
                        pipe.hexists(identity_key("o", order_id), order_id)
                    replies = await pipe.execute()
                seen_at = time.time()
                for order_id, found in zip(keys, replies, strict=True):
                    if found:
                        self.latencies.append(seen_at - self.outstanding.pop(order_id))
            if self.done_sending and math.isinf(drain_until):
                drain_until = time.monotonic() + LATENCY_DRAIN_TIMEOUT
            await asyncio.sleep(LATENCY_POLL_INTERVAL)
        self.latencies.extend(None for _ in self.outstanding)


def measure_latency(settings: Settings, rate: float, seconds: float, seed: int) -> LatencyResult:
    """Event-to-metric latency of `rate` x `seconds` simulated events sent at `rate` per second
    (a seed of its own, so every order is new)."""
    config = SimConfig(rate=rate, seed=seed + 1, time_scale=LATENCY_TIME_SCALE,
                       diurnal_amplitude=0.0, total_cpo=CONTACTS_PER_ORDER)
    events = list(itertools.islice(generate(config, time.time(), None), int(rate * seconds)))
    probe = LatencyProbe(settings, rate, events)
    cpu_before = time.process_time()
    asyncio.run(probe.run())
    harness_cpu = time.process_time() - cpu_before
    lost = sum(v is None for v in probe.latencies)
    say(f"latency: {len(events):,} events sent in {probe.sending_seconds:.1f} s, "
        f"{len(probe.latencies):,} sampled orders, {lost} not visible after "
        f"{LATENCY_DRAIN_TIMEOUT:.0f} s")
    return LatencyResult(target_rate=rate, seconds=probe.sending_seconds, sent=len(events),
                         latencies=probe.latencies, ack_latencies=probe.acks,
                         max_send_gap_seconds=probe.max_send_gap, harness_cpu_seconds=harness_cpu,
                         poll_interval=LATENCY_POLL_INTERVAL, drain_timeout=LATENCY_DRAIN_TIMEOUT)


# ---- Redis memory -----------------------------------------------------------------------------


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def redis_memory(client: redis.Redis, empty_used: int) -> RedisMemory:
    """Memory of the orders' join state: delete every other key of the (stopped) run and
    compare INFO used_memory with the empty server's. The keyspace's hash tables stay sized
    for all the run's keys, so the figure errs high, never low."""
    all_used = used_memory(client)
    doomed: list[str] = []
    for key in client.scan_iter(count=10_000):
        if not key.startswith(ORDER_KEY_PREFIX):
            doomed.append(key)
            if len(doomed) >= 1000:
                client.delete(*doomed)
                doomed.clear()
    if doomed:
        client.delete(*doomed)
    return RedisMemory(orders=count_identities(client, "o"),
                       order_state_bytes=used_memory(client) - empty_used,
                       all_state_bytes=all_used - empty_used)


# ---- the run ----------------------------------------------------------------------------------


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty.strip())}


def machine_info() -> dict[str, Any]:
    packages = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    return {
        "cpu_count": os.cpu_count() or 0,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": packages,
        "loadavg_start": list(os.getloadavg()),
    }


# Per-run names, addresses and credentials: not tuning, and a URL may hold a password.
_UNRECORDED = {"kafka_bootstrap", "redis_url", "topic_orders", "topic_contacts",
               "topic_attributed", "topic_dlq", "group_id", "metrics_port", "exporter_port",
               "bind_address", "kafka_sasl_username", "kafka_sasl_password", "kafka_ssl_cafile"}


def _recorded_settings(settings: Settings) -> dict[str, str]:
    """The CPO_* tuning values the workers ran with (batch size, windows, ...)."""
    return {setting.env: settings.raw[name] for name, setting in SETTINGS.items()
            if name not in _UNRECORDED}


def _address(url: str) -> str:
    """host:port of a URL, so a password in it is never printed."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.hostname else parts.path


def run(options: Options, command: str) -> dict[str, Any]:
    """Every phase; returns the pieces `bench.report.assemble` turns into the result."""
    from bench.report import assemble

    started_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    log_dir = options.log_dir or Path(tempfile.mkdtemp(prefix="cpo-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    git = _git()  # at the start: the tree the workers run
    with servers() as found:
        bench = Bench(found, options, log_dir)
        say(f"Kafka {found.bootstrap} ({found.kafka}), Redis {_address(found.redis_url)} "
            f"({found.redis}); logs in {log_dir}")
        setup = bench.settings("setup")
        create_topics(setup, options.partitions)
        records, data = generate_data(options, time.time())
        data.preload_seconds = asyncio.run(preload(setup, records))
        del records
        gc.collect()  # the preload's objects would slow the baseline's collections

        def bare_consumer(before: str) -> BaselineResult:
            """The baseline, run right before a pipeline phase: the machine's speed drifts
            (noisy neighbours), and a ratio is only as good as the two rates are close in time."""
            say(f"baseline before {before}: bare aiokafka consumer group + orjson.loads")
            progress = Progress("baseline", data.records)
            baseline: BaselineResult = asyncio.run(consume(
                setup, f"cpo-bench-{bench.suffix}-baseline-{before}", data.records, progress))
            progress.finish(f"{baseline.records:,} records read "
                            f"({baseline.records / baseline.seconds:,.0f}/s after start-up)")
            return baseline

        def latency_phase(settings: Settings, workers: list[Child], exporter: Child) -> Any:
            if options.latency_seconds <= 0:
                return None
            exporter.stop()  # latency is read from Redis; the exporter would only add load
            return measure_latency(settings, options.latency_rate, options.latency_seconds,
                                   options.seed)

        # Two workers first: the latency phase adds records to the topics.
        baselines = {2: bare_consumer("2 workers")}
        two, _ = run_pipeline(bench, data, 2, REDIS_DB_TWO_WORKERS)
        bench.redis(REDIS_DB_TWO_WORKERS).flushdb()
        memory_client = bench.redis(REDIS_DB_ONE_WORKER)
        memory_client.flushdb()
        empty_used = used_memory(memory_client)
        baselines[1] = bare_consumer("1 worker")
        one, latency = run_pipeline(bench, data, 1, REDIS_DB_ONE_WORKER, latency_phase)
        memory = redis_memory(memory_client, empty_used)
        memory_client.flushdb()
        machine.update(kafka=found.kafka, redis=found.redis,
                       redis_version=memory_client.info("server")["redis_version"],
                       loadavg_end=list(os.getloadavg()))
        settings_used = _recorded_settings(bench.settings("1w", REDIS_DB_ONE_WORKER))
    run_info = {"started_at": started_at, "command": command, "options": {
        "events": options.events, "partitions": options.partitions, "seed": options.seed,
        "latency_rate": options.latency_rate, "latency_seconds": options.latency_seconds},
        "settings": settings_used, "git": git, "log_dir": str(log_dir)}
    return assemble(run=run_info, machine=machine, data=data, baseline=baselines[2],
                    pipelines=[one, two], latency=latency, redis_memory=memory,
                    baselines=baselines)
