"""`cpo simulate`: realistic order and contact streams with injected incidents.

How it works: `generate()` is a pure function of (config, start, duration). One seeded
`random.Random` draws orders as a Poisson process whose rate follows a daily sinusoid (by
thinning), their attributes from skewed populations, and for every order a Poisson number of
contacts per cause, each scheduled at order time + a log-normal delay / time scale. Contacts,
duplicates and malformed records wait in a heap keyed by the time they are sent, so the output
is in send order, which is event-time order except for duplicates (re-sent up to
DUPLICATE_DELAY later). The same events can go to Kafka (kafka-python), to JSONL files, or both.

Limitations: with a duration, contacts whose time falls after the end are not sent, and the
contact stream ramps up over the first delays (a run has no orders from before its start).
Memory holds every contact still to come: about rate x CPO x mean delay / time scale entries of
~200 bytes, e.g. 50 orders/s at time scale 1 keep ~1.6 M entries (~300 MB) after a few days.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import secrets
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple, Protocol

import orjson

from streams.incidents import Incident, IncidentError, load_incidents, parse_incident
from streams.population import (
    BASE_CPO,
    CAUSES,
    CHANNELS,
    Population,
    build_populations,
)
from streams.settings import Settings, parse_duration

TOPICS = ("orders", "contacts")
DUPLICATE_DELAY = 10.0  # seconds: a re-sent record follows its original within this
PROGRESS_EVERY = 5.0  # seconds of wall clock between progress lines
STOP_TIMEOUT = 10.0  # seconds an interrupted run still spends delivering buffered records

Event = dict | bytes


@dataclass(frozen=True)
class SimConfig:
    """Everything that shapes the streams; equal configs and starts give equal events."""

    rate: float = 50.0  # orders per second, mean over a day
    seed: int = 0
    time_scale: float = 1.0  # contact delays are divided by this
    diurnal_amplitude: float = 0.5  # rate swings by +-amplitude; peak/trough = (1+a)/(1-a)
    peak_hour: float = 19.0  # UTC hour of the highest order rate
    skew: float = 1.0  # Zipf exponent of the attribute populations
    sizes: dict[str, int] = field(default_factory=dict)  # attribute -> number of values
    total_cpo: float = BASE_CPO  # contacts per order over all causes, before incidents
    delay_sigma: float = 0.8  # log-normal sigma of the order-to-contact delay
    no_order_id_share: float = 0.05  # contacts that carry only customer_id
    unknown_order_share: float = 0.01  # contacts whose order_id never appears
    duplicate_share: float = 0.01  # records sent twice
    malformed_share: float = 0.001  # extra records the pipeline must reject
    customers: int = 100_000
    incidents: tuple[Incident, ...] = ()

    def populations(self) -> dict[str, Population]:
        return build_populations(self.sizes, self.skew)


class _PendingContact(NamedTuple):
    """A contact decided at its order's time; the rest of its fields are drawn when it is sent,
    so far-future contacts cost one small tuple each."""

    order_id: str
    customer_id: str
    cause: str


def rfc3339(epoch: float) -> str:
    """Epoch seconds -> '2026-11-23T03:15:00.123Z' (UTC, milliseconds)."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: exact and cheap for the small means of contacts per order."""
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


