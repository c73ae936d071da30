"""The output's partitioner must place every key where aiokafka's (and the Java client's) would."""

import random

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from streams.output import murmur2, partition_for


def test_murmur2_agrees_with_aiokafka_for_every_length_and_byte() -> None:
    rng = random.Random(7)
    keys = [bytes(rng.randrange(256) for _ in range(length))
            for length in range(300) for _ in range(3)]
    keys += [b"c-123456789", "contact-é-😀".encode(), b"\xff" * 9]
    for key in keys:
        assert murmur2(key) == aiokafka_murmur2(key), key


def test_partition_for_matches_the_default_partitioner() -> None:
    rng = random.Random(8)
    partitioner = DefaultPartitioner()
    for count in (1, 3, 8, 12):
        partitions = list(range(count))
        for _ in range(500):
            key = f"c-{rng.randrange(10**9)}".encode()
            assert partition_for(key, partitions) == partitioner(key, partitions, partitions)


def test_records_without_a_key_spread_over_all_partitions() -> None:
    random.seed(9)
    assert {partition_for(None, [0, 1, 2]) for _ in range(200)} == {0, 1, 2}
