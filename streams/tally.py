"""A batch's order counts, per event-time bucket and field, computed with numpy in the worker.

An order's counts do not depend on Redis, only whether the order is new does (a duplicate is
not counted again). So the worker counts every order of a batch as new, in a few vectorised
passes, and the Redis script takes back the counts of the rare order it finds is a duplicate.
This keeps the per-order work in Redis, the pipeline's single-threaded bottleneck, to one
identity write (bench/README.md), while the worker spends about a microsecond per order here.

The fields are those of `lua/state.lua`: `o` and `o:<dim>:<value>` in the fine and coarse
buckets, and `p:<dim>:<value>:<dim>:<value>` (lower dimension id first) for the coarse pair
buckets. Ids are registry ids: dimension ids from 1, value ids from 0 (`other`) to
max_values - 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from streams.buckets import COARSE_SECONDS, FINE_SECONDS, bucket_key

ABSENT = -1  # the order has no value for that dimension
# Pair counts are summed with one bincount over every possible (bucket, pair, value, value)
# code when there are at most this many (an 8 MB array), else by sorting the codes.
MAX_DENSE_CODES = 1 << 20


@dataclass
class Tally:
    """Counts to add: bucket key -> (TTL, field -> count), field -> count summed over the
    coarse buckets (what the worker's counters add), and the pair counts, coarse bucket start
    -> field -> count (queued, then folded into the pair buckets: see lua/state.lua)."""

    buckets: dict[str, tuple[int, dict[str, int]]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    pairs: dict[str, dict[str, int]] = field(default_factory=dict)

    def script_arg(self) -> list:
        """Flat [key, ttl, n, field, count, ...] for the script."""
        flat: list = []
        for key, (ttl, counts) in self.buckets.items():
            flat += (key, ttl, len(counts))
            for name, n in counts.items():
                flat += (name, n)
        return flat


class OrderTally:
    """Counts orders given as event times (whole seconds) and a matrix of value ids, one column
    per dimension in ascending dimension id, ABSENT where an order lacks the dimension."""

    def __init__(self, dim_ids: list[int], max_values: int, fine_horizon: int,
                 ttls: tuple[int, int], pairs: bool) -> None:
        assert dim_ids == sorted(dim_ids), "columns must be in ascending dimension id"
        self.max_values = max_values
        self.fine_horizon = fine_horizon
        self.fine_ttl, self.coarse_ttl = ttls
        self.pairs = pairs
        self.value_fields = [[f"o:{d}:{v}" for v in range(max_values)] for d in dim_ids]
        self.column_pairs = list(combinations(range(len(dim_ids)), 2))
        self.pair_columns = (np.array([a for a, _ in self.column_pairs], dtype=np.int64),
                             np.array([b for _, b in self.column_pairs], dtype=np.int64))
        self.dim_ids = dim_ids
        self._pair_fields: dict[int, str] = {}  # (pair index, value, value) code -> field

    def count(self, times: np.ndarray, values: np.ndarray, now: float) -> Tally:
        tally = Tally()
        if len(times) == 0:
            return tally
        coarse = _buckets(times, COARSE_SECONDS)
        self._add_singles(tally, COARSE_SECONDS, self.coarse_ttl, coarse, values, totals=True)
        recent = times >= now - self.fine_horizon  # the script's test, on the same numbers
        if recent.any():
            self._add_singles(tally, FINE_SECONDS, self.fine_ttl,
                              _buckets(times[recent], FINE_SECONDS), values[recent],
                              totals=False)
        if self.pairs:
            self._add_pairs(tally, coarse, values)
        return tally

    def _add_singles(self, tally: Tally, resolution: int, ttl: int,
                     buckets: tuple[np.ndarray, np.ndarray], values: np.ndarray,
                     totals: bool) -> None:
        starts, index = buckets
        counts = [tally.buckets.setdefault(bucket_key(resolution, int(s)), (ttl, {}))[1]
                  for s in starts]
        for b, n in enumerate(np.bincount(index, minlength=len(starts)).tolist()):
            counts[b]["o"] = n
        width = self.max_values
        for column, names in enumerate(self.value_fields):
            present = values[:, column] != ABSENT
            codes = index[present] * width + values[present, column]
            per_code = np.bincount(codes, minlength=len(starts) * width)
            found = np.flatnonzero(per_code)
            for code, n in zip(found.tolist(), per_code[found].tolist()):
                b, value = divmod(code, width)
                counts[b][names[value]] = n
        if totals:
            for bucket_counts in counts:
                for name, n in bucket_counts.items():
                    tally.totals[name] = tally.totals.get(name, 0) + n

    def _add_pairs(self, tally: Tally, coarse: tuple[np.ndarray, np.ndarray],
                   values: np.ndarray) -> None:
        starts, index = coarse
        counts = [tally.pairs.setdefault(str(int(s)), {}) for s in starts]
        width = self.max_values
        per_pair = width * width
        first, second = self.pair_columns
        a, b = values[:, first], values[:, second]  # one column per pair of dimensions
        codes = ((index[:, None] * len(first) + np.arange(len(first))) * per_pair
                 + a * width + b)[(a != ABSENT) & (b != ABSENT)]
        if len(starts) * len(first) * per_pair <= MAX_DENSE_CODES:  # one pass, no sort
            per_code = np.bincount(codes, minlength=len(starts) * len(first) * per_pair)
            found = np.flatnonzero(per_code)
            per_code = per_code[found]
        else:
            found, per_code = np.unique(codes, return_counts=True)
        names = self._pair_fields
        for code, n in zip(found.tolist(), per_code.tolist()):
            bucket, name_code = divmod(code, len(first) * per_pair)
            name = names.get(name_code)
            if name is None:
                name = names[name_code] = self._pair_field(name_code)
            counts[bucket][name] = n

    def _pair_field(self, name_code: int) -> str:
        pair_index, values = divmod(name_code, self.max_values * self.max_values)
        first, second = divmod(values, self.max_values)
        a, b = self.column_pairs[pair_index]
        return f"p:{self.dim_ids[a]}:{first}:{self.dim_ids[b]}:{second}"


def _buckets(times: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct bucket starts of `times`, and each time's index among them."""
    return np.unique(times // resolution * resolution, return_inverse=True)
