"""Root-cause inputs: a window and its baseline, read from Redis and turned into `Snapshot`s.

The window analysed is the exporter's own (the same buckets, so the same rates). Its baseline
(streams/rca.py, docs/root-cause.md) combines:
- recent: the RECENT_WINDOWS windows just before it, back to back, at the same resolution, as
  far back as the buckets' TTLs keep them (streams/buckets.py);
- a week ago: the same window 7 days earlier, from the coarse buckets (fine ones live about an
  hour), scaled to the window's length: a 30s window a week ago is the 5-minute bucket that
  holds it, times 1/10, and counts as 10 windows of evidence.
Windows without orders (before the pipeline ran) are left out. Pair counts live in coarse
buckets only, for 2 x the longest window + 1 h, never a week: a window read from at most
PAIR_MAX_BUCKETS coarse buckets is analysed with pairs, whose baseline is the recent windows
alone; other windows are analysed over single values.

A window's baseline counts are kept while its first bucket stays the same, for at most
`baseline_max_age` seconds, so a long window's baseline (a day and the four days before it) is
not read from Redis on every analysis, and counts that reach it late (contacts joined within
the grace, a worker catching up) are seen within that age.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import redis.asyncio as aioredis

from streams.buckets import (
    COARSE_SECONDS,
    FINE_SECONDS,
    bucket_ttls,
    pair_ttl,
    resolution_for,
    window_bounds,
    window_keys,
)
from streams.rca import Explanation, Segment, Snapshot, combine_baselines, explain
from streams.state import read_snapshot
from streams.windows import (
    ALL,
    PairCounts,
    WindowCounts,
    pair_counts,
    pair_keys,
    window_counts,
)

RECENT_WINDOWS = 4
WEEK_SECONDS = 7 * 86400
PAIR_MAX_BUCKETS = 24  # 2 h: a pair bucket holds ~10^4 fields; longer windows would read 10^6+


@dataclass(frozen=True)
class Plan:
    """Which buckets the analysis of one window reads."""

    seconds: float
    resolution: int
    span: int  # event time its buckets cover: the window rounded up to whole buckets
    pairs: bool
    recent: int  # previous windows in the baseline

    def keys(self, now: float, back: int = 0) -> list[str]:
        """Buckets of the window ending at `now`, or of the `back`-th window before it."""
        return window_keys(now - back * self.span, self.seconds, self.resolution)

    def pair_keys(self, now: float, back: int = 0) -> list[str]:
        return pair_keys(now - back * self.span, self.seconds) if self.pairs else []

    def week_ago_keys(self, now: float) -> list[str]:
        return window_keys(now - WEEK_SECONDS, self.seconds, COARSE_SECONDS)

    @property
    def week_ago_scale(self) -> float:
        """The window's span over the span of the coarse buckets read for it a week ago."""
        start, end = window_bounds(0, self.seconds, COARSE_SECONDS)
        return self.span / (end - start)


