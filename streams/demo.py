"""`cpo demo`: the whole system on this machine, with a live view and a chart at the end.

How it works: it starts what the environment does not point at (the embedded Tansu broker
unless CPO_KAFKA_BOOTSTRAP is set, redis-server unless CPO_REDIS_URL is set) on free ports,
creates the topics, runs the workers, the exporter and `cpo simulate` as children in their own
process groups, and scrapes their `/metrics` once a second for the live view (streams/liveview.py).
Every exit (--duration, Ctrl-C, SIGTERM, SIGHUP, a child that died) stops the simulator, the
exporter, the workers and then the servers, and writes the chart (and the report, if asked).

Timing: the simulator divides order-to-contact delays by a day, so contacts follow their orders
within seconds. Its traffic starts WARMUP seconds in the past (sent at once), so the smallest
window is full from the first second. t = 0 is on a boundary of the exporter's 10 s buckets, so
the window's buckets line up with the incident's start and end.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.local import EmbeddedKafka, EmbeddedRedis

DEFAULT_INCIDENT = "carrier=cargox,cause=where_is_my_order,x=6,start=20s,duration=40s"
# Used unless the environment sets them: a 30 s window moves within seconds of a change; the
# contract's 5m and 1h follow for comparison.
DEMO_SETTINGS = {"windows": "30s,5m,1h", "partitions": "4", "bind_address": "127.0.0.1"}
RATE = 150.0  # orders per second: plenty of contacts per window, light on two cores
TIME_SCALE = 86400.0  # a day of delay becomes a second
WARMUP = 60.0  # seconds of traffic sent at once, before t = 0 - LEAD
LEAD = 5.0  # at least this long for the workers to take in the warmup before t = 0
TICK = 1.0  # seconds between scrapes
STATUS_EVERY = 5.0  # seconds between status lines when stdout is not a terminal
EXPORTER_REFRESH = 1.0


class DemoError(Exception):
    """Ends the demo with one line on stderr; `status` is the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Stop(BaseException):
    """SIGTERM or SIGHUP: stop like Ctrl-C does."""


@dataclass
class Servers:
    """The embedded servers this run started (None: the environment points at its own)."""

    kafka: EmbeddedKafka | None = None
    redis: EmbeddedRedis | None = None

    def running(self) -> list[EmbeddedKafka | EmbeddedRedis]:
        return [s for s in (self.kafka, self.redis) if s is not None]

    def addresses(self) -> dict[str, str]:
        return {**({"kafka": self.kafka.bootstrap} if self.kafka else {}),
                **({"redis": self.redis.url} if self.redis else {})}


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return value


def _seconds(text: str) -> float:
    """60 or a duration such as 5m."""
    from streams.settings import parse_duration

    try:
        return parse_duration(text)
    except ValueError:
        return _positive(text)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--duration", type=_seconds, metavar="SECONDS",
        help="stop by itself after this long, e.g. 60 or 5m (default: until Ctrl-C)")
    add("--chart", type=Path, default=Path("cpo-demo.png"), metavar="PATH",
        help="PNG of CPO over time written on exit (default: cpo-demo.png)")
    add("--report", type=Path, metavar="PATH",
        help="also write a JSON summary: samples, incident window, child PIDs")
    add("--rate", type=_positive, default=RATE, help=f"orders per second ({RATE:g})")
    add("--workers", type=_positive_int, default=2, help="worker processes (2)")
    add("--incident", action="append", metavar="SPEC",
        help="incident in `cpo simulate` syntax, times from the demo's start, repeatable; "
        f"`none` for no incident (default: {DEFAULT_INCIDENT})")
    add("--seed", type=int, help="simulator seed (default: random, printed)")


