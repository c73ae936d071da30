"""From Redis buckets to root-cause snapshots (streams/windows.py, streams/rca_inputs.py) and
back to the exporter's score, labels, JSON and HTTP errors (streams/exporter.py), without
servers: bucket hashes are the dicts Redis would return, and counts are built by hand. Also the
in-memory counting that feeds the same snapshots in the evaluation (bench/rca/counting.py)."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime
from itertools import combinations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bench.rca.counting import Tally
from streams.exporter import (
    ExporterState,
    RootCause,
    RootCauses,
    build_web_app,
    root_cause_scores,
    segment_labels,
)
from streams.rca import Segment, Snapshot, explain, format_explanation
from streams.rca_inputs import (
    Counts,
    InputReader,
    Inputs,
    baseline_snapshot,
    current_snapshot,
    explain_window,
    plan,
    rise_z,
    snapshot,
)
from streams.settings import load_settings
from streams.state import Labels
from streams.windows import PairCounts, WindowCounts, pair_counts, pair_keys, window_counts

LABELS = Labels(causes={1: "wismo", 2: "late"}, dimensions={1: "carrier", 2: "warehouse"},
                values={(1, 1): "acme", (1, 2): "bolt", (2, 1): "sea8", (2, 2): "lax1"})
ACME = (("carrier", "acme"),)
ACME_SEA8 = (("carrier", "acme"), ("warehouse", "sea8"))


# --- reading buckets ------------------------------------------------------------------------

def test_pair_fields_are_summed_over_buckets_whatever_the_attribute_order():
    # Two buckets; the order event listed warehouse before carrier in the second one.
    hashes = {
        "cpo:pb:300:0": {"p:1:1:2:1": "3", "q:1:1:1:2:1": "1", "q:2:1:2:2:2": "2"},
        "cpo:pb:300:300": {"p:2:1:1:1": "4", "q:1:2:1:1:1": "5", "p:1:0:2:1": "1"},
    }
    pairs = pair_counts(hashes, list(hashes), LABELS)
    assert dict(pairs.orders) == {("carrier", "acme", "warehouse", "sea8"): 7,
                                  ("carrier", "other", "warehouse", "sea8"): 1}
    assert dict(pairs.attributed) == {("wismo", "carrier", "acme", "warehouse", "sea8"): 6,
                                      ("late", "carrier", "bolt", "warehouse", "lax1"): 2}


def test_window_counts_sum_buckets_as_before():
    hashes = {"a": {"o": "10", "o:1:1": "6", "c:1": "3", "a:1:1:1": "2"},
              "b": {"o": "5", "o:1:1": "1", "c:1": "1", "c:9": "4", "u:1:n": "1"}}
    counts = window_counts(hashes, ["a", "b"], LABELS)
    assert counts.orders == 15
    assert dict(counts.orders_by_value) == {("carrier", "acme"): 7}
    # cause id 9 is in no registry: left out, not counted under `other` (a wrong name)
    assert dict(counts.contacts) == {"wismo": 4}
    assert counts.unnamed == 4
    assert dict(counts.attributed) == {("wismo", "carrier", "acme"): 2}
    assert dict(counts.unattributed) == {("wismo", "n"): 1}


def test_pair_keys_are_the_coarse_buckets_of_the_window():
    assert pair_keys(3599.0, 3600) == [f"cpo:pb:300:{s}" for s in range(0, 3600, 300)]


# --- plans ----------------------------------------------------------------------------------

def test_plans_follow_the_exporter_windows_and_the_bucket_ttls():
    default = [300.0, 3600.0, 86400.0]  # 5m,1h,1d
    five, hour, day = (plan(w, default, pairs=True) for w in default)
    assert (five.resolution, five.span, five.pairs, five.recent) == (10, 300, False, 4)
    assert (hour.resolution, hour.span, hour.pairs, hour.recent) == (300, 3600, True, 4)
    assert (day.resolution, day.pairs, day.recent) == (300, False, 4)  # 288 pair buckets: no
    # 5m,1h: pair buckets live 2 x 1h + 1h = 3h, so the current hour and two before it
    assert plan(3600, [300.0, 3600.0], pairs=True).recent == 2
    assert not plan(3600, [300.0, 3600.0], pairs=False).pairs  # CPO_RCA_PAIRS=off
    # the week-ago window is read from coarse buckets: a 30s window from a 5-minute one
    assert plan(30, [30.0, 300.0], pairs=True).week_ago_scale == pytest.approx(0.1)
    assert hour.week_ago_scale == 1.0


def test_the_baseline_windows_are_back_to_back():
    p = plan(3600, [3600.0], pairs=True)
    now = 10 * 3600 + 42.0
    current, previous = p.keys(now), p.keys(now, 1)
    assert len(current) == len(previous) == 12
    assert int(previous[-1].rsplit(":", 1)[1]) + 300 == int(current[0].rsplit(":", 1)[1])
    assert p.pair_keys(now, 1)[0].replace("cpo:pb:", "cpo:b:") == previous[0]
    assert p.week_ago_keys(now)[0] == p.keys(now - 7 * 86400)[0]


# --- snapshots ------------------------------------------------------------------------------

def counts(cells: dict[tuple[str, str], tuple[int, dict[str, int]]],
           unattributed: dict[str, int] | None = None) -> Counts:
    """Counts of a window from {(carrier, warehouse): (orders, {cause: joined contacts})}."""
    singles, pairs = WindowCounts(), PairCounts()
    for (carrier, warehouse), (orders, by_cause) in cells.items():
        items = (("carrier", carrier), ("warehouse", warehouse))
        singles.orders += orders
        for item in items:
            singles.orders_by_value[item] += orders
        pairs.orders[(*items[0], *items[1])] += orders
        for cause, n in by_cause.items():
            singles.contacts[cause] += n
            for item in items:
                singles.attributed[(cause, *item)] += n
            for a, b in combinations(items, 2):
                pairs.attributed[(cause, *a, *b)] += n
    for cause, n in (unattributed or {}).items():
        singles.contacts[cause] += n
    return Counts(singles, pairs)


TWO_BY_TWO = counts({("acme", "sea8"): (100, {"wismo": 10, "late": 1}),
                     ("acme", "lax1"): (50, {"wismo": 2}),
                     ("bolt", "sea8"): (50, {"late": 3})}, unattributed={"wismo": 4})


def test_snapshot_of_one_cause_and_of_all():
    wismo = snapshot(TWO_BY_TWO.singles, TWO_BY_TWO.pairs, "wismo")
    assert (wismo.contacts, wismo.orders) == (16, 200)  # unattributed contacts count here only
    assert wismo.segments[ACME] == Segment(ACME, 12, 150)
    assert wismo.segments[ACME_SEA8] == Segment(ACME_SEA8, 10, 100)
    bolt = (("carrier", "bolt"),)
    assert wismo.segments[bolt] == Segment(bolt, 0, 50)  # orders, none of this cause
    everything = snapshot(TWO_BY_TWO.singles, TWO_BY_TWO.pairs, "all")
    assert everything.contacts == 20
    assert everything.segments[ACME_SEA8] == Segment(ACME_SEA8, 11, 100)
    singles = snapshot(TWO_BY_TWO.singles, None, "wismo")
    assert all(len(key) == 1 for key in singles.segments)
    # a week-ago 5-minute bucket standing for a 30 s window: a tenth, as 10 windows
    scaled = snapshot(TWO_BY_TWO.singles, None, "wismo", 0.1)
    assert scaled.orders == pytest.approx(20) and scaled.windows == pytest.approx(10)
    assert scaled.segments[ACME].contacts == pytest.approx(1.2)
    totals = snapshot(TWO_BY_TWO.singles, None, "wismo", segments=False)
    assert (totals.contacts, totals.orders, totals.segments) == (16, 200, {})


def test_baseline_combines_a_week_ago_with_the_recent_mean_and_keeps_recent_pairs():
    week = counts({("acme", "sea8"): (400, {"wismo": 40})})
    recent = (counts({("acme", "sea8"): (100, {"wismo": 10}), ("bolt", "lax1"): (100, {})}),
              counts({("acme", "sea8"): (300, {"wismo": 20}), ("bolt", "lax1"): (100, {})}))
    inputs = Inputs("1h", TWO_BY_TWO, recent, week.singles)
    base = baseline_snapshot(inputs, "wismo")
    # singles: mean(week, mean(recent)): acme's orders mean(400, mean(100, 300)) = 300, its
    # contacts mean(40, mean(10, 20)) = 27.5; all orders mean(400, mean(200, 400)) = 350
    assert base.segments[ACME] == Segment(ACME, 27.5, 300)
    assert base.orders == 350 and base.contacts == 27.5
    # pairs: the recent mean only (a week ago has none): mean(100, 300), mean(10, 20)
    assert base.segments[ACME_SEA8] == Segment(ACME_SEA8, 15, 200)
    # evidence: a week ago (1 window) averaged with the mean of 2: 4 / (1 + 1/2)
    assert base.windows == pytest.approx(8 / 3)
    assert inputs.pairs and ACME_SEA8 in current_snapshot(inputs, "wismo").segments


def test_without_recent_windows_only_single_values_are_analysed():
    week = counts({("acme", "sea8"): (400, {"wismo": 40})})
    inputs = Inputs("1h", TWO_BY_TWO, (), week.singles)
    assert not inputs.pairs
    assert all(len(k) == 1 for k in current_snapshot(inputs, "wismo").segments)
    assert all(len(k) == 1 for k in baseline_snapshot(inputs, "wismo").segments)
    nothing = Inputs("1h", TWO_BY_TWO, (), None)
    assert baseline_snapshot(nothing, "wismo").orders == 0
    assert explain_window(nothing, "wismo").candidates == ()  # no baseline: nothing to say


CARRIERS, WAREHOUSES = ("acme", "bolt", "cargo"), ("sea8", "lax1", "ord2")


def grid(rate, volume: int = 400) -> Counts:
    return counts({(c, w): (volume, {"wismo": round(volume * rate(c, w))})
                   for c in CARRIERS for w in WAREHOUSES})


def test_an_incident_is_named_and_scored_from_counts():
    recent = tuple(grid(lambda c, w: 0.05) for _ in range(3))
    current = grid(lambda c, w: 0.3 if c == "acme" else 0.05)
    inputs = Inputs("1h", current, recent, None)
    assert rise_z(inputs, "wismo") > 4
    expl = explain_window(inputs, "wismo")
    assert [c.key for c in expl.defects] == [ACME]
    assert format_explanation(expl).startswith("wismo rose 2.7x (0.13 vs 0.05 baseline); "
                                               "100% of the rise comes from carrier=acme")
    # acme's 1200 orders: 360 contacts vs 60 expected = 300 excess, the whole rise
    ((top, score),) = root_cause_scores(expl)
    assert top.excess_contacts == pytest.approx(300) and score == pytest.approx(1.0)
    flat = Inputs("1h", grid(lambda c, w: 0.05), recent, None)
    assert rise_z(flat, "wismo") < 2  # the exporter's loop would not analyse it


def test_a_pair_incident_is_named_as_the_pair():
    recent = tuple(grid(lambda c, w: 0.05) for _ in range(3))
    current = grid(lambda c, w: 0.5 if (c, w) == ("acme", "sea8") else 0.05)
    expl = explain_window(Inputs("1h", current, recent, None), "wismo")
    assert expl.defects[0].key == ACME_SEA8
    assert segment_labels(expl.defects[0].key) == ("carrier,warehouse", "acme,sea8")
    assert segment_labels(ACME) == ("carrier", "acme")


def test_pairs_have_the_evidence_of_the_recent_windows_they_come_from():
    # One recent window and a week ago: single values average both (2 windows of evidence),
    # pairs come from the recent window alone (1). acme x sea8: 50 contacts against 20
    # expected, Freeman-Tukey sqrt(50) + sqrt(51) - sqrt(81) = 5.21, over sqrt(1 + 400 / (1 x
    # 400 + 30)) = 3.75: no defect. Weighed as 2 windows, it was 4.28, a defect named "carrier=acme,
    # within it warehouse=sea8", from a rise no larger than noise at that weight.
    flat = grid(lambda c, w: 0.05)
    current = grid(lambda c, w: 0.125 if (c, w) == ("acme", "sea8") else 0.05)
    inputs = Inputs("1h", current, (flat,), flat.singles)
    base = baseline_snapshot(inputs, "wismo")
    assert base.windows == pytest.approx(2) and base.pair_windows == pytest.approx(1)
    assert explain_window(inputs, "wismo").defects == ()
    pair = next(c for c in explain_window(inputs, "wismo", min_z=3).candidates
                if c.key == ACME_SEA8)
    deviate = math.sqrt(50) + math.sqrt(51) - 9
    assert pair.expected_contacts == pytest.approx(20)
    assert pair.z_score == pytest.approx(deviate / math.sqrt(1 + 400 / 430))


# --- scores and JSON ------------------------------------------------------------------------

def test_scores_are_shares_of_the_excess_and_add_up_to_at_most_one():
    base = Snapshot(100, 2000, {k: Segment(k, 25, 500) for k in
                                [(("carrier", c),) for c in ("a", "b", "c", "d")]})

    def current(a: float, b: float, c: float) -> Snapshot:
        segments = {(("carrier", "a"),): Segment((("carrier", "a"),), a, 500),
                    (("carrier", "b"),): Segment((("carrier", "b"),), b, 500),
                    (("carrier", "c"),): Segment((("carrier", "c"),), c, 500),
                    (("carrier", "d"),): Segment((("carrier", "d"),), 25, 500)}
        return Snapshot(a + b + c + 25, 2000, segments)

    # a: 125 contacts (100 excess), b: 75 (50 excess), c: 25; overall 250 vs 100 expected
    scores = root_cause_scores(explain(current(125, 75, 25), base))
    assert [s for _, s in scores] == pytest.approx([100 / 150, 50 / 150])
    # c fell by 20 meanwhile: the overall excess (130) is less than the defects' (150), which
    # then share 1 between them
    scores = root_cause_scores(explain(current(125, 75, 5), base))
    assert [s for _, s in scores] == pytest.approx([100 / 150, 50 / 150])
    assert sum(s for _, s in scores) <= 1 + 1e-9


def test_the_json_carries_scores_and_the_baseline_used():
    recent = tuple(grid(lambda c, w: 0.05) for _ in range(3))
    inputs = Inputs("1h", grid(lambda c, w: 0.3 if c == "acme" else 0.05), recent, None)
    result = RootCause("1h", 123.0, explain_window(inputs, "wismo"), 3, False, 120.0, True)
    body = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert body["window"] == "1h" and body["computed_at"] == 123.0
    assert body["baseline"] == {"recent_windows": 3, "week_ago": False, "read_at": 120.0}
    assert body["pairs"] is True
    assert body["candidates"][0]["label"] == "carrier=acme"
    assert body["candidates"][0]["score"] == pytest.approx(1.0)
    assert body["summary"].startswith("wismo rose")


# --- the endpoint's answers that need no Redis ----------------------------------------------

def test_default_window_is_the_shortest_with_pairs():
    windows = {"5m": 300.0, "1h": 3600.0, "1d": 86400.0}
    assert RootCauses(InputReader(None, windows, pairs=True)).default_window() == "1h"
    assert RootCauses(InputReader(None, windows, pairs=False)).default_window() == "5m"


def test_the_endpoint_names_the_fix_for_a_bad_request():
    settings = load_settings({"CPO_WINDOWS": "5m,1h"})
    reader = InputReader(None, settings.window_seconds(), pairs=True)
    app = build_web_app(settings, ExporterState(), RootCauses(reader))

    async def ask(*queries: str) -> list[tuple[int, dict]]:
        async with TestClient(TestServer(app)) as client:
            answers = []
            for query in queries:
                response = await client.get(f"/api/v1/root-causes{query}")
                answers.append((response.status, await response.json()))
            return answers

    (no_cause, bad_window) = asyncio.run(ask("", "?cause=wismo&window=2h"))
    assert no_cause[0] == 400 and "?cause=" in no_cause[1]["error"]
    assert bad_window[0] == 400 and "use one of 5m, 1h" in bad_window[1]["error"]


# --- the evaluation's in-memory counting ----------------------------------------------------

def test_the_evaluation_counts_like_the_pipeline():
    def order(order_id, t, **attributes):
        return "orders", {"order_id": order_id, "occurred_at": iso(t), "attributes": attributes}

    def contact(contact_id, t, order_id, cause="WISMO"):
        return "contacts", {"contact_id": contact_id, "occurred_at": iso(t), "cause": cause,
                            "order_id": order_id}

    events = [
        order("o1", 5, carrier="acme", warehouse="sea8", seller="s1"),  # seller: untracked
        order("o1", 6, carrier="bolt"),  # a duplicate: not counted (bolt takes a slot, though)
        order("o2", 7, carrier="bolt", warehouse="lax1"),
        order("o3", 8, carrier="cargo", warehouse="sea8"),  # a third carrier: folds to other
        order("o4", 15, carrier="acme"),  # the second window
        ("orders", b"{not json"),
        contact("c1", 9, "o1"), contact("c1", 9, "o1"),  # the same contact twice
        contact("c2", 9, "o3"), contact("c3", 9, None), contact("c4", 9, "o-unknown"),
        contact("c5", 16, "o1", "late"),  # the second window, joined to an earlier order
    ]
    tally = Tally(("carrier", "warehouse"), max_values=3)
    (first, first_pairs), (second, _) = tally.count(events, start=0, window_seconds=10, windows=2)
    assert first.orders == 3 and second.orders == 1
    assert dict(first.orders_by_value) == {
        ("carrier", "acme"): 1, ("carrier", "bolt"): 1, ("carrier", "other"): 1,
        ("warehouse", "sea8"): 2, ("warehouse", "lax1"): 1}
    assert dict(first.contacts) == {"wismo": 4} and dict(second.contacts) == {"late": 1}
    assert dict(first.attributed) == {
        ("wismo", "carrier", "acme"): 1, ("wismo", "warehouse", "sea8"): 2,
        ("wismo", "carrier", "other"): 1}
    assert dict(first.unattributed) == {("wismo", "no_order_id"): 1,
                                        ("wismo", "order_not_found"): 1}
    assert dict(first_pairs.orders) == {("carrier", "acme", "warehouse", "sea8"): 1,
                                        ("carrier", "bolt", "warehouse", "lax1"): 1,
                                        ("carrier", "other", "warehouse", "sea8"): 1}
    assert first_pairs.attributed[("wismo", "carrier", "acme", "warehouse", "sea8")] == 1
    assert dict(second.attributed) == {("late", "carrier", "acme"): 1,
                                       ("late", "warehouse", "sea8"): 1}
    # a later stream keeps the registry: cargo still folds, acme keeps its name
    later = tally.copy().count([order("o9", 1, carrier="cargo"), order("o8", 2, carrier="acme")],
                               start=0, window_seconds=10, windows=1)[0][0]
    assert dict(later.orders_by_value) == {("carrier", "other"): 1, ("carrier", "acme"): 1}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()
