"""What a benchmark run found, as plain data: the figures each phase measured, the derived
rates and percentiles, the targets of issue 6, the JSON document and the printed table.

Everything here is pure (no clocks, no servers), so the arithmetic is unit-tested and two runs'
JSON files can be compared field by field. `RESULT_SCHEMA` is the document's contract.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_ID = "cpo-bench/2"  # 2: each pipeline phase has its own baseline run

# Issue 6's targets. The ratio targets compare rates measured in the same run.
TARGET_RATIO = 0.30  # one worker / bare consumer
STRETCH_RATIO = 0.50
TARGET_SCALING = 1.6  # two workers / one worker
TARGET_P99_SECONDS = 2.0  # event-to-metric latency at TARGET_LATENCY_RATE events/s
TARGET_LATENCY_RATE = 5000.0
TARGET_BYTES_PER_ORDER = 200.0  # Redis join state


@dataclass
class DataSummary:
    """The preloaded records and what the pipeline must count from them."""

    records: int  # every record produced, duplicates and malformed ones included
    orders: int  # records on the orders topic
    contacts: int  # records on the contacts topic
    malformed: int  # records the pipeline must reject
    distinct_orders: int  # valid order_ids: the expected order count
    distinct_contacts: int  # valid contact_ids: the expected contact count
    bytes: int  # sum of record values
    event_time_start: float  # epoch seconds of the earliest and latest valid event
    event_time_end: float
    generate_seconds: float
    preload_seconds: float


@dataclass
class BaselineResult:
    """The bare aiokafka consumer group loop with orjson decode, over every preloaded record."""

    records: int
    seconds: float  # first record received to last record decoded
    startup_seconds: float  # consumer start to first record (JoinGroup included)
    cpu_seconds: float  # process CPU time over `seconds`


@dataclass
class PipelineResult:
    """`cpo worker` x `workers` with the exporter, from empty state to every count visible."""

    workers: int
    records: int
    seconds: float  # first count in Redis to the last count visible in the exporter
    redis_seconds: float  # first count in Redis to the last count in Redis
    startup_seconds: float  # worker processes started to first count in Redis
    exporter_read_seconds: float | None  # how long the exporter's last read of Redis took
    cpu_seconds: float  # CPU time of all workers over `redis_seconds`
    redis_cpu_seconds: float  # the Redis server's, same interval
    broker_cpu_seconds: float | None  # the embedded broker's, same interval; None if external
    peak_rss_bytes: list[int]  # per worker process, its children included
    timeline: list[tuple[float, int]]  # (seconds after the first count, counted) about 1/s


@dataclass
class LatencyResult:
    """Event-to-metric latency of sampled orders at a paced input rate, one worker caught up.

    `latencies` holds one entry per sampled order: seconds from its send to its join state in
    Redis, or None when it never became visible within the drain timeout. `ack_latencies`:
    seconds from the send to the broker's acknowledgement, the part the pipeline cannot help."""

    target_rate: float
    seconds: float  # time spent sending
    sent: int
    latencies: list[float | None] = field(repr=False)
    ack_latencies: list[float] = field(repr=False)
    max_send_gap_seconds: float  # longest pause of the paced sender (a starved harness)
    harness_cpu_seconds: float  # this process's CPU while sending and polling
    poll_interval: float
    drain_timeout: float


@dataclass
class RedisMemory:
    """INFO used_memory attributable to the orders' join state (`cpo:o:*` keys only)."""

    orders: int  # order identities in the cpo:o:* hashes
    order_state_bytes: int  # used_memory with only those keys left, minus the empty server's
    all_state_bytes: int  # used_memory with every key of the run, minus the empty server's


