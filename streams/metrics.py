"""The worker's Prometheus metrics (contract section 5), in a registry of their own.

Counters are per process and additive across workers with `sum`. They are incremented from
what the Redis script reports it counted, so a redelivered record never increments them.
Label values come from the bounded registries (`other` folding); no customer id reaches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from streams.state import BatchResult, Labels

# Contact delay spans minutes to weeks; event lag spans milliseconds to days.
DELAY_BUCKETS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400,
                 4 * 86400, 7 * 86400, 14 * 86400, 30 * 86400)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.orders = Counter("cpo_orders", "Orders counted (once per order_id)",
                              registry=registry)
        self.orders_by_attribute = Counter(
            "cpo_orders_by_attribute", "Orders counted, by tracked attribute value",
            ["dimension", "value"], registry=registry)
        self.contacts = Counter("cpo_contacts", "Contacts counted (once per contact_id)",
                                ["cause"], registry=registry)
        self.contacts_attributed = Counter(
            "cpo_contacts_attributed", "Contacts joined to their order, by the order's attributes",
            ["cause", "dimension", "value"], registry=registry)
        self.contacts_unattributed = Counter(
            "cpo_contacts_unattributed", "Contacts not joined to an order",
            ["cause", "reason"], registry=registry)
        self.orders_contacted = Counter(
            "cpo_orders_contacted", "Orders at their first attributed contact", registry=registry)
        self.rejected = Counter("cpo_records_rejected", "Records sent to the DLQ",
                                ["topic", "reason"], registry=registry)
        self.duplicates = Counter("cpo_records_duplicate", "Records whose identity was counted",
                                  ["topic"], registry=registry)
        self.contact_delay = Histogram(
            "cpo_contact_delay_seconds", "Contact time minus order time",
            ["cause"], buckets=DELAY_BUCKETS, registry=registry)
        self.event_lag = Histogram(
            "cpo_event_lag_seconds", "Processing time minus occurred_at",
            ["topic"], buckets=LAG_BUCKETS, registry=registry)
        self.consumer_lag = Gauge("cpo_consumer_lag_records", "High watermark minus committed",
                                  ["topic", "partition"], registry=registry)
        self.redis_errors = Counter("cpo_redis_errors", "Failed Redis calls (retried)",
                                    registry=registry)
        self.kafka_errors = Counter("cpo_kafka_errors", "Failed Kafka produce or commit (retried)",
                                    registry=registry)
        self.batches = Counter("cpo_batches", "Batches processed", registry=registry)
        self.batch_seconds = Histogram(
            "cpo_batch_seconds", "Wall time to process one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry)
        self.pending_contacts = Gauge("cpo_pending_contacts",
                                      "Contacts waiting for their order (global)",
                                      registry=registry)
        self.held_contacts = Gauge("cpo_held_contacts",
                                   "Contacts this worker holds until its orders catch up "
                                   "(backfills only; streams/hold.py)", registry=registry)
        self.contacts_held = Counter("cpo_contacts_held",
                                     "Contacts held back until the orders caught up, each once "
                                     "(backfills only; streams/hold.py)", registry=registry)
        self.ready = Gauge("cpo_worker_ready", "1 when Kafka and Redis are reachable",
                           registry=registry)

        # Redis field name -> the counter child it increments, so a batch costs one dict lookup
        # per field; valid for the labels it was named with (`_named_by`): after Redis lost its
        # registries, the same ids name other values.
        self._children: dict[str, Any] = {}
        self._named_by: Labels | None = None

    def _child(self, name: str, labels: Labels, topics: tuple[str, str]) -> Any:
        if labels is not self._named_by:
            self._children, self._named_by = {}, labels
        child = self._children.get(name)
        if child is None:
            child = self._children[name] = self._resolve(name, labels, topics)
        return child

    def _resolve(self, name: str, labels: Labels, topics: tuple[str, str]) -> Any:
        kind, _, rest = name.partition(":")
        ids = [int(x) for x in rest.split(":")] if rest and kind in ("o", "c", "a") else []
        if kind == "o" and ids:
            return self.orders_by_attribute.labels(labels.dimensions[ids[0]],
                                                   labels.value(ids[0], ids[1]))
        if kind == "o":
            return self.orders
        if kind == "c":
            return self.contacts.labels(labels.cause(ids[0]))
        if kind == "a":
            return self.contacts_attributed.labels(
                labels.cause(ids[0]), labels.dimensions[ids[1]], labels.value(ids[1], ids[2]))
        if kind == "oc":
            return self.orders_contacted
        if kind in ("do", "dc"):
            return self.duplicates.labels(topics[0] if kind == "do" else topics[1])
        return None  # unattributed counts come with their reasons, below

    def count(self, result: BatchResult, labels: Labels, topics: tuple[str, str]) -> None:
        """Add what one Redis call counted. `topics` is (orders topic, contacts topic)."""
        for name, n in result.totals.items():
            child = self._child(name, labels, topics)
            if child is not None:
                child.inc(n)
        for contact in result.unattributed:
            self.contacts_unattributed.labels(labels.cause(contact.cause_id), contact.reason).inc()
        delays: dict[int, list[float]] = {}
        for contact in result.attributed:
            delays.setdefault(contact.cause_id, []).append(
                max(0.0, contact.contact_time - contact.order_time))
        for cause_id, values in delays.items():
            observe_many(self.contact_delay.labels(labels.cause(cause_id)), values)

    def observe_lag(self, topics: tuple[str, str], orders: Sequence, contacts: Sequence,
                    now: float) -> None:
        """cpo_event_lag_seconds for a batch's events, one histogram update per bucket."""
        for topic, events in zip(topics, (orders, contacts)):
            if events:
                times = np.fromiter((event.occurred_at for event in events), float, len(events))
                observe_many(self.event_lag.labels(topic), np.maximum(now - times, 0.0))


def observe_many(histogram: Any, values: Sequence[float] | np.ndarray) -> None:
    """`histogram.observe(v)` for every value, as one increment per bucket.

    prometheus_client has no bulk observe; per-value calls take a lock each and cost more than
    the rest of the per-record work. This writes the same bucket counts and sum through the
    child's value objects (checked against `observe` in tests/unit/test_metrics.py).
    """
    values = np.asarray(values, dtype=float)
    bounds = histogram._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for index in np.flatnonzero(counts).tolist():
        histogram._buckets[index].inc(int(counts[index]))
    histogram._sum.inc(sum(values.tolist()))  # in order, as `observe` adds them
