"""The worker's aiokafka consumer: its light fetched records carry what aiokafka's own records
carry for the fields the pipeline reads (offset, key, value), for the same record batches,
handed out in the same slices with the same consumer positions, and it asks the broker to hold
an empty fetch only briefly."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from streams import private_api
from streams.events import UnreadableBatch
from streams.settings import load_settings
from streams.worker import (
    FETCH_MAX_WAIT_MS,
    LightFetchResult,
    LightPartitionRecords,
    create_app,
    use_light_records,
)

TP = TopicPartition("cpo.orders", 3)
READ_UNCOMMITTED = 0


def record_batches(first_offset: int, sizes: list[int], codec: int = 0) -> bytes:
    """Record batches as a fetch response holds them, with a None key and a None value, each
    compressed with `codec` (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd)."""
    data, offset = b"", first_offset
    for size in sizes:
        builder = DefaultRecordBatchBuilder(
            magic=2, compression_type=codec, is_transactional=0, producer_id=-1,
            producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
        for i in range(size):
            key = None if offset % 7 == 0 else b"o-%d" % offset
            value = None if offset % 11 == 0 else b'{"order_id":"o-%d"}' % offset
            builder.append(offset, timestamp=None, key=key, value=value, headers=[])
            offset += 1
        data += bytes(builder.build())
    return data


def with_attributes(batch: bytes, set_bits: int, clear_bits: int = 0) -> bytes:
    """The record batch with attribute bits set and cleared, and its CRC redone."""
    attributes = int.from_bytes(batch[21:23], "big") & ~clear_bits | set_bits
    return with_crc_redone(batch[:21] + attributes.to_bytes(2, "big") + batch[23:])


def with_crc_redone(batch: bytes) -> bytes:
    return batch[:17] + calc_crc32c(batch[21:]).to_bytes(4, "big") + batch[21:]


def as_control_batch(batch: bytes) -> bytes:
    """The record batch with its control flag set (attributes bit 5), as a transaction
    marker's batch: records a consumer must skip."""
    return with_attributes(batch, 0x20)


def fetched(cls: type, data: bytes, fetch_offset: int) -> list:
    return list(cls(TP, MemoryRecords(data), [], fetch_offset, None, None, True,
                    READ_UNCOMMITTED))


def test_the_same_records_as_aiokafka_from_the_fetch_offset_on() -> None:
    data = record_batches(0, [5, 40, 1, 17])
    for fetch_offset in (0, 3):  # a fetch starts in its first batch
        theirs = fetched(aiokafka_fetcher.PartitionRecords, data, fetch_offset)
        ours = fetched(LightPartitionRecords, data, fetch_offset)
        assert len(ours) == 63 - fetch_offset
        assert [(r.offset, r.key, r.value) for r in ours] == [
            (r.offset, r.key, r.value) for r in theirs]


def slices(partition_records: type, fetch_result: type, data: bytes, fetch_offset: int,
           max_records: int | None) -> list[tuple[list[tuple], int]]:
    """Each getall's records and the consumer position after it, until the fetch is drained."""
    async def drain() -> list[tuple[list[tuple], int]]:
        subscription = SubscriptionState()
        subscription.assign_from_user({TP})
        assignment = subscription.subscription.assignment
        assignment.state_value(TP).reset_to(fetch_offset)
        result = fetch_result(TP, assignment=assignment, backoff=0, partition_records=(
            partition_records(TP, MemoryRecords(data), [], fetch_offset, None, None, True,
                              READ_UNCOMMITTED)))
        taken = []
        while result.has_more():
            records = result.getall(max_records)
            taken.append(([(r.offset, r.key, r.value) for r in records],
                          assignment.state_value(TP).position))
        return taken
    return asyncio.run(drain())


@pytest.mark.parametrize("max_records", [1, 3, 17, 40, 63, 1000, None])
@pytest.mark.parametrize("fetch_offset", [0, 3, 46])
def test_records_are_handed_out_as_aiokafka_does(max_records: int | None,
                                                  fetch_offset: int) -> None:
    """Slices across and within record batches, a fetch starting inside a batch, and a
    control batch (skipped, its offsets passed) between them."""
    batches = [record_batches(0, [5]), record_batches(5, [40]), record_batches(45, [1]),
               record_batches(46, [17]), record_batches(63, [4])]
    batches[2] = as_control_batch(batches[2])
    data = b"".join(batches)
    theirs = slices(aiokafka_fetcher.PartitionRecords, aiokafka_fetcher.FetchResult, data,
                    fetch_offset, max_records)
    ours = slices(LightPartitionRecords, LightFetchResult, data, fetch_offset, max_records)
    assert ours == theirs
    assert 45 not in [offset for records, _ in ours for offset, _, _ in records]
    assert ours[-1][1] == 67  # the position after the last record


