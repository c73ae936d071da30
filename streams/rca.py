"""Root cause of a change in a contacts-per-order rate: which attribute values explain it.

`explain` compares a current window with a baseline over the contacts and orders of every
attribute value and pair of values, and ranks the segments whose own rate rose. The rate is a
ratio, so volumes are compared as shares and rates, never as raw counts: the baseline usually
holds a different number of orders than the current window. How and why: docs/root-cause.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

Key = tuple[tuple[str, str], ...]
"""A segment: (("carrier", "acme"),) or (("carrier", "acme"), ("warehouse", "sea8"))."""

# A pair replaces its parent value when it holds at least PAIR_SHARE of the parent's excess
# contacts and the rest of the parent (parent minus pair) shows no significant rise, its
# z-score below REST_Z: then the pair is the more specific answer that explains nearly as much.
PAIR_SHARE = 0.8
REST_Z = 3.0


@dataclass(frozen=True)
class Segment:
    """Counts of one attribute value (or pair of values) in one window. A segment has the same
    key (same order of its items) in every window compared."""

    key: Key
    contacts: float  # contacts of the cause joined to orders in the segment, in the window
    orders: float  # orders in the segment, in the window


@dataclass(frozen=True)
class Snapshot:
    """One window (current or baseline) for one cause."""

    contacts: float  # all contacts of the cause in the window, attributed or not
    orders: float  # all orders in the window
    segments: dict[Key, Segment] = field(default_factory=dict)
    windows: float = 1.0  # how many windows' worth of evidence the counts hold (see below)
    pair_windows: float | None = None  # the same for pairs, when they come from other windows

    def evidence(self, key: Key) -> float:
        """How many windows' worth of evidence the counts of segment `key` hold: a baseline's
        pairs may come from fewer windows than its single values (a week ago has no pairs)."""
        if len(key) == 2 and self.pair_windows is not None:
            return self.pair_windows
        return self.windows


@dataclass(frozen=True)
class Contribution:
    """One segment's own part in the change of the overall rate.

    The effects are in units of the overall rate. Over the values of one dimension that hold
    every order and every attributed contact they add up to the overall change (contacts not
    joined to an order are the rest): rate_effect + mix_effect + interaction =
    segment contacts / all orders, current minus baseline.
    """

    key: Key
    current_rate: float
    baseline_rate: float  # the overall baseline rate stands in when the segment had no orders
    current_orders: float
    baseline_orders: float
    current_share: float  # of all orders in the window
    baseline_share: float
    explanatory_power: float | None  # share of the overall change; None if it did not change
    surprise: float  # Jensen-Shannon terms of contact shares plus order shares, in bits
    rate_effect: float  # baseline_share * (current_rate - baseline_rate): a defect
    mix_effect: float  # (current_share - baseline_share) * baseline_rate: not a defect
    interaction: float  # (current_share - baseline_share) * (current_rate - baseline_rate)


@dataclass(frozen=True)
class Candidate(Contribution):
    """A ranked segment. `expected_contacts`, `excess_contacts` and `z_score` are the numbers
    the search used: the segment's current contacts against what its baseline rates predict
    for its current orders (its mix within other dimensions included), after removing the
    defects found before it. Before mix adjustment and shrinkage, excess_contacts / all current
    orders equals rate_effect + interaction: the contacts a defect added."""

    expected_contacts: float
    excess_contacts: float
    z_score: float
    is_defect: bool
    parent: Candidate | None = None  # the single value this pair was found within


@dataclass(frozen=True)
class Explanation:
    """The overall change of one cause's rate and its ranked candidates, defects first."""

    cause: str
    current_rate: float
    baseline_rate: float
    ratio: float | None  # current / baseline; None when the baseline rate is zero
    current_orders: float
    baseline_orders: float
    z_score: float
    is_significant_rise: bool
    candidates: tuple[Candidate, ...]

    @property
    def change(self) -> float:
        return self.current_rate - self.baseline_rate

    @property
    def defects(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.is_defect)


