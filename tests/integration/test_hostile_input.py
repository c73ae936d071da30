"""A corpus of about 16,000 hostile records (tests/corpus/hostile), interleaved with the
reference dataset, through two real workers and the exporter: nothing is lost, nothing leaks.

- Every bad record is in the DLQ with its reason, found by its source topic, partition and
  offset, with its original bytes (cut, with its size in a header, only beyond the DLQ
  topic's `max.message.bytes`); no valid record is there.
- Every valid record, hostile or not, is counted exactly: worker counters, exporter windows and
  the attributed-contacts topic equal the reference computation, with causes and values folded
  into `other` as the registries decided.
- Label sets stay within CPO_MAX_CAUSES and CPO_MAX_VALUES even with 5,000 distinct causes and
  values, and label values with quotes, backslashes, newlines and braces survive the exposition:
  prometheus_client's parser and promtool read back exactly the registered strings.
- The workers never crash, no customer id reaches a log line or a label, and the endpoints are
  bound to CPO_BIND_ADDRESS (127.0.0.1) only.

Tansu accepts records far above Kafka's default 1 MiB `message.max.bytes` (40 MiB was measured),
so records of 17 MiB do reach the workers here; docs/operations.md says what a real broker does.
"""

from __future__ import annotations

import dataclasses
import random
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import redis
from kafka import KafkaProducer

from streams.kafka import kafka_python_config
from streams.local import free_port
from streams.processes import Child, Pipeline, parse_metrics
from streams.processor import record_bytes
from streams.settings import Settings, load_settings
from streams.state import count_identities
from streams.topics import DLQ_MAX_MESSAGE_BYTES
from tests.corpus import hostile
from tests.integration import reference
from tests.integration.support import (
    check_outputs,
    consume_all,
    exported_windows,
    summed,
    topic_for,
    wait_drained,
    wait_for,
)

GRACE = "25s"  # longer than a late order can lag behind its contact here
MAX_CAUSES, MAX_VALUES = 64, 50
DRAIN_TIMEOUT = 240.0
Origin = tuple[str, int, int]


@pytest.fixture
def settings(pipeline_settings: Settings) -> Settings:
    return load_settings(
        {**pipeline_settings.as_env(), "CPO_WINDOWS": reference.WINDOWS,
         "CPO_JOIN_GRACE": GRACE, "CPO_MAX_CAUSES": str(MAX_CAUSES),
         "CPO_MAX_VALUES": str(MAX_VALUES), "CPO_DIMENSIONS": ",".join(hostile.DIMENSIONS),
         "CPO_BATCH_SIZE": "500", "CPO_LOG_LEVEL": "INFO"})


def produce_tracked(settings: Settings, records: list[hostile.Hostile]) -> list[Origin]:
    """Send the records in order; their (topic, partition, offset), in the same order."""
    producer = KafkaProducer(**kafka_python_config(settings), acks="all", linger_ms=5,
                             max_request_size=64 * 1024 * 1024)
    futures = [producer.send(topic_for(settings, r.kind), key=r.key, value=r.value)
               for r in records]
    producer.flush()
    producer.close()
    return [(m.topic, m.partition, m.offset) for m in (f.get(timeout=60) for f in futures)]


def interleave(a: list, b: list, rng: random.Random) -> list:
    """Both lists merged at random, each keeping its own order (first-wins duplicates rely on
    it)."""
    slots = [0] * len(a) + [1] * len(b)
    rng.shuffle(slots)
    sources = [iter(a), iter(b)]
    return [next(sources[slot]) for slot in slots]


def as_hostile(phase: list[tuple[str, bytes | None, bytes]]) -> list[hostile.Hostile]:
    """The reference's records in the corpus's shape, its bad ones with their reasons (its one
    future order is the order `o-future`)."""
    reasons = {value: reason for value, reason in reference.BAD_ORDERS + reference.BAD_CONTACTS}
    return [hostile.Hostile(kind, value, reasons.get(value) or (
                "future_timestamp" if b'"o-future"' in value else None), key=key)
            for kind, key, value in phase]


