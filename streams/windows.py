"""Event-time window counts, summed from the Redis buckets every worker writes.

`WindowCounts` is the named view of one window: orders, contacts per cause, and the joined
counts per attribute value; `PairCounts` the same per pair of values (coarse buckets only).
The exporter turns them into rates, the root-cause analysis into snapshots. Reading is one
snapshot (MULTI/EXEC) of all buckets asked for and the label registries; fields are summed over the buckets first and
each distinct field is parsed once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from streams.buckets import COARSE_SECONDS, pair_bucket_key, window_bounds, window_keys
from streams.state import Labels, read_snapshot

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
    # counts of fields whose ids the registries read with them do not name: left out, never
    # counted under another name (a consistent read has none)
    unnamed: int = 0

    def add_field(self, name: str, n: int, labels: Labels) -> None:
        kind, _, rest = name.partition(":")
        if kind == "o":
            if rest:
                pair = labels.pairs.get(rest)
                if pair is None:
                    self.unnamed += n
                else:
                    self.orders_by_value[pair] += n
            else:
                self.orders += n
        elif kind in ("c", "a", "u"):
            cause_id, _, detail = rest.partition(":")
            cause = labels.cause_named(int(cause_id))
            pair = labels.pairs.get(detail) if kind == "a" else None
            if cause is None or (kind == "a" and pair is None):
                self.unnamed += n
            elif kind == "c":
                self.contacts[cause] += n
            elif kind == "a":
                self.attributed[(cause, *pair)] += n  # type: ignore[misc]
            else:
                self.unattributed[(cause, detail)] += n
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
    unnamed: int = 0  # as WindowCounts.unnamed

    def add_field(self, name: str, n: int, labels: Labels) -> None:
        kind, _, rest = name.partition(":")
        ids = rest.split(":")
        cause = labels.cause_named(int(ids.pop(0))) if kind == "q" else None
        pair = _pair(ids, labels)
        if pair is None or (kind == "q" and cause is None):
            self.unnamed += n
        elif kind == "p":
            self.orders[pair] += n
        elif kind == "q":
            self.attributed[(cause, *pair)] += n  # type: ignore[arg-type]


def _pair(ids: list[str], labels: Labels) -> PairKey | None:
    """Two "d:v" ids as their names, in registry id order; None if either has no name."""
    first, second = sorted(((int(ids[0]), int(ids[1])), (int(ids[2]), int(ids[3]))))
    a, b = labels.pairs.get(f"{first[0]}:{first[1]}"), labels.pairs.get(f"{second[0]}:{second[1]}")
    return None if a is None or b is None else (*a, *b)


def pair_keys(now: float, window_seconds: float) -> list[str]:
    """Pair bucket keys of the window ending at `now`: the same starts as its coarse buckets."""
    start, end = window_bounds(now, window_seconds, COARSE_SECONDS)
    return [pair_bucket_key(s) for s in range(start, end, COARSE_SECONDS)]


def _summed(hashes: dict[str, dict[str, str]], keys: list[str]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for key in keys:
        for name, n in hashes[key].items():
            totals[name] = totals.get(name, 0) + int(n)
    return totals


def window_counts(hashes: dict[str, dict[str, str]], keys: list[str],
                  labels: Labels) -> WindowCounts:
    """The counts of the buckets `keys` (read with `read_snapshot`)."""
    counts = WindowCounts()
    for name, n in _summed(hashes, keys).items():
        counts.add_field(name, n, labels)
    return counts


def pair_counts(hashes: dict[str, dict[str, str]], keys: list[str], labels: Labels) -> PairCounts:
    """The pair counts of the pair buckets `keys` (read with `read_snapshot`)."""
    counts = PairCounts()
    for name, n in _summed(hashes, keys).items():
        counts.add_field(name, n, labels)
    return counts


async def read_windows(
    client: aioredis.Redis, now: float, windows: dict[str, float],
    resolution: int | None = None,
) -> dict[str, WindowCounts]:
    """Counts of each named window ending at `now`, from one snapshot of its buckets."""
    keys_by_window = {name: window_keys(now, seconds, resolution)
                      for name, seconds in windows.items()}
    labels, hashes = await read_snapshot(
        client, [key for keys in keys_by_window.values() for key in keys])
    return {name: window_counts(hashes, keys, labels) for name, keys in keys_by_window.items()}
