"""Incidents for the root-cause evaluation, generated with the simulator, and how each is scored.

A *world* is a seeded simulation with a realistic heterogeneity: two permanent rate
differences (e.g. region=uk always has 2.6x late_delivery), present in every window. Its
baseline is counted once: four windows back to back before the current one and the same window
a week earlier, as the exporter reads them. Each scenario generates the current window of its
world with its own seed and incidents, counts it (bench/rca/counting.py), builds `Inputs` like
the exporter does and analyses it with the exporter's own functions (streams/rca_inputs.py).

Kinds, and what a correct answer is:
- single: one attribute value gets x times the contacts of one cause. Top-1: the first defect
  is that value; top-3: it is among the first three.
- pair: orders with two values (carrier=acme and warehouse=wh-03) get x times. The pair must be
  named, not one of its values.
- two: two single-value incidents of the same cause at once. Top-1: the first defect is one of
  them; top-3: both are among the first three.
- hot_pair: one value gets x times (1.8 to 2.6), and one of its pairs (with a partner holding
  5-30% of the value's orders) gets more on top, enough that the pair's expected z-score beats
  the value's while it holds at most 75% of the value's excess and the rest of the value adds
  MIN_EXCESS contacts on its own. The value must be named (the pair rule, docs/root-cause.md
  step 5), not the pair nor the pair within its partner.
- two_10, two_20, two_35, two_50: two incidents of one cause at once, in different
  dimensions, each value expecting about 10, 20, 35 or 50 contacts of the cause in the window
  before the incident (0.8 to 1.25 times that) and getting TWO_MULTIPLIER times; where they
  meet, the rates compound. Scored as `two`.
- small: one value with SMALL_SHARE of the orders (0.4% to 2%) gets enough times the contacts
  (at most SMALL_MAX_MULTIPLIER) to add MIN_EXCESS to 1.5 x MIN_EXCESS contacts. Scored as
  `single`.
- mix: the share of orders of a value whose rate is permanently higher grows (a mix shift): the
  cause's overall rate rises, no value's own rate does. Correct: no defect in that cause or
  in `all`.
- noise: no incident, a tenth of the traffic. Correct: no defect in any cause.
The incident kinds are analysed for their cause (what the spike alert and `cpo explain` ask);
mix and noise for every cause and `all`, whether its rate rose or not: stricter than the
exporter's loop, which analyses only the causes whose rate rose (z >= RISE_Z).

A false positive is a defect reported that is not an injected segment (mix and noise: any
defect). Scenarios are drawn for every kind whichever kinds are run (`--kinds` only skips their
evaluation), each new kind from its own random stream, so a kind's scenarios do not depend on
which others are run or were added.

Incident sizes are drawn at random within what a 5-sigma test can see in one window: a value
(or pair) with at least MIN_SHARE of the orders, a multiplier in MULTIPLIER, and at least
MIN_EXCESS (or --min-excess) expected extra contacts in the window (for two incidents: each
outside the other's segment); smaller incidents are redrawn.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.rca.counting import Tally
from streams.incidents import Incident
from streams.population import CAUSES, Population
from streams.rca import Snapshot, explain, format_explanation
from streams.rca_inputs import (
    RECENT_WINDOWS,
    Counts,
    Inputs,
    baseline_snapshot,
    current_snapshot,
)
from streams.simulate import SimConfig, generate
from streams.windows import ALL

DIMENSIONS = ("carrier", "warehouse", "category", "seller", "region")  # CPO_DIMENSIONS' default
MAX_VALUES = 50  # CPO_MAX_VALUES' default
WINDOW = 900.0  # seconds of event time per window
RATE = 8.0  # orders per second: about 7,200 orders per window
NOISE_RATE = RATE / 10
PREROLL = 60.0  # generated before a window, so it holds the contacts of earlier orders too
TIME_SCALE = 86400.0  # contact delays of days become seconds: contacts follow their orders
T0 = 1_790_000_000.0  # start of every current window (event time)
WEEK = 7 * 86400.0
MIN_SHARE = 0.01
MIN_EXCESS = 30.0
MULTIPLIER = (3.0, 8.0)
BACKGROUND_MULTIPLIER = (2.0, 4.0)
KINDS = ("single", "pair", "two", "hot_pair", "two_10", "two_20", "two_35", "two_50", "small",
         "mix", "noise")
ORIGINAL_KINDS = ("single", "pair", "two", "mix", "noise")  # drawn from one stream, as before
PER_WORLD = {"single": 8, "pair": 8, "two": 4, "hot_pair": 6, "two_10": 3, "two_20": 3,
             "two_35": 3, "two_50": 3, "small": 6, "mix": 5, "noise": 3}
TWO_SIZES = {"two_10": 10.0, "two_20": 20.0, "two_35": 35.0, "two_50": 50.0}
TWO_MULTIPLIER = 4.0
HOT_PARTNER_SHARE = (0.05, 0.30)  # the hot pair's share of its value's orders
HOT_MULTIPLIER = (1.8, 2.6)  # the value's own multiplier
HOT_Z_MARGIN = 1.05  # the pair's expected z over the value's, at least
HOT_MAX_SHARE = 0.75  # the pair's share of the value's excess, at most (the pair rule: 80%)
SMALL_SHARE = (0.004, 0.02)
SMALL_MAX_MULTIPLIER = 40.0  # 0.8 contacts per order for where_is_my_order: a seller that never ships
CPO = {cause.name: cause.cpo for cause in CAUSES}

Truth = frozenset  # of (dimension, value) items: one segment


@dataclass
class World:
    index: int
    background: tuple[Incident, ...]
    tally: Tally
    recent: tuple[Counts, ...]  # latest first
    week_ago: Counts
    baselines: dict[str, Snapshot] = field(default_factory=dict)  # cause -> its baseline

    def baseline(self, inputs: Inputs, cause: str) -> Snapshot:
        """`baseline_snapshot` of the world's windows, computed once per cause."""
        if cause not in self.baselines:
            self.baselines[cause] = baseline_snapshot(inputs, cause)
        return self.baselines[cause]