def plan(seconds: float, all_windows: list[float], pairs: bool) -> Plan:
    """The plan of a window of `seconds`, given every configured window (they set the TTLs)
    and whether pairs are counted (CPO_RCA_PAIRS)."""
    resolution = resolution_for(seconds)
    start, end = window_bounds(0, seconds, resolution)
    span = end - start
    fine_ttl, coarse_ttl = bucket_ttls(all_windows)
    ttls = [fine_ttl if resolution == FINE_SECONDS else coarse_ttl]
    with_pairs = (pairs and resolution == COARSE_SECONDS
                  and span <= PAIR_MAX_BUCKETS * COARSE_SECONDS)
    if with_pairs:
        ttls.append(pair_ttl(all_windows))
    # A bucket lives at least its TTL after its start, and the k-th window before the current
    # one starts less than (k + 1) spans before now.
    recent = min(RECENT_WINDOWS, *(ttl // span - 1 for ttl in ttls))
    return Plan(seconds, resolution, span, with_pairs, max(recent, 0))


@dataclass(frozen=True)
class Counts:
    """One window's counts: single values, and pairs when the plan reads them."""

    singles: WindowCounts
    pairs: PairCounts | None = None


@dataclass(frozen=True)
class Inputs:
    """What the analysis of one window needs, for every cause."""

    window: str
    current: Counts
    recent: tuple[Counts, ...]  # previous windows that have orders, latest first
    week_ago: WindowCounts | None  # None when that window had no orders
    week_ago_scale: float = 1.0
    baseline_read_at: float = 0.0  # wall clock of the read of `recent` and `week_ago`

    @property
    def pairs(self) -> bool:
        """Pairs are analysed when the window and a recent baseline window both have them."""
        return self.current.pairs is not None and any(c.pairs is not None for c in self.recent)


def snapshot(counts: WindowCounts, pairs: PairCounts | None, cause: str,
             scale: float = 1.0, *, segments: bool = True) -> Snapshot:
    """The `Snapshot` of one cause (or `all`) in one window, counts multiplied by `scale`
    (which then holds 1/scale windows of evidence); only the totals without `segments`."""
    if not segments:
        contacts = counts.total_contacts() if cause == ALL else counts.contacts.get(cause, 0)
        return Snapshot(contacts * scale, counts.orders * scale, windows=1 / scale)
    if cause == ALL:
        contacts = counts.total_contacts()
        joined = counts.attributed_all_causes()
    else:
        contacts = counts.contacts.get(cause, 0)
        joined = {(d, v): n for (c, d, v), n in counts.attributed.items() if c == cause}
    by_key: dict = {}
    for d, v in set(counts.orders_by_value) | set(joined):
        key = ((d, v),)
        by_key[key] = Segment(key, joined.get((d, v), 0) * scale,
                                counts.orders_by_value.get((d, v), 0) * scale)
    if pairs is not None:
        joined_pairs: dict = {}
        for (c, *pair), n in pairs.attributed.items():
            if cause in (ALL, c):
                joined_pairs[tuple(pair)] = joined_pairs.get(tuple(pair), 0) + n
        for d1, v1, d2, v2 in set(pairs.orders) | set(joined_pairs):
            key = ((d1, v1), (d2, v2))
            by_key[key] = Segment(key, joined_pairs.get((d1, v1, d2, v2), 0) * scale,
                                    pairs.orders.get((d1, v1, d2, v2), 0) * scale)
    return Snapshot(contacts * scale, counts.orders * scale, by_key, windows=1 / scale)


def current_snapshot(inputs: Inputs, cause: str) -> Snapshot:
    pairs = inputs.current.pairs if inputs.pairs else None
    return snapshot(inputs.current.singles, pairs, cause)


def baseline_snapshot(inputs: Inputs, cause: str, *, segments: bool = True) -> Snapshot:
    """`combine_baselines([week ago, mean of recent])`, with the pairs of the recent mean and
    that mean's evidence for them (`pair_windows`)."""
    pairs = inputs.pairs and segments
    recent = [snapshot(c.singles, c.pairs if pairs else None, cause, segments=segments)
              for c in inputs.recent]
    parts = [combine_baselines(recent)] if recent else []
    if inputs.week_ago is not None:
        parts.insert(0, snapshot(inputs.week_ago, None, cause, inputs.week_ago_scale,
                                 segments=segments))
    combined = combine_baselines(parts)
    if pairs and len(parts) == 2:  # the week-ago window has no pairs: keep the recent ones,
        # with the evidence of the recent windows they come from
        segments = {k: s for k, s in combined.segments.items() if len(k) == 1}
        segments.update((k, s) for k, s in parts[1].segments.items() if len(k) == 2)
        combined = replace(combined, segments=segments, pair_windows=parts[1].windows)
    return combined


def explain_window(inputs: Inputs, cause: str, **options) -> Explanation:
    """`streams.rca.explain` of one cause over the window and its baseline."""
    return explain(current_snapshot(inputs, cause), baseline_snapshot(inputs, cause),
                   cause=cause, **options)


def rise_z(inputs: Inputs, cause: str) -> float:
    """The z-score of the cause's overall rise alone (totals, no segment: cheap), to decide
    whether the full analysis is worth running."""
    current = snapshot(inputs.current.singles, None, cause, segments=False)
    base = baseline_snapshot(inputs, cause, segments=False)
    return explain(current, base, cause=cause).z_score


class InputReader:
    """Reads the `Inputs` of the configured windows, one snapshot (MULTI/EXEC) per window."""

    def __init__(self, client: aioredis.Redis, windows: dict[str, float], pairs: bool,
                 baseline_max_age: float = 60.0) -> None:
        self.client = client
        self.plans = {name: plan(seconds, list(windows.values()), pairs)
                      for name, seconds in windows.items()}
        self.baseline_max_age = baseline_max_age
        # window -> (its first bucket when read, read at, recent counts, week-ago counts)
        self._baselines: dict[str, tuple[str, float, tuple[Counts, ...],
                                         WindowCounts | None]] = {}

    async def read(self, window: str, now: float) -> Inputs:
        p = self.plans[window]
        current_keys, current_pairs = p.keys(now), p.pair_keys(now)
        cached = self._baselines.get(window)
        stale = (cached is None or cached[0] != current_keys[0]
                 or not 0 <= now - cached[1] < self.baseline_max_age)
        recent_keys = [(p.keys(now, k), p.pair_keys(now, k)) for k in range(1, p.recent + 1)]
        week_keys = p.week_ago_keys(now)
        keys = current_keys + current_pairs
        if stale:
            keys += [key for singles, pairs in recent_keys for key in singles + pairs] + week_keys
        labels, hashes = await read_snapshot(self.client, keys)

        def counts(singles: list[str], pairs: list[str]) -> Counts:
            return Counts(window_counts(hashes, singles, labels),
                          pair_counts(hashes, pairs, labels) if p.pairs else None)

        if stale:
            recent = tuple(c for c in (counts(*keys) for keys in recent_keys) if c.singles.orders)
            week_ago = window_counts(hashes, week_keys, labels)
            cached = (current_keys[0], now, recent, week_ago if week_ago.orders else None)
            self._baselines[window] = cached
        return Inputs(window, counts(current_keys, current_pairs), cached[2], cached[3],
                      p.week_ago_scale, cached[1])
