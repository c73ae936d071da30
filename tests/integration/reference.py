"""A generated dataset and an independent computation of every count the pipeline must produce.

The dataset covers what the contract's semantics turn on: duplicates (identical and with other
attributes, first wins), contacts whose order arrives later (within the join grace), contacts
for unknown orders, contacts without order_id, untracked attributes, values beyond
CPO_MAX_VALUES, bad records, and event times inside and outside each window. The reference
works on the generated Python objects with plain loops; it shares nothing with the pipeline but
the window bounds, which are part of the documented semantics.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from streams.buckets import window_bounds
from streams.settings import parse_duration

CAUSES = ["where_is_my_order", "late_delivery", "damaged_item", "wrong_item", "missing_item",
          "return_refund", "cancel_order", "payment_issue", "other"]
CAUSE_WEIGHTS = [30, 20, 10, 8, 8, 10, 6, 4, 4]
DIMENSIONS = ("carrier", "warehouse", "region")
VALUES = {
    "carrier": ["acme", "bolt", "swift", "parcelco"],
    "warehouse": [f"wh{i}" for i in range(8)],  # more than MAX_VALUES - 1: some fold into other
    "region": ["eu", "us", "apac"],
}
MAX_VALUES = 5
WINDOWS = "15m,2h,1d"
ALL = "all"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Order:
    order_id: str
    t: float
    attributes: dict[str, str]


@dataclass
class Contact:
    contact_id: str
    t: float
    cause: str
    order_id: str | None


@dataclass
class Dataset:
    """Records per phase as (topic kind, key, value bytes), and the truth behind them."""

    orders_phase: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    contacts_phase: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    late_orders_phase: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)            # counted (first of each id)
    contacts: list[Contact] = field(default_factory=list)        # counted (first of each id)
    late_order_ids: set[str] = field(default_factory=set)
    duplicates: Counter = field(default_factory=Counter)          # kind -> duplicate records
    rejected: Counter = field(default_factory=Counter)            # (kind, reason) -> records


def _age(rng: random.Random) -> float:
    """Seconds before now: well inside or well outside each window of WINDOWS."""
    return rng.choices(
        [rng.uniform(30, 300), rng.uniform(2400, 4200), rng.uniform(3 * 3600, 10 * 3600),
         rng.uniform(2 * 86400, 4 * 86400)],
        weights=[70, 10, 10, 10])[0]


def _order_value(order: Order, extra: dict | None = None) -> bytes:
    doc = {"order_id": order.order_id, "occurred_at": iso(order.t),
           "attributes": {**order.attributes, "payment_method": "card", "gift": "no"},
           "customer_id": "cust-" + order.order_id, **(extra or {})}
    return json.dumps(doc).encode()


def _contact_value(contact: Contact) -> bytes:
    doc = {"contact_id": contact.contact_id, "occurred_at": iso(contact.t),
           "cause": contact.cause.upper() if len(contact.contact_id) % 3 == 0 else contact.cause,
           "order_id": contact.order_id, "channel": "chat"}
    return json.dumps(doc).encode()


BAD_ORDERS = [
    (b"{not json", "invalid_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'{"occurred_at": "2026-01-01T00:00:00Z"}', "missing_field:order_id"),
    (b'{"order_id": 42, "occurred_at": "2026-01-01T00:00:00Z"}', "wrong_type:order_id"),
    (b'{"order_id": "x-bad-ts", "occurred_at": "yesterday"}', "bad_timestamp"),
    (b'{"order_id": "x-nan", "occurred_at": "2026-01-01T00:00:00Z", "n": NaN}', "invalid_json"),
]
BAD_CONTACTS = [
    (b"", "invalid_json"),
    (b'{"contact_id": "k-bad", "occurred_at": "2026-01-01T00:00:00Z"}', "missing_field:cause"),
    (b'{"contact_id": "k-bad2", "occurred_at": "2026-01-01T00:00:00Z", "cause": 7}',
     "wrong_type:cause"),
    (b'{"contact_id": "k-bad3", "occurred_at": "2026-01-01T00:00:00", "cause": "x"}',
     "bad_timestamp"),
]


def generate(now: float, seed: int = 7, n_orders: int = 2500) -> Dataset:
    rng = random.Random(seed)
    data = Dataset()
    by_id: dict[str, Order] = {}
    for n in range(n_orders):
        attributes = {dim: rng.choice(VALUES[dim]) for dim in DIMENSIONS}
        if rng.random() < 0.1:
            del attributes["region"]  # an order without a tracked dimension
        order = Order(f"o-{seed}-{n}", now - _age(rng), attributes)
        by_id[order.order_id] = order
        data.orders.append(order)
        key = order.order_id.encode()
        data.orders_phase.append(("orders", key, _order_value(order)))
        roll = rng.random()
        if roll < 0.05:  # producer retry: the same record again
            data.orders_phase.append(("orders", key, _order_value(order)))
            data.duplicates["orders"] += 1
        elif roll < 0.07:  # same order_id, other attributes: ignored, the first event wins
            other = Order(order.order_id, order.t, {d: rng.choice(VALUES[d]) for d in DIMENSIONS})
            data.orders_phase.append(("orders", key, _order_value(other, {"event_id": "v2"})))
            data.duplicates["orders"] += 1
    for value, reason in BAD_ORDERS * 5:
        data.orders_phase.insert(rng.randrange(len(data.orders_phase)), ("orders", None, value))
        data.rejected[("orders", reason)] += 1
    future = Order("o-future", now + 7200, {"carrier": "acme"})
    data.orders_phase.append(("orders", None, _order_value(future)))
    data.rejected[("orders", "future_timestamp")] += 1

    n_contact = 0

    def new_contact(t: float, order_id: str | None) -> Contact:
        nonlocal n_contact
        n_contact += 1
        cause = rng.choices(CAUSES, weights=CAUSE_WEIGHTS)[0]
        return Contact(f"k-{seed}-{n_contact}", min(t, now - 5), cause, order_id)

    for order in list(data.orders):
        for _ in range(rng.choices([0, 1, 2], weights=[65, 30, 5])[0]):
            contact = new_contact(order.t + rng.uniform(0, 200), order.order_id)
            data.contacts.append(contact)
            data.contacts_phase.append(("contacts", None, _contact_value(contact)))
            if rng.random() < 0.05:
                data.contacts_phase.append(("contacts", None, _contact_value(contact)))
                data.duplicates["contacts"] += 1
    for _ in range(150):  # no order_id
        contact = new_contact(now - rng.uniform(30, 300), None)
        data.contacts.append(contact)
        data.contacts_phase.append(("contacts", None, _contact_value(contact)))
    for n in range(100):  # an order that never arrives
        contact = new_contact(now - rng.uniform(30, 300), f"o-unknown-{n}")
        data.contacts.append(contact)
        data.contacts_phase.append(("contacts", None, _contact_value(contact)))
    for n in range(150):  # the contact arrives first, its order later (within the grace)
        late = Order(f"o-late-{seed}-{n}", now - rng.uniform(60, 300),
                     {dim: rng.choice(VALUES[dim]) for dim in DIMENSIONS})
        data.orders.append(late)
        data.late_order_ids.add(late.order_id)
        data.late_orders_phase.append(("orders", late.order_id.encode(), _order_value(late)))
        contact = new_contact(late.t + rng.uniform(0, 50), late.order_id)
        data.contacts.append(contact)
        data.contacts_phase.append(("contacts", None, _contact_value(contact)))
    for value, reason in BAD_CONTACTS * 5:
        data.contacts_phase.insert(rng.randrange(len(data.contacts_phase)),
                                   ("contacts", None, value))
        data.rejected[("contacts", reason)] += 1
    rng.shuffle(data.contacts_phase)
    return data


@dataclass
class Expected:
    """What the pipeline must report, given which values the registry folded."""

    totals: Counter  # worker counter samples: (name, labels) -> value
    windows: dict[tuple[str, tuple], float]  # exporter samples
    outputs: dict[str, dict]  # contact_id -> expected fields of its output record


def tracked(order: Order) -> dict[str, str]:
    """The order's attributes that count: an empty value counts as the attribute being absent."""
    return {dim: value for dim, value in order.attributes.items() if value}


