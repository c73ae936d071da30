"""The simulator's statistics, checked on generated data (no Kafka).

Counts of independent rare events are Poisson (or binomial) distributed, so every statistical
assertion allows FOUR standard deviations of the count it checks: a correct generator passes
with probability > 99.99 % per assertion, and the seeds are fixed, so a pass is reproducible.
A wrong rate, share or multiplier of the size these tests guard against (say 20 % or more)
sits many standard deviations away and fails.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import orjson
import pytest

from streams import cli
from streams.events import Rejection, decode_contact, decode_order
from streams.incidents import Incident, IncidentError, load_incidents, parse_incident
from streams.population import CAUSES, build_populations
from streams.simulate import (
    JsonlSink,
    Progress,
    SimConfig,
    encode,
    generate,
    generate_timed,
    parse_start,
    run_simulation,
)

START = datetime.fromisoformat("2026-01-01T00:00:00Z").timestamp()
SIGMAS = 4
# With time_scale 1e6 the slowest cause's median delay is 0.6 s and 5.7 sigma of the
# log-normal is under 60 s: orders placed before end - MARGIN have all their contacts sent.
FAST = 1e6
MARGIN = 60.0
POPULATIONS = build_populations({}, 1.0)
BASE = {cause.name: cause.cpo for cause in CAUSES}


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def within(observed: float, expected: float, sd: float) -> bool:
    return abs(observed - expected) <= SIGMAS * sd


def poisson_ok(count: int, expected: float) -> bool:
    return within(count, expected, math.sqrt(expected))


def binomial_ok(hits: int, trials: int, share: float) -> bool:
    return within(hits, trials * share, math.sqrt(trials * share * (1 - share)))


@dataclass
class Run:
    """Generated records sorted into originals, re-sends and malformed ones."""

    orders: dict[str, dict] = field(default_factory=dict)
    contacts: list[dict] = field(default_factory=list)
    duplicates: list[tuple[str, dict]] = field(default_factory=list)
    malformed: list[tuple[str, bytes]] = field(default_factory=list)
    originals: dict[tuple[str, str], dict] = field(default_factory=dict)

    def contacts_by_order(self) -> dict[str, Counter]:
        by_order: dict[str, Counter] = {}
        for contact in self.contacts:
            by_order.setdefault(contact["order_id"], Counter())[contact["cause"]] += 1
        return by_order


def collect(config: SimConfig, duration: float, start: float = START) -> Run:
    run = Run()
    for topic, event in generate(config, start, duration):
        if isinstance(event, bytes):
            run.malformed.append((topic, event))
            continue
        identity = (topic, event["order_id" if topic == "orders" else "contact_id"])
        if identity in run.originals:
            run.duplicates.append((topic, event))
            continue
        run.originals[identity] = event
        if topic == "orders":
            run.orders[event["order_id"]] = event
        else:
            run.contacts.append(event)
    return run


ACME_WISMO = Incident("acme", (("carrier", "acme"),), start=200, duration=200,
                      cause="where_is_my_order", multiplier=6)
STATS_DURATION = 600.0


@pytest.fixture(scope="module")
def stats() -> Run:
    """60k orders at a flat 100/s, every contact tied to its order, one rate incident."""
    config = SimConfig(rate=100, seed=11, time_scale=FAST, diurnal_amplitude=0,
                       no_order_id_share=0, unknown_order_share=0, incidents=(ACME_WISMO,))
    return collect(config, STATS_DURATION)


def settled(run: Run, duration: float) -> list[dict]:
    """Orders whose contacts have all been sent (placed before end - MARGIN)."""
    return [o for o in run.orders.values() if epoch(o["occurred_at"]) < START + duration - MARGIN]


def test_order_rate_is_poisson_with_the_configured_mean(stats: Run) -> None:
    assert poisson_ok(len(stats.orders), 100 * STATS_DURATION)


def test_diurnal_curve_peak_over_trough() -> None:
    """Amplitude 0.5 gives (1 + 0.5) / (1 - 0.5) = 3 times more orders at the peak hour."""
    config = SimConfig(rate=50, seed=2, diurnal_amplitude=0.5, peak_hour=18, time_scale=FAST)
    peak = len(collect(config, 120, START + 18 * 3600).orders)
    trough = len(collect(config, 120, START + 6 * 3600).orders)
    # Over two minutes the sinusoid stays within 0.01 % of its extreme.
    assert poisson_ok(peak, 50 * 1.5 * 120) and poisson_ok(trough, 50 * 0.5 * 120)
    sd_log_ratio = math.sqrt(1 / peak + 1 / trough)  # delta method for a ratio of Poissons
    assert within(math.log(peak / trough), math.log(3), sd_log_ratio)


def test_cause_mix_matches_the_base_rates(stats: Run) -> None:
    by_order = stats.contacts_by_order()
    orders = [o for o in settled(stats, STATS_DURATION)
              if not ACME_WISMO.active(epoch(o["occurred_at"]) - START)
              or not ACME_WISMO.matches(o["attributes"])]
    counts = Counter()
    for order in orders:
        counts.update(by_order.get(order["order_id"], Counter()))
    assert set(counts) == set(BASE)
    for cause, rate in BASE.items():
        assert poisson_ok(counts[cause], len(orders) * rate), cause
    assert poisson_ok(sum(counts.values()), len(orders) * sum(BASE.values()))


def test_rate_incident_multiplies_its_cause_for_matching_orders_in_its_window(stats: Run) -> None:
    by_order = stats.contacts_by_order()
    groups: dict[bool, list[Counter]] = {True: [], False: []}
    for order in settled(stats, STATS_DURATION):
        hit = (ACME_WISMO.active(epoch(order["occurred_at"]) - START)
               and ACME_WISMO.matches(order["attributes"]))
        groups[hit].append(by_order.get(order["order_id"], Counter()))
    wismo = {hit: sum(c["where_is_my_order"] for c in counters) for hit, counters in groups.items()}
    orders = {hit: len(counters) for hit, counters in groups.items()}
    assert poisson_ok(wismo[True], orders[True] * 6 * BASE["where_is_my_order"])
    assert poisson_ok(wismo[False], orders[False] * BASE["where_is_my_order"])
    ratio = (wismo[True] / orders[True]) / (wismo[False] / orders[False])
    assert within(math.log(ratio), math.log(6), math.sqrt(1 / wismo[True] + 1 / wismo[False]))
    # Other causes of the same orders are untouched.
    late = sum(c["late_delivery"] for c in groups[True])
    assert poisson_ok(late, orders[True] * BASE["late_delivery"])


def test_mix_incident_changes_the_share_and_keeps_the_rates() -> None:
    shift = parse_incident("carrier=ecoship,share=0.5,start=100s,duration=100s", POPULATIONS)
    run = collect(SimConfig(rate=100, seed=5, time_scale=FAST, diurnal_amplitude=0,
                            incidents=(shift,)), 300)
    inside = [o for o in settled(run, 300) if shift.active(epoch(o["occurred_at"]) - START)]
    outside = [o for o in settled(run, 300) if not shift.active(epoch(o["occurred_at"]) - START)]
    base_share = POPULATIONS["carrier"].shares["ecoship"]
    assert 0.05 < base_share < 0.1

    def ecoship(orders: list[dict]) -> list[dict]:
        return [o for o in orders if o["attributes"]["carrier"] == "ecoship"]

    assert binomial_ok(len(ecoship(inside)), len(inside), 0.5)
    assert binomial_ok(len(ecoship(outside)), len(outside), base_share)
    # The other carriers keep their relative sizes.
    acme_share = POPULATIONS["carrier"].shares["acme"] / (1 - base_share)
    others = [o for o in inside if o["attributes"]["carrier"] != "ecoship"]
    assert binomial_ok(sum(o["attributes"]["carrier"] == "acme" for o in others),
                       len(others), acme_share)
    # Rates stay: ecoship orders in the window have the base contacts per order.
    by_order = {}
    for contact in run.contacts:
        by_order[contact["order_id"]] = by_order.get(contact["order_id"], 0) + 1
    contacts = sum(by_order.get(o["order_id"], 0) for o in ecoship(inside))
    expected = len(ecoship(inside)) * sum(BASE.values()) * (1 - 0.05 - 0.01)
    assert poisson_ok(contacts, expected)  # 6 % of contacts carry no or an unknown order_id


def test_contact_delays_follow_the_cause_median_over_the_time_scale(stats: Run) -> None:
    for cause in ("where_is_my_order", "return_refund"):
        delays = sorted(
            epoch(c["occurred_at"]) - epoch(stats.orders[c["order_id"]]["occurred_at"])
            for c in stats.contacts if c["cause"] == cause)
        median = next(x.median_delay_hours for x in CAUSES if x.name == cause) * 3600 / FAST
        # The sample median of a log-normal has sd(log) = sigma * sqrt(pi / 2) / sqrt(n);
        # timestamps have millisecond precision, which adds up to 2 ms.
        sd_log = 0.8 * math.sqrt(math.pi / 2) / math.sqrt(len(delays))
        observed = delays[len(delays) // 2]
        assert abs(math.log(observed / median)) <= SIGMAS * sd_log + 0.002 / median, cause
    assert all(epoch(c["occurred_at"]) >= epoch(stats.orders[c["order_id"]]["occurred_at"])
               for c in stats.contacts)


@pytest.fixture(scope="module")
def noisy() -> Run:
    config = SimConfig(rate=100, seed=3, time_scale=FAST, diurnal_amplitude=0,
                       duplicate_share=0.02, malformed_share=0.01)
    return collect(config, 300)


def test_contacts_without_or_with_unknown_order_ids(noisy: Run) -> None:
    contacts = noisy.contacts
    without = sum(c["order_id"] is None for c in contacts)
    unknown = sum(c["order_id"] is not None and c["order_id"] not in noisy.orders
                  for c in contacts)
    assert binomial_ok(without, len(contacts), 0.05)
    assert binomial_ok(unknown, len(contacts), 0.01)
    assert all(c["customer_id"].startswith("cu-") for c in contacts)


def test_duplicates_are_exact_resends_at_the_configured_share(noisy: Run) -> None:
    assert binomial_ok(len(noisy.duplicates), len(noisy.originals), 0.02)
    topics = Counter(topic for topic, _ in noisy.duplicates)
    assert topics["orders"] > 0 and topics["contacts"] > 0
    for topic, event in noisy.duplicates:
        key = event["order_id" if topic == "orders" else "contact_id"]
        assert noisy.originals[(topic, key)] == event


def test_malformed_records_are_rejected_and_valid_ones_accepted(noisy: Run) -> None:
    """The pipeline's own decoder (streams.events) is the judge of the contract's rules."""
    assert binomial_ok(len(noisy.malformed), len(noisy.originals), 0.01)
    now = START + 3600
    decoders = {"orders": decode_order, "contacts": decode_contact}
    reasons = Counter()
    for topic, raw in noisy.malformed:
        assert b"\n" not in raw
        result = decoders[topic](raw, now)
        assert isinstance(result, Rejection), raw
        reasons[result.reason.split(":")[0]] += 1
    assert set(reasons) == {"invalid_json", "not_an_object", "missing_field", "wrong_type",
                            "bad_timestamp"}
    for (topic, _), event in noisy.originals.items():
        assert not isinstance(decoders[topic](encode(event), now), Rejection), event


def test_records_come_in_send_order_and_originals_in_event_time_order() -> None:
    config = SimConfig(rate=50, seed=8, time_scale=3600, duplicate_share=0.05)
    timed = list(generate_timed(config, START, 120))
    assert [when for when, _, _ in timed] == sorted(when for when, _, _ in timed)
    seen, times = set(), []
    for _, topic, event in timed:
        if isinstance(event, dict) and id(event) not in seen:
            seen.add(id(event))
            times.append(epoch(event["occurred_at"]))
    assert times == sorted(times)
    assert all(START <= t < START + 120 for t in times)


def test_same_seed_same_records_other_seed_other_records() -> None:
    config = SimConfig(rate=20, seed=42, time_scale=3600)
    first = [(t, encode(e)) for t, e in generate(config, START, 60)]
    assert first == [(t, encode(e)) for t, e in generate(config, START, 60)]
    other = SimConfig(rate=20, seed=43, time_scale=3600)
    assert first != [(t, encode(e)) for t, e in generate(other, START, 60)]
    # A longer run starts with the same orders.
    longer = [e for t, e in generate(config, START, 120) if t == "orders"]
    shorter = [e for t, e in first if t == "orders"]
    assert [encode(e) for e in longer[: len(shorter)]] == shorter


def test_jsonl_round_trip(tmp_path) -> None:
    config = SimConfig(rate=50, seed=9, time_scale=3600, malformed_share=0.05)
    expected = list(generate(config, START, 60))
    sink = JsonlSink(tmp_path)
    run_simulation(config, START, 60, [sink], pace=False, progress=Progress("test", False))
    sink.close()
    for topic in ("orders", "contacts"):
        lines = (tmp_path / f"{topic}.jsonl").read_bytes().splitlines()
        events = [e for t, e in expected if t == topic]
        assert lines == [encode(e) for e in events]
        assert [orjson.loads(line) for line, e in zip(lines, events) if isinstance(e, dict)] == [
            e for e in events if isinstance(e, dict)]
    assert any(isinstance(e, bytes) for _, e in expected)


def test_cli_writes_what_generate_yields(tmp_path) -> None:
    spec = "carrier=acme,cause=where_is_my_order,x=6,start=10s,duration=20s"
    status = cli.main(["simulate", "--no-kafka", "--jsonl-dir", str(tmp_path), "--no-pace",
                       "--quiet", "--seed", "4", "--rate", "30", "--duration", "1m",
                       "--time-scale", "3600", "--start", "2026-01-01T00:00:00Z",
                       "--incident", spec])
    assert status == 0
    config = SimConfig(rate=30, seed=4, time_scale=3600,
                       incidents=(parse_incident(spec, POPULATIONS),))
    expected = list(generate(config, START, 60))
    for topic in ("orders", "contacts"):
        lines = (tmp_path / f"{topic}.jsonl").read_bytes().splitlines()
        assert lines == [encode(e) for t, e in expected if t == topic]


def test_cli_needs_a_destination(capsys) -> None:
    assert cli.main(["simulate", "--no-kafka", "--duration", "1s"]) == 2
    assert "--jsonl-dir" in capsys.readouterr().err


def test_population_is_zipf_like() -> None:
    carriers = POPULATIONS["carrier"]
    harmonic = sum(1 / r for r in range(1, 9))
    assert carriers.values[0] == "acme" and len(carriers.values) == 8
    assert carriers.shares["acme"] == pytest.approx(1 / harmonic)
    sellers = build_populations({"seller": 2000}, 1.2)["seller"]
    assert len(set(sellers.values)) == 2000
    assert sellers.shares[sellers.values[0]] > 10 * sellers.shares[sellers.values[99]]


def test_incident_from_the_command_line() -> None:
    incident = parse_incident(
        "carrier=acme,region=eu-west,cause=where_is_my_order,x=6,start=2m,duration=10m",
        POPULATIONS)
    assert incident.kind == "rate"
    assert incident.match == (("carrier", "acme"), ("region", "eu-west"))
    assert (incident.start, incident.end, incident.multiplier) == (120, 720, 6)
    assert incident.active(120) and not incident.active(720)
    assert incident.matches({"carrier": "acme", "region": "eu-west", "seller": "x"})
    assert not incident.matches({"carrier": "acme", "region": "uk"})
    forever = parse_incident("carrier=ecoship,cause=late_delivery,x=2", POPULATIONS)
    assert forever.active(0) and forever.active(1e9)
    mix = parse_incident("carrier=ecoship,share=0.4,start=0,duration=1h", POPULATIONS)
    assert (mix.kind, mix.share, mix.end) == ("mix", 0.4, 3600)


def test_example_incidents_file_loads() -> None:
    incidents = load_incidents("examples/incidents.yaml", POPULATIONS)
    assert [i.kind for i in incidents] == ["rate", "rate", "rate", "mix"]
    assert incidents[0].describe() == (
        "carrier=acme,cause=where_is_my_order,x=6,start=120s,duration=600s")


@pytest.mark.parametrize(("spec", "named"), [
    ("carrier=nobody,cause=other,x=2", "carrier='nobody'"),
    ("carrier=acme,cause=wismo,x=2", "cause='wismo'"),
    ("carrier=acme,cause=other,x=lots", "x='lots'"),
    ("carrier=acme,cause=other,x=2,start=soon", "start='soon'"),
    ("carrier=acme,cause=other,x=2,duration=0s", "duration='0s'"),
    ("carier=acme,cause=other,x=2", "carier='acme'"),
    ("carrier=acme,share=1.5", "share='1.5'"),
    ("carrier=acme,share=0.5,x=2", "share='0.5'"),
    ("carrier=acme,x=2", "cause="),
    ("carrier=acme,cause=other", "x="),
    ("cause=other,x=2", "carrier=acme"),
    ("carrier=acme,cause", "'cause' is not key=value"),
    ("carrier=acme,carrier=acme,cause=other,x=2", "carrier= is given twice"),
])
def test_incident_errors_name_the_field_in_one_line(spec: str, named: str) -> None:
    with pytest.raises(IncidentError) as error:
        parse_incident(spec, POPULATIONS)
    message = str(error.value)
    assert named in message and "\n" not in message


def test_incidents_file_errors_name_the_item(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("incidents:\n  - {carrier: acme, cause: other, x: 2}\n  - {carrier: acme}\n")
    with pytest.raises(IncidentError, match=r"bad.yaml: incident 2: missing cause="):
        load_incidents(path, POPULATIONS)
    path.write_text("incidents: [\n")
    with pytest.raises(IncidentError, match="not valid YAML"):
        load_incidents(path, POPULATIONS)


def test_start_option() -> None:
    assert parse_start("now", 1000.0) == 1000.0
    assert parse_start("now-1h", 7200.0) == 3600.0
    assert parse_start("2026-01-01T00:00:00Z", 0.0) == START
    for bad in ("2026-01-01T00:00:00", "yesterday", "now-soon"):
        with pytest.raises(ValueError, match="--start"):
            parse_start(bad, 0.0)


def test_replay_topic_and_key_of_a_line() -> None:
    from pathlib import Path

    from streams.replay import line_key, topic_for

    assert topic_for(Path("data/orders-2026-01-01.jsonl"), None) == "orders"
    assert topic_for(Path("contacts.jsonl"), None) == "contacts"
    assert topic_for(Path("events.jsonl"), "contacts") == "contacts"
    with pytest.raises(ValueError, match="--topic"):
        topic_for(Path("events.jsonl"), None)
    assert line_key("orders", b'{"order_id":"o-1","occurred_at":"x"}') == b"o-1"
    assert line_key("contacts", b'{"contact_id":7}') is None
    assert line_key("orders", b'{"order_id":"o-1"') is None
    assert line_key("orders", b"[1]") is None