def percentile(values: list[float | None], q: float) -> float | None:
    """The q-quantile (0 <= q <= 1) with linear interpolation between closest ranks (numpy's
    default). None counts as infinitely late; returns None for no values or an infinite
    quantile, which JSON cannot hold."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is not in [0, 1]")
    ordered = sorted(math.inf if v is None else v for v in values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    if fraction == 0 or ordered[low] == ordered[high]:
        value = ordered[low]
    else:
        value = ordered[low] + (ordered[high] - ordered[low]) * fraction
    return None if math.isinf(value) else value


def rate(count: float, seconds: float) -> float | None:
    """Per second, or None when nothing was timed."""
    return count / seconds if seconds > 0 else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


TOTALS_SAMPLES = ("cpo_window_orders{", "cpo_window_contacts{")  # what exporter_totals reads


def exporter_totals(samples: dict, window: str) -> tuple[int, int] | None:
    """(orders, contacts of every cause) in `window`, from parsed exporter samples
    ({(name, sorted label pairs): value}); None until the exporter has a snapshot."""
    orders = samples.get(("cpo_window_orders", (("window", window),)))
    contacts = samples.get(("cpo_window_contacts", (("cause", "all"), ("window", window))))
    if orders is None or contacts is None:
        return None
    return int(orders), int(contacts)


def _baseline_json(baseline: BaselineResult) -> dict[str, Any]:
    return {**asdict(baseline), "records_per_second": rate(baseline.records, baseline.seconds)}


def _pipeline_json(result: PipelineResult, baseline: BaselineResult) -> dict[str, Any]:
    records_per_second = rate(result.records, result.seconds)
    baseline_json = _baseline_json(baseline)
    return {
        **asdict(result),
        "baseline": baseline_json,
        "timeline": [list(point) for point in result.timeline],
        "records_per_second": records_per_second,
        "redis_records_per_second": rate(result.records, result.redis_seconds),
        "ratio_to_baseline": ratio(records_per_second, baseline_json["records_per_second"]),
        "cpu_us_per_record": (result.cpu_seconds / result.records * 1e6
                              if result.records else None),
        # Cores the workers, Redis and the embedded broker kept busy over the timed window: on
        # a machine with as many cores, "two workers scale" is only testable well below it.
        "cores_busy": ((result.cpu_seconds + result.redis_cpu_seconds
                        + (result.broker_cpu_seconds or 0.0)) / result.seconds
                       if result.seconds else None),
    }


def _latency_json(result: LatencyResult) -> dict[str, Any]:
    seen = [v for v in result.latencies if v is not None]
    summary = {k: v for k, v in asdict(result).items()
               if k not in ("latencies", "ack_latencies")}
    return {
        **summary,
        "achieved_rate": rate(result.sent, result.seconds),
        "samples": len(result.latencies),
        "lost": len(result.latencies) - len(seen),
        "p50_seconds": percentile(result.latencies, 0.50),
        "p99_seconds": percentile(result.latencies, 0.99),
        "max_seconds": max(seen) if seen and len(seen) == len(result.latencies) else None,
        "ack_p50_seconds": percentile(result.ack_latencies, 0.50),
        "ack_p99_seconds": percentile(result.ack_latencies, 0.99),
    }


def _redis_json(memory: RedisMemory) -> dict[str, Any]:
    per_order = ratio(memory.order_state_bytes, memory.orders)
    return {
        **asdict(memory),
        "bytes_per_order": per_order,
        "mb_per_million_orders": per_order,  # bytes per order x 1e6 / 1e6
        "all_state_bytes_per_order": ratio(memory.all_state_bytes, memory.orders),
    }


def _target(value: float | None, target: float, higher_is_better: bool,
            stretch: float | None = None) -> dict[str, Any]:
    def met(bound: float) -> bool | None:
        if value is None:
            return None
        return value >= bound if higher_is_better else value < bound

    entry: dict[str, Any] = {"value": value, "target": target, "met": met(target)}
    if stretch is not None:
        entry["stretch"] = stretch
        entry["stretch_met"] = met(stretch)
    return entry


def _scaling_target(document: dict[str, Any], one: dict[str, Any]) -> dict[str, Any]:
    """The scaling target, with whether the machine has the cores it assumes ("when cores
    allow", issue 6): at the target's rate the workers, Redis and the broker do 1.6 times the
    work per second, so they need 1.6 times the cores one worker's pipeline kept busy. Missed
    where the cores do not allow it, the target does not apply: `met` is None, as for a
    latency measured below its input rate."""
    entry = _target(document.get("scaling_2w_over_1w"), TARGET_SCALING, True)
    busy, cores = one.get("cores_busy"), document["machine"].get("cpus_usable")
    entry["cores_needed"] = TARGET_SCALING * busy if busy is not None else None
    entry["cores"] = cores
    entry["cores_allow"] = (entry["cores_needed"] <= cores
                            if busy is not None and cores else None)
    if entry["met"] is False and entry["cores_allow"] is False:
        entry["met"] = None
    return entry


def targets(document: dict[str, Any]) -> dict[str, Any]:
    """Issue 6's targets against the run's figures; `met` is None for a phase not run."""
    by_workers = {p["workers"]: p for p in document["pipeline"]}
    one = by_workers.get(1, {})
    latency = document.get("latency") or {}
    latency_target = _target(latency.get("p99_seconds"), TARGET_P99_SECONDS, False)
    latency_target["at_rate"] = latency.get("achieved_rate")
    if latency.get("lost"):  # a lost sample is later than any target
        latency_target["met"] = False
    elif latency and (latency["achieved_rate"] or 0) < TARGET_LATENCY_RATE * 0.95:
        latency_target["met"] = None  # not measured at the target's input rate
    redis_memory = document.get("redis") or {}
    return {
        "ratio_1w_to_baseline": _target(one.get("ratio_to_baseline"), TARGET_RATIO, True,
                                        STRETCH_RATIO),
        "scaling_2w_over_1w": _scaling_target(document, one),
        "p99_latency_seconds": latency_target,
        "redis_bytes_per_order": _target(redis_memory.get("bytes_per_order"),
                                         TARGET_BYTES_PER_ORDER, higher_is_better=False),
    }


def assemble(*, run: dict[str, Any], machine: dict[str, Any], data: DataSummary,
             baseline: BaselineResult, pipelines: list[PipelineResult],
             latency: LatencyResult | None, redis_memory: RedisMemory | None,
             baselines: dict[int, BaselineResult] | None = None) -> dict[str, Any]:
    """The JSON document of one run (see RESULT_SCHEMA). `baseline` is the bare consumer's
    first run; `baselines`, by number of workers, the one run right before that pipeline
    phase, which its ratio is taken against (`baseline` where none is given)."""
    pipeline = [_pipeline_json(p, (baselines or {}).get(p.workers, baseline))
                for p in pipelines]
    by_workers = {p["workers"]: p for p in pipeline}
    scaling = ratio(by_workers.get(2, {}).get("records_per_second"),
                    by_workers.get(1, {}).get("records_per_second"))
    document = {
        "schema": SCHEMA_ID,
        "run": run,
        "machine": machine,
        "data": {**asdict(data), "preload_records_per_second":
                 rate(data.records, data.preload_seconds)},
        "baseline": _baseline_json(baseline),
        "pipeline": pipeline,
        "scaling_2w_over_1w": scaling,
        "latency": _latency_json(latency) if latency else None,
        "redis": _redis_json(redis_memory) if redis_memory else None,
    }
    document["targets"] = targets(document)
    return document


_NUMBER = {"type": "number"}
_COUNT = {"type": "integer", "minimum": 0}
_MAYBE_NUMBER = {"type": ["number", "null"]}
_TARGET = {
    "type": "object",
    "required": ["value", "target", "met"],
    "properties": {"value": _MAYBE_NUMBER, "target": _NUMBER,
                   "met": {"type": ["boolean", "null"]}},
}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(properties), "properties": properties}


_BASELINE = _object({"records": _COUNT, "seconds": _NUMBER, "startup_seconds": _NUMBER,
                     "records_per_second": _MAYBE_NUMBER})

RESULT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "cpo benchmark result",
    **_object({
        "schema": {"const": SCHEMA_ID},
        "run": _object({"started_at": {"type": "string"}, "command": {"type": "string"},
                        "options": {"type": "object"}, "settings": {"type": "object"}}),
        "machine": _object({"cpu_count": _COUNT, "python": {"type": "string"},
                            "packages": {"type": "object"}}),
        "data": _object({"records": _COUNT, "distinct_orders": _COUNT,
                         "distinct_contacts": _COUNT, "malformed": _COUNT,
                         "preload_records_per_second": _MAYBE_NUMBER}),
        "baseline": _BASELINE,
        "pipeline": {"type": "array", "items": _object({
            "workers": {"type": "integer", "minimum": 1}, "baseline": _BASELINE,
            "records": _COUNT, "seconds": _NUMBER,
            "redis_seconds": _NUMBER, "startup_seconds": _NUMBER, "cpu_seconds": _NUMBER,
            "peak_rss_bytes": {"type": "array", "items": _COUNT},
            "timeline": {"type": "array", "items": {
                "type": "array", "prefixItems": [_NUMBER, _COUNT], "minItems": 2,
                "maxItems": 2}},
            "records_per_second": _MAYBE_NUMBER, "ratio_to_baseline": _MAYBE_NUMBER,
            "cpu_us_per_record": _MAYBE_NUMBER, "cores_busy": _MAYBE_NUMBER})},
        "scaling_2w_over_1w": _MAYBE_NUMBER,
        "latency": {"oneOf": [{"type": "null"}, _object({
            "target_rate": _NUMBER, "achieved_rate": _MAYBE_NUMBER, "sent": _COUNT,
            "samples": _COUNT, "lost": _COUNT, "p50_seconds": _MAYBE_NUMBER,
            "p99_seconds": _MAYBE_NUMBER, "ack_p99_seconds": _MAYBE_NUMBER,
            "max_send_gap_seconds": _NUMBER})]},
        "redis": {"oneOf": [{"type": "null"}, _object({
            "orders": _COUNT, "order_state_bytes": {"type": "integer"},
            "bytes_per_order": _MAYBE_NUMBER, "mb_per_million_orders": _MAYBE_NUMBER})]},
        "targets": _object({name: _TARGET for name in (
            "ratio_1w_to_baseline", "scaling_2w_over_1w", "p99_latency_seconds",
            "redis_bytes_per_order")}),
    }),
}


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _cores_note(scaling: dict[str, Any]) -> str:
    if scaling.get("cores_allow") is False:
        return (f" (cores do not allow it: {TARGET_SCALING}x one worker needs "
                f"{scaling['cores_needed']:.1f} cores of {scaling['cores']})")
    return ""


def _verdict(target: dict[str, Any]) -> str:
    if target["met"] is None:
        return "n/a"
    verdict = "met" if target["met"] else "MISSED"
    if target.get("stretch_met"):
        verdict += " (stretch met)"
    return verdict


def _per_record(seconds: float | None, records: int) -> float | None:
    return None if seconds is None or not records else seconds / records * 1e6


def table(document: dict[str, Any]) -> str:
    """The run as aligned lines for a terminal or a README."""
    header = ("phase", "records/s", "vs bare", "start-up", "CPU us/record: worker/redis/broker",
              "cores busy", "peak RSS MiB")
    rows = []
    for p in document["pipeline"]:
        baseline = p["baseline"]
        rows.append((f"bare aiokafka + orjson, before x{p['workers']}",
                     _fmt(baseline["records_per_second"], ",.0f"), "1.00",
                     _fmt(baseline["startup_seconds"], ".1f", " s"),
                     _fmt(_per_record(baseline["cpu_seconds"], baseline["records"]), ".1f"),
                     "", ""))
        cpu = "/".join(_fmt(_per_record(p[name], p["records"]), ".1f") for name in (
            "cpu_seconds", "redis_cpu_seconds", "broker_cpu_seconds"))
        rows.append((f"cpo worker x{p['workers']}", _fmt(p["records_per_second"], ",.0f"),
                     _fmt(p["ratio_to_baseline"], ".2f"), _fmt(p["startup_seconds"], ".1f", " s"),
                     cpu, _fmt(p["cores_busy"], ".2f"),
                     " + ".join(f"{b / 2**20:.0f}" for b in p["peak_rss_bytes"])))
    width = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width[i]) if i == 0 else cell.rjust(width[i])
                       for i, cell in enumerate(row)).rstrip() for row in (header, *rows)]
    lines.append(f"2 workers / 1 worker: {_fmt(document['scaling_2w_over_1w'], '.2f', 'x')}")
    latency = document["latency"]
    if latency:
        lost = f", {latency['lost']} of {latency['samples']} lost" if latency["lost"] else ""
        lines.append(
            f"event-to-metric latency at {_fmt(latency['achieved_rate'], ',.0f')} events/s, "
            f"{latency['samples']:,} sampled orders: "
            f"p50 {_fmt(latency['p50_seconds'], '.3f', ' s')}, "
            f"p99 {_fmt(latency['p99_seconds'], '.3f', ' s')}{lost} (broker ack p99 "
            f"{_fmt(latency['ack_p99_seconds'], '.3f', ' s')}, longest sender pause "
            f"{latency['max_send_gap_seconds']:.2f} s)")
    redis_memory = document["redis"]
    if redis_memory:
        lines.append(
            f"Redis join state: {_fmt(redis_memory['bytes_per_order'], '.0f')} bytes/order = "
            f"{_fmt(redis_memory['mb_per_million_orders'], '.0f')} MB per 1M orders "
            f"({redis_memory['orders']:,} orders; all the run's state "
            f"{_fmt(redis_memory['all_state_bytes_per_order'], '.0f')} bytes/order)")
    goals = document["targets"]
    lines.append("targets: " + "; ".join((
        f"1w >= {TARGET_RATIO:.0%} of bare: {_verdict(goals['ratio_1w_to_baseline'])}",
        f"2w >= {TARGET_SCALING}x 1w: {_verdict(goals['scaling_2w_over_1w'])}"
        + _cores_note(goals["scaling_2w_over_1w"]),
        f"p99 < {TARGET_P99_SECONDS:g} s: {_verdict(goals['p99_latency_seconds'])}",
        f"<= {TARGET_BYTES_PER_ORDER:.0f} B/order: {_verdict(goals['redis_bytes_per_order'])}",
    )))
    return "\n".join(lines)
