"""Event-time buckets: how counts are laid out in Redis and which buckets a window reads.

Every count is added to two buckets of its event time: a fine one (10 s) and a coarse one
(5 min). A window shorter than an hour is summed from fine buckets, a longer one from coarse
buckets, so a scrape reads at most a few hundred small hashes. A window of W ending at `now`
covers the W/resolution buckets that end with the bucket holding `now`: its left edge is
quantised to the resolution (documented in the README's limits).
"""

from __future__ import annotations

import math

FINE_SECONDS = 10
COARSE_SECONDS = 300
# Coarse buckets outlive the longest window by a week, for week-over-week baselines.
BASELINE_HISTORY_SECONDS = 8 * 86400
FINE_HORIZON_MARGIN_SECONDS = 120
FINE_WINDOW_LIMIT_SECONDS = 3600  # windows shorter than this are summed from fine buckets
KEY_PREFIX = "cpo:b:"
PAIR_KEY_PREFIX = "cpo:pb:"  # pairs of attribute values, coarse buckets only


def resolution_for(window_seconds: float) -> int:
    return FINE_SECONDS if window_seconds < FINE_WINDOW_LIMIT_SECONDS else COARSE_SECONDS


def bucket_start(t: float, resolution: int) -> int:
    return math.floor(t / resolution) * resolution


def bucket_key(resolution: int, start: int) -> str:
    return f"{KEY_PREFIX}{resolution}:{start}"


def pair_bucket_key(start: int) -> str:
    return f"{PAIR_KEY_PREFIX}{COARSE_SECONDS}:{start}"


def window_bounds(
    now: float, window_seconds: float, resolution: int | None = None
) -> tuple[int, int]:
    """[start, end) of event time that the window ending at `now` covers."""
    resolution = resolution or resolution_for(window_seconds)
    end = bucket_start(now, resolution) + resolution
    count = max(1, math.ceil(window_seconds / resolution))
    return end - count * resolution, end


def window_keys(now: float, window_seconds: float, resolution: int | None = None) -> list[str]:
    """Bucket keys of the window ending at `now` (default resolution: `resolution_for`)."""
    resolution = resolution or resolution_for(window_seconds)
    start, end = window_bounds(now, window_seconds, resolution)
    return [bucket_key(resolution, s) for s in range(start, end, resolution)]


def fine_horizon(window_seconds: list[float]) -> int:
    """How far before now a count still goes to a fine bucket: the longest window read from
    fine buckets, plus a margin for clock skew between workers and the exporter. Older events
    (a backfill, a replay) are written to coarse buckets only, which every such window ignores."""
    fine_windows = _fine_windows(window_seconds)
    return int(max(fine_windows) + FINE_HORIZON_MARGIN_SECONDS) if fine_windows else 0


def pair_ttl(window_seconds: list[float]) -> int:
    """Pair counts serve the root-cause drill-down over the current window and the recent
    ones before it: kept for twice the longest window and an hour."""
    return int(2 * max(window_seconds) + 3600)


def bucket_ttls(window_seconds: list[float]) -> tuple[int, int]:
    """(fine, coarse) Redis TTLs: long enough for every window that reads them."""
    fine_windows = _fine_windows(window_seconds) or [0]
    fine_ttl = int(max(fine_windows) + 3600)
    coarse_ttl = int(max(window_seconds) + BASELINE_HISTORY_SECONDS)
    return fine_ttl, coarse_ttl


def _fine_windows(window_seconds: list[float]) -> list[float]:
    return [w for w in window_seconds if resolution_for(w) == FINE_SECONDS]