@dataclass
class Scenario:
    kind: str
    world: int
    seed: int
    incidents: tuple[Incident, ...]
    truth: tuple[Truth, ...]  # segments a correct answer names (empty: none)
    cause: str | None  # the cause analysed for incident kinds; None: every rising cause
    rate: float = RATE


@dataclass
class Outcome:
    scenario: Scenario
    defects: dict[str, list[Truth]] = field(default_factory=dict)  # cause -> defects in order
    summaries: dict[str, str] = field(default_factory=dict)
    significant: dict[str, bool] = field(default_factory=dict)  # cause -> its rise is (z >= 4)
    pair_outranks: bool | None = None  # hot_pair: the pair's plain z beat the value's

    @property
    def ranked(self) -> list[Truth]:
        return self.defects.get(self.scenario.cause or "", [])

    @property
    def top1(self) -> bool:
        return bool(self.ranked) and self.ranked[0] in self.scenario.truth

    @property
    def top3(self) -> bool:
        return set(self.scenario.truth) <= set(self.ranked[:3])

    @property
    def clean(self) -> bool:
        """No defect reported in any cause analysed."""
        return not any(self.defects.values())

    @property
    def false_positive(self) -> bool:
        """A defect reported that is not an injected segment, in any cause analysed."""
        truth = set(self.scenario.truth)
        return any(key not in truth for keys in self.defects.values() for key in keys)

    @property
    def share_of_rise(self) -> float | None:
        """The largest "N% of the rise" the sentences print, as a fraction (None: none)."""
        shares = [int(n) / 100 for text in self.summaries.values()
                  for n in re.findall(r"(\d+)% of the rise", text)]
        return max(shares, default=None)

    @property
    def counts(self) -> tuple[int, int, int]:
        """(true positives, false positives, false negatives) over every cause analysed."""
        truth = set(self.scenario.truth)
        reported = [key for keys in self.defects.values() for key in keys]
        tp = len(truth & set(reported))
        return tp, len(reported) - tp, len(truth) - tp

    def to_json(self) -> dict:
        s = self.scenario
        return {
            "kind": s.kind, "world": s.world, "seed": s.seed, "rate": s.rate,
            "cause": s.cause,
            "incidents": [i.describe() for i in s.incidents],
            "truth": [_label(t) for t in s.truth],
            "defects": {cause: [_label(k) for k in keys] for cause, keys in self.defects.items()},
            "summaries": self.summaries, "significant_rise": self.significant,
            "top1": self.top1, "top3": self.top3, "clean": self.clean,
            "false_positive": self.false_positive, "share_of_rise": self.share_of_rise,
            "pair_outranks": self.pair_outranks,
        }


