"""`python -m bench` (`make bench`): throughput, scaling, latency and memory of the pipeline
against a bare consumer, in one run; prints a table and writes the figures as JSON.

Usage: python -m bench [--events 500000] [--partitions 8] [--latency-rate 5000]
                       [--latency-seconds 30] [--out bench/results/<UTC time>.json]

Uses CPO_KAFKA_BOOTSTRAP / CPO_REDIS_URL when set (it flushes Redis DBs 1 and 2 there),
otherwise an embedded broker and Redis. Other CPO_* settings (e.g. CPO_BATCH_SIZE) reach the
workers and are recorded in the JSON. See bench/README.md for the method.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson

RESULTS_DIR = Path(__file__).parent / "results"


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--events", type=_positive_int, default=500_000,
        help="records to preload: orders, contacts, duplicates, malformed (500000)")
    add("--partitions", type=_positive_int, default=8, help="partitions per topic (8)")
    add("--seed", type=int, default=1, help="simulator seed (1)")
    add("--latency-rate", type=_non_negative, default=5000.0,
        help="events per second of the latency phase (5000)")
    add("--latency-seconds", type=_non_negative, default=30.0,
        help="length of the latency phase; 0 skips it (30)")
    add("--out", type=Path, help="JSON result file (default bench/results/<UTC time>.json)")
    add("--log-dir", type=Path, help="worker and exporter logs (default: a new temp dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.harness import BenchError, Options, run
    from bench.report import table
    from streams.local import LocalInfraError
    from streams.settings import SettingsError
    from streams.topics import TopicsError

    options = Options(events=args.events, partitions=args.partitions, seed=args.seed,
                      latency_rate=args.latency_rate, latency_seconds=args.latency_seconds,
                      log_dir=args.log_dir)
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        document = run(options, command)
    except (BenchError, LocalInfraError, SettingsError, TopicsError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    out = args.out or RESULTS_DIR / (
        datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    print(table(document))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