def test_a_consumer_with_a_deserializer_is_refused() -> None:
    with pytest.raises(RuntimeError, match="deserializer"):
        LightPartitionRecords(TP, MemoryRecords(record_batches(0, [1])), [], 0, None,
                              bytes.decode, True, READ_UNCOMMITTED)


def test_a_consumer_reading_committed_records_is_refused() -> None:
    with pytest.raises(RuntimeError, match="committed"):
        LightPartitionRecords(TP, MemoryRecords(record_batches(0, [1])), [], 0, None, None,
                              True, aiokafka_fetcher.READ_COMMITTED)


def test_use_light_records_makes_aiokafka_fetch_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiokafka_fetcher, "PartitionRecords", aiokafka_fetcher.PartitionRecords)
    monkeypatch.setattr(aiokafka_fetcher, "FetchResult", aiokafka_fetcher.FetchResult)
    use_light_records()
    assert aiokafka_fetcher.PartitionRecords is LightPartitionRecords
    assert aiokafka_fetcher.FetchResult is LightFetchResult


def test_the_broker_holds_an_empty_fetch_briefly() -> None:
    """aiokafka keeps one fetch in flight per broker: a partition resumed while a fetch of
    drained partitions waits is fetched only when that one returns, after Faust's fixed 1.5 s."""
    async def wait_of_the_workers_consumer() -> int:
        app = create_app(load_settings({}))
        consumer = app.consumer._new_consumer_thread()._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()

    assert asyncio.run(wait_of_the_workers_consumer()) == FETCH_MAX_WAIT_MS < 1500


@pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_batches_in_every_codec_are_read(codec: int) -> None:
    plain, compressed = record_batches(0, [30, 12]), record_batches(0, [30, 12], codec)
    assert compressed != plain
    assert [(r.offset, r.key, r.value) for r in fetched(LightPartitionRecords, compressed, 0)] == [
        (r.offset, r.key, r.value) for r in fetched(LightPartitionRecords, plain, 0)]


def test_an_unreadable_batch_stands_in_for_its_records_and_the_next_are_read() -> None:
    """A corrupt compressed payload (CRC right), an unknown codec id and a CRC mismatch: each
    batch becomes one UnreadableBatch naming its offsets and error, between the records of the
    readable batches around it (issue 27: it used to raise, crashing every worker that took
    over the partition)."""
    snappy = record_batches(5, [5], codec=2)
    corrupt = with_crc_redone(snappy[:70] + bytes(b ^ 0x5A for b in snappy[70:90]) + snappy[90:])
    unknown_codec = with_attributes(record_batches(10, [5], codec=2), 5, clear_bits=0x07)
    bad_crc = record_batches(15, [5])[:-1] + b"\xff"
    data = record_batches(0, [5]) + corrupt + unknown_codec + bad_crc + record_batches(20, [5])
    for limit in (None, 3):  # all at once, and in slices as a fetch with max_records
        records = LightPartitionRecords(TP, MemoryRecords(data), [], 0, None, None, True,
                                        READ_UNCOMMITTED)
        out: list = []
        while taken := records.take(limit):
            out += taken
        unreadable = [r for r in out if type(r) is UnreadableBatch]
        assert [(u.first_offset, u.offset) for u in unreadable] == [(5, 9), (10, 14), (15, 19)]
        assert "UnsupportedCodecError" in unreadable[1].error
        assert unreadable[2].error == "CorruptRecordException: [Error 2] CorruptRecordException: invalid CRC"
        assert [r.offset for r in out if type(r) is not UnreadableBatch] == [*range(5), *range(20, 25)]
        assert [type(r) is UnreadableBatch for r in out][5:8] == [True] * 3  # in offset order
        assert records.next_fetch_offset == 25


def test_every_private_faust_and_aiokafka_attribute_the_worker_uses_is_there() -> None:
    """Fails naming the attribute when a new Faust or aiokafka release renames one."""
    assert private_api.missing() == []


def test_a_renamed_private_attribute_is_named_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(private_api, "PRIVATE", [
        *private_api.PRIVATE, (aiokafka_fetcher.FetchResult, "_records_left", "renamed")])
    with pytest.raises(RuntimeError, match=r"lack FetchResult\._records_left, which the worker"):
        private_api.check()
