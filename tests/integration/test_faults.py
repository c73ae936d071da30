"""Faults under sustained load, against a real broker, Redis and workers: every count stays exact.

One run produces the reference dataset (tests/integration/reference.py), paced, while in turn
it SIGKILLs a worker three times (restarting it each time), restarts Redis (append-only file,
so nothing is lost), freezes Redis and then the broker with SIGSTOP for longer than the
workers' 10 s Kafka session timeout, and rebalances by adding a third worker and stopping one. After the load stops and the pipeline drains, the exporter's windows,
the DLQ (by source offset) and the set of attributed contacts equal the independent
computation. During each freeze every worker stays alive, `/readyz` answers 503, the fault is
logged once (not once per retry) and counted in `cpo_redis_errors_total` or
`cpo_kafka_errors_total`; after it, `/readyz` answers 200 again.

The broker and Redis are this test's own: freezing the session's shared ones would stall every
other test. Worker counters are not compared here: a killed worker's counters die with it (the
two-worker test in test_exact_counts.py compares them).
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from streams.local import EmbeddedKafka, EmbeddedRedis, free_port
from streams.processes import Child, Pipeline
from streams.settings import Settings
from streams.state import count_identities
from tests.integration import reference
from tests.integration.support import (
    check_outputs,
    dataset_settings,
    exported_windows,
    produce,
    wait_drained,
    wait_until,
)

GRACE = "60s"  # longer than any fault below can delay a late order behind its contact
FREEZE_SECONDS = 15.0  # longer than the workers' 10 s Kafka session timeout
LOAD_PACE = 8.0  # seconds between chunks of 200 records while the faults go on (the load must
# outlast every fault on a slow machine; once they are over the rest is sent at once)
DRAIN_TIMEOUT = 240.0  # expiry after the grace, orphaned outbox entries after 60 s, slow CPUs


@pytest.fixture
def servers() -> Iterator[tuple[EmbeddedKafka, EmbeddedRedis]]:
    with EmbeddedKafka() as kafka, EmbeddedRedis(appendonly=True) as redis_server:
        yield kafka, redis_server


@pytest.fixture
def kafka_bootstrap(servers: tuple[EmbeddedKafka, EmbeddedRedis]) -> str:
    """Overrides the session's broker for this module: pipeline_settings uses this one."""
    return servers[0].bootstrap


@pytest.fixture
def redis_url(servers: tuple[EmbeddedKafka, EmbeddedRedis]) -> str:
    return servers[1].url


@pytest.fixture
def settings(pipeline_settings: Settings) -> Settings:
    return dataset_settings(pipeline_settings, GRACE)


def readiness(child: Child) -> int | str:
    try:
        with urllib.request.urlopen(child.url("/readyz"), timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError as error:
        return type(error).__name__


def sample(child: Child, name: str) -> float:
    return child.scrape().get((name, ()), 0.0)


class Load:
    """The dataset produced by a thread, 200 records every LOAD_PACE seconds until the faults
    are over (`faults_done()`), then the rest at once: the load outlasts every fault however
    slow the machine, and the test does not wait for a fixed pace once they are over."""

    def __init__(self, settings: Settings, records: list) -> None:
        self.sent = 0
        self.settings, self.records = settings, records
        self._done = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1)
        self._future: Future | None = None

    def start(self) -> None:
        self._future = self._executor.submit(produce, self.settings, self.records,
                                             on_progress=self._progress)

    def _progress(self, sent: int) -> None:
        self.sent = sent
        self._done.wait(LOAD_PACE)

    def faults_done(self) -> None:
        self._done.set()

    @property
    def running(self) -> bool:
        return self._future is not None and not self._future.done()

    def join(self) -> None:
        assert self._future is not None
        self._future.result()  # raises what the producer raised
        self._executor.shutdown()


class Faults:
    """The workers, the servers and a timeline of what was done, for failure messages."""

    def __init__(self, pipeline: Pipeline, servers: tuple[EmbeddedKafka, EmbeddedRedis],
                 load: Load) -> None:
        self.pipeline = pipeline
        self.kafka, self.redis = servers
        self.load = load
        self.ports = [free_port(), free_port()]
        self.workers = [pipeline.worker(i, port) for i, port in enumerate(self.ports)]
        self.started = time.monotonic()
        self.timeline: list[str] = []

    def note(self, event: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.started:6.1f}s {event} "
                             f"(sent {self.load.sent})")

    def under_load(self, fault: str) -> None:
        self.note(fault)
        assert self.load.running, f"the load ended before: {fault}\n" + "\n".join(self.timeline)

    def kill_and_restart(self, index: int) -> None:
        self.under_load(f"SIGKILL worker-{index}")
        self.workers[index].kill()
        time.sleep(1)
        self.workers[index] = self.pipeline.worker(index, self.ports[index])

    def freeze(self, what: str, server: EmbeddedKafka | EmbeddedRedis,
               children: list[Child]) -> dict[str, set]:
        """SIGSTOP `server` for FREEZE_SECONDS; every child's /readyz answers, polled."""
        for child in children:
            child.wait_ready()
        self.under_load(f"SIGSTOP {what}")
        seen: dict[str, set] = {child.name: set() for child in children}
        server.pause()
        try:
            deadline = time.monotonic() + FREEZE_SECONDS
            while time.monotonic() < deadline:
                for child in children:
                    seen[child.name].add(readiness(child))
                time.sleep(0.5)
        finally:
            server.resume()
        self.note(f"SIGCONT {what}; /readyz seen: {seen}")
        for child in children:
            assert child.alive, f"{child.name} exited during the {what} freeze:\n{child.log_tail()}"
            child.wait_ready()  # 200 again
        self.note(f"{what} recovered: every /readyz is 200")
        return seen