def _spans(specs: list[str]) -> tuple[list[str], list]:
    """(specs for `cpo simulate`, shifted by WARMUP; Spans on the demo's clock)."""
    from streams.incidents import parse_incident
    from streams.liveview import Span
    from streams.simulate import SimConfig

    populations = SimConfig().populations()
    shifted, spans = [], []
    for spec in specs:
        if spec == "none":
            continue
        incident = parse_incident(spec, populations)
        shifted.append(replace(incident, start=incident.start + WARMUP).describe())
        match = ",".join(f"{k}={v}" for k, v in incident.match)
        until = f"+{incident.end:g}s" if math.isfinite(incident.end) else "on"
        if incident.kind == "rate":
            label = f"{match} gets {incident.multiplier:g}x {incident.cause}"
            (dimension, value), cause = incident.match[0], incident.cause
            multiplier = incident.multiplier
        else:
            label = f"{match} takes {incident.share:.0%} of orders"
            dimension = value = cause = multiplier = None
        spans.append(Span(f"{label}, +{incident.start:g}s to {until}", incident.start,
                          incident.end, cause, dimension, value, multiplier))
    return shifted, spans


def _unset(name: str) -> bool:
    """True when the environment leaves the setting to the demo."""
    from streams.settings import SETTINGS

    env = SETTINGS[name].env
    return not os.environ.get(env) and not os.environ.get(env + "_FILE")


def _settings():
    """The settings every child gets: the environment, then the demo's defaults for the rest."""
    from streams.local import free_port
    from streams.settings import load_settings

    overrides = {name: value for name, value in DEMO_SETTINGS.items() if _unset(name)}
    taken = {os.environ.get("CPO_EXPORTER_PORT"), os.environ.get("CPO_METRICS_PORT")}
    for name in ("exporter_port", "metrics_port"):
        while _unset(name) and overrides.get(name) in (None, *taken):
            overrides[name] = str(free_port())
        taken.add(overrides.get(name))
    return load_settings(**overrides)


def _worker_ports(settings, count: int, chosen: bool) -> list[int]:
    from streams.local import free_port

    if chosen:  # CPO_METRICS_PORT set: worker i listens on that port + i
        return [settings.metrics_port + i for i in range(count)]
    ports = [settings.metrics_port]
    while len(ports) < count:
        port = free_port()
        if port not in ports and port != settings.exporter_port:
            ports.append(port)
    return ports


def _check_ports(ports: dict[int, str]) -> None:
    from streams.local import port_is_taken

    for port, what in ports.items():
        if port_is_taken(port):
            raise DemoError(f"port {port} ({what}) is in use: unset it to use a free port, or "
                            f"stop what listens there (ss -ltnp 'sport = :{port}')", 2)