def combine_baselines(snapshots: list[Snapshot]) -> Snapshot:
    """The mean of the counts of several baseline windows (a segment absent from one counts 0).

    The caller averages, e.g., the same window a week earlier and the mean of recent windows.
    A mean of n windows is as noisy as one window of n times the counts, so `windows` records
    that evidence (n^2 / sum(1 / windows_i)): the significance test uses it. `pair_windows` is
    combined the same way, when a snapshot sets it.
    """
    if not snapshots:
        return Snapshot(contacts=0.0, orders=0.0)
    n = len(snapshots)
    pair_windows = None
    if any(s.pair_windows is not None for s in snapshots):
        pair_windows = n * n / sum(1 / (s.pair_windows or s.windows) for s in snapshots)
    sums: dict[Key, list[float]] = {}
    for snapshot in snapshots:
        for segment in snapshot.segments.values():
            total = sums.setdefault(segment.key, [0.0, 0.0])
            total[0] += segment.contacts
            total[1] += segment.orders
    return Snapshot(
        contacts=sum(s.contacts for s in snapshots) / n,
        orders=sum(s.orders for s in snapshots) / n,
        segments={key: Segment(key, c / n, o / n) for key, (c, o) in sums.items()},
        windows=n * n / sum(1 / s.windows for s in snapshots),
        pair_windows=pair_windows,
    )


def explain(
    current: Snapshot,
    baseline: Snapshot,
    *,
    cause: str = "all",
    top: int = 5,
    min_orders: float = 30.0,
    min_z: float = 4.0,
) -> Explanation:
    """Rank the segments that explain the change of `cause`'s rate from baseline to current.

    A candidate is a defect when its contacts exceed what its baseline rates predict for its
    current orders with a z-score of at least `min_z` (a Poisson deviate, widened for the
    baseline's own noise), and it has at least `min_orders` orders now. Segments below
    `min_orders` are never reported. Defects are ordered by excess contacts; non-defect
    candidates (largest mix shifts first) follow them when the overall rate rose.
    """
    current_rate = _rate(current.contacts, current.orders)
    baseline_rate = _rate(baseline.contacts, baseline.orders)
    expected = baseline_rate * current.orders
    evidence = baseline.windows * baseline.orders
    z_score = _z(current.contacts, expected, 1 + current.orders / evidence if evidence > 0 else 1)
    comparable = current.orders > 0 and baseline.orders > 0
    candidates: tuple[Candidate, ...] = ()
    if comparable:
        candidates = _Search(current, baseline, min_orders, min_z).run(top)
    return Explanation(
        cause=cause,
        current_rate=current_rate,
        baseline_rate=baseline_rate,
        ratio=current_rate / baseline_rate if baseline_rate > 0 else None,
        current_orders=current.orders,
        baseline_orders=baseline.orders,
        z_score=z_score,
        is_significant_rise=comparable and current.orders >= min_orders and z_score >= min_z,
        candidates=candidates,
    )


def label(key: Key) -> str:
    """(("carrier","acme"),("warehouse","sea8")) -> 'carrier=acme, warehouse=sea8'."""
    return ", ".join(f"{dimension}={value}" for dimension, value in key)


def format_explanation(expl: Explanation) -> str:
    """One sentence for an alert or a terminal, e.g. 'where_is_my_order rose 3.1x (0.15 vs 0.05
    baseline); 82% of the rise comes from carrier=acme (CPO 0.31 vs 0.05 baseline), within it
    warehouse=sea8 (CPO 0.9 vs 0.05 baseline)'."""
    rates = f"{_num(expl.current_rate)} vs {_num(expl.baseline_rate)} baseline"
    if expl.ratio is None:
        missing = "no baseline" if expl.baseline_orders == 0 else "baseline 0"
        head = f"{expl.cause} at {_num(expl.current_rate)} ({missing})"
    elif expl.change > 0:
        head = f"{expl.cause} rose {expl.ratio:.1f}x ({rates})"
    elif expl.change < 0:
        head = f"{expl.cause} fell to {expl.ratio:.1f}x ({rates})"
    else:
        head = f"{expl.cause} unchanged ({rates})"
    defects = expl.defects
    if not defects:
        mix = [c for c in expl.candidates if c.mix_effect > 0]
        if expl.change > 0 and mix:
            c = mix[0]
            return (
                f"{head}; no attribute value's own rate rose significantly: a mix shift, "
                f"{label(c.key)} is {c.current_share:.0%} of orders vs "
                f"{c.baseline_share:.0%} baseline (CPO {_num(c.baseline_rate)})"
            )
        return f"{head}; no attribute value's own rate rose significantly"
    parts = [_describe(defects[0], lead=expl.change > 0)]
    parts += [f"also {_describe(c, lead=False)}" for c in defects[1:3]]
    return f"{head}; " + "; ".join(parts)


