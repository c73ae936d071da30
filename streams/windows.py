"""Event-time window counts, summed from the Redis buckets every worker writes.

`WindowCounts` is the named view of one window: orders, contacts per cause, and the joined
counts per attribute value; `PairCounts` the same per pair of values (coarse buckets only).
The exporter turns them into rates, the root-cause analysis into snapshots. Reading is one
pipelined round trip for all buckets asked for; fields are summed over the buckets first and
each distinct field is parsed once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from streams.buckets import COARSE_SECONDS, pair_bucket_key, window_bounds, window_keys
from streams.state import Labels, read_labels

ALL = "all"

PairKey = tuple[str, str, str, str]
"""(dimension, value, dimension, value), the two dimensions in registry id order (the order of
CPO_DIMENSIONS when the registry was made), whatever order the order event listed them in."""


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


@dataclass
class PairCounts:
    """The pair buckets of one window: orders and joined contacts per pair of values."""

    orders: dict[PairKey, int] = field(default_factory=lambda: defaultdict(int))
    # (cause, dimension, value, dimension, value) -> contacts of the cause joined to such orders
    attributed: dict[tuple[str, str, str, str, str], int] = field(
        default_factory=lambda: defaultdict(int))

    def add_field(self, name: str, n: int, labels: Labels) -> None:
        kind, _, rest = name.partition(":")
        ids = [int(x) for x in rest.split(":")]
        if kind == "p":
            self.orders[_pair(ids, labels)] += n
        elif kind == "q":
            cause = labels.cause(ids[0])
            self.attributed[(cause, *_pair(ids[1:], labels))] += n


def _pair(ids: list[int], labels: Labels) -> PairKey:
    first, second = sorted(((ids[0], ids[1]), (ids[2], ids[3])))
    return (labels.dimensions[first[0]], labels.value(*first),
            labels.dimensions[second[0]], labels.value(*second))


def pair_keys(now: float, window_seconds: float) -> list[str]:
    """Pair bucket keys of the window ending at `now`: the same starts as its coarse buckets."""
    start, end = window_bounds(now, window_seconds, COARSE_SECONDS)
    return [pair_bucket_key(s) for s in range(start, end, COARSE_SECONDS)]


async def read_hashes(client: aioredis.Redis, keys: list[str]) -> dict[str, dict[str, str]]:
    """HGETALL of every key, in one pipelined round trip; a missing key reads as empty."""
    unique_keys = sorted(set(keys))
    async with client.pipeline(transaction=False) as pipe:
        for key in unique_keys:
            pipe.hgetall(key)
        replies = await pipe.execute()
    return dict(zip(unique_keys, replies))


def _summed(hashes: dict[str, dict[str, str]], keys: list[str]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for key in keys:
        for name, n in hashes[key].items():
            totals[name] = totals.get(name, 0) + int(n)
    return totals


def window_counts(hashes: dict[str, dict[str, str]], keys: list[str],
                  labels: Labels) -> WindowCounts:
    """The counts of the buckets `keys` (read with `read_hashes`)."""
    counts = WindowCounts()
    for name, n in _summed(hashes, keys).items():
        counts.add_field(name, n, labels)
    return counts


def pair_counts(hashes: dict[str, dict[str, str]], keys: list[str], labels: Labels) -> PairCounts:
    """The pair counts of the pair buckets `keys` (read with `read_hashes`)."""
    counts = PairCounts()
    for name, n in _summed(hashes, keys).items():
        counts.add_field(name, n, labels)
    return counts


async def read_windows(
    client: aioredis.Redis, now: float, windows: dict[str, float],
    resolution: int | None = None,
) -> dict[str, WindowCounts]:
    """Counts of each named window ending at `now`, from one pipelined read of its buckets."""
    keys_by_window = {name: window_keys(now, seconds, resolution)
                      for name, seconds in windows.items()}
    hashes = await read_hashes(client, [key for keys in keys_by_window.values() for key in keys])
    labels = await read_labels(client)
    return {name: window_counts(hashes, keys, labels) for name, keys in keys_by_window.items()}
