"""Records per second of `decode_orders` and `decode_contacts` on one core, in runs of
`DECODE_CHUNK` records as the worker calls them.

Usage: python -m bench.decode [--n 200000] [--repeat 5] [--malformed 0.001] [--json PATH]

The records look like production ones (ids, a millisecond or offset timestamp, six order
attributes, optional fields). Each rate is records per CPU-second of this process (so other load
on a shared machine distorts it less than wall time would), the best of `--repeat` passes over
the same records, printed next to the rate of bare `orjson.loads` on those bytes: the ratio is
what decoding and validation cost on top of parsing. With `--malformed`, that share of the
records (spread at random) is replaced by records every decoder rejects, as in the pipeline
benchmark's data (0.1%); the ratio then includes finding them.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import orjson

from streams.events import Rejection, decode_contacts, decode_orders
from streams.processor import DECODE_CHUNK

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CARRIERS = ["dhl", "ups", "fedex", "usps", "dpd", "gls", "royal_mail", "colissimo"]
REGIONS = ["eu-west", "eu-central", "us-east", "us-west", "apac", "latam"]
CATEGORIES = ["toys", "books", "electronics", "garden", "fashion", "grocery", "beauty", "sports"]
PAYMENTS = ["card", "paypal", "bank_transfer", "gift_card", "cod"]
CAUSES = [
    "where_is_my_order",
    "late_delivery",
    "damaged_item",
    "wrong_item",
    "missing_item",
    "return_refund",
    "cancel_order",
    "payment_issue",
    "account_access",
    "other",
]
CHANNELS = ["chat", "email", "phone", "app"]
# Rejected by both decoders: invalid JSON, not an object, an empty record, a wrong type, no date.
MALFORMED = [b'{"order_id":"o-1","contact_id":', b"[1]", b"", b'{"occurred_at":5}',
             (b'{"order_id":"o-1","contact_id":"k-1","cause":"x",'
              b'"occurred_at":"2026-02-30T10:00:00Z"}')]


def _timestamp(rng: random.Random) -> str:
    """Mostly millisecond UTC ('...123Z'); one in five with microseconds and a local offset."""
    moment = NOW - timedelta(seconds=rng.uniform(0, 86400))
    if rng.random() < 0.8:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    offset = timezone(timedelta(hours=rng.choice([-5, 1, 2, 5.5])))
    return moment.astimezone(offset).isoformat(timespec="microseconds")


def order_records(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [
        orjson.dumps(
            {
                "order_id": f"o-{rng.randrange(10**9):09d}",
                "occurred_at": _timestamp(rng),
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "customer_id": f"c-{rng.randrange(10**7):07d}",
                "attributes": {
                    "carrier": rng.choice(CARRIERS),
                    "warehouse": f"wh-{rng.randrange(12)}",
                    "category": rng.choice(CATEGORIES),
                    "seller": f"s-{rng.randrange(500)}",
                    "region": rng.choice(REGIONS),
                    "payment_method": rng.choice(PAYMENTS),
                },
            }
        )
        for _ in range(n)
    ]


def contact_records(n: int, seed: int = 2) -> list[bytes]:
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        record = {
            "contact_id": f"k-{rng.randrange(10**9):09d}",
            "occurred_at": _timestamp(rng),
            "cause": rng.choice(CAUSES),
            "order_id": f"o-{rng.randrange(10**9):09d}" if rng.random() < 0.9 else None,
            "channel": rng.choice(CHANNELS),
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        }
        if rng.random() < 0.5:
            record["customer_id"] = f"c-{rng.randrange(10**7):07d}"
        records.append(orjson.dumps(record))
    return records


def with_malformed(records: list[bytes], share: float, seed: int = 3) -> list[bytes]:
    """`records` with `share` of them, at random places, replaced by MALFORMED ones."""
    rng = random.Random(seed)
    records = list(records)
    for i, place in enumerate(rng.sample(range(len(records)), round(len(records) * share))):
        records[place] = MALFORMED[i % len(MALFORMED)]
    return records


def best_rate(function: Callable[..., object], items: list, records: int, repeat: int,
              *args: object) -> float:
    """Records per CPU-second of `function` over `items` (records, or runs of them)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for item in items:
            function(item, *args)
        best = min(best, time.process_time() - start)
    return records / best


def measure(
    name: str, decode: Callable[[list[bytes], float], list], records: list[bytes], repeat: int
) -> dict[str, float]:
    now = NOW.timestamp()
    runs = [records[i:i + DECODE_CHUNK] for i in range(0, len(records), DECODE_CHUNK)]
    rejected = [r for run in runs for r in decode(run, now) if type(r) is Rejection]
    malformed = sum(record in MALFORMED for record in records)
    if len(rejected) != malformed:
        sys.exit(f"{name}: {len(rejected)} records were rejected, not the {malformed} malformed "
                 f"ones, e.g. {rejected[:1]}")
    rate = best_rate(decode, runs, len(records), repeat, now)
    parsed = [record for record in records if record not in MALFORMED]  # orjson would raise
    baseline = best_rate(orjson.loads, parsed, len(parsed), repeat)
    mean_bytes = sum(map(len, records)) / len(records)
    print(
        f"{name:15s} {rate:>9,.0f} records/s   orjson.loads alone {baseline:>9,.0f}/s   "
        f"ratio {rate / baseline:.2f}   {mean_bytes:.0f} B/record   n={len(records):,}"
    )
    return {
        "records_per_second": round(rate),
        "orjson_loads_per_second": round(baseline),
        "ratio_to_orjson_loads": round(rate / baseline, 3),
        "mean_record_bytes": round(mean_bytes, 1),
        "records": len(records),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.decode", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--n", type=int, default=200_000, help="records per event type")
    parser.add_argument("--repeat", type=int, default=5, help="passes; the best one counts")
    parser.add_argument("--malformed", type=float, default=0.0,
                        help="share of malformed records (the pipeline benchmark has 0.001)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH as JSON")
    args = parser.parse_args(argv)
    orders = with_malformed(order_records(args.n), args.malformed)
    contacts = with_malformed(contact_records(args.n), args.malformed)
    results = {
        "decode_orders": measure("decode_orders", decode_orders, orders, args.repeat),
        "decode_contacts": measure("decode_contacts", decode_contacts, contacts, args.repeat),
        "malformed_share": args.malformed,
    }
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "python": platform.python_version(),
                    "orjson": orjson.__version__,
                    "machine": platform.machine(),
                    **results,
                },
                out,
                indent=2,
            )
            out.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