def to_json(expl: Explanation) -> dict:
    """The explanation as plain JSON types (no NaN or infinity) for the HTTP endpoint."""
    return {
        "cause": expl.cause,
        "summary": format_explanation(expl),
        "current_rate": expl.current_rate,
        "baseline_rate": expl.baseline_rate,
        "ratio": expl.ratio,
        "change": expl.change,
        "current_orders": expl.current_orders,
        "baseline_orders": expl.baseline_orders,
        "z_score": expl.z_score,
        "is_significant_rise": expl.is_significant_rise,
        "candidates": [_candidate_json(c) for c in expl.candidates],
    }


def _candidate_json(c: Candidate) -> dict:
    return {
        "segment": dict(c.key),
        "label": label(c.key),
        "is_defect": c.is_defect,
        "current_rate": c.current_rate,
        "baseline_rate": c.baseline_rate,
        "current_orders": c.current_orders,
        "baseline_orders": c.baseline_orders,
        "current_share": c.current_share,
        "baseline_share": c.baseline_share,
        "explanatory_power": c.explanatory_power,
        "surprise": c.surprise,
        "rate_effect": c.rate_effect,
        "mix_effect": c.mix_effect,
        "interaction": c.interaction,
        "expected_contacts": c.expected_contacts,
        "excess_contacts": c.excess_contacts,
        "z_score": c.z_score,
        "parent": None if c.parent is None else _candidate_json(c.parent),
    }


def _describe(c: Candidate, *, lead: bool) -> str:
    own = f"(CPO {_num(c.current_rate)} vs {_num(c.baseline_rate)} baseline)"
    if c.parent is None:
        where = f"{label(c.key)} {own}"
    else:
        inner = label(tuple(item for item in c.key if item not in c.parent.key))
        parent = f"(CPO {_num(c.parent.current_rate)} vs {_num(c.parent.baseline_rate)} baseline)"
        where = f"{label(c.parent.key)} {parent}, within it {inner} {own}"
    if lead and c.explanatory_power is not None:
        return f"{_share_of_rise(c.explanatory_power):.0%} of the rise comes from {where}"
    return where


def _share_of_rise(explanatory_power: float) -> float:
    """The explanatory power as a share of the rise, within [0, 1]: a segment can move the
    overall rate by more than it moved (others fell meanwhile, or the rise is small next to
    the segment's), but a rise cannot come more than all from one place."""
    return min(max(explanatory_power, 0.0), 1.0)


def _num(x: float) -> str:
    return f"{x:.2g}"


def _rate(contacts: float, orders: float) -> float:
    return contacts / orders if orders > 0 else 0.0


def _z(actual: float, expected: float, noise: float) -> float:
    """Freeman-Tukey deviate of a Poisson count, close to a standard normal even when only a
    few contacts are expected (8 contacts against 2 expected: (8 - 2) / sqrt(2) = 4.2 says
    1 in 90,000, the Poisson tail is 1 in 900, this deviate 2.8), divided by sqrt(noise): the expectation comes from a baseline that is itself a count, and
    its variance adds expected * current orders / baseline orders to the Poisson one."""
    deviate = math.sqrt(actual) + math.sqrt(actual + 1) - math.sqrt(4 * expected + 1)
    return deviate / math.sqrt(noise)


def _js_term(p: float, q: float) -> float:
    """One element's term of the Jensen-Shannon divergence (Adtributor's surprise), in bits."""
    m = (p + q) / 2
    return 0.5 * sum(x * math.log2(x / m) for x in (p, q) if x > 0)