def log_offsets(workers: list[Child]) -> dict[str, int]:
    return {w.name: w.log_path.stat().st_size for w in workers}


def log_since(worker: Child, offsets: dict[str, int]) -> str:
    with open(worker.log_path, "rb") as handle:
        handle.seek(offsets[worker.name])
        return handle.read().decode(errors="replace")


def assert_one_episode(workers: list[Child], offsets: dict[str, int], errors_before: dict,
                       dependency: str) -> None:
    """Each worker logged the freeze once at WARNING and once at INFO, and counted it (more
    than once: it retried) in its error counter."""
    counter = f"cpo_{dependency}_errors_total"
    for worker in workers:
        text = log_since(worker, offsets)
        assert text.count(f"WARNING] {dependency} unavailable") == 1, (worker.name, text[-3000:])
        assert text.count(f"{dependency} recovered after") == 1, (worker.name, text[-3000:])
        assert sample(worker, counter) > errors_before[worker.name] + 1, worker.name


def inject_faults(faults: Faults, exporter: Child) -> list[Child]:
    """Every fault in turn, each checked while and after it lasts; returns the live workers."""
    # (a) worker crashes, mid-batch as likely as not
    for index in (0, 1, 0):
        faults.kill_and_restart(index)
        time.sleep(4)

    # (b) Redis restarts: its append-only file (fsync always) brings every write back
    faults.under_load("restart Redis")
    faults.redis.restart()
    time.sleep(3)

    # (d) Redis frozen: readiness 503 meanwhile, one episode logged and counted
    workers = faults.workers
    offsets = log_offsets(workers)
    errors = {w.name: sample(w, "cpo_redis_errors_total") for w in workers}
    seen = faults.freeze("Redis", faults.redis, [*workers, exporter])
    assert all(503 in statuses for statuses in seen.values()), faults.timeline
    assert_one_episode(workers, offsets, errors, "redis")

    # (c) broker frozen beyond the session timeout: the group rebalances after SIGCONT
    offsets = log_offsets(workers)
    errors = {w.name: sample(w, "cpo_kafka_errors_total") for w in workers}
    seen = faults.freeze("Kafka", faults.kafka, workers)
    assert all(503 in statuses for statuses in seen.values()), faults.timeline
    assert_one_episode(workers, offsets, errors, "kafka")

    # (e) rebalance: a third worker joins, then one leaves
    faults.under_load("add worker-2")
    workers.append(faults.pipeline.worker(2, free_port()))
    workers[2].wait_ready()
    time.sleep(5)
    faults.under_load("stop worker-1 (SIGTERM)")
    workers[1].stop()
    return [workers[0], workers[2]]


def test_counts_stay_exact_through_crashes_restarts_freezes_and_rebalances(
        settings: Settings, servers: tuple[EmbeddedKafka, EmbeddedRedis],
        tmp_path: Path) -> None:
    now = time.time()
    data = reference.generate(now)
    assert reference.window_edges_are_clear(data, now, horizon=400)
    records = data.orders_phase + data.contacts_phase + data.late_orders_phase
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)

    with Pipeline(settings, tmp_path) as pipeline:
        load = Load(settings, records)
        faults = Faults(pipeline, servers, load)
        exporter = pipeline.exporter(refresh=0.5)
        for child in [*faults.workers, exporter]:
            child.wait_ready()
        load.start()
        try:
            wait_until(lambda: count_identities(client, "o") > 200, 120,
                       "the first orders counted")
            survivors = inject_faults(faults, exporter)
        finally:
            load.faults_done()
        load.join()
        faults.note("load done")

        wait_drained(client, data, DRAIN_TIMEOUT)
        faults.note("drained")
        for worker in survivors:
            assert worker.alive, f"{worker.name} exited:\n{worker.log_tail()}"
            worker.wait_ready()
        time.sleep(1.5)  # one more exporter refresh after the last write

        exported = exported_windows(exporter)
        check_time = time.time()
        registered = reference.registered_values(exported)
        expected = reference.compute(data, check_time, registered,
                                     (settings.topic_orders, settings.topic_contacts))
        assert exported == expected.windows, "\n".join(faults.timeline)

        for worker in survivors:  # they lived through the freezes: a clean stop is still clean
            worker.stop()
            assert worker.process.returncode == 0, f"{worker.name}:\n{worker.log_tail()}"

    check_outputs(settings, data, expected, exactly_once=False)
