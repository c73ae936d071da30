"""The baseline: a bare aiokafka consumer group loop that decodes every value with orjson.

It is the fastest a Python consumer of these topics can be on this machine and broker, so the
pipeline's rate is reported as a share of it. Like the worker it joins a fresh consumer group
(Tansu's JoinGroup stall included in its start-up, excluded from its rate), reads from the
earliest offset and auto-commits; unlike the worker it does nothing with the decoded values.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from bench.report import BaselineResult
from streams.kafka import aiokafka_config
from streams.settings import Settings

MAX_RECORDS = 10_000  # per getmany; the worker's is CPO_BATCH_SIZE
SESSION_TIMEOUT_MS = 10_000  # as the worker's: Tansu stalls the first JoinGroup ~half of it
STALL_TIMEOUT = 120.0  # seconds without a record before the run is abandoned


class BaselineError(RuntimeError):
    """The consumer stopped receiving records; the message names what to check."""


async def consume(settings: Settings, group_id: str, expected: int,
                  progress: Callable[[int], None] | None = None) -> BaselineResult:
    """Read `expected` records from the orders and contacts topics and decode each value."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.topic_orders, settings.topic_contacts, **aiokafka_config(settings),
        group_id=group_id, auto_offset_reset="earliest", session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=2_000, max_poll_records=MAX_RECORDS)
    started = time.perf_counter()
    await consumer.start()
    try:
        count = 0
        first = last_record = 0.0
        cpu_first = 0.0
        while count < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=MAX_RECORDS)
            now = time.perf_counter()
            if not batches:
                if now - (last_record or started) > STALL_TIMEOUT:
                    raise BaselineError(
                        f"bare consumer: {count:,} of {expected:,} records, then none for "
                        f"{STALL_TIMEOUT:.0f}s; check the broker at {settings.kafka_bootstrap}")
                continue
            if not first:
                first, cpu_first = now, time.process_time()
            for records in batches.values():
                for record in records:
                    try:
                        orjson.loads(record.value)
                    except orjson.JSONDecodeError:
                        pass  # a malformed record costs its failed decode, like in the worker
                count += len(records)
            last_record = time.perf_counter()
            if progress:
                progress(count)
        return BaselineResult(records=count, seconds=last_record - first,
                              startup_seconds=first - started,
                              cpu_seconds=time.process_time() - cpu_first)
    finally:
        await consumer.stop()
