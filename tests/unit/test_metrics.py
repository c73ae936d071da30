"""Worker metrics: bulk histogram observation equals per-value observation, and counting a
Redis result increments the contract's counters with the registry's label values."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streams.metrics import DELAY_BUCKETS, WorkerMetrics, observe_many
from streams.processes import parse_metrics
from streams.state import Attributed, BatchResult, Labels, Unattributed


def samples(registry: CollectorRegistry) -> dict:
    """Every sample but `_created` (the moment each metric was made)."""
    return {k: v for k, v in parse_metrics(generate_latest(registry).decode()).items()
            if not k[0].endswith("_created")}


def test_observe_many_equals_observe_for_every_value() -> None:
    rng = random.Random(3)
    values = [rng.choice([0, 60, 61, 299.9, 1e9]) if rng.random() < 0.2
              else rng.uniform(0, 40 * 86400) for _ in range(5000)]
    one, many = CollectorRegistry(), CollectorRegistry()
    single = Histogram("h", "h", buckets=DELAY_BUCKETS, registry=one)
    bulk = Histogram("h", "h", buckets=DELAY_BUCKETS, registry=many)
    for value in values:
        single.observe(value)
    observe_many(bulk, values)
    assert samples(one) == samples(many)


def test_count_turns_fields_into_labelled_counters() -> None:
    metrics = WorkerMetrics()
    labels = Labels(causes={1: "late_delivery"}, dimensions={1: "carrier"},
                    values={(1, 1): "acme"})
    result = BatchResult(
        totals={"o": 3, "o:1:1": 2, "o:1:0": 1, "c:1": 2, "c:0": 1, "a:1:1:1": 1, "oc": 1,
                "do": 4, "dc": 5, "u:0:n": 1},
        attributed=[Attributed("k1", 1, "o1", 100, 160.0, "1:1")],
        unattributed=[Unattributed("k2", 0, "no_order_id", 50.0)],
    )
    for _ in range(2):  # the second pass goes through the cached children
        metrics.count(result, labels, ("orders", "contacts"))
    got = {k: v for k, v in samples(metrics.registry).items() if k[0].startswith("cpo_")
           and not k[0].endswith(("_bucket", "_sum")) and v}
    assert got == {
        ("cpo_orders_total", ()): 6,
        ("cpo_orders_by_attribute_total", (("dimension", "carrier"), ("value", "acme"))): 4,
        ("cpo_orders_by_attribute_total", (("dimension", "carrier"), ("value", "other"))): 2,
        ("cpo_contacts_total", (("cause", "late_delivery"),)): 4,
        ("cpo_contacts_total", (("cause", "other"),)): 2,
        ("cpo_contacts_attributed_total",
         (("cause", "late_delivery"), ("dimension", "carrier"), ("value", "acme"))): 2,
        ("cpo_contacts_unattributed_total", (("cause", "other"), ("reason", "no_order_id"))): 2,
        ("cpo_orders_contacted_total", ()): 2,
        ("cpo_records_duplicate_total", (("topic", "orders"),)): 8,
        ("cpo_records_duplicate_total", (("topic", "contacts"),)): 10,
        ("cpo_contact_delay_seconds_count", (("cause", "late_delivery"),)): 2,
    }


def test_counters_follow_new_labels_after_a_registry_reset() -> None:
    """After Redis lost its registries, id 1 of carrier names another value: a counter child
    cached under the old labels must not take the new counts (issue 21 item 4)."""
    metrics = WorkerMetrics()
    before = Labels(causes={1: "late"}, dimensions={1: "carrier"}, values={(1, 1): "acme"})
    after = Labels(causes={1: "wismo"}, dimensions={1: "carrier"}, values={(1, 1): "bolt"})
    metrics.count(BatchResult(totals={"o:1:1": 2, "c:1": 1}), before, ("orders", "contacts"))
    metrics.count(BatchResult(totals={"o:1:1": 3, "c:1": 4}), after, ("orders", "contacts"))
    got = {k: v for k, v in samples(metrics.registry).items()
           if k[0] in ("cpo_orders_by_attribute_total", "cpo_contacts_total")}
    assert got == {
        ("cpo_orders_by_attribute_total", (("dimension", "carrier"), ("value", "acme"))): 2,
        ("cpo_orders_by_attribute_total", (("dimension", "carrier"), ("value", "bolt"))): 3,
        ("cpo_contacts_total", (("cause", "late"),)): 1,
        ("cpo_contacts_total", (("cause", "wismo"),)): 4,
    }