@dataclass
class _Cell:
    """A segment's current contacts and the contacts its baseline rates predict for them."""

    actual: float
    expected: float
    noise: float = 1.0  # variance of the excess over that of a Poisson count (see _z)

    @property
    def excess(self) -> float:
        return self.actual - self.expected

    @property
    def z(self) -> float:
        return _z(self.actual, self.expected, self.noise)

    def minus(self, other: _Cell) -> _Cell:
        actual = max(self.actual - other.actual, 0.0)
        return _Cell(actual, max(self.expected - other.expected, 0.0), self.noise)


class _Search:
    """Greedy explain-away search over single values and pairs (see docs/root-cause.md)."""

    def __init__(self, current: Snapshot, baseline: Snapshot, min_orders: float, min_z: float):
        self.current, self.baseline = current, baseline
        self.min_orders, self.min_z = min_orders, min_z
        self.keys: dict[frozenset, Key] = {}
        self.cur: dict[frozenset, Segment] = {}
        self.base: dict[frozenset, Segment] = {}
        for snapshot, into in ((current, self.cur), (baseline, self.base)):
            for segment in snapshot.segments.values():
                fs = frozenset(segment.key)
                self.keys.setdefault(fs, segment.key)
                into[fs] = segment
        self.baseline_rate = _rate(baseline.contacts, baseline.orders)
        self.cells = self._cells()

    def _orders(self, fs: frozenset, window: dict[frozenset, Segment]) -> float:
        segment = window.get(fs)
        return segment.orders if segment else 0.0

    def _contacts(self, fs: frozenset, window: dict[frozenset, Segment]) -> float:
        segment = window.get(fs)
        return segment.contacts if segment else 0.0

    def _noise(self, fs: frozenset) -> float:
        """1 + current orders / baseline evidence: how much the baseline's own noise widens
        the spread of the excess (the prior of the shrunk rate counts as min_orders orders).
        The evidence is that of the windows the segment's baseline counts come from: a pair's
        are the recent windows only, fewer than its values' when a week ago is averaged in."""
        windows = self.baseline.evidence(self.keys[fs])
        evidence = windows * self._orders(fs, self.base) + self.min_orders
        if evidence <= 0:  # no baseline orders and no prior: the overall rate stood in
            evidence = self.baseline.windows * self.baseline.orders
        return 1 + self._orders(fs, self.cur) / evidence

    def _smoothed_rate(self, fs: frozenset, prior: float) -> float:
        """Baseline rate shrunk toward `prior` with the weight of `min_orders` orders, so that a
        segment with 2 baseline orders and 0 contacts does not predict a rate of zero."""
        orders = self._orders(fs, self.base) + self.min_orders
        contacts = self._contacts(fs, self.base) + self.min_orders * prior
        return contacts / orders if orders > 0 else prior

    def _cells(self) -> dict[frozenset, _Cell]:
        """Expected current contacts of every segment at its baseline rates, following mix.

        A single value's expectation follows its mix of partners in each other dimension,
        through its pairs: the sum of partner pairs' baseline rates times their current orders.
        A pair has no finer counts: it takes the mix drift (as a factor) that its parents show
        along the dimensions outside the pair, as if it were composed like them. Where
        dimensions disagree the largest expectation is kept, the one with the fewest defects.
        So a value whose rate rose only because its orders moved toward high-rate partners is
        no defect."""
        singles = [fs for fs in self.keys if len(fs) == 1]
        pairs = [fs for fs in self.keys if len(fs) == 2]
        smoothed = {fs: self._smoothed_rate(fs, self.baseline_rate) for fs in singles}
        flat: dict[frozenset, float] = {}
        groups: dict[frozenset, dict[str, list[frozenset]]] = {fs: {} for fs in singles}
        for fs in pairs:
            prior = max((smoothed.get(frozenset([i]), 0.0) for i in fs), default=0.0)
            rate = self._smoothed_rate(fs, prior or self.baseline_rate)
            flat[fs] = rate * self._orders(fs, self.cur)
            for item in fs:
                (partner,) = fs - {item}
                groups.setdefault(frozenset([item]), {}).setdefault(partner[0], []).append(fs)
        cells: dict[frozenset, _Cell] = {}
        drift: dict[frozenset, dict[str, float]] = {}
        for fs in singles:
            orders = self._orders(fs, self.cur)
            expected = smoothed[fs] * orders
            drift[fs] = {}
            for dimension, group in groups[fs].items():
                covered = sum(self._orders(p, self.cur) for p in group)
                rest = smoothed[fs] * max(orders - covered, 0.0)
                within = sum(flat[p] for p in group) + rest
                drift[fs][dimension] = within / expected if expected > 0 else 1.0
            factor = max([1.0, *drift[fs].values()])
            cells[fs] = _Cell(self._contacts(fs, self.cur), expected * factor, self._noise(fs))
        for fs in pairs:
            own = {dimension for dimension, _ in fs}
            factor = max(
                [1.0]
                + [
                    f
                    for parent in (frozenset([item]) for item in fs)
                    for dimension, f in drift.get(parent, {}).items()
                    if dimension not in own
                ]
            )
            cells[fs] = _Cell(self._contacts(fs, self.cur), flat[fs] * factor, self._noise(fs))
        return cells

    def _defect(self, cell: _Cell) -> bool:
        return cell.excess > 0 and cell.z >= self.min_z

    def run(self, top: int) -> tuple[Candidate, ...]:
        """Name the answer that explains the most excess contacts (`_choose`), remove its value
        from every other segment, repeat. The defects are then ordered by excess contacts, the
        size of the problem; non-defects (mix shifts) follow."""
        live = {
            fs: cell
            for fs, cell in self.cells.items()
            if self._orders(fs, self.cur) >= self.min_orders
        }
        pairs_of: dict[frozenset, list[frozenset]] = {}
        for fs in live:
            if len(fs) == 2:
                for item in fs:
                    pairs_of.setdefault(frozenset([item]), []).append(fs)
        defects: list[Candidate] = []
        while len(defects) < top:
            answer = self._choose(live, pairs_of)
            if answer is None:
                break
            reported, value = answer
            parent = None if value == reported else self._candidate(value, live[value])
            defects.append(
                self._candidate(reported, live[reported], is_defect=True, parent=parent)
            )
            live = {
                fs: cell.minus(self._overlap(fs, value))
                for fs, cell in live.items()
                if not value <= fs
            }
        defects.sort(key=lambda c: -c.excess_contacts)
        mix: list[Candidate] = []
        if self.current.contacts / self.current.orders > self.baseline_rate:
            # The loop ended with no defect left (or `top` reached): the rest are not defects.
            singles = [self._candidate(fs, cell) for fs, cell in live.items() if len(fs) == 1]
            mix = sorted((c for c in singles if c.mix_effect > 0), key=lambda c: -c.mix_effect)
        return tuple(defects + mix[: max(top - len(defects), 0)])

    def _choose(
        self, live: dict[frozenset, _Cell], pairs_of: dict[frozenset, list[frozenset]]
    ) -> tuple[frozenset, frozenset] | None:
        """(segment to name, the single value it lies in): of every value's answer (`_answer`),
        the one that explains the most excess contacts, unless its value is the shadow of
        other incidents (`_shadow_of`); on a tie, the more certain value.

        Why excess and not z: the z-score favours small, concentrated slices, and among the
        hundreds of slices of a real source one is often more certain than the source itself
        (a pair inside it, or the pair's partner, whose whole rise is that pair). Excess is
        additive: a shadow holds part of its source's excess (the part in one value of another
        dimension), so it explains less. Noise is kept out by naming only defects."""
        answers = {}
        for fs, cell in live.items():
            if len(fs) == 1 and cell.excess > 0:
                answer = self._answer(fs, live, pairs_of.get(fs, []))
                if answer is not None:
                    answers[fs] = answer
        ranked = sorted(
            answers,
            key=lambda v: (-live[answers[v]].excess, -live[v].z, sorted(answers[v]), sorted(v)),
        )
        if not ranked:
            return None
        value, seen = ranked[0], {ranked[0]}
        while answers[value] == value:  # a pair within it is already parsimonious
            source = self._shadow_of(value, ranked, seen, live, pairs_of)
            if source is None:
                break
            value = source
            seen.add(value)
        return answers[value], value

    def _shadow_of(
        self,
        value: frozenset,
        ranked: list[frozenset],
        seen: set[frozenset],
        live: dict[frozenset, _Cell],
        pairs_of: dict[frozenset, list[frozenset]],
    ) -> frozenset | None:
        """The source whose shadow `value` is, if any: of the values with an answer in another
        dimension whose overlap with `value` rose (z >= REST_Z), the first, when the rest of
        `value` outside all of them (`_rest`) shows no rise of its own (z below REST_Z) and
        falls short of `value`'s own rise (z <= -REST_Z against `value`'s ratio of actual to
        expected contacts). A value can explain the most excess by holding the shadows of two
        incidents (region=eu-west holds 41% of two carriers that rose), or a shadow and a pair
        incident, or a pair incident that holds a little under PAIR_SHARE of it by noise; then
        its rise is where it meets them, its other orders did not rise, and the first of them
        (with its answer, maybe that very pair within it) goes first. A source's rise is spread
        over every other dimension: the rest of it rose too."""
        cell = live[value]
        if cell.expected <= 0:
            return None
        groups: dict[str, list[frozenset]] = {}  # by dimension, in the order of `ranked`
        for other in ranked:
            overlap = live.get(value | other) if other != value else None
            if overlap is not None and overlap.excess > 0 and overlap.z >= REST_Z:
                groups.setdefault(next(iter(other))[0], []).append(other)
        for dimension, group in groups.items():
            rest = self._rest(value, dimension, group, live, pairs_of.get(value, []))
            if group[0] not in seen and rest is not None:
                ratio = cell.actual / cell.expected
                as_risen = _Cell(rest.actual, rest.expected * ratio, rest.noise)
                if rest.z < REST_Z and as_risen.z <= -REST_Z:
                    return group[0]
        return None

    def _rest(
        self,
        value: frozenset,
        dimension: str,
        group: list[frozenset],
        live: dict[frozenset, _Cell],
        pairs: list[frozenset],
    ) -> _Cell | None:
        """`value` outside the values `group` of `dimension`: its contacts minus theirs (values
        of one dimension share no order, so this is exact), and its expected contacts times
        the share of them that its pairs along `dimension` expect outside `group` (a value's
        and its pairs' expectations are shrunk and mix-adjusted apart, so they need not add
        up; their proportions do). None when the rest holds fewer than min_orders or
        1 - PAIR_SHARE of `value`'s orders: too little to judge."""
        orders = self._orders(value, self.cur)
        inside = [value | g for g in group]
        rest_orders = orders - sum(self._orders(fs, self.cur) for fs in inside)
        cell = live[value]
        along = [fs for fs in pairs if fs in live and dimension in dict(fs)]
        total = sum(live[fs].expected for fs in along)
        if rest_orders < max(self.min_orders, (1 - PAIR_SHARE) * orders) or total <= 0:
            return None
        share = 1 - sum(live[fs].expected for fs in inside) / total
        actual = cell.actual - sum(live[fs].actual for fs in inside)
        return _Cell(max(actual, 0.0), max(cell.expected * share, 0.0), cell.noise)

    def _answer(
        self, value: frozenset, live: dict[frozenset, _Cell], pairs: list[frozenset]
    ) -> frozenset | None:
        """What explains a value's rise, parsimoniously: a pair within it that satisfies the
        pair rule (the largest such defect), else the value if it is a defect, else nothing. So
        a pair is never named alone, and never when the rest of its value rose too."""
        confined = [
            fs
            for fs in pairs
            if fs in live and self._defect(live[fs]) and self._confined(fs, value, live)
        ]
        if confined:
            return min(confined, key=lambda fs: (-live[fs].excess, -live[fs].z, sorted(fs)))
        return value if self._defect(live[value]) else None

    @staticmethod
    def _confined(pair: frozenset, value: frozenset, live: dict[frozenset, _Cell]) -> bool:
        """The pair rule: the pair holds at least PAIR_SHARE of the value's excess contacts and
        the rest of the value shows no rise of its own (z below REST_Z)."""
        p, c = live[value], live[pair]
        return c.excess >= PAIR_SHARE * p.excess and p.minus(c).z < REST_Z

    def _overlap(self, fs: frozenset, value: frozenset) -> _Cell:
        """The part of segment `fs` that has the single value `value`. Exact when the counts
        hold it: a value of another dimension (their pair); another value of the same
        dimension shares nothing. A pair and a third value would need a triple, which is not
        counted: it is estimated from each pair of the three, as the share of that pair that
        also has the third value x (taken as x's share of orders within one of the pair's
        values), and the estimate with the largest excess is removed, so that a shadow is
        removed rather than left behind."""
        values = dict(fs)
        ((dimension, item),) = value
        if values.get(dimension, item) != item:
            return _Cell(0.0, 0.0)
        union = fs | value
        if union in self.cells:
            return self.cells[union]
        estimates = []
        for x in union:
            known = self.cells.get(union - {x})
            for y in union - {x}:
                y_orders = self._orders(frozenset([y]), self.cur)
                if known is not None and y_orders > 0:
                    f = self._orders(frozenset([x, y]), self.cur) / y_orders
                    estimates.append(_Cell(known.actual * f, known.expected * f, known.noise))
        return max(estimates, key=lambda cell: cell.excess, default=_Cell(0.0, 0.0))

    def _candidate(
        self,
        fs: frozenset,
        cell: _Cell,
        *,
        is_defect: bool = False,
        parent: Candidate | None = None,
    ) -> Candidate:
        own = contribution(self.current, self.baseline, self.keys[fs])
        return Candidate(
            **{f.name: getattr(own, f.name) for f in fields(Contribution)},
            expected_contacts=cell.expected,
            excess_contacts=cell.excess,
            z_score=cell.z,
            is_defect=is_defect,
            parent=parent,
        )