def fold(value: str, dim: str, registered: dict[str, set[str]]) -> str:
    return value if value in registered.get(dim, set()) else "other"


def compute(data: Dataset, now: float, registered: dict[str, set[str]],
            topics: tuple[str, str]) -> Expected:
    orders = {o.order_id: o for o in data.orders}
    known = set(orders)
    totals: Counter = Counter()
    outputs: dict[str, dict] = {}
    contacted: set[str] = set()
    for order in data.orders:
        totals[("cpo_orders_total", ())] += 1
        for dim, value in tracked(order).items():
            labels = (("dimension", dim), ("value", fold(value, dim, registered)))
            totals[("cpo_orders_by_attribute_total", labels)] += 1
    for contact in data.contacts:
        cause = contact.cause
        totals[("cpo_contacts_total", (("cause", cause),))] += 1
        if contact.order_id is None or contact.order_id not in known:
            reason = "no_order_id" if contact.order_id is None else "order_not_found"
            totals[("cpo_contacts_unattributed_total",
                    (("cause", cause), ("reason", reason)))] += 1
            outputs[contact.contact_id] = {"cause": cause, "attributed": False, "reason": reason,
                                           "occurred_at": iso(contact.t)}
            continue
        order = orders[contact.order_id]
        contacted.add(order.order_id)
        attrs = {dim: fold(v, dim, registered) for dim, v in tracked(order).items()}
        for dim, value in attrs.items():
            totals[("cpo_contacts_attributed_total",
                    (("cause", cause), ("dimension", dim), ("value", value)))] += 1
        totals[("cpo_contact_delay_seconds_count", (("cause", cause),))] += 1
        outputs[contact.contact_id] = {"cause": cause, "attributed": True, "reason": None,
                                       "order_id": order.order_id, "attributes": attrs,
                                       # order records keep whole seconds (lua/state.lua)
                                       "occurred_at": iso(contact.t),
                                       "order_occurred_at": iso(math.floor(order.t))}
    totals[("cpo_orders_contacted_total", ())] = len(contacted)
    for kind, n in data.duplicates.items():
        topic = topics[0] if kind == "orders" else topics[1]
        totals[("cpo_records_duplicate_total", (("topic", topic),))] = n
    for (kind, reason), n in data.rejected.items():
        topic = topics[0] if kind == "orders" else topics[1]
        totals[("cpo_records_rejected_total", (("reason", reason), ("topic", topic)))] = n
    return Expected(totals, window_samples(data, now, registered), outputs)


