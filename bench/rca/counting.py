"""The pipeline's counting semantics, applied in memory to generated events.

`Tally` does what the worker's Redis script does for one stream of events, without Kafka or
Redis: identities (an order or contact counted once, the first order event's attributes win,
though a duplicate's values take registry slots as they do in the script),
the join of a contact to its order, the bounded value registry (the first CPO_MAX_VALUES - 1
values of a dimension get their name, the rest fold into `other`), and the counts of every
event-time window: orders, contacts per cause, joined contacts per attribute value and per pair
of values. It fills the same `WindowCounts` and `PairCounts` the exporter reads from Redis, so
the evaluation builds its snapshots with the exporter's own code (streams/rca_inputs.py).

What it leaves out, and why that is fair here: the join grace (a generated contact always
follows its order, so it never waits), the cause registry bound (11 simulated causes < 64), the
bucket quantisation of window edges (each generated stream is cut at exact window bounds).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from streams.state import OTHER
from streams.windows import PairCounts, WindowCounts


class Tally:
    """Counts streams of events into windows of `window_seconds` starting at given times."""

    def __init__(self, dimensions: tuple[str, ...], max_values: int) -> None:
        self.dimensions = dimensions
        self.max_values = max_values
        self.registry: dict[str, set[str]] = {d: set() for d in dimensions}

    def copy(self) -> Tally:
        """The same registry, for a stream that follows the ones counted so far."""
        other = Tally(self.dimensions, self.max_values)
        other.registry = {d: set(values) for d, values in self.registry.items()}
        return other

    def _label(self, dimension: str, value: str) -> str:
        known = self.registry[dimension]
        if value in known or value == OTHER:
            return value
        if len(known) < self.max_values - 1:
            known.add(value)
            return value
        return OTHER

    def count(self, events: Iterable[tuple[str, dict | bytes]], start: float,
              window_seconds: float, windows: int) -> list[tuple[WindowCounts, PairCounts]]:
        """Counts of `windows` back-to-back windows from `start`; events outside are ignored
        (but their orders can still be joined to)."""
        result = [(WindowCounts(), PairCounts()) for _ in range(windows)]
        orders: dict[str, tuple[tuple[str, str], ...]] = {}
        contacts: set[str] = set()
        for topic, event in events:
            if isinstance(event, bytes):  # malformed: the pipeline rejects it
                continue
            t = datetime.fromisoformat(event["occurred_at"]).timestamp()
            index = int((t - start) // window_seconds)
            inside = 0 <= index < windows
            if topic == "orders":
                # As in the script, values get their registry slot before the identity check.
                attributes = event.get("attributes", {})
                items = tuple((d, self._label(d, attributes[d]))
                              for d in self.dimensions if d in attributes)
                if event["order_id"] in orders:
                    continue
                orders[event["order_id"]] = items
                if inside:
                    counts, pairs = result[index]
                    counts.orders += 1
                    for item in items:
                        counts.orders_by_value[item] += 1
                    for a in range(len(items)):
                        for b in range(a + 1, len(items)):
                            pairs.orders[(*items[a], *items[b])] += 1
            else:
                if event["contact_id"] in contacts:
                    continue
                contacts.add(event["contact_id"])
                if not inside:
                    continue
                counts, pairs = result[index]
                cause = event["cause"].lower()
                counts.contacts[cause] += 1
                items = orders.get(event.get("order_id") or "")
                if items is None:
                    reason = "no_order_id" if not event.get("order_id") else "order_not_found"
                    counts.unattributed[(cause, reason)] += 1
                    continue
                for d, v in items:
                    counts.attributed[(cause, d, v)] += 1
                for a in range(len(items)):
                    for b in range(a + 1, len(items)):
                        pairs.attributed[(cause, *items[a], *items[b])] += 1
        return result