def _one_line(message: str) -> str:
    """A multi-line failure (a server's log tail) as its first and last lines."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"


def _start_servers(servers: Servers) -> dict[str, str]:
    """Start the embedded parts the environment does not point at; {setting: value}."""
    from streams.local import EmbeddedKafka, EmbeddedRedis, LocalInfraError

    try:  # a missing binary fails here, before anything runs
        kafka = EmbeddedKafka() if _unset("kafka_bootstrap") else None
        redis = EmbeddedRedis() if _unset("redis_url") else None
    except LocalInfraError as exc:
        raise DemoError(f"{exc} (or run make demo, which installs what is missing)", 2) from None
    found = {}
    try:
        if kafka:
            print("cpo demo: starting the embedded Kafka broker (Tansu) ...", flush=True)
            servers.kafka = kafka.start()
            found["kafka_bootstrap"] = kafka.bootstrap
        if redis:
            print("cpo demo: starting redis-server ...", flush=True)
            servers.redis = redis.start()
            found["redis_url"] = redis.url
    except LocalInfraError as exc:
        raise DemoError(_one_line(str(exc)), 2) from None
    return found


def _scrape(child, names: tuple[str, ...], window: str | None = None) -> dict | None:
    """The child's samples that `processes.select` keeps; None when the child does not
    answer."""
    try:
        return child.scrape(names, window, timeout=2)
    except (OSError, ValueError, HTTPException):
        return None


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.servers = Servers()
        self.pipeline = None
        self.workers: list = []
        self.exporter = None
        self.state = None
        self.points: list = []
        self.spans: list = []
        self.pids: dict[str, int] = {}
        self.urls: dict[str, str] = {}
        self.log_dir = Path(tempfile.mkdtemp(prefix="cpo-demo-"))
        self.ended = "not started"

    # ---- start -------------------------------------------------------------------------------

    def start(self) -> None:
        from streams.processes import Child, Pipeline, cpo_command
        from streams.settings import load_settings
        from streams.simulate import rfc3339
        from streams.topics import TopicsError, create_topics

        args = self.args
        for option, path in (("--chart", args.chart), ("--report", args.report)):
            if path and not path.resolve().parent.is_dir():
                raise DemoError(f"{option} {path}: the directory {path.resolve().parent} does "
                                "not exist; create it or choose another path", 2)
        specs, self.spans = _spans(args.incident or [DEFAULT_INCIDENT])
        settings = _settings()
        worker_ports = _worker_ports(settings, args.workers, not _unset("metrics_port"))
        chosen = {} if _unset("exporter_port") else {settings.exporter_port: "CPO_EXPORTER_PORT"}
        if not _unset("metrics_port"):
            chosen.update({p: f"CPO_METRICS_PORT+{i}" for i, p in enumerate(worker_ports)})
        _check_ports(chosen)
        found = _start_servers(self.servers)
        if found:
            settings = load_settings(settings.as_env(), **found)
        for name, server in (("kafka", self.servers.kafka), ("redis", self.servers.redis)):
            if server:
                self.pids[name] = server.pid
        self._print_where(settings)
        try:
            create_topics(settings, partitions=settings.partitions)
        except TopicsError as exc:
            raise DemoError(str(exc), 2) from None

        print(f"cpo demo: starting {args.workers} workers and the exporter ...", flush=True)
        self.pipeline = pipeline = Pipeline(settings, self.log_dir)
        self.workers = workers = [pipeline.worker(i, port) for i, port in enumerate(worker_ports)]
        self.exporter = exporter = pipeline.exporter(refresh=EXPORTER_REFRESH)
        for child in pipeline.children:
            self.pids[child.name] = child.process.pid
        for child in pipeline.children:
            try:
                child.wait_ready(timeout=120)
            except (RuntimeError, TimeoutError):
                raise DemoError(f"{child.name} did not become ready; its log: "
                                f"{child.log_path}", 1) from None
        self.urls = {f"worker-{i}": w.url("/metrics") for i, w in enumerate(workers)}
        self.urls["exporter"] = exporter.url("/metrics")

        seed = secrets.randbelow(1_000_000) if args.seed is None else args.seed
        # t = 0 on a boundary of the 10 s buckets, at least LEAD seconds after the warmup burst
        origin = math.ceil((time.time() + LEAD) / 10) * 10
        command = cpo_command("simulate", "--rate", f"{args.rate:g}", "--time-scale",
                              f"{TIME_SCALE:g}", "--diurnal-amplitude", "0", "--start",
                              rfc3339(origin - WARMUP), "--seed", str(seed), "--quiet")
        for spec in specs:
            command += ["--incident", spec]
        simulator = Child("simulator", command, pipeline.env, None,
                          self.log_dir / "simulator.log").start()
        pipeline.children.append(simulator)
        self.pids["simulator"] = simulator.process.pid

        from streams.liveview import LiveState

        window = min(settings.window_seconds().items(), key=lambda item: item[1])[0]
        self.state = LiveState(window, origin, args.rate, self.spans, list(self.urls.items()))
        self.ended = "running"
        for name, url in self.urls.items():
            print(f"cpo demo: {name} metrics {url}", flush=True)
        for span in self.spans:
            print(f"cpo demo: incident {span.label}", flush=True)
        print(f"cpo demo: simulator seed {seed}, {args.rate:g} orders/s; CPO in the {window} "
              f"event-time window (CPO_WINDOWS={','.join(settings.windows)})", flush=True)

    def _print_where(self, settings) -> None:
        kafka = "embedded" if self.servers.kafka else "CPO_KAFKA_BOOTSTRAP"
        redis = "embedded" if self.servers.redis else "CPO_REDIS_URL"
        redis_url = settings.redis_url if self.servers.redis else "(from CPO_REDIS_URL)"
        print(f"cpo demo: Kafka {settings.kafka_bootstrap} ({kafka}), Redis {redis_url} "
              f"({redis}), logs in {self.log_dir}", flush=True)

    # ---- run ---------------------------------------------------------------------------------

    def sample(self) -> None:
        from streams.liveview import (
            EXPORTER_METRICS,
            WORKER_METRICS,
            exporter_view,
            point,
            worker_view,
        )

        state = self.state
        for child in self.pipeline.children:
            if not child.alive:
                raise DemoError(f"{child.name} exited with status {child.process.returncode}; "
                                f"its log: {child.log_path}", 1)
        samples = _scrape(self.exporter, EXPORTER_METRICS, state.window)
        view = exporter_view(samples, state.window) if samples else None
        scrapes = [_scrape(worker, WORKER_METRICS) for worker in self.workers]
        if state.update(time.time(), view, worker_view(scrapes)):
            focus = next((s for s in self.spans if s.cause), None)
            self.points.append(point(state.latest, state.origin, focus))

    def run(self) -> None:
        from rich.console import Console
        from rich.live import Live

        from streams.liveview import render, status_line

        duration = self.args.duration
        deadline = self.state.origin + duration if duration else math.inf
        tick = time.monotonic()
        if sys.stdout.isatty():
            with Live(render(self.state), console=Console(), auto_refresh=False) as live:
                while self._step(deadline):
                    live.update(render(self.state), refresh=True)
                    tick = self._sleep(tick)
                live.update(render(self.state), refresh=True)
        else:
            next_status = 0.0
            while self._step(deadline):
                if time.monotonic() >= next_status:
                    print(status_line(self.state), flush=True)
                    next_status = time.monotonic() + STATUS_EVERY
                tick = self._sleep(tick)
            print(status_line(self.state), flush=True)
        self.ended = "duration"

    def _step(self, deadline: float) -> bool:
        self.sample()
        return time.time() < deadline

    @staticmethod
    def _sleep(tick: float) -> float:
        tick += TICK
        time.sleep(max(0.0, tick - time.monotonic()))
        return tick

    # ---- stop --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Children first (simulator, exporter, workers), then the servers they use."""
        if self.pipeline:
            self.pipeline.stop_all()
        for server in self.servers.running():
            server.stop()

    def write_outputs(self) -> None:
        from streams.chart import write_chart

        args = self.args
        if self.state is not None:
            path = write_chart(args.chart, self.points, self.state.window, self.spans)
            print(f"cpo demo: chart written to {path.resolve()}", flush=True)
        if args.report:
            import orjson

            report = {
                "ended": self.ended,
                "window": self.state.window if self.state else None,
                "origin": self.state.origin if self.state else None,
                "duration": args.duration,
                "incidents": [{**asdict(s), "end": s.end if math.isfinite(s.end) else None}
                              for s in self.spans],
                "pids": self.pids,
                "servers": self.servers.addresses(),
                "urls": self.urls,
                "chart": str(Path(args.chart).resolve()) if self.state else None,
                "log_dir": str(self.log_dir),
                "points": self.points,
            }
            Path(args.report).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        if self.pipeline:
            print(f"cpo demo: stopped; logs in {self.log_dir}", flush=True)
        else:  # nothing ran, nothing logged
            shutil.rmtree(self.log_dir, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    from streams.incidents import IncidentError

    def stop(signum, frame):
        raise Stop

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    demo = Demo(args)
    status = 0
    try:
        demo.start()
        demo.run()
    except (KeyboardInterrupt, Stop):
        demo.ended = "signal"
    except IncidentError as exc:
        print(f"cpo demo: {exc}", file=sys.stderr)
        demo.ended, status = "bad incident", 2
    except DemoError as exc:
        print(f"cpo demo: {exc}", file=sys.stderr, flush=True)
        demo.ended, status = f"error: {exc}", exc.status
    finally:  # a second Ctrl-C must not cut the clean-up short; every step has a timeout
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        demo.stop()
        demo.write_outputs()
    return status