def _label(segment: Truth) -> str:
    return ", ".join(f"{d}={v}" for d, v in sorted(segment))


def _config(seed: int, incidents: tuple[Incident, ...], rate: float = RATE) -> SimConfig:
    return SimConfig(rate=rate, seed=seed, time_scale=TIME_SCALE, diurnal_amplitude=0.0,
                     incidents=incidents)


def _count(tally: Tally, config: SimConfig, start: float, windows: int) -> list[Counts]:
    events = generate(config, start - PREROLL, windows * WINDOW + PREROLL)
    return [Counts(c, p) for c, p in tally.count(events, start, WINDOW, windows)]


class Draw:
    """Random incidents within the visible range (see the module docstring)."""

    def __init__(self, rng: random.Random, populations: dict[str, Population],
                 min_excess: float = MIN_EXCESS,
                 known: dict[str, set[str]] | None = None) -> None:
        self.rng = rng
        self.populations = populations
        self.min_excess = min_excess
        self.known = known  # values the world's registry names (the rest fold into other)

    def _values(self, dimension: str, low: float, high: float = 1.0) -> list[str]:
        """Values of `dimension` with a share of orders in [low, high) that the registry
        names (a value folded into `other` cannot be named)."""
        return sorted(v for v, s in self.populations[dimension].shares.items()
                      if low <= s < high and (self.known is None or v in self.known[dimension]))

    def expected(self, items: tuple[tuple[str, str], ...], cause: str) -> float:
        """Contacts of `cause` the segment expects in a window, before any incident."""
        return RATE * WINDOW * self.share(items) * CPO[cause]

    def value(self, dimensions: tuple[str, ...] = DIMENSIONS,
              min_share: float = MIN_SHARE) -> tuple[str, str]:
        dimension = self.rng.choice(dimensions)
        shares = self.populations[dimension].shares
        return dimension, self.rng.choice(sorted(v for v, s in shares.items() if s >= min_share))

    def share(self, items: tuple[tuple[str, str], ...]) -> float:
        share = 1.0
        for dimension, value in items:
            share *= self.populations[dimension].shares[value]
        return share

    def rate_incident(self, kind: str, cause: str | None = None) -> Incident:
        """A rate incident of `kind` ("single" or "pair") of at least `min_excess` contacts."""
        while True:
            if kind == "pair":
                first = self.value()
                second = self.value(tuple(d for d in DIMENSIONS if d != first[0]), 0.0)
                items = tuple(sorted((first, second), key=lambda i: DIMENSIONS.index(i[0])))
            else:
                items = (self.value(),)
            incident = Incident(name=_label(frozenset(items)), match=items,
                                cause=cause or self.rng.choice(sorted(CPO)),
                                multiplier=round(self.rng.uniform(*MULTIPLIER), 1))
            if self.share(items) >= MIN_SHARE and self.excess(incident) >= self.min_excess:
                return incident

    def two_incidents(self) -> tuple[Incident, Incident]:
        """Two single-value incidents of one cause, each adding `min_excess` contacts outside
        the other's segment (where they meet, their multipliers compound)."""
        while True:
            first = self.rate_incident("single")
            for _ in range(20):
                second = self.rate_incident("single", first.cause)
                if (second.match != first.match
                        and self.excess(first, second) >= self.min_excess
                        and self.excess(second, first) >= self.min_excess):
                    return first, second

    def two_sized(self, size: float) -> tuple[Incident, Incident]:
        """Two incidents of one cause in different dimensions, each value expecting 0.8 to
        1.25 x `size` contacts of it before the incident, TWO_MULTIPLIER times each."""
        while True:
            cause = self.rng.choice(sorted(CPO))
            options = {d: [v for v in self._values(d, 0.0)
                           if 0.8 * size <= self.expected(((d, v),), cause) <= 1.25 * size]
                       for d in DIMENSIONS}
            dimensions = sorted(d for d, values in options.items() if values)
            if len(dimensions) >= 2:
                break
        first, second = self.rng.sample(dimensions, 2)
        return tuple(self._incident(((d, self.rng.choice(options[d])),), cause, TWO_MULTIPLIER)
                     for d in (first, second))

    def hot_pair(self) -> tuple[Incident, Incident]:
        """A value x m, and one of its pairs x M in all (an incident on the pair on top): the
        pair's expected z-score at least HOT_Z_MARGIN times the value's, while it holds at most
        HOT_MAX_SHARE of the value's excess and the rest of the value adds `min_excess`.

        z-scores are Freeman-Tukey deviates, about 2 (sqrt(C) - sqrt(E)): with E the value's
        expected contacts and s the pair's share of them, the pair's is ~ 2 sqrt(s E)
        (sqrt(M) - 1), the value's ~ 2 sqrt(E) (sqrt((1 - s) m + s M) - 1). The pair wins
        only with a small m and a much larger M, hence HOT_MULTIPLIER and the search on M."""
        while True:
            source = self.value(("carrier", "warehouse", "category", "region"), 0.03)
            partner_dimension = self.rng.choice([d for d in DIMENSIONS if d != source[0]])
            partner = (partner_dimension, self.rng.choice(self._values(partner_dimension, 0.0)))
            s = self.share((partner,))
            cause = self.rng.choice(sorted(CPO))
            m = round(self.rng.uniform(*HOT_MULTIPLIER), 1)
            expected = self.expected((source,), cause)
            if (not HOT_PARTNER_SHARE[0] <= s <= HOT_PARTNER_SHARE[1]
                    or (1 - s) * (m - 1) * expected < self.min_excess):
                continue
            feasible = [big for big in (m + step / 2 for step in range(1, 80))
                        if math.sqrt(s) * (math.sqrt(big) - 1)
                        >= HOT_Z_MARGIN * (math.sqrt((1 - s) * m + s * big) - 1)
                        and s * (big - 1) <= HOT_MAX_SHARE * ((1 - s) * (m - 1) + s * (big - 1))]
            if feasible:
                big = self.rng.choice(feasible)
                pair = tuple(sorted((source, partner), key=lambda i: DIMENSIONS.index(i[0])))
                return (self._incident((source,), cause, m),
                        self._incident(pair, cause, round(big / m, 2)))

    def small(self) -> Incident:
        """A value with SMALL_SHARE of the orders, x enough to add `min_excess` to 1.5 times
        that many contacts (at most SMALL_MAX_MULTIPLIER)."""
        while True:
            dimension = self.rng.choice(DIMENSIONS)
            values = self._values(dimension, *SMALL_SHARE)
            if not values:
                continue
            item = (dimension, self.rng.choice(values))
            cause = self.rng.choice(sorted(CPO))
            target = self.rng.uniform(self.min_excess, 1.5 * self.min_excess)
            m = 1 + target / self.expected((item,), cause)
            if m <= SMALL_MAX_MULTIPLIER:
                return self._incident((item,), cause, round(m, 1))

    @staticmethod
    def _incident(items: tuple[tuple[str, str], ...], cause: str, x: float) -> Incident:
        return Incident(name=_label(frozenset(items)), match=items, cause=cause, multiplier=x)

    def excess(self, incident: Incident, apart_from: Incident | None = None) -> float:
        """Contacts the incident adds to a window, outside `apart_from`'s segment."""
        share = self.share(incident.match)
        if apart_from is not None and apart_from.match[0][0] != incident.match[0][0]:
            share *= 1 - self.share(apart_from.match)  # attributes are drawn independently
        return RATE * WINDOW * share * CPO[incident.cause] * (incident.multiplier - 1)