def with_corpus(data: reference.Dataset, corpus: hostile.Corpus) -> reference.Dataset:
    """The reference dataset plus the corpus's truth: its counted events, duplicates and
    rejections."""
    for record in corpus.all():
        if record.reason is not None:
            data.rejected[(record.kind, record.reason)] += 1
        elif record.truth is None:
            data.duplicates[record.kind] += 1
        elif isinstance(record.truth, reference.Order):
            data.orders.append(record.truth)
        else:
            data.contacts.append(record.truth)
    return data


def folded(data: reference.Dataset, causes: set[str]) -> reference.Dataset:
    """The dataset with each cause as exported: itself when registered, else `other`."""
    contacts = [dataclasses.replace(c, cause=c.cause if c.cause in causes else "other")
                for c in data.contacts]
    return dataclasses.replace(data, contacts=contacts)


def label_values(samples: dict, label: str, name: str | None = None, **where: str) -> set[str]:
    """The values of `label` among the samples (of metric `name`) whose labels match `where`."""
    found = set()
    for sample_name, labels in samples:
        labels = dict(labels)
        if (label in labels and name in (None, sample_name)
                and all(labels.get(k) == v for k, v in where.items())):
            found.add(labels[label])
    return found


def exposition(child: Child) -> str:
    with urllib.request.urlopen(child.url("/metrics"), timeout=10) as response:
        return response.read().decode()


def assert_labels(workers: list[Child], exporter: Child) -> None:
    """Bounded label sets, and the injection strings read back exactly from the exposition
    by prometheus_client's parser; promtool (Prometheus's own parser) reads it too."""
    injected = {text.lower() for text in hostile.INJECTIONS} - {"other", "all"}
    causes_by_child = {}
    for child in [*workers, exporter]:
        text = exposition(child)
        samples = parse_metrics(text)
        causes_by_child[child.name] = causes = label_values(samples, "cause") - {"all"}
        assert len(causes) <= MAX_CAUSES, (child.name, len(causes))
        for dim in hostile.DIMENSIONS:
            values = label_values(samples, "value", dimension=dim)
            assert len(values) <= MAX_VALUES, (child.name, dim, len(values))
        lint = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                              capture_output=True, check=False)
        assert b"error while linting" not in lint.stdout + lint.stderr, lint
    # Each worker counts the contacts of its own partitions; the exporter sees them all.
    assert injected <= set().union(*(causes_by_child[w.name] for w in workers))
    assert injected <= causes_by_child[exporter.name]
    carriers = label_values(summed(workers), "value", dimension=hostile.INJECTION_DIMENSION)
    assert set(hostile.INJECTIONS) - {"other"} <= carriers


def assert_private(children: list[Child], bind_address: str) -> None:
    """No customer id in any log line or label; endpoints on the bind address only; and no
    crashed service logged."""
    for child in children:
        log = child.log_path.read_text(errors="replace")
        assert hostile.CUSTOMER not in log and hostile.CUSTOMER not in exposition(child)
        assert "CRITICAL" not in log and "Crashed reason" not in log, child.log_tail()
        assert_only_on(psutil.Process(child.process.pid), bind_address, child.port)


def assert_only_on(process: psutil.Process, host: str, port: int) -> None:
    """The process listens on `host` only, `port` among them, and nowhere else answers."""
    listening = [c.laddr for c in process.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == host for addr in listening), listening
    assert port in {addr.port for addr in listening}
    socket.create_connection((host, port), timeout=5).close()
    with pytest.raises(ConnectionRefusedError):  # another loopback address of this host
        socket.create_connection(("127.0.0.2", port), timeout=5).close()