def contribution(current: Snapshot, baseline: Snapshot, key: Key) -> Contribution:
    """The segment's own numbers: shift-share effects, explanatory power and surprise."""
    empty = Segment(key, 0.0, 0.0)
    cur = current.segments.get(key, empty)
    base = baseline.segments.get(key, empty)
    r_cur = _rate(cur.contacts, cur.orders)
    r_base = (
        _rate(base.contacts, base.orders)
        if base.orders > 0
        else _rate(baseline.contacts, baseline.orders)
    )
    w_cur, w_base = _share(cur.orders, current.orders), _share(base.orders, baseline.orders)
    return Contribution(
        key=key,
        current_rate=r_cur,
        baseline_rate=r_base,
        current_orders=cur.orders,
        baseline_orders=base.orders,
        current_share=w_cur,
        baseline_share=w_base,
        explanatory_power=_explanatory_power(current, baseline, cur, base),
        surprise=_js_term(
            _share(base.contacts, baseline.contacts), _share(cur.contacts, current.contacts)
        )
        + _js_term(w_base, w_cur),
        rate_effect=w_base * (r_cur - r_base),
        mix_effect=(w_cur - w_base) * r_base,
        interaction=(w_cur - w_base) * (r_cur - r_base),
    )


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def _explanatory_power(
    current: Snapshot, baseline: Snapshot, cur: Segment, base: Segment
) -> float | None:
    """Adtributor's explanatory power for a derived measure m1/m2: the change of the overall
    rate when only this segment's counts move from baseline to current, over the overall
    change. The baseline is first scaled to the current order volume (k), so a segment that
    merely grew with all traffic explains nothing."""
    if current.orders <= 0 or baseline.orders <= 0:
        return None
    r_cur = current.contacts / current.orders
    r_base = baseline.contacts / baseline.orders
    if math.isclose(r_cur, r_base, rel_tol=1e-9, abs_tol=1e-15):
        return None
    k = current.orders / baseline.orders
    d_contacts = cur.contacts - k * base.contacts
    d_orders = cur.orders - k * base.orders
    denominator = current.orders + d_orders  # scaled baseline orders + this segment's change
    if denominator <= 0:
        return None
    return (d_contacts - d_orders * r_base) / denominator / (r_cur - r_base)