def build_world(index: int, seed: int) -> World:
    rng = random.Random(seed * 1000 + index)
    populations = _config(0, ()).populations()
    draw = Draw(rng, populations)
    background = []
    for _ in range(2):
        dimension, value = draw.value(("carrier", "warehouse", "category", "region"), 0.05)
        cause = rng.choice(("where_is_my_order", "late_delivery", "return_refund"))
        background.append(Incident(name=f"{dimension}={value}", match=((dimension, value),),
                                   cause=cause,
                                   multiplier=round(rng.uniform(*BACKGROUND_MULTIPLIER), 1)))
    tally = Tally(DIMENSIONS, MAX_VALUES)
    incidents = tuple(background)
    week_ago = _count(tally, _config(rng.randrange(2**31), incidents), T0 - WEEK, 1)[0]
    recent = _count(tally, _config(rng.randrange(2**31), incidents), T0 - RECENT_WINDOWS * WINDOW,
                    RECENT_WINDOWS)
    return World(index, incidents, tally, tuple(reversed(recent)), week_ago)


def scenarios(world: World, seed: int, min_excess: float = MIN_EXCESS) -> Iterator[Scenario]:
    """Every kind's scenarios of one world: the original kinds from one stream (the same draws
    as before the new kinds were added), each new kind from its own."""
    rng = random.Random(seed * 7919 + world.index)
    draw = Draw(rng, _config(0, ()).populations(), min_excess)
    for kind in ORIGINAL_KINDS:
        for _ in range(PER_WORLD[kind]):
            run_seed = rng.randrange(2**31)
            if kind in ("single", "pair"):
                incident = draw.rate_incident(kind)
                yield Scenario(kind, world.index, run_seed, (incident,),
                               (frozenset(incident.match),), incident.cause)
            elif kind == "two":
                first, second = draw.two_incidents()
                yield Scenario(kind, world.index, run_seed, (first, second),
                               (frozenset(first.match), frozenset(second.match)), first.cause)
            elif kind == "mix":
                costly = rng.choice(world.background)
                share = draw.share(costly.match)
                shift = Incident(name=f"{costly.name} mix", match=costly.match,
                                 share=round(rng.uniform(share + 0.3, 0.9), 2))
                yield Scenario(kind, world.index, run_seed, (shift,), (), costly.cause)
            else:
                yield Scenario(kind, world.index, run_seed, (), (), None, NOISE_RATE)
    for kind in (k for k in KINDS if k not in ORIGINAL_KINDS):
        own = random.Random(f"{seed}/{world.index}/{kind}")
        draw = Draw(own, _config(0, ()).populations(), min_excess, world.tally.registry)
        for _ in range(PER_WORLD[kind]):
            run_seed = own.randrange(2**31)
            if kind == "hot_pair":
                source, hot = draw.hot_pair()
                yield Scenario(kind, world.index, run_seed, (source, hot),
                               (frozenset(source.match),), source.cause)
            elif kind in TWO_SIZES:
                first, second = draw.two_sized(TWO_SIZES[kind])
                yield Scenario(kind, world.index, run_seed, (first, second),
                               (frozenset(first.match), frozenset(second.match)), first.cause)
            else:
                incident = draw.small()
                yield Scenario(kind, world.index, run_seed, (incident,),
                               (frozenset(incident.match),), incident.cause)


