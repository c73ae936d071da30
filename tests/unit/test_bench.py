"""The benchmark's pure logic: percentiles, rates, the exporter's totals, the targets and the
result document's schema. No servers, no timing assertions."""

from __future__ import annotations

import copy

import jsonschema
import orjson
import pytest

from bench.harness import partition_of, sim_config
from bench.report import (
    RESULT_SCHEMA,
    BaselineResult,
    DataSummary,
    LatencyResult,
    PipelineResult,
    RedisMemory,
    assemble,
    exporter_totals,
    percentile,
    rate,
    ratio,
    table,
    targets,
)
from streams.local import with_redis_db

# ---- percentile ---------------------------------------------------------------------------


@pytest.mark.parametrize(("q", "expected"), [
    (0.0, 1.0), (0.5, 2.5), (1.0, 4.0), (0.25, 1.75), (0.99, 3.97),
])
def test_percentile_interpolates_linearly_between_closest_ranks(q: float, expected: float) -> None:
    # numpy.percentile([1, 2, 3, 4], q * 100) gives the same values
    assert percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([0.7], 0.99) == 0.7


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 0.5) is None


def test_a_lost_sample_counts_as_infinitely_late() -> None:
    values: list[float | None] = [0.1] * 98 + [0.2, None]
    assert percentile(values, 0.5) == pytest.approx(0.1)
    assert percentile(values, 0.98) == pytest.approx(0.102)
    assert percentile(values, 0.99) is None  # between 0.2 and infinity: JSON cannot hold it
    assert percentile([0.1, None], 0.5) is None


def test_percentile_rejects_a_quantile_outside_0_1() -> None:
    with pytest.raises(ValueError, match="not in"):
        percentile([1.0], 99)


# ---- rates ----------------------------------------------------------------------------------


def test_rate_and_ratio() -> None:
    assert rate(500_000, 20.0) == 25_000.0
    assert rate(10, 0.0) is None  # nothing timed
    assert ratio(50_000.0, 200_000.0) == 0.25
    assert ratio(None, 200_000.0) is None
    assert ratio(1.0, 0.0) is None


# ---- exporter totals ------------------------------------------------------------------------


def test_exporter_totals_read_the_window_and_all_causes() -> None:
    samples = {
        ("cpo_window_orders", (("window", "1d"),)): 1234.0,
        ("cpo_window_orders", (("window", "1h"),)): 99.0,
        ("cpo_window_contacts", (("cause", "all"), ("window", "1d"))): 250.0,
        ("cpo_window_contacts", (("cause", "late_delivery"), ("window", "1d"))): 50.0,
    }
    assert exporter_totals(samples, "1d") == (1234, 250)
    assert exporter_totals(samples, "5m") is None  # no snapshot of that window yet


# ---- data helpers ---------------------------------------------------------------------------


def test_with_redis_db_replaces_the_database() -> None:
    assert with_redis_db("redis://h:6379/0", 2) == "redis://h:6379/2"
    assert with_redis_db("rediss://u:p@h:6380", 1) == "rediss://u:p@h:6380/1"
    assert with_redis_db("unix:///run/redis.sock?db=0", 3) == "unix:///run/redis.sock?db=3"


def test_records_of_one_key_share_a_partition_and_unkeyed_ones_spread() -> None:
    assert len({partition_of(b"o-1-42", i, 8) for i in range(10)}) == 1
    assert {partition_of(None, i, 8) for i in range(8)} == set(range(8))


def test_the_simulated_rate_leaves_room_for_the_requested_events() -> None:
    config = sim_config(500_000, seed=1)
    expected_records = config.rate * 3600 * (1 + config.total_cpo)
    assert expected_records > 500_000
    assert config.diurnal_amplitude == 0.0  # a flat rate makes the count predictable


# ---- the result document --------------------------------------------------------------------


