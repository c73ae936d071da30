"""Producing many records at once: one aiokafka batch per partition, not one call per record.

aiokafka's `send` creates a future and walks the accumulator for every record; for the
attributed-contacts topic and the DLQ that cost more than counting the contact. Records are
partitioned by key exactly as `send` would (aiokafka's DefaultPartitioner: murmur2 like the
Java client, random for records without a key), appended to one `BatchBuilder` per partition,
and the call returns when every batch is acknowledged. A batch the broker refuses as too large
is split, and a record refused alone is made smaller by the caller's rule (the DLQ's) or the
refusal is raised: it can never pass as it is.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError
from aiokafka.producer.message_accumulator import BatchBuilder

OutputRecord = tuple[bytes | None, bytes, list[tuple[str, bytes]]]  # key, value, headers

_M = np.uint32(0x5BD1E995)


def murmur2_many(keys: list[bytes]) -> np.ndarray:
    """Kafka's murmur2 of each key (the Java client's `Utils.murmur2`, aiokafka's
    `partitioner.murmur2`), as uint32.

    The same arithmetic as aiokafka's, in numpy over all the keys of one length at once (uint32
    products wrap as the Java ints do): it runs for every output record, and aiokafka's
    byte-by-byte Python cost more than building the record (tests/unit/test_output.py checks
    both agree for every length).
    """
    hashes = np.empty(len(keys), dtype=np.uint32)
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    for length in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == length)
        data = np.frombuffer(b"".join([keys[i] for i in rows.tolist()]), dtype=np.uint8)
        data = data.reshape(len(rows), length)
        end = length & ~3
        words = np.ascontiguousarray(data[:, :end]).view("<u4")
        h = np.full(len(rows), 0x9747B28C ^ length, dtype=np.uint32)
        for column in range(end // 4):
            k = words[:, column] * _M
            k ^= k >> 24
            k *= _M
            h *= _M
            h ^= k
        tail = length & 3
        if tail:
            if tail == 3:
                h ^= data[:, end + 2].astype(np.uint32) << 16
            if tail >= 2:
                h ^= data[:, end + 1].astype(np.uint32) << 8
            h ^= data[:, end]
            h *= _M
        h ^= h >> 13
        h *= _M
        h ^= h >> 15
        hashes[rows] = h
    return hashes


def partitions_for(keys: list[bytes | None], partitions: list[int]) -> list[int]:
    """The partition aiokafka's DefaultPartitioner picks for each key (random without a key)."""
    keyed = [i for i, key in enumerate(keys) if key is not None]
    if len(keyed) == len(keys):
        chosen = (murmur2_many(keys) & 0x7FFFFFFF) % len(partitions)  # type: ignore[arg-type]
        return np.asarray(partitions)[chosen].tolist()
    found = [random.choice(partitions) for _ in keys]
    if keyed:
        for i, partition in zip(keyed, partitions_for([keys[i] for i in keyed], partitions)):
            found[i] = partition
    return found


# The broker refuses a record batch over the topic's `max.message.bytes`: a split batch, or a
# record made smaller, may pass where retrying the same one never would.
SIZE_REFUSALS = (MessageSizeTooLargeError, RecordListTooLargeError)
# Shrink: a smaller copy of a record the broker refused as too large, or None if there is none.
Shrink = Callable[[OutputRecord], OutputRecord | None]


class BatchSender:
    def __init__(self, producer: Callable[[], AIOKafkaProducer]) -> None:
        self._producer = producer

    async def send(self, topic: str, records: list[OutputRecord],
                   shrink: Shrink | None = None) -> None:
        """Produce `records` to `topic`; returns when the broker acknowledged all of them.

        A batch the broker refuses as too large is split in two and each half sent again; a
        record refused alone is replaced by `shrink(record)` and sent again, or, without a
        smaller copy, the refusal is raised (retrying it would fail the same way forever)."""
        if not records:
            return
        producer = self._producer()
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[OutputRecord]] = defaultdict(list)
        for partition, record in zip(partitions_for([r[0] for r in records], partitions), records):
            by_partition[partition].append(record)
        await asyncio.gather(*[self._send(producer, topic, partition, partition_records, shrink)
                               for partition, partition_records in by_partition.items()])

    async def _send(self, producer: AIOKafkaProducer, topic: str, partition: int,
                    records: list[OutputRecord], shrink: Shrink | None) -> None:
        """One partition's records, in as few batches as the producer's batch size allows."""
        deliveries = []
        batch, chunk = producer.create_batch(), []
        for record in records:
            key, value, headers = record
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                deliveries.append(await self._deliver(producer, topic, partition, batch, chunk,
                                                      shrink))
                batch, chunk = producer.create_batch(), []  # an empty batch takes any record
                batch.append(key=key, value=value, timestamp=None, headers=headers)
            chunk.append(record)
        deliveries.append(await self._deliver(producer, topic, partition, batch, chunk, shrink))
        await asyncio.gather(*deliveries)

    async def _deliver(self, producer: AIOKafkaProducer, topic: str, partition: int,
                       batch: BatchBuilder, chunk: list[OutputRecord],
                       shrink: Shrink | None) -> Awaitable[None]:
        """Hand `batch` (holding `chunk`) to the producer; returns what waits for its
        acknowledgement, and sends again what a size refusal allows."""
        acknowledged = await producer.send_batch(batch, topic, partition=partition)

        async def delivered() -> None:
            try:
                await acknowledged
            except SIZE_REFUSALS:
                if len(chunk) > 1:
                    half = len(chunk) // 2
                    await asyncio.gather(self._send(producer, topic, partition, chunk[:half], shrink),
                                         self._send(producer, topic, partition, chunk[half:], shrink))
                    return
                smaller = shrink(chunk[0]) if shrink else None
                if smaller is None:
                    raise
                await self._send(producer, topic, partition, [smaller], shrink)

        return delivered()
