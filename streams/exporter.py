"""`cpo exporter`: one global, event-time view of the defect rates, for Prometheus.

A refresh loop reads every window's buckets from Redis (one pipelined round trip) every
`--refresh` seconds and keeps the result; `/metrics` serves the last result without touching
Redis, so any number of scrapers cost Redis nothing. Several workers write the buckets at once;
each bucket is read atomically, and the rates are exact over the buckets read.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.settings import Settings, load_settings
from streams.state import connect
from streams.windows import ALL, WindowCounts, read_windows

log = logging.getLogger("streams.exporter")


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


class ExporterState(Collector):
    """The last snapshot read from Redis, served as metric families."""

    def __init__(self) -> None:
        self.windows: dict[str, WindowCounts] = {}
        self.refreshed_at = 0.0
        self.refresh_seconds = 0.0
        self.redis_errors = 0
        self.fault: str | None = "no snapshot yet"

    def collect(self) -> Iterator:
        yield from rate_families(self.windows)
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


async def refresh_loop(settings: Settings, state: ExporterState, interval: float) -> None:
    client = connect(settings)
    windows = settings.window_seconds()
    while True:
        started = time.perf_counter()
        try:
            state.windows = await read_windows(client, time.time(), windows)
        except Exception as exc:  # a fault is reported by /readyz and a counter, then retried
            state.redis_errors += 1
            if state.fault is None or state.fault == "no snapshot yet":
                log.warning("reading Redis failed (%s: %s); retrying every %.1fs",
                            type(exc).__name__, exc, interval)
            state.fault = f"redis: {type(exc).__name__}: {exc}"
        else:
            if state.fault and state.fault != "no snapshot yet":
                log.info("reading Redis recovered")
            state.fault = None
            state.refreshed_at = time.time()
            state.refresh_seconds = time.perf_counter() - started
        await asyncio.sleep(interval)


def build_web_app(settings: Settings, state: ExporterState) -> web.Application:
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

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(settings: Settings, refresh: float) -> None:
    state = ExporterState()
    runner = web.AppRunner(build_web_app(settings, state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.bind_address, settings.exporter_port)
    await site.start()
    log.info("exporter serving http://%s:%d/metrics", settings.bind_address,
             settings.exporter_port)
    try:
        await refresh_loop(settings, state, refresh)
    finally:
        await runner.cleanup()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--refresh", type=float, default=2.0,
                        help="seconds between reads of Redis (default 2)")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(serve(settings, args.refresh))
    except KeyboardInterrupt:
        pass
    return 0
