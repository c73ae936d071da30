"""`cpo exporter`: one global, event-time view of the defect rates, for Prometheus.

A refresh loop reads every window's buckets and the label registries from Redis as one
snapshot (MULTI/EXEC) every `--refresh` seconds and keeps the result; `/metrics` serves the last
result without touching Redis, so any number of scrapers cost Redis nothing. Several workers
write the buckets at once; the rates are exact over the snapshot.

Root causes (streams/rca.py, streams/rca_inputs.py): a second loop analyses, every
`--rca-every` seconds, each window of each cause whose rate rose (z >= RISE_Z against its
baseline), and keeps the top defects for `cpo_root_cause_score`. `/api/v1/root-causes` serves
one cause and window on demand, from a result at most RCA_CACHE_SECONDS old. The analysis runs
in a thread, so scrapes are answered meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from streams.rca import Candidate, Explanation, Key, to_json
from streams.rca_inputs import InputReader, Inputs, explain_window, rise_z
from streams.settings import Settings, load_settings
from streams.state import connect
from streams.windows import ALL, WindowCounts, read_windows

log = logging.getLogger("streams.exporter")

RCA_EVERY = 15.0  # default --rca-every: seconds between analyses of the rising causes ...
RCA_PER_WINDOW = 6  # ... or less, so that the shortest window is analysed 6 times per length
RCA_CACHE_SECONDS = 10.0  # an on-demand result younger than this is served again
RISE_Z = 2.0  # a cause is analysed by the loop when its overall rise has at least this z-score
TOP_SCORES = 3  # defects exported per cause and window
BASELINE_AGE_INTERVALS = 4  # a window's baseline counts are re-read every 4 --rca-every


def rate_families(windows: dict[str, WindowCounts]) -> list[GaugeMetricFamily]:
    """The contract's exporter gauges for the given windows. A zero-order rate is omitted."""
    rate = GaugeMetricFamily("cpo_defect_rate", "Contacts per order in the event-time window",
                             labels=["cause", "window"])
    rate_by = GaugeMetricFamily(
        "cpo_defect_rate_by_attribute",
        "Contacts of the cause joined to orders with the value, per order with the value",
        labels=["cause", "dimension", "value", "window"])
    orders = GaugeMetricFamily("cpo_window_orders", "Orders in the window", labels=["window"])
    orders_by = GaugeMetricFamily("cpo_window_orders_by_attribute",
                                  "Orders with the attribute value in the window",
                                  labels=["dimension", "value", "window"])
    contacts = GaugeMetricFamily("cpo_window_contacts", "Contacts in the window",
                                 labels=["cause", "window"])
    contacts_by = GaugeMetricFamily(
        "cpo_window_contacts_by_attribute",
        "Contacts of the cause joined to orders with the attribute value, in the window",
        labels=["cause", "dimension", "value", "window"])
    for window, counts in windows.items():
        orders.add_metric([window], counts.orders)
        contacts.add_metric([ALL, window], counts.total_contacts())
        if counts.orders:
            rate.add_metric([ALL, window], counts.total_contacts() / counts.orders)
        for cause, n in sorted(counts.contacts.items()):
            contacts.add_metric([cause, window], n)
            if counts.orders:
                rate.add_metric([cause, window], n / counts.orders)
        for (dim, value), n in sorted(counts.orders_by_value.items()):
            orders_by.add_metric([dim, value, window], n)
        all_causes = counts.attributed_all_causes()
        for (dim, value), n_orders in sorted(counts.orders_by_value.items()):
            if n_orders:
                joined = all_causes.get((dim, value), 0)
                rate_by.add_metric([ALL, dim, value, window], joined / n_orders)
                contacts_by.add_metric([ALL, dim, value, window], joined)
        for (cause, dim, value), n in sorted(counts.attributed.items()):
            n_orders = counts.orders_by_value.get((dim, value), 0)
            contacts_by.add_metric([cause, dim, value, window], n)
            if n_orders:
                rate_by.add_metric([cause, dim, value, window], n / n_orders)
    return [rate, rate_by, orders, orders_by, contacts, contacts_by]


def root_cause_scores(expl: Explanation) -> list[tuple[Candidate, float]]:
    """Each defect with its share of the cause's excess contacts, in [0, 1].

    The excess is the window's contacts minus what the baseline rate predicts for its orders;
    a defect's share is its own excess contacts (after the defects found before it were
    removed, so nothing counts twice) over that. When the defects add up to more than the
    overall excess (other segments fell meanwhile), they share 1 between them. So the scores
    of one cause and window add up to at most 1, and 0.8 reads "80% of the rise"."""
    defects = expl.defects
    overall = expl.current_orders * expl.change
    total = max(overall, sum(c.excess_contacts for c in defects))
    if total <= 0:
        return [(c, 0.0) for c in defects]
    return [(c, min(max(c.excess_contacts / total, 0.0), 1.0)) for c in defects]


