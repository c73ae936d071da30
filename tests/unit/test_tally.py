"""The worker's vectorised order counts equal a per-order count written the obvious way, field
by field and bucket by bucket, with the script's rules (fine horizon, pair order)."""

from __future__ import annotations

import random
from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from streams.buckets import COARSE_SECONDS, FINE_SECONDS, bucket_key
from streams.tally import ABSENT, OrderTally

NOW = 1_800_000_000.5
HORIZON = 420
TTLS = (7200, 86400)


def naive(times: list[int], rows: list[list[int]], dim_ids: list[int],
          pairs: bool) -> tuple[dict, dict]:
    buckets: dict[str, Counter] = {}
    pair_buckets: dict[str, Counter] = {}
    for t, row in zip(times, rows, strict=True):
        present = [(d, v) for d, v in zip(dim_ids, row, strict=True) if v != ABSENT]
        resolutions = [COARSE_SECONDS] + ([FINE_SECONDS] if t >= NOW - HORIZON else [])
        for resolution in resolutions:
            counts = buckets.setdefault(bucket_key(resolution, t // resolution * resolution),
                                        Counter())
            counts["o"] += 1
            for d, v in present:
                counts[f"o:{d}:{v}"] += 1
        if pairs:
            counts = pair_buckets.setdefault(str(t // COARSE_SECONDS * COARSE_SECONDS), Counter())
            for (d1, v1), (d2, v2) in combinations(present, 2):
                counts[f"p:{d1}:{v1}:{d2}:{v2}"] += 1
    return ({key: dict(counts) for key, counts in buckets.items()},
            {start: dict(counts) for start, counts in pair_buckets.items()})


@pytest.mark.parametrize("max_values", [5, 400])  # pair codes counted densely, or sorted
@pytest.mark.parametrize("pairs", [True, False])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_vectorised_counts_equal_per_order_counts(seed: int, pairs: bool, max_values: int) -> None:
    rng = random.Random(seed)
    dim_ids = [1, 2, 4, 7]
    times = [int(NOW) - rng.choice([0, 30, 400, 430, 900, 4000]) - rng.randrange(60)
             for _ in range(3000)]
    rows = [[ABSENT if rng.random() < 0.2 else rng.randrange(max_values) for _ in dim_ids]
            for _ in times]
    tally = OrderTally(dim_ids, max_values, HORIZON, TTLS, pairs).count(
        np.array(times, dtype=np.int64), np.array(rows, dtype=np.int64), NOW)
    expected, expected_pairs = naive(times, rows, dim_ids, pairs)
    assert {key: counts for key, (_, counts) in tally.buckets.items()} == expected
    assert tally.pairs == expected_pairs
    coarse_totals: Counter = Counter()
    for key, counts in expected.items():
        if key.startswith(f"cpo:b:{COARSE_SECONDS}:"):
            coarse_totals.update(counts)
    assert tally.totals == dict(coarse_totals)
    ttls = {key.split(":")[1] + ":" + key.split(":")[2]: ttl
            for key, (ttl, _) in tally.buckets.items()}
    assert ttls == {f"b:{FINE_SECONDS}": TTLS[0], f"b:{COARSE_SECONDS}": TTLS[1]}


def test_the_script_argument_lists_every_count_once() -> None:
    tally = OrderTally([1, 2], 3, HORIZON, TTLS, pairs=True).count(
        np.array([int(NOW) - 5, int(NOW) - 5], dtype=np.int64),
        np.array([[1, ABSENT], [1, 2]], dtype=np.int64), NOW)
    flat = tally.script_arg()
    parsed, i = {}, 0
    while i < len(flat):
        key, ttl, n = flat[i:i + 3]
        parsed[key] = (ttl, dict(zip(flat[i + 3:i + 3 + 2 * n:2], flat[i + 4:i + 4 + 2 * n:2])))
        i += 3 + 2 * n
    assert parsed == tally.buckets
    start = int(NOW - 5) // COARSE_SECONDS * COARSE_SECONDS
    assert tally.pairs == {str(start): {"p:1:1:2:2": 1}}
    assert tally.totals == {"o": 2, "o:1:1": 2, "o:2:2": 1}
