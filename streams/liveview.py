"""The live view of `cpo demo`: what the exporter and the workers report, once a second.

No I/O here: the demo scrapes `/metrics`, parses it with `streams.processes.parse_metrics` and
hands the samples over. `exporter_view` keeps the smallest window's gauges, `worker_view` sums
the workers' counters, `LiveState` remembers the last minute, and `render` draws it with rich
(`status_line` is the one-line form for logs and CI).

An attribute value is judged against the rest of its dimension, not against the cause's
overall rate: the overall rate also counts contacts that never joined an order, so every value
would look a few percent better than it is. Values are ranked by how surprising their excess of
contacts is (a two-sample Poisson z-score), because a raw rate ranks tiny segments with one
contact first.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from streams.processes import Sample
from streams.windows import ALL

Samples = Mapping[Sample, float]
Counts = Mapping[str, tuple[float, float]]  # attribute value -> (contacts, orders)

HISTORY = 60  # samples kept for the sparklines: a minute at one a second
THROUGHPUT_SPAN = 5.0  # seconds of counter history behind orders/s and contacts/s
MIN_EXPECTED = 5.0  # a value is ranked once the dimension's rate predicts this many contacts
TOP_VALUES = 8
TOP_ROOT_CAUSES = 3
SETTLE_FACTOR = 1.5  # orders/s at most this times the simulated rate: the warmup burst is over
_BLOCKS = "▁▂▃▄▅▆▇█"


def _labels(key: Sample) -> dict[str, str]:
    return dict(key[1])


class RootCause(NamedTuple):
    score: float
    cause: str
    dimension: str
    value: str


@dataclass(frozen=True)
class ExporterView:
    """One exporter scrape, reduced to one window."""

    window: str
    read_at: float  # wall clock at which the window ends (when the exporter read Redis)
    refreshed_at: float  # the exporter's refresh timestamp: equal views have equal ones
    orders: float
    rates: dict[str, float]  # cause -> CPO, `all` included
    rates_by_value: dict[tuple[str, str, str], float]  # (cause, dimension, value) -> CPO
    orders_by_value: dict[tuple[str, str], float]  # (dimension, value) -> orders
    root_causes: tuple[RootCause, ...] = ()  # best first; empty when the exporter has none


EXPORTER_METRICS = ("cpo_exporter_last_refresh_timestamp_seconds", "cpo_exporter_scrape_seconds",
                    "cpo_window_orders", "cpo_defect_rate", "cpo_root_cause_score")
WORKER_METRICS = ("cpo_orders_total", "cpo_contacts_total", "cpo_consumer_lag_records",
                  "cpo_records_rejected_total", "cpo_records_duplicate_total",
                  "cpo_pending_contacts", "cpo_worker_ready")


def exporter_view(samples: Samples, window: str) -> ExporterView:
    rates: dict[str, float] = {}
    by_value: dict[tuple[str, str, str], float] = {}
    orders_by_value: dict[tuple[str, str], float] = {}
    roots: list[RootCause] = []
    orders = refreshed_at = read_seconds = 0.0
    for key, value in samples.items():
        name, labels = key[0], _labels(key)
        if name == "cpo_exporter_last_refresh_timestamp_seconds":
            refreshed_at = value
        elif name == "cpo_exporter_scrape_seconds":
            read_seconds = value
        elif labels.get("window") != window:
            continue
        elif name == "cpo_window_orders":
            orders = value
        elif name == "cpo_defect_rate":
            rates[labels["cause"]] = value
        elif name == "cpo_defect_rate_by_attribute":
            by_value[(labels["cause"], labels["dimension"], labels["value"])] = value
        elif name == "cpo_window_orders_by_attribute":
            orders_by_value[(labels["dimension"], labels["value"])] = value
        elif name == "cpo_root_cause_score":
            roots.append(RootCause(value, labels["cause"], labels["dimension"], labels["value"]))
    roots.sort(reverse=True)
    return ExporterView(window, refreshed_at - read_seconds, refreshed_at, orders, rates,
                        by_value, orders_by_value, tuple(roots[:TOP_ROOT_CAUSES]))


@dataclass(frozen=True)
class WorkerView:
    """The workers' metrics, summed as PromQL `sum` would (pending contacts: the maximum)."""

    orders: float = 0.0
    contacts: float = 0.0
    lag: float = 0.0
    rejected: float = 0.0
    duplicates: float = 0.0
    pending: float = 0.0  # a global gauge every worker reads from Redis, so not summed
    ready: int = 0
    workers: int = 0