def check_dlq(settings: Settings, expected: dict[Origin, hostile.Hostile]) -> None:
    """Each bad record once or more in the DLQ, by origin, with its reason and bytes."""
    found: dict[Origin, tuple] = {}
    for record in consume_all(settings, settings.topic_dlq, len(expected), timeout=120):
        headers = {k: v.decode() for k, v in record.headers}
        origin = (headers["cpo-source-topic"], int(headers["cpo-source-partition"]),
                  int(headers["cpo-source-offset"]))
        found[origin] = (headers["cpo-error-reason"], record.key, record.value,
                         headers.get("cpo-original-size"),
                         [(k, v) for k, v in record.headers if k != "cpo-original-size"])
    assert set(found) == set(expected), (len(set(found) - set(expected)),
                                         len(set(expected) - set(found)))
    for origin, bad in expected.items():
        reason, key, value, original_size, headers = found[origin]
        assert reason == bad.reason, (origin, bad.value[:200])
        if record_bytes((bad.key, bad.value, headers)) <= DLQ_MAX_MESSAGE_BYTES:
            assert (key, value, original_size) == (bad.key, bad.value, None), origin
        else:  # cut to fit the DLQ topic's limit (cpo topics create made it), and no more
            assert bad.value.startswith(value)  # without the key, the value cut if need be
            assert value == bad.value or len(value) > DLQ_MAX_MESSAGE_BYTES - 1024
            assert record_bytes((key, value, headers)) <= DLQ_MAX_MESSAGE_BYTES
            assert original_size == str(len(bad.value))


def test_hostile_records_are_all_accounted_for(settings: Settings, tmp_path: Path) -> None:
    now = time.time()
    data = reference.generate(now)
    corpus = hostile.generate(now)
    assert reference.window_edges_are_clear(data, now, horizon=400)
    rng = random.Random(3)
    registrations = corpus.registrations
    records = (interleave(as_hostile(data.orders_phase), corpus.orders, rng)
               + interleave(as_hostile(data.contacts_phase), corpus.contacts, rng)
               + as_hostile(data.late_orders_phase))
    data = with_corpus(data, corpus)
    assert sum(r.reason is not None for r in records) == sum(data.rejected.values())
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)

    with Pipeline(settings, tmp_path) as pipeline:
        workers = [pipeline.worker(i, free_port()) for i in range(2)]
        exporter = pipeline.exporter(refresh=0.5)
        for child in [*workers, exporter]:
            child.wait_ready()

        # The injection strings first, so they are registered as labels and not folded.
        origins = produce_tracked(settings, registrations)
        wait_for(lambda: count_identities(client, "c"), len(registrations) // 2, 120,
                   "the injection records counted")
        origins += produce_tracked(settings, records)
        records = registrations + records

        wait_drained(client, data, DRAIN_TIMEOUT)
        for child in [*workers, exporter]:
            assert child.alive, f"{child.name} exited:\n{child.log_tail()}"
            child.wait_ready()
        time.sleep(1.5)  # one more exporter refresh after the last write

        # Counts: the registries decided which causes and values keep their own label.
        counters = summed(workers)
        exported = exported_windows(exporter)
        check_time = time.time()
        causes = label_values(counters, "cause", "cpo_contacts_total") - {"other"}
        values = {dim: label_values(counters, "value", "cpo_orders_by_attribute_total",
                                    dimension=dim) - {"other"}
                  for dim in hostile.DIMENSIONS}
        truth = folded(data, causes)
        expected = reference.compute(truth, check_time, values,
                                     (settings.topic_orders, settings.topic_contacts))
        names = {name for name, _ in expected.totals}
        actual = {k: v for k, v in counters.items() if k in expected.totals or k[0] in names}
        assert actual == {k: float(v) for k, v in expected.totals.items()}
        assert exported == expected.windows

        assert len(causes) <= MAX_CAUSES - 1
        assert all(len(v) <= MAX_VALUES - 1 for v in values.values())
        assert_labels(workers, exporter)
        assert_private([*workers, exporter], settings.bind_address)

    check_dlq(settings, {origin: r for origin, r in zip(origins, records) if r.reason})
    check_outputs(settings, truth, expected, exactly_once=False)