class _Generator:
    def __init__(self, config: SimConfig, start: float, duration: float | None) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.start = start
        self.end = math.inf if duration is None else start + duration
        self.populations = config.populations()
        self.rate_incidents = [i for i in config.incidents if i.kind == "rate"]
        self.mix_incidents: dict[str, list[Incident]] = defaultdict(list)  # by attribute
        for incident in config.incidents:
            if incident.kind == "mix":
                self.mix_incidents[incident.match[0][0]].append(incident)
        scale = config.total_cpo / BASE_CPO
        self.cause_rates = {cause.name: cause.cpo * scale for cause in CAUSES}
        self.causes = list(self.cause_rates)
        self.base_cumulative = list(itertools.accumulate(self.cause_rates.values()))
        self.log_median_delay = {
            cause.name: math.log(cause.median_delay_hours * 3600 / config.time_scale)
            for cause in CAUSES
        }
        self.channels = [name for name, _ in CHANNELS]
        self.channel_weights = list(itertools.accumulate(weight for _, weight in CHANNELS))
        self.heap: list[tuple[float, int, str, Event | _PendingContact]] = []
        self.sequence = itertools.count()
        self.ids: defaultdict[str, Iterator[int]] = defaultdict(itertools.count)

    def _id(self, kind: str) -> str:
        """'o-<seed>-<n>'; each kind counts on its own, so ids never collide across kinds."""
        return f"{kind}-{self.config.seed}-{next(self.ids[kind])}"

    def _push(self, when: float, topic: str, item: Event | _PendingContact) -> None:
        if when < self.end:
            heapq.heappush(self.heap, (when, next(self.sequence), topic, item))

    def events(self) -> Iterator[tuple[float, str, Event]]:
        config, rng = self.config, self.rng
        amplitude = config.diurnal_amplitude
        peak_rate = config.rate * (1 + amplitude)
        when = self.start
        while True:
            when += rng.expovariate(peak_rate)
            if when >= self.end:
                break
            hour = (when / 3600) % 24
            level = 1 + amplitude * math.cos(2 * math.pi * (hour - config.peak_hour) / 24)
            if rng.random() * (1 + amplitude) > level:
                continue
            yield from self._due(when)
            order = self._order(when)
            yield when, "orders", order
            self._after_send(when, "orders", order)
        yield from self._due(self.end)

    def _due(self, until: float) -> Iterator[tuple[float, str, Event]]:
        """Send everything scheduled up to `until` (nothing at or after the end was pushed)."""
        heap = self.heap
        while heap and heap[0][0] <= until:
            when, _, topic, item = heapq.heappop(heap)
            if isinstance(item, _PendingContact):
                item = self._contact(when, item)
                yield when, topic, item
                self._after_send(when, topic, item)
            else:
                yield when, topic, item

    def _order(self, when: float) -> dict:
        rng, offset = self.rng, when - self.start
        attributes = {}
        for name, population in self.populations.items():
            shifts = self.mix_incidents.get(name)
            shift = next((i for i in shifts if i.active(offset)), None) if shifts else None
            if shift is None:
                attributes[name] = population.sample(rng)
            elif rng.random() < shift.share:
                attributes[name] = shift.match[0][1]
            else:
                attributes[name] = population.sample_except(rng, shift.match[0][1])
        order = {
            "order_id": self._id("o"),
            "occurred_at": rfc3339(when),
            "event_id": self._id("e"),
            "customer_id": f"cu-{rng.randrange(self.config.customers)}",
            "attributes": attributes,
        }
        cumulative = self.base_cumulative
        boosts = [i for i in self.rate_incidents if i.active(offset) and i.matches(attributes)]
        if boosts:
            rates = dict(self.cause_rates)
            for incident in boosts:
                rates[incident.cause] *= incident.multiplier
            cumulative = list(itertools.accumulate(rates.values()))
        for _ in range(_poisson(rng, cumulative[-1])):
            cause = rng.choices(self.causes, cum_weights=cumulative)[0]
            delay = rng.lognormvariate(self.log_median_delay[cause], self.config.delay_sigma)
            pending = _PendingContact(order["order_id"], order["customer_id"], cause)
            self._push(when + delay, "contacts", pending)
        return order

    def _contact(self, when: float, pending: _PendingContact) -> dict:
        rng, config = self.rng, self.config
        reference = rng.random()
        if reference < config.no_order_id_share:
            order_id = None
        elif reference < config.no_order_id_share + config.unknown_order_share:
            order_id = self._id("o-missing")
        else:
            order_id = pending.order_id
        return {
            "contact_id": self._id("c"),
            "occurred_at": rfc3339(when),
            "cause": pending.cause,
            "order_id": order_id,
            "channel": rng.choices(self.channels, cum_weights=self.channel_weights)[0],
            "customer_id": pending.customer_id,
            "event_id": self._id("e"),
        }

    def _after_send(self, when: float, topic: str, event: dict) -> None:
        """Schedule the event's re-send and, rarely, a malformed sibling."""
        rng = self.rng
        if rng.random() < self.config.duplicate_share:
            self._push(when + rng.uniform(0, DUPLICATE_DELAY), topic, event)
        if rng.random() < self.config.malformed_share:
            self._push(when, topic, self._malformed(topic, event))

    def _malformed(self, topic: str, event: dict) -> bytes:
        """One of the ways a producer gets a record wrong; it never carries a real id."""
        rng = self.rng
        id_field = "order_id" if topic == "orders" else "contact_id"
        bad = {**event, id_field: self._id(id_field[0] + "-bad")}
        kind = rng.choice(("invalid_json", "not_an_object", "missing_field", "wrong_type",
                           "bad_timestamp"))
        if kind == "invalid_json":
            text = orjson.dumps(bad)
            return text[: rng.randrange(1, len(text) - 1)]
        if kind == "not_an_object":
            return orjson.dumps([bad])
        if kind == "missing_field":
            required = ["order_id", "occurred_at"] if topic == "orders" else [
                "contact_id", "occurred_at", "cause"]
            del bad[rng.choice(required)]
        elif kind == "wrong_type":
            bad[id_field] = rng.randrange(10**9)
        else:
            bad["occurred_at"] = rng.choice(
                ("yesterday", bad["occurred_at"].replace("T", " ").rstrip("Z"),
                 bad["occurred_at"][:5] + "13-45T25:61:00Z"))
        return orjson.dumps(bad)