def worker_view(scrapes: Sequence[Samples | None]) -> WorkerView:
    """`None` stands for a worker that did not answer: counted, never ready."""
    sums = dict.fromkeys(WORKER_METRICS, 0.0)
    pending, ready = 0.0, 0
    for samples in scrapes:
        for (name, _), value in (samples or {}).items():
            if name == "cpo_pending_contacts":
                pending = max(pending, value)
            elif name == "cpo_worker_ready":
                ready += value == 1
            elif name in sums:
                sums[name] += value
    return WorkerView(sums["cpo_orders_total"], sums["cpo_contacts_total"],
                      sums["cpo_consumer_lag_records"], sums["cpo_records_rejected_total"],
                      sums["cpo_records_duplicate_total"], pending, ready, len(scrapes))


class Throughput:
    """Orders/s and contacts/s over the last THROUGHPUT_SPAN seconds of summed counters."""

    def __init__(self, span: float = THROUGHPUT_SPAN) -> None:
        self.span = span
        self.history: deque[tuple[float, float, float]] = deque()

    def add(self, at: float, orders: float, contacts: float) -> None:
        if self.history and (orders < self.history[-1][1] or contacts < self.history[-1][2]):
            self.history.clear()  # a worker restarted and its counters began again at zero
        self.history.append((at, orders, contacts))
        while len(self.history) > 2 and at - self.history[1][0] >= self.span:
            self.history.popleft()

    def rates(self) -> tuple[float, float] | None:
        if len(self.history) < 2:
            return None
        (t0, o0, c0), (t1, o1, c1) = self.history[0], self.history[-1]
        if t1 <= t0:
            return None
        return (o1 - o0) / (t1 - t0), (c1 - c0) / (t1 - t0)


class Comparison(NamedTuple):
    """One attribute value against the rest of its dimension, for one cause."""

    contacts: float
    orders: float
    rest_contacts: float
    rest_orders: float

    @property
    def rate(self) -> float:
        return self.contacts / self.orders if self.orders else math.nan

    @property
    def rest_rate(self) -> float:
        return self.rest_contacts / self.rest_orders if self.rest_orders else math.nan

    @property
    def expected(self) -> float:
        """Contacts the value would have at the pooled rate of the whole dimension."""
        total = self.orders + self.rest_orders
        return self.orders * (self.contacts + self.rest_contacts) / total if total else math.nan

    @property
    def lift(self) -> float:
        return self.rate / self.rest_rate if self.rest_contacts and self.orders else math.nan

    @property
    def z(self) -> float:
        """The rate difference in standard deviations of a difference of two Poisson rates,
        under the pooled rate: both sides' counts are noisy, not just the value's."""
        if not self.orders or not self.rest_orders or not self.contacts + self.rest_contacts:
            return math.nan
        pooled = (self.contacts + self.rest_contacts) / (self.orders + self.rest_orders)
        spread = math.sqrt(pooled * (1 / self.orders + 1 / self.rest_orders))
        return (self.rate - self.rest_rate) / spread


def dimension_counts(view: ExporterView, cause: str, dimension: str) -> dict[str, tuple[float, float]]:
    """{value: (contacts of the cause, orders)} for every value of the dimension in the window.

    A value whose orders had no contact of the cause has no rate series; it counts with zero.
    """
    counts = {}
    for (dim, value), orders in view.orders_by_value.items():
        if dim == dimension:
            rate = view.rates_by_value.get((cause, dim, value), 0.0)
            counts[value] = (round(rate * orders), orders)
    return counts


def versus_rest(counts: Counts, value: str) -> Comparison:
    contacts, orders = counts.get(value, (0.0, 0.0))
    all_contacts = sum(c for c, _ in counts.values())
    all_orders = sum(o for _, o in counts.values())
    return Comparison(contacts, orders, all_contacts - contacts, all_orders - orders)


class Ranked(NamedTuple):
    cause: str
    dimension: str
    value: str
    comparison: Comparison