def latency_of(latencies: list[float | None], sent: int = 50_000) -> LatencyResult:
    """Ten seconds of sending `sent` events, with these sampled latencies."""
    return LatencyResult(target_rate=5000.0, seconds=10.0, sent=sent, latencies=latencies,
                         ack_latencies=[0.01] * len(latencies), max_send_gap_seconds=0.05,
                         harness_cpu_seconds=2.0,
                         poll_interval=0.02, drain_timeout=30.0)


def result(**changes: object) -> dict:
    """A document as `assemble` builds it from typical phase results."""
    parts: dict = {
        "run": {"started_at": "2026-11-23T03:00:00Z", "command": "python -m bench",
                "options": {"events": 500_000}, "settings": {"CPO_BATCH_SIZE": "2000"}},
        "machine": {"cpu_count": 2, "python": "3.11.7", "packages": {"aiokafka": "0.14.0"}},
        "data": DataSummary(records=500_000, orders=410_000, contacts=90_000, malformed=500,
                            distinct_orders=405_000, distinct_contacts=89_000, bytes=120_000_000,
                            event_time_start=1.0, event_time_end=3601.0, generate_seconds=20.0,
                            preload_seconds=5.0),
        "baseline": BaselineResult(records=500_000, seconds=2.5, startup_seconds=5.0,
                                   cpu_seconds=2.4),
        "baselines": {1: BaselineResult(records=500_000, seconds=2.0, startup_seconds=5.0,
                                        cpu_seconds=1.9)},
        "pipelines": [
            PipelineResult(workers=1, records=500_000, seconds=10.0, redis_seconds=9.5,
                           startup_seconds=7.0, exporter_read_seconds=0.3, cpu_seconds=9.0,
                           redis_cpu_seconds=4.0,
                           broker_cpu_seconds=0.5, peak_rss_bytes=[90 << 20],
                           timeline=[(0.0, 1000), (5.0, 250_000), (9.5, 494_000)]),
            PipelineResult(workers=2, records=500_000, seconds=6.0, redis_seconds=5.5,
                           startup_seconds=7.5, exporter_read_seconds=0.3, cpu_seconds=10.0,
                           redis_cpu_seconds=4.2,
                           broker_cpu_seconds=None, peak_rss_bytes=[80 << 20, 81 << 20],
                           timeline=[]),
        ],
        "latency": latency_of([0.1 * i for i in range(1, 101)]),
        "redis_memory": RedisMemory(orders=400_000, order_state_bytes=60_000_000,
                                    all_state_bytes=80_000_000),
    }
    parts.update(changes)
    return assemble(**parts)


def test_the_document_matches_its_schema_and_survives_json() -> None:
    document = result()
    jsonschema.validate(document, RESULT_SCHEMA)
    assert orjson.loads(orjson.dumps(document)) == document


def test_the_schema_rejects_a_document_without_a_phase() -> None:
    document = result()
    del document["baseline"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, RESULT_SCHEMA)
    broken = copy.deepcopy(result())
    broken["pipeline"][0]["records_per_second"] = "fast"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RESULT_SCHEMA)