def inputs_for(world: World, scenario: Scenario) -> Inputs:
    config = _config(scenario.seed, world.background + scenario.incidents, scenario.rate)
    (current,) = _count(world.tally.copy(), config, T0, 1)
    return Inputs("bench", current, world.recent, world.week_ago.singles)


def evaluate(world: World, scenario: Scenario) -> Outcome:
    """Analyse the scenario's current window against its world's baseline."""
    inputs = inputs_for(world, scenario)
    if scenario.kind in ("mix", "noise"):
        causes = [ALL, *sorted(inputs.current.singles.contacts)]
    else:
        causes = [scenario.cause]
    outcome = Outcome(scenario)
    for cause in causes:  # explain_window, with the world's baseline computed once
        current, baseline = current_snapshot(inputs, cause), world.baseline(inputs, cause)
        if scenario.kind == "hot_pair":
            source, pair = (i.match for i in scenario.incidents)
            outcome.pair_outranks = _plain_z(current, baseline, pair) > _plain_z(
                current, baseline, source)
        expl = explain(current, baseline, cause=cause)
        outcome.defects[cause] = [frozenset(c.key) for c in expl.defects]
        outcome.summaries[cause] = format_explanation(expl)
        outcome.significant[cause] = expl.is_significant_rise
    return outcome


def _plain_z(current: Snapshot, baseline: Snapshot, key: tuple) -> float:
    """The segment's Freeman-Tukey deviate against its own baseline rate, no shrinkage, mix or
    baseline noise: the bench's own yardstick of "a pair out-ranks its value on z", the same
    for every version of streams/rca.py."""
    cur, base = current.segments[key], baseline.segments[key]
    expected = base.contacts / base.orders * cur.orders if base.orders else 0.0
    return (math.sqrt(cur.contacts) + math.sqrt(cur.contacts + 1)
            - math.sqrt(4 * expected + 1))