def worst_values(view: ExporterView, limit: int = TOP_VALUES,
                 min_expected: float = MIN_EXPECTED) -> list[Ranked]:
    """The attribute values with the most surprising excess of contacts, worst first."""
    pairs = {(cause, dim) for cause, dim, _ in view.rates_by_value}
    ranked = []
    for cause, dim in pairs:
        counts = dimension_counts(view, cause, dim)
        for value in counts:
            comparison = versus_rest(counts, value)
            if comparison.expected >= min_expected and comparison.z > 0:
                ranked.append(Ranked(cause, dim, value, comparison))
    ranked.sort(key=lambda r: (-r.comparison.z, r.cause, r.dimension, r.value))
    return ranked[:limit]


def sparkline(values: Iterable[float | None], width: int = HISTORY) -> str:
    """Unicode bars from 0 to the largest value shown; a missing value is a blank."""
    shown = list(values)[-width:]
    top = max((v for v in shown if v is not None and math.isfinite(v)), default=0.0)
    bars = []
    for v in shown:
        if v is None or not math.isfinite(v):
            bars.append(" ")
        elif top <= 0:
            bars.append(_BLOCKS[0])
        else:
            bars.append(_BLOCKS[min(len(_BLOCKS) - 1, int(v / top * len(_BLOCKS)))])
    return "".join(bars)


@dataclass(frozen=True)
class Span:
    """An injected incident on the demo's clock (seconds since the traffic began)."""

    label: str
    start: float
    end: float
    cause: str | None = None  # rate incidents: the cause, the attribute and the factor
    dimension: str | None = None
    value: str | None = None
    multiplier: float | None = None

    def state(self, t: float) -> str:
        if t < self.start:
            return f"in {self.start - t:.0f}s"
        return "ACTIVE" if t < self.end else "over"


@dataclass(frozen=True)
class Point:
    """One sample of the run, for the chart and the report."""

    t: float  # seconds since the traffic began, of the window's end
    refreshed_at: float
    orders: float  # orders in the window
    rates: dict[str, float]  # cause -> CPO
    focus: dict[str, tuple[float, float]]  # incident dimension's values -> (contacts, orders)


def point(view: ExporterView, origin: float, focus: Span | None) -> Point:
    counts = (dimension_counts(view, focus.cause, focus.dimension)
              if focus and focus.cause and focus.dimension else {})
    return Point(round(view.read_at - origin, 3), view.refreshed_at, view.orders,
                 dict(view.rates), counts)


@dataclass
class LiveState:
    """What the view shows: the latest scrapes and a minute of history.

    The simulator sends its warmup as one burst, and while the workers catch up the window
    holds some partitions' records but not yet others' (contacts counted before their orders):
    rates that are off by half for a second or two. History starts once the burst is over,
    seen as orders/s back to at most SETTLE_FACTOR times the simulated rate.
    """

    window: str
    origin: float  # wall clock of t = 0
    rate: float  # simulated orders/s
    spans: list[Span] = field(default_factory=list)
    urls: list[tuple[str, str]] = field(default_factory=list)  # (what, url)
    history: deque[ExporterView] = field(default_factory=lambda: deque(maxlen=HISTORY))
    throughput: Throughput = field(default_factory=Throughput)
    workers: WorkerView = field(default_factory=WorkerView)
    settled: bool = False
    now: float = 0.0

    @property
    def latest(self) -> ExporterView | None:
        return self.history[-1] if self.history else None

    @property
    def t(self) -> float:
        return self.now - self.origin

    def update(self, now: float, exporter: ExporterView | None, workers: WorkerView) -> bool:
        """Take one round of scrapes; True when it added a new exporter view to the history."""
        self.now = now
        self.workers = workers
        self.throughput.add(now, workers.orders, workers.contacts)
        rates = self.throughput.rates()
        if not self.settled and workers.orders > 0 and rates is not None:
            self.settled = rates[0] <= SETTLE_FACTOR * self.rate
        latest = self.latest
        if not self.settled or exporter is None or (
                latest is not None and exporter.refreshed_at == latest.refreshed_at):
            return False
        self.history.append(exporter)
        return True

    def causes(self) -> list[str]:
        """`all` first, then every cause seen in the history, by name: rows that do not jump."""
        seen = {cause for view in self.history for cause in view.rates}
        return ([ALL] if ALL in seen else []) + sorted(seen - {ALL})


