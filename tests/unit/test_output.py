"""The output's partitioner must place every key where aiokafka's (and the Java client's) would,
and each output record must be the contract's JSON of its contact."""

import json
import random
from datetime import UTC, datetime

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from streams.output import murmur2_many, partitions_for
from streams.processor import BatchProcessor
from streams.state import Attributed, BatchResult, Labels, Unattributed


def test_murmur2_agrees_with_aiokafka_for_every_length_and_byte() -> None:
    rng = random.Random(7)
    keys = [bytes(rng.randrange(256) for _ in range(length))
            for length in range(300) for _ in range(3)]
    keys += [b"c-123456789", "contact-é-😀".encode(), b"\xff" * 9]
    assert murmur2_many(keys).tolist() == [aiokafka_murmur2(key) for key in keys]
    rng.shuffle(keys)  # lengths interleaved, as in a batch
    assert murmur2_many(keys).tolist() == [aiokafka_murmur2(key) for key in keys]


def test_partition_for_matches_the_default_partitioner() -> None:
    rng = random.Random(8)
    partitioner = DefaultPartitioner()
    for count in (1, 3, 8, 12):
        partitions = list(range(count))
        keys = [f"c-{rng.randrange(10**9)}".encode() for _ in range(500)]
        assert partitions_for(keys, partitions) == [
            partitioner(key, partitions, partitions) for key in keys]


def test_records_without_a_key_spread_over_all_partitions() -> None:
    random.seed(9)
    assert set(partitions_for([None] * 200, [0, 1, 2])) == {0, 1, 2}


def test_keyed_records_among_keyless_ones_keep_their_partition() -> None:
    random.seed(10)
    partitioner = DefaultPartitioner()
    keys = [None, b"c-1", None, b"contact-22", b"c-333", None]
    found = partitions_for(keys, [0, 1, 2, 3])
    for key, partition in zip(keys, found):
        if key is not None:
            assert partition == partitioner(key, [0, 1, 2, 3], [0, 1, 2, 3])
        assert partition in (0, 1, 2, 3)


def reference_json(value: dict) -> bytes:
    """The output record as the contract describes it, written without the fast path."""
    for name in ("occurred_at", "order_occurred_at"):
        if name in value:
            value[name] = datetime.fromtimestamp(value[name], tz=UTC).isoformat().replace(
                "+00:00", "Z")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def test_contact_records_are_the_contract_json_of_each_contact() -> None:
    rng = random.Random(11)
    labels = Labels(causes={1: "late_delivery", 2: 'quote " and \\ é'},
                    dimensions={1: "carrier", 2: "seller"},
                    values={(1, 1): "ups", (1, 2): "dhl", (2, 1): "s-😀", (2, 2): "s\n2"})
    times = [rng.uniform(0, 4e9) for _ in range(300)]
    times += [1795477500.0, 1795477500.5, 1795477500.9999996, 1795477500.0000004,
              1795477500.0000005, 1795477500.0000015, 946684800.123456]
    result = BatchResult()
    for i, t in enumerate(times):
        values = ",".join(f"{d}:{rng.randrange(3)}" for d in (1, 2) if rng.random() < 0.8)
        if i % 3:
            result.attributed.append(Attributed(
                f'c-{i}"é', rng.randrange(3), f"o-{i}", int(t) - rng.randrange(10**6), t,
                values))
        else:
            result.unattributed.append(Unattributed(
                f"c-{i}", rng.randrange(3), rng.choice(["no_order_id", "order_not_found"]), t))
    expected = [
        (c.contact_id.encode(), reference_json({
            "contact_id": c.contact_id, "occurred_at": c.contact_time,
            "cause": labels.cause(c.cause_id), "order_id": c.order_id,
            "order_occurred_at": c.order_time,
            "delay_seconds": round(c.contact_time - c.order_time, 3), "attributed": True,
            "reason": None,
            "attributes": dict(labels.pairs[p] for p in c.values.split(",") if p)}), [])
        for c in result.attributed]
    expected += [
        (c.contact_id.encode(), reference_json({
            "contact_id": c.contact_id, "occurred_at": c.contact_time,
            "cause": labels.cause(c.cause_id), "attributed": False, "reason": c.reason}), [])
        for c in result.unattributed]
    records = BatchProcessor._contact_records(result, labels)
    assert [(k, json.loads(v), h) for k, v, h in records] == [
        (k, json.loads(v), h) for k, v, h in expected]
    assert records == expected  # byte for byte, field order included