def test_the_document_derives_rates_ratios_and_scaling() -> None:
    document = result()
    assert document["baseline"]["records_per_second"] == 200_000.0
    one, two = document["pipeline"]
    assert one["records_per_second"] == 50_000.0
    # each phase against the bare run right before it; the first where it has none of its own
    assert one["baseline"]["records_per_second"] == 250_000.0
    assert one["ratio_to_baseline"] == 0.2
    assert two["baseline"] == document["baseline"]
    assert two["ratio_to_baseline"] == pytest.approx(500_000 / 6.0 / 200_000)
    assert one["redis_records_per_second"] == pytest.approx(500_000 / 9.5)
    assert one["cpu_us_per_record"] == pytest.approx(18.0)
    assert one["cores_busy"] == pytest.approx((9.0 + 4.0 + 0.5) / 10.0)
    assert two["cores_busy"] == pytest.approx((10.0 + 4.2) / 6.0)  # no embedded broker
    assert two["records_per_second"] == pytest.approx(500_000 / 6.0)
    assert document["scaling_2w_over_1w"] == pytest.approx(10.0 / 6.0)
    assert document["data"]["preload_records_per_second"] == 100_000.0
    latency = document["latency"]
    assert latency["achieved_rate"] == 5000.0
    assert (latency["samples"], latency["lost"]) == (100, 0)
    assert latency["p50_seconds"] == pytest.approx(5.05)
    assert latency["p99_seconds"] == pytest.approx(9.901)
    assert latency["max_seconds"] == pytest.approx(10.0)
    assert latency["ack_p99_seconds"] == pytest.approx(0.01)
    assert "latencies" not in latency  # the raw samples stay out of the file
    assert document["redis"]["bytes_per_order"] == 150.0
    assert document["redis"]["mb_per_million_orders"] == 150.0  # 150 B x 1e6 = 150 MB


def test_targets_report_met_missed_and_not_run() -> None:
    goals = result()["targets"]
    assert goals["ratio_1w_to_baseline"] == {"value": 0.2, "target": 0.3, "met": False,
                                             "stretch": 0.5, "stretch_met": False}
    assert goals["scaling_2w_over_1w"]["met"] is True
    assert goals["p99_latency_seconds"]["met"] is False  # 9.9 s
    assert goals["redis_bytes_per_order"]["met"] is True

    fast = result(latency=latency_of([0.2] * 100))
    assert fast["targets"]["p99_latency_seconds"]["met"] is True
    slow_input = result(latency=latency_of([0.2] * 100, sent=20_000))
    assert slow_input["targets"]["p99_latency_seconds"]["met"] is None  # 2,000/s, not 5,000/s
    lossy = result(latency=latency_of([0.2] * 199 + [None]))
    assert lossy["latency"]["p99_seconds"] == pytest.approx(0.2)
    assert lossy["targets"]["p99_latency_seconds"]["met"] is False  # a sample never arrived
    skipped = result(latency=None, redis_memory=None)
    jsonschema.validate(skipped, RESULT_SCHEMA)
    assert skipped["targets"]["p99_latency_seconds"]["met"] is None
    assert skipped["targets"]["redis_bytes_per_order"]["met"] is None


def test_the_scaling_target_says_whether_the_cores_allow_it() -> None:
    """One worker's pipeline kept 1.35 cores busy (9 + 4 + 0.5 CPU-s over 10 s): 1.6x its rate
    needs 2.16 cores, more than a 2-core machine has, fewer than a 4-core one. A scaling below
    the target is missed where the cores allow it, and does not apply where they do not."""
    for scaling_2w, reached in ((2.0, True), (1.25, False)):
        for cpus, allow in ((2, False), (4, True)):
            document = result()
            document["scaling_2w_over_1w"] = scaling_2w
            document["machine"]["cpus_usable"] = cpus
            scaling = targets(document)["scaling_2w_over_1w"]
            assert scaling["cores_needed"] == pytest.approx(1.6 * 1.35)
            assert (scaling["cores"], scaling["cores_allow"]) == (cpus, allow)
            assert scaling["met"] is (True if reached else (False if allow else None))
            document["targets"] = targets(document)
            note = "cores do not allow it: 1.6x one worker needs 2.2 cores of 2"
            assert (note in table(document)) is not allow
    assert result()["targets"]["scaling_2w_over_1w"]["cores_allow"] is None  # CPUs unknown


def test_the_table_shows_every_figure() -> None:
    text = table(result())
    for figure in ("before x1", "250,000", "before x2", "200,000", "50,000", "0.20", "0.42",
                   "1.67x", "p50 5.050 s", "p99 9.901 s",
                   "150 bytes/order", "90", "80 + 81", "MISSED"):
        assert figure in text, figure