def _num(value: float, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _rates_text(state: LiveState) -> str:
    rates = state.throughput.rates()
    if rates is None:
        return "orders/s –  contacts/s –"
    return f"orders/s {rates[0]:,.0f}  contacts/s {rates[1]:,.1f}"


def _waiting_text(state: LiveState) -> str:
    if state.settled:
        return "waiting for the exporter"
    return (f"catching up with the warmup: {state.workers.orders:,.0f} orders counted so far "
            "(the first takes a few seconds: the workers join the consumer group)")


def _health_text(state: LiveState) -> str:
    w = state.workers
    return (f"consumer lag {w.lag:,.0f} · rejected {w.rejected:,.0f} · "
            f"duplicates {w.duplicates:,.0f} · pending contacts {w.pending:,.0f} · "
            f"workers ready {w.ready}/{w.workers}")


def _root_cause_text(root: RootCause) -> str:
    return f"{root.cause}: {root.dimension}={root.value} (score {root.score:.3g})"


def _segment_text(r: Ranked) -> str:
    c = r.comparison
    return (f"{r.cause} {r.dimension}={r.value} {_num(c.rate)} "
            f"({c.lift:.1f}x rest, {c.orders:,.0f} orders)")


def _causes_table(state: LiveState) -> Table:
    latest = state.latest
    table = Table(title=f"contacts per order, {state.window} window", title_justify="left",
                  box=None, padding=(0, 1))
    table.add_column("cause", no_wrap=True, min_width=17)
    table.add_column("CPO", justify="right", no_wrap=True, min_width=6)
    table.add_column(f"last {HISTORY} samples, 0 to max", no_wrap=True, overflow="crop")
    for cause in state.causes():
        rate = latest.rates.get(cause, math.nan) if latest else math.nan
        line = sparkline(view.rates.get(cause) for view in state.history)
        table.add_row(cause, _num(rate), line, style="bold" if cause == ALL else None)
    return table


def _worst_table(latest: ExporterView) -> Table:
    table = Table(title="worst attribute values, each against the rest of its dimension",
                  title_justify="left", box=None, padding=(0, 1))
    table.add_column("cause", no_wrap=True, min_width=17)
    table.add_column("attribute", no_wrap=True, min_width=20)
    for name in ("CPO", "x rest", "z", "orders"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in worst_values(latest):
        c = r.comparison
        table.add_row(r.cause, f"{r.dimension}={r.value}", _num(c.rate), f"{c.lift:.1f}",
                      f"{c.z:.1f}", f"{c.orders:,.0f}")
    return table


def render(state: LiveState) -> RenderableType:
    header = Text.assemble(("cpo demo", "bold"), f"  {state.t:+.0f}s  ",
                           (_rates_text(state), "cyan"))
    for span in state.spans:
        status = span.state(state.t)
        header.append(f"\nincident {span.label}  ")
        header.append(status, "bold red" if status == "ACTIVE" else "dim")
    parts: list[RenderableType] = [header]
    latest = state.latest
    if latest:
        parts += [Text(), _causes_table(state), Text(), _worst_table(latest)]
        if latest.root_causes:
            parts.append(Text("\nroot cause  " + "  |  ".join(
                _root_cause_text(root) for root in latest.root_causes), style="bold yellow"))
    else:
        parts.append(Text(_waiting_text(state), style="yellow"))
    parts.append(Text("\n" + _health_text(state), style="green"))
    parts.append(Text("  ".join(f"{what} {url}" for what, url in state.urls), style="dim"))
    return Panel(Group(*parts), title="contacts per order, live", subtitle="Ctrl-C stops")


def status_line(state: LiveState) -> str:
    """The view in one line, for a stdout that is not a terminal."""
    parts = [f"cpo demo {state.t:+.0f}s: {_rates_text(state)}"]
    latest = state.latest
    if latest:
        parts.append(f"CPO({state.window}) {_num(latest.rates.get(ALL, math.nan))}")
        worst = worst_values(latest, limit=1)
        if worst:
            parts.append("worst " + _segment_text(worst[0]))
        if latest.root_causes:
            parts.append("root cause " + _root_cause_text(latest.root_causes[0]))
    else:
        parts.append(_waiting_text(state).split(" (")[0])
    for span in state.spans:
        parts.append(f"incident {span.state(state.t)}")
    parts.append(_health_text(state))
    return "; ".join(parts)