def segment_labels(key: Key) -> tuple[str, str]:
    """(("carrier", "acme"),) -> ("carrier", "acme"); a pair -> ("carrier,warehouse",
    "acme,sea8"): the dimension and value labels of `cpo_root_cause_score`."""
    return ",".join(d for d, _ in key), ",".join(v for _, v in key)


@dataclass(frozen=True)
class RootCause:
    """One analysis of one cause in one window."""

    window: str
    computed_at: float
    explanation: Explanation
    recent_windows: int  # baseline windows just before this one, with orders
    week_ago: bool  # whether the same window a week ago (with orders) is in the baseline
    baseline_read_at: float  # when the baseline's counts were read from Redis
    pairs: bool  # whether pairs of values were analysed

    def to_json(self) -> dict:
        body = to_json(self.explanation)
        scores = {id(c): score for c, score in root_cause_scores(self.explanation)}
        for candidate, out in zip(self.explanation.candidates, body["candidates"]):
            out["score"] = scores.get(id(candidate), 0.0)
        return {"window": self.window, "computed_at": self.computed_at,
                "baseline": {"recent_windows": self.recent_windows, "week_ago": self.week_ago,
                             "read_at": self.baseline_read_at},
                "pairs": self.pairs, **body}


class RootCauses:
    """The analyses: of the causes whose rate rose (`refresh`, run by `rca_loop`), and of one
    cause and window on demand (`get`, for the HTTP endpoint)."""

    def __init__(self, reader: InputReader) -> None:
        self.reader = reader
        self.results: dict[tuple[str, str], RootCause] = {}  # (cause, window) -> latest
        self.scores: list[tuple[tuple[str, str, str, str], float]] = []  # labels, score

    @property
    def windows(self) -> list[str]:
        return list(self.reader.plans)

    async def _analyse(self, inputs: Inputs, cause: str, now: float) -> RootCause:
        expl = await asyncio.to_thread(explain_window, inputs, cause)
        result = RootCause(inputs.window, now, expl, len(inputs.recent),
                           inputs.week_ago is not None, inputs.baseline_read_at, inputs.pairs)
        self.results[(cause, inputs.window)] = result
        return result

    async def refresh(self, now: float) -> None:
        """Analyse every window of every cause (and `all`) whose rate rose; replace the scores."""
        scores = []
        for window in self.windows:
            inputs = await self.reader.read(window, now)
            for cause in [ALL, *sorted(inputs.current.singles.contacts)]:
                if rise_z(inputs, cause) < RISE_Z:
                    continue
                result = await self._analyse(inputs, cause, now)
                for candidate, score in root_cause_scores(result.explanation)[:TOP_SCORES]:
                    scores.append(((cause, *segment_labels(candidate.key), window), score))
        self.scores = scores

    async def get(self, cause: str, window: str, now: float) -> RootCause:
        """The analysis of one cause and window, at most RCA_CACHE_SECONDS old."""
        cached = self.results.get((cause, window))
        if cached is not None and now - cached.computed_at < RCA_CACHE_SECONDS:
            return cached
        return await self._analyse(await self.reader.read(window, now), cause, now)

    def default_window(self) -> str:
        """The shortest window analysed with pairs, else the shortest window."""
        plans = self.reader.plans
        with_pairs = [name for name, p in plans.items() if p.pairs]
        return min(with_pairs or plans, key=lambda name: plans[name].seconds)


class ExporterState(Collector):
    """The last snapshot read from Redis, served as metric families."""

    def __init__(self) -> None:
        self.windows: dict[str, WindowCounts] = {}
        self.root_cause_scores: list[tuple[tuple[str, str, str, str], float]] = []
        self.refreshed_at = 0.0
        self.refresh_seconds = 0.0
        self.redis_errors = 0
        self.fault: str | None = "no snapshot yet"

    def collect(self) -> Iterator:
        yield from rate_families(self.windows)
        scores = GaugeMetricFamily(
            "cpo_root_cause_score",
            "Share (0..1) of the cause's excess contacts in the window (contacts above what "
            "the baseline rate predicts for the window's orders) that this attribute value, "
            "or pair of values (dimension=\"d1,d2\", value=\"v1,v2\"), explains as a "
            f"defect of its own rate; top {TOP_SCORES} per cause and window, for causes whose "
            "rate rose",
            labels=["cause", "dimension", "value", "window"])
        for labels, score in self.root_cause_scores:
            scores.add_metric(list(labels), score)
        yield scores
        age = GaugeMetricFamily("cpo_exporter_last_refresh_timestamp_seconds",
                                "Wall clock of the last successful read from Redis")
        age.add_metric([], self.refreshed_at)
        yield age
        duration = GaugeMetricFamily("cpo_exporter_scrape_seconds",
                                     "Time the last read from Redis took")
        duration.add_metric([], self.refresh_seconds)
        yield duration
        errors = CounterMetricFamily("cpo_exporter_redis_errors", "Failed reads from Redis")
        errors.add_metric([], self.redis_errors)
        yield errors