def generate_timed(
    config: SimConfig, start: float, duration: float | None
) -> Iterator[tuple[float, str, Event]]:
    """Like `generate`, with each record's send time (epoch seconds) first, for pacing."""
    return _Generator(config, start, duration).events()


def generate(
    config: SimConfig, start: float, duration: float | None
) -> Iterator[tuple[str, Event]]:
    """("orders" | "contacts", event) in send order; an event is a dict, or bytes when malformed.

    Covers event time [start, start + duration), or runs forever when duration is None. The
    same dict object is yielded again for a duplicate: treat events as read-only.
    """
    for _, topic, event in generate_timed(config, start, duration):
        yield topic, event


def encode(event: Event) -> bytes:
    return event if isinstance(event, bytes) else orjson.dumps(event)


def record_key(topic: str, event: Event) -> bytes | None:
    """order_id / contact_id as the Kafka key; malformed records have none."""
    if isinstance(event, bytes):
        return None
    key = event["order_id" if topic == "orders" else "contact_id"]
    return key.encode() if isinstance(key, str) else None


class Sink(Protocol):
    def send(self, topic: str, key: bytes | None, value: bytes) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


class KafkaSink:
    """A kafka-python producer to the input topics; `failed` counts undelivered records."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaProducer

        from streams.kafka import kafka_python_config

        self.topics = {"orders": settings.topic_orders, "contacts": settings.topic_contacts}
        self.failed = 0
        self.last_error: Exception | None = None
        self.producer = KafkaProducer(
            **kafka_python_config(settings), linger_ms=20, batch_size=256 * 1024
        )

    def _on_error(self, exc: Exception) -> None:
        self.failed += 1
        self.last_error = exc

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        future = self.producer.send(self.topics[topic], key=key, value=value)
        future.add_errback(self._on_error)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is buffered; after `timeout` seconds the rest fails (and is counted)."""
        self.producer.close(timeout=timeout)


