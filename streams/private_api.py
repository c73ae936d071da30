"""The private Faust and aiokafka attributes the worker relies on (all used in
streams/worker.py), checked at start-up and by a test, so a new release that renames one fails
with its name instead of misbehaving.

Faust has no public hook for a per-fetch drain loop, a shorter fetch wait or the producer's
aiokafka handle, and aiokafka none for handing out a fetched batch's records as they are; the
worker's speed comes from these (bench/README). pyproject bounds both packages to the minor
releases tested here, TESTED.
"""

from __future__ import annotations

import inspect

import aiokafka
import faust
from aiokafka.consumer import fetcher as aiokafka_fetcher
from faust.transport.drivers import aiokafka as faust_aiokafka

TESTED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}

# (owner, attribute, what the worker does with it). An attribute a method of the owner (or of a
# base class) sets on `self` counts as present.
PRIVATE = [
    (aiokafka_fetcher, "PartitionRecords", "replaced by LightPartitionRecords"),
    (aiokafka_fetcher, "FetchResult", "replaced by LightFetchResult"),
    (aiokafka_fetcher, "READ_COMMITTED", "refused by LightPartitionRecords"),
    (aiokafka_fetcher.PartitionRecords, "_records", "the fetched batches, opened one by one"),
    (aiokafka_fetcher.PartitionRecords, "_check_crcs", "whether to check each batch's CRC"),
    (aiokafka_fetcher.PartitionRecords, "next_fetch_offset", "the position after a take"),
    (aiokafka_fetcher.FetchResult, "_partition_records", "the records a take reads"),
    (aiokafka_fetcher.FetchResult, "_topic_partition", "the assignment check"),
    (aiokafka_fetcher.FetchResult, "_update_position", "the position after a take"),
    (aiokafka.AIOKafkaConsumer, "_fetch_max_wait_ms", "set to FETCH_MAX_WAIT_MS"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer", "wrapped to set it"),
    (faust_aiokafka.Consumer, "_new_consumer_thread", "gives BatchConsumerThread"),
    (faust_aiokafka.Consumer, "_drain_messages", "replaced by the per-fetch drain loop"),
    (faust_aiokafka.Consumer, "_wait_next_records", "the next fetch"),
    (faust_aiokafka.Consumer, "_committed_offset", "the position of a partition not read yet"),
    (faust_aiokafka.Consumer, "_read_offset", "advanced before a commit"),
    (faust_aiokafka.Consumer, "_commit_offsets", "commits a batch's offsets"),
    (faust_aiokafka.Consumer, "_paused_partitions", "the partitions Faust paused itself"),
    (faust_aiokafka.Consumer, "consumer_stopped_errors", "stopping is not a crash"),
    (faust_aiokafka.Producer, "_ensure_producer", "the aiokafka producer outputs go to"),
    (faust_aiokafka.Producer, "_producer", "the same, for the gauges"),
    (faust.App, "_new_transport", "gives BatchTransport"),
]


def _sets(owner: type, attribute: str) -> bool:
    """Whether a method of `owner` or of a base class assigns `self.<attribute>`."""
    for cls in inspect.getmro(owner):
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):  # a C type: no source
            continue
        if f"self.{attribute} =" in source or f"self.{attribute}:" in source:
            return True
    return False


def missing() -> list[str]:
    """The attributes of PRIVATE the installed Faust and aiokafka lack, as `owner.attribute`."""
    return [f"{getattr(owner, '__name__', owner)}.{attribute}"
            for owner, attribute, _ in PRIVATE
            if not hasattr(owner, attribute)
            and not (inspect.isclass(owner) and _sets(owner, attribute))]


def check() -> None:
    """Raise one line naming what changed when the installed versions lack an attribute."""
    gone = missing()
    if gone:
        raise RuntimeError(
            f"faust-streaming {faust.__version__} / aiokafka {aiokafka.__version__} lack "
            f"{', '.join(gone)}, which the worker relies on: install the versions it was "
            f"tested with (faust-streaming {TESTED['faust-streaming']}, aiokafka "
            f"{TESTED['aiokafka']}; streams/private_api.py)")