def window_samples(data: Dataset, now: float, registered: dict[str, set[str]]) -> dict:
    orders = {o.order_id: o for o in data.orders}
    samples: dict[tuple[str, tuple], float] = {}
    for window in WINDOWS.split(","):
        start, end = window_bounds(now, parse_duration(window))
        n_orders = 0
        orders_by: Counter = Counter()
        contacts: Counter = Counter()
        joined: Counter = Counter()  # (cause, dim, value)
        for order in data.orders:
            if start <= order.t < end:
                n_orders += 1
                for dim, value in tracked(order).items():
                    orders_by[(dim, fold(value, dim, registered))] += 1
        for contact in data.contacts:
            if not start <= contact.t < end:
                continue
            contacts[contact.cause] += 1
            order = orders.get(contact.order_id or "")
            if order is not None:
                for dim, value in tracked(order).items():
                    joined[(contact.cause, dim, fold(value, dim, registered))] += 1
        w = ("window", window)
        samples[("cpo_window_orders", (w,))] = n_orders
        samples[("cpo_window_contacts", (("cause", ALL), w))] = sum(contacts.values())
        if n_orders:
            samples[("cpo_defect_rate", (("cause", ALL), w))] = sum(contacts.values()) / n_orders
        for cause, n in contacts.items():
            samples[("cpo_window_contacts", (("cause", cause), w))] = n
            if n_orders:
                samples[("cpo_defect_rate", (("cause", cause), w))] = n / n_orders
        all_causes: Counter = Counter()
        for (cause, dim, value), n in joined.items():
            all_causes[(dim, value)] += n
        for (dim, value), n in orders_by.items():
            samples[("cpo_window_orders_by_attribute",
                     (("dimension", dim), ("value", value), w))] = n
            labels = (("cause", ALL), ("dimension", dim), ("value", value), w)
            samples[("cpo_window_contacts_by_attribute", labels)] = all_causes[(dim, value)]
            samples[("cpo_defect_rate_by_attribute", labels)] = all_causes[(dim, value)] / n
        for (cause, dim, value), n in joined.items():
            labels = (("cause", cause), ("dimension", dim), ("value", value), w)
            samples[("cpo_window_contacts_by_attribute", labels)] = n
            if orders_by[(dim, value)]:
                samples[("cpo_defect_rate_by_attribute", labels)] = n / orders_by[(dim, value)]
    return samples


def pair_counts(data: Dataset, registered: dict[str, set[str]],
                coarse_seconds: int) -> Counter:
    """What the root-cause pair buckets must hold: per coarse bucket start, each order counted
    once per pair of its tracked values ("orders"), each joined contact once per pair of its
    order's values, under its cause. A pair is a frozenset of two (dimension, value)."""
    orders = {o.order_id: o for o in data.orders}
    counts: Counter = Counter()

    def pairs(order: Order) -> list[frozenset]:
        values = sorted((dim, fold(v, dim, registered)) for dim, v in tracked(order).items())
        return [frozenset(pair) for pair in itertools.combinations(values, 2)]

    for order in data.orders:
        start = math.floor(order.t / coarse_seconds) * coarse_seconds
        for pair in pairs(order):
            counts[(start, "orders", pair)] += 1
    for contact in data.contacts:
        order = orders.get(contact.order_id or "")
        if order is not None:
            start = math.floor(contact.t / coarse_seconds) * coarse_seconds
            for pair in pairs(order):
                counts[(start, contact.cause, pair)] += 1
    return counts


def window_edges_are_clear(data: Dataset, now: float, horizon: float) -> bool:
    """True when every event is in the same windows at `now` and at `now + horizon`, so the
    exporter's clock, at any moment of the test, sees the same events as the reference."""
    times = [o.t for o in data.orders] + [c.t for c in data.contacts]
    for window in WINDOWS.split(","):
        seconds = parse_duration(window)
        early = window_bounds(now, seconds)
        late = window_bounds(now + horizon, seconds)
        for t in times:
            if (early[0] <= t < early[1]) != (late[0] <= t < late[1]):
                return False
    return True


def registered_values(samples: dict) -> dict[str, set[str]]:
    """Values the pipeline's registry kept (everything else folded into `other`)."""
    registered: dict[str, set[str]] = defaultdict(set)
    for (name, labels) in samples:
        if name == "cpo_window_orders_by_attribute":
            label = dict(labels)
            if label["value"] != "other":
                registered[label["dimension"]].add(label["value"])
    return registered