class JsonlSink:
    """`orders.jsonl` and `contacts.jsonl` in a directory, one record per line, as sent."""

    def __init__(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.files = {  # closed in close(), like the producer
            topic: open(Path(directory) / f"{topic}.jsonl", "wb")  # noqa: SIM115
            for topic in TOPICS
        }

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.files[topic].write(value + b"\n")

    def close(self, timeout: float | None = None) -> None:
        for handle in self.files.values():
            handle.close()


class Progress:
    """A compact stderr line every PROGRESS_EVERY seconds: counts, rate, event time."""

    def __init__(self, command: str, enabled: bool = True) -> None:
        self.command = command
        self.enabled = enabled
        self.counts = {"orders": 0, "contacts": 0, "malformed": 0}
        self.began = self.last = time.monotonic()
        self.last_total = 0

    @property
    def total(self) -> int:
        return self.counts["orders"] + self.counts["contacts"]

    def count(self, topic: str, event: Event, event_time: float) -> None:
        self.counts[topic] += 1
        if isinstance(event, bytes):
            self.counts["malformed"] += 1
        now = time.monotonic()
        if self.enabled and now - self.last >= PROGRESS_EVERY:
            rate = (self.total - self.last_total) / (now - self.last)
            self.last, self.last_total = now, self.total
            self.line(f"{rate:,.0f} records/s, event time {rfc3339(event_time)}")

    def line(self, suffix: str) -> None:
        counts = ", ".join(f"{value:,} {name}" for name, value in self.counts.items())
        print(f"cpo {self.command}: {counts}; {suffix}", file=sys.stderr, flush=True)


def run_simulation(
    config: SimConfig,
    start: float,
    duration: float | None,
    sinks: list[Sink],
    pace: bool = True,
    progress: Progress | None = None,
) -> Progress:
    """Send the generated records to every sink; with `pace`, each when its time has come."""
    progress = progress or Progress("simulate")
    for when, topic, event in generate_timed(config, start, duration):
        if pace:
            ahead = when - time.time()
            if ahead > 0:
                time.sleep(ahead)
        value, key = encode(event), record_key(topic, event)
        for sink in sinks:
            sink.send(topic, key, value)
        progress.count(topic, event, when)
    return progress


# ---- command line -------------------------------------------------------------------------


def _bounded(low: float, high: float, include_low: bool = True):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low <= value if include_low else low < value) or not value <= high:
            bracket = "[" if include_low else "("
            raise argparse.ArgumentTypeError(f"{text!r} is not in {bracket}{low:g}, {high:g}]")
        return value

    return parse


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> tuple[str, int]:
    name, sep, size = text.partition("=")
    if not sep or not name or not size.isdigit() or int(size) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=SIZE, e.g. seller=2000")
    return name, int(size)