async def rca_loop(root_causes: RootCauses, state: ExporterState, interval: float) -> None:
    """Analyse the rising causes every `interval` seconds; a failure is logged and retried."""
    failing = False
    while True:
        try:
            await root_causes.refresh(time.time())
        except Exception as exc:  # Redis or a bug in one analysis: keep serving the rates
            state.redis_errors += 1
            if not failing:
                log.warning("root-cause analysis failed (%s: %s); retrying every %.1fs",
                            type(exc).__name__, exc, interval, exc_info=True)
            failing = True
        else:
            if failing:
                log.info("root-cause analysis recovered")
            failing = False
            state.root_cause_scores = root_causes.scores
        await asyncio.sleep(interval)


async def refresh_loop(settings: Settings, state: ExporterState, interval: float) -> None:
    """Read the windows every `interval` seconds. A failed read (Redis, or a bug: the rates
    must go on being served) is logged once per episode, counted, reported by /readyz and
    retried; counts the registries do not name are left out and logged."""
    client = connect(settings)
    windows = settings.window_seconds()
    unnamed_before = 0
    while True:
        started = time.perf_counter()
        try:
            state.windows = await read_windows(client, time.time(), windows)
        except Exception as exc:
            state.redis_errors += 1
            if state.fault is None or state.fault == "no snapshot yet":
                log.warning("reading Redis failed (%s: %s); retrying every %.1fs",
                            type(exc).__name__, exc, interval,
                            exc_info=not isinstance(exc, (RedisError, OSError)))
            state.fault = f"redis: {type(exc).__name__}: {exc}"
        else:
            if state.fault and state.fault != "no snapshot yet":
                log.info("reading Redis recovered")
            state.fault = None
            state.refreshed_at = time.time()
            state.refresh_seconds = time.perf_counter() - started
            unnamed = sum(counts.unnamed for counts in state.windows.values())
            if unnamed and not unnamed_before:
                log.warning("%d counts have ids no label registry names (Redis lost its "
                            "registries?); they are left out of the rates", unnamed)
            unnamed_before = unnamed
        await asyncio.sleep(interval)


def build_web_app(settings: Settings, state: ExporterState,
                  root_causes: RootCauses) -> web.Application:
    registry = CollectorRegistry()
    registry.register(state)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if state.fault:
            return web.Response(text=f"not ready\n{state.fault}\n", status=503)
        return web.Response(text="ready\n")

    async def api_root_causes(request: web.Request) -> web.Response:
        cause = request.query.get("cause", "").strip().lower()
        window = request.query.get("window") or root_causes.default_window()
        windows = root_causes.windows
        if not cause:
            return _error(400, "add ?cause=<cause>, e.g. ?cause=where_is_my_order or ?cause=all")
        if window not in windows:
            return _error(400, f"window {window!r} is not in CPO_WINDOWS; use one of "
                          f"{', '.join(windows)}")
        try:
            result = await root_causes.get(cause, window, time.time())
        except (RedisError, OSError) as exc:  # Redis unreachable: say so, the client may retry
            log.warning("root causes of %s over %s failed: %s: %s", cause, window,
                        type(exc).__name__, exc)
            return _error(503, f"reading Redis failed: {type(exc).__name__}: {exc}")
        return web.json_response(result.to_json(), dumps=lambda body: json.dumps(
            body, allow_nan=False))

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/root-causes", api_root_causes)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def serve(settings: Settings, refresh: float, rca_every: float) -> None:
    state = ExporterState()
    reader = InputReader(connect(settings), settings.window_seconds(), settings.rca_pairs,
                         baseline_max_age=BASELINE_AGE_INTERVALS * rca_every)
    root_causes = RootCauses(reader)
    runner = web.AppRunner(build_web_app(settings, state, root_causes), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.bind_address, settings.exporter_port)
    await site.start()
    log.info("exporter serving http://%s:%d/metrics and /api/v1/root-causes",
             settings.bind_address, settings.exporter_port)
    analyses = asyncio.create_task(rca_loop(root_causes, state, rca_every))
    try:
        await refresh_loop(settings, state, refresh)
    finally:
        analyses.cancel()
        await runner.cleanup()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--refresh", type=float, default=2.0,
                        help="seconds between reads of Redis (default 2)")
    parser.add_argument("--rca-every", type=float,
                        help="seconds between root-cause analyses of the rising causes; "
                        f"baselines are re-read every {BASELINE_AGE_INTERVALS} of them "
                        f"(default {RCA_EVERY:g}, or 1/{RCA_PER_WINDOW} of the shortest "
                        "window if that is less)")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        rca_every = args.rca_every or min(
            RCA_EVERY, min(settings.window_seconds().values()) / RCA_PER_WINDOW)
        asyncio.run(serve(settings, args.refresh, rca_every))
    except KeyboardInterrupt:
        pass
    return 0
