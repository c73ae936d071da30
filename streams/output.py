"""Producing many records at once: one aiokafka batch per partition, not one call per record.

aiokafka's `send` creates a future and walks the accumulator for every record; for the
attributed-contacts topic and the DLQ that cost more than counting the contact. Records are
partitioned by key exactly as `send` would (aiokafka's DefaultPartitioner: murmur2 like the
Java client, random for records without a key), appended to one `BatchBuilder` per partition,
and the call returns when every batch is acknowledged.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections import defaultdict
from collections.abc import Callable

from aiokafka import AIOKafkaProducer

OutputRecord = tuple[bytes | None, bytes, list[tuple[str, bytes]]]  # key, value, headers

_MASK = 0xFFFFFFFF
_M = 0x5BD1E995
_WORDS = [struct.Struct(f"<{n}I") for n in range(64)]  # keys up to 255 bytes, no allocation


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 (the Java client's `Utils.murmur2`, aiokafka's `partitioner.murmur2`).

    The same arithmetic as aiokafka's, on whole little-endian words unpacked at once: about 1.8x
    faster, and it runs once per output record (tests/unit/test_output.py checks both agree).
    """
    length = len(key)
    words = length >> 2
    h = 0x9747B28C ^ length
    unpack = _WORDS[words].unpack_from if words < 64 else struct.Struct(f"<{words}I").unpack_from
    for k in unpack(key):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        end = length & ~3
        if tail == 3:
            h ^= key[end + 2] << 16
        if tail >= 2:
            h ^= key[end + 1] << 8
        h = ((h ^ key[end]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


def partition_for(key: bytes | None, partitions: list[int]) -> int:
    """The partition aiokafka's DefaultPartitioner picks for `key` (random without a key)."""
    if key is None:
        return random.choice(partitions)
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


class BatchSender:
    def __init__(self, producer: Callable[[], AIOKafkaProducer]) -> None:
        self._producer = producer

    async def send(self, topic: str, records: list[OutputRecord]) -> None:
        """Produce `records` to `topic`; returns when the broker acknowledged all of them."""
        if not records:
            return
        producer = self._producer()
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[OutputRecord]] = defaultdict(list)
        for record in records:
            by_partition[partition_for(record[0], partitions)].append(record)
        acknowledgements = []
        for partition, partition_records in by_partition.items():
            batch = producer.create_batch()
            for key, value, headers in partition_records:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    acknowledgements.append(
                        await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()  # an empty batch takes a record of any size
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
            acknowledgements.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*acknowledgements)