def parse_start(text: str, now: float) -> float:
    """'now', 'now-DURATION' (e.g. now-1d, that long ago) or an RFC 3339 time."""
    usage = "use now, now-DURATION (e.g. now-1d) or an RFC 3339 time such as 2026-11-23T00:00:00Z"
    if text == "now":
        return now
    try:
        if text.startswith("now-"):
            return now - parse_duration(text[4:])
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--start {text!r}: {usage}") from None
    if moment.tzinfo is None:
        raise ValueError(f"--start {text!r}: add an offset, e.g. {text}Z")
    return moment.timestamp()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    positive = _bounded(0, math.inf, include_low=False)
    share = _bounded(0, 1)
    add = parser.add_argument
    add("--rate", type=positive, default=50.0, help="orders per second, mean over a day (50)")
    add("--duration", type=_duration, help="event time to cover, e.g. 10m (default: forever)")
    add("--seed", type=int, help="random seed; the same seed and --start repeat every record "
        "(default: random, printed)")
    add("--time-scale", type=positive, default=1.0,
        help="divide order-to-contact delays by this; 3600 turns an hour into a second (1)")
    add("--start", default="now",
        help="event time of the first order: now, now-DURATION (e.g. now-1d) or RFC 3339 (now)")
    add("--no-pace", action="store_true",
        help="send as fast as possible instead of when each record's time comes")
    add("--incident", action="append", default=[], metavar="SPEC",
        help="e.g. carrier=acme,cause=where_is_my_order,x=6,start=2m,duration=10m "
        "or carrier=acme,share=0.6,start=2m,duration=10m (repeatable)")
    add("--incidents", metavar="FILE", help="YAML file of incidents (see examples/incidents.yaml)")
    add("--jsonl-dir", metavar="DIR", help="also write orders.jsonl and contacts.jsonl here")
    add("--no-kafka", action="store_true", help="do not produce to Kafka (needs --jsonl-dir)")
    add("--quiet", action="store_true", help="no progress lines, only the final summary")
    world = parser.add_argument_group("the simulated world")
    world.add_argument("--diurnal-amplitude", type=_bounded(0, 0.99), default=0.5,
                       help="daily rate swing; peak/trough = (1+a)/(1-a) (0.5)")
    world.add_argument("--peak-hour", type=_bounded(0, 24), default=19.0,
                       help="UTC hour of the highest order rate (19)")
    world.add_argument("--skew", type=_bounded(0, 5), default=1.0,
                       help="Zipf exponent of attribute populations; 0 = uniform (1)")
    world.add_argument("--population", type=_size, action="append", default=[],
                       metavar="NAME=SIZE", help="values of an attribute, e.g. seller=2000")
    world.add_argument("--cpo", type=positive, default=BASE_CPO,
                       help=f"contacts per order over all causes ({BASE_CPO:g})")
    world.add_argument("--no-order-id-share", type=share, default=0.05,
                       help="contacts with customer_id only (0.05)")
    world.add_argument("--unknown-order-share", type=share, default=0.01,
                       help="contacts about an order that never appears (0.01)")
    world.add_argument("--duplicate-share", type=share, default=0.01,
                       help="records sent twice (0.01)")
    world.add_argument("--malformed-share", type=share, default=0.001,
                       help="extra invalid records, for the DLQ (0.001)")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The SimConfig the options describe; raises IncidentError for a bad incident."""
    if args.no_order_id_share + args.unknown_order_share > 1:
        raise IncidentError("--no-order-id-share + --unknown-order-share must not exceed 1")
    config = SimConfig(
        rate=args.rate, seed=args.seed, time_scale=args.time_scale,
        diurnal_amplitude=args.diurnal_amplitude, peak_hour=args.peak_hour, skew=args.skew,
        sizes=dict(args.population), total_cpo=args.cpo,
        no_order_id_share=args.no_order_id_share, unknown_order_share=args.unknown_order_share,
        duplicate_share=args.duplicate_share, malformed_share=args.malformed_share,
    )
    populations = config.populations()
    incidents = [parse_incident(spec, populations) for spec in args.incident]
    if args.incidents:
        incidents += load_incidents(args.incidents, populations)
    return replace(config, incidents=tuple(incidents))


def run(args: argparse.Namespace) -> int:
    import signal

    from streams.settings import load_settings

    if args.seed is None:
        args.seed = secrets.randbelow(1_000_000)
    try:
        config = config_from_args(args)
        start = parse_start(args.start, time.time())
    except ValueError as exc:  # IncidentError is a ValueError
        print(f"cpo simulate: {exc}", file=sys.stderr)
        return 2
    if args.no_kafka and not args.jsonl_dir:
        print("cpo simulate: --no-kafka needs --jsonl-dir DIR (otherwise nothing is written)",
              file=sys.stderr)
        return 2
    sinks: list[Sink] = []
    if not args.no_kafka:
        from kafka.errors import KafkaError

        settings = load_settings()
        try:
            sinks.append(KafkaSink(settings))
        except KafkaError as exc:
            print(f"cpo simulate: cannot reach Kafka at {settings.kafka_bootstrap} ({exc}); "
                  "start a broker or set CPO_KAFKA_BOOTSTRAP, or use --no-kafka --jsonl-dir DIR",
                  file=sys.stderr)
            return 1
    if args.jsonl_dir:
        sinks.append(JsonlSink(args.jsonl_dir))

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    progress = Progress("simulate", enabled=not args.quiet)
    if not args.quiet:
        incidents = "; ".join(i.describe() for i in config.incidents) or "none"
        print(f"cpo simulate: seed {config.seed}, start {rfc3339(start)}, incidents: {incidents}",
              file=sys.stderr)
    try:
        run_simulation(config, start, args.duration, sinks, not args.no_pace, progress)
    except BaseException:  # Ctrl-C or SIGTERM: deliver what is buffered, but do not hang
        for sink in sinks:
            sink.close(timeout=STOP_TIMEOUT)
        progress.line("stopped")
        raise
    for sink in sinks:
        sink.close()
    progress.line(f"done in {time.monotonic() - progress.began:.1f} s")
    failed = sum(getattr(sink, "failed", 0) for sink in sinks)
    if failed:
        error = next(s.last_error for s in sinks if getattr(s, "failed", 0))
        print(f"cpo simulate: {failed:,} records were not delivered (last error: {error})",
              file=sys.stderr)
        return 1
    return 0
