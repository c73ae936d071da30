"""Event-time window counts, summed from the Redis buckets every worker writes.

`WindowCounts` is the named view of one window: orders, contacts per cause, and the joined
counts per attribute value. The exporter turns it into rates, the root-cause analysis into
snapshots. Reading is one pipelined round trip for all buckets of all windows asked for.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from streams.buckets import window_keys
from streams.state import Labels, read_labels

ALL = "all"


@dataclass
class WindowCounts:
    orders: int = 0
    orders_contacted: int = 0
    orders_by_value: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    contacts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # (cause, dimension, value) -> contacts of the cause joined to orders with that value
    attributed: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    unattributed: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    def add_field(self, name: str, n: int, labels: Labels) -> None:
        kind, _, rest = name.partition(":")
        if kind == "o":
            if rest:
                dim, value = (int(x) for x in rest.split(":"))
                self.orders_by_value[(labels.dimensions[dim], labels.value(dim, value))] += n
            else:
                self.orders += n
        elif kind == "c":
            self.contacts[labels.cause(int(rest))] += n
        elif kind == "a":
            cause, dim, value = (int(x) for x in rest.split(":"))
            key = (labels.cause(cause), labels.dimensions[dim], labels.value(dim, value))
            self.attributed[key] += n
        elif kind == "u":
            cause, reason = rest.split(":")
            self.unattributed[(labels.cause(int(cause)), reason)] += n
        elif kind == "oc":
            self.orders_contacted += n

    def total_contacts(self) -> int:
        return sum(self.contacts.values())

    def attributed_all_causes(self) -> dict[tuple[str, str], int]:
        totals: dict[tuple[str, str], int] = defaultdict(int)
        for (_, dim, value), n in self.attributed.items():
            totals[(dim, value)] += n
        return totals


async def read_windows(
    client: aioredis.Redis, now: float, windows: dict[str, float],
    resolution: int | None = None,
) -> dict[str, WindowCounts]:
    """Counts of each named window ending at `now`, from one pipelined read of its buckets."""
    keys_by_window = {name: window_keys(now, seconds, resolution)
                      for name, seconds in windows.items()}
    unique_keys = sorted({key for keys in keys_by_window.values() for key in keys})
    async with client.pipeline(transaction=False) as pipe:
        for key in unique_keys:
            pipe.hgetall(key)
        replies = await pipe.execute()
    buckets = dict(zip(unique_keys, replies))
    labels = await read_labels(client)
    result = {}
    for name, keys in keys_by_window.items():
        counts = WindowCounts()
        for key in keys:
            for field_name, n in buckets[key].items():
                counts.add_field(field_name, int(n), labels)
        result[name] = counts
    return result
