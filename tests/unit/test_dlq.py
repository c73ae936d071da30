"""Output records the broker refuses: a DLQ record is cut to the DLQ topic's limit, a batch
refused as too large is split, a record refused alone is made smaller or the refusal stops
the worker, and no error that can never clear is retried forever (issue 21, item 3)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.producer.message_accumulator import BatchBuilder

from streams.events import Rejection
from streams.metrics import WorkerMetrics
from streams.output import BatchSender, OutputRecord
from streams.processor import (
    BatchProcessor,
    Prepared,
    dlq_record,
    record_bytes,
    shrink_dlq_record,
)
from streams.retry import FatalError
from streams.settings import load_settings
from streams.state import BatchResult

SETTINGS = load_settings({})
SOURCE = (SETTINGS.topic_orders, 3)
LIMIT = 10_000


@dataclass
class Fetched:
    offset: int
    key: bytes | None
    value: bytes | None


def test_a_record_that_fits_goes_whole() -> None:
    record = dlq_record(SOURCE, Fetched(7, b"o-1", b"x" * 5000), Rejection("invalid_json", "e1"),
                        LIMIT)
    key, value, headers = record
    assert (key, value) == (b"o-1", b"x" * 5000)
    assert dict(headers) == {"cpo-error-reason": b"invalid_json",
                             "cpo-source-topic": SETTINGS.topic_orders.encode(),
                             "cpo-source-partition": b"3", "cpo-source-offset": b"7",
                             "cpo-event-id": b"e1"}


@pytest.mark.parametrize("size", [LIMIT - 200, LIMIT, 3 * LIMIT])
def test_a_record_that_would_not_fit_is_cut_to_the_limit(size: int) -> None:
    """Near the limit the headers tip it over: cut, never refused by the broker for good."""
    value = bytes(range(256)) * (size // 256 + 1)
    record = dlq_record(SOURCE, Fetched(7, b"k" * 100, value[:size]),
                        Rejection("too_large", None), LIMIT)
    key, cut, headers = record
    assert record_bytes(record) <= LIMIT
    assert key is None and value.startswith(cut) and len(cut) > LIMIT - 400
    assert dict(headers)["cpo-original-size"] == str(size).encode()


def test_shrinking_halves_the_value_until_nothing_is_left() -> None:
    record: OutputRecord | None = (b"k", b"y" * 8, [("cpo-error-reason", b"too_large")])
    values = []
    while record is not None:
        values.append(record[1])
        record = shrink_dlq_record(record)
        if record is not None:
            assert dict(record[2])["cpo-original-size"] == b"8"  # the size before any cut
    assert values == [b"y" * 8, b"y" * 4, b"y" * 2, b"y", b""]


class RefusingProducer:
    """aiokafka's producer as BatchSender uses it, with a broker that refuses record batches
    over `limit` bytes as Kafka does (MessageSizeTooLargeError), and keeps the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept: list[tuple[bytes | None, bytes]] = []
        self.refused = 0

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(64 * 1024, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int):
        acknowledged = asyncio.get_running_loop().create_future()
        if batch.size() > self.limit:
            self.refused += 1
            acknowledged.set_exception(MessageSizeTooLargeError())
        else:
            self.kept += self.records[id(batch)]
            acknowledged.set_result(None)
        return acknowledged


def recording(producer: RefusingProducer) -> RefusingProducer:
    """Remember which records went into each batch (BatchBuilder does not hand them back)."""
    producer.records = {}
    create = producer.create_batch

    def create_batch() -> BatchBuilder:
        batch = create()
        producer.records[id(batch)] = []
        append = batch.append

        def append_and_note(*, key, value, timestamp, headers):
            metadata = append(key=key, value=value, timestamp=timestamp, headers=headers)
            if metadata is not None:
                producer.records[id(batch)].append((key, value))
            return metadata

        batch.append = append_and_note
        return batch

    producer.create_batch = create_batch
    return producer


def test_a_batch_refused_as_too_large_is_split_until_it_passes() -> None:
    producer = recording(RefusingProducer(limit=3000))
    records = [(f"c-{i}".encode(), b"v" * 900, []) for i in range(40)]
    asyncio.run(BatchSender(lambda: producer).send("out", records))
    assert producer.refused > 0
    assert sorted(producer.kept) == sorted((key, value) for key, value, _ in records)


def test_a_record_refused_alone_is_shrunk_or_the_refusal_is_raised() -> None:
    producer = recording(RefusingProducer(limit=3000))
    big = [(b"k", b"z" * 20_000, [("cpo-error-reason", b"too_large")])]
    asyncio.run(BatchSender(lambda: producer).send("dlq", big, shrink_dlq_record))
    ((key, value),) = producer.kept
    assert key is None and b"z" * 20_000 == value + b"z" * (20_000 - len(value))
    with pytest.raises(MessageSizeTooLargeError):  # no rule to make it smaller
        asyncio.run(BatchSender(lambda: recording(RefusingProducer(3000))).send("out", big))


def processor_sending(send_many) -> BatchProcessor:
    return BatchProcessor(SETTINGS, state=None, metrics=WorkerMetrics(), send_many=send_many,
                          kafka_transient=(KafkaError, TimeoutError))


def prepared_with_one_rejection() -> Prepared:
    return Prepared(now=0.0, started=0.0, script_batch=None,
                    rejected=[(SOURCE, Fetched(1, None, b"{"), Rejection("invalid_json", None))])


class NoLabels:
    async def labels(self, result: BatchResult):
        return None


@pytest.mark.parametrize("error", [TopicAuthorizationFailedError, MessageSizeTooLargeError])
def test_an_error_that_cannot_clear_stops_the_worker_instead_of_retrying(error: type) -> None:
    calls = []

    async def send_many(topic, records, shrink):
        calls.append(topic)
        raise error()

    processor = processor_sending(send_many)
    processor.state = NoLabels()
    with pytest.raises(FatalError, match="kafka refuses produce to DLQ"):
        asyncio.run(asyncio.wait_for(processor.output(prepared_with_one_rejection(),
                                                      BatchResult()), 30))
    assert calls == [SETTINGS.topic_dlq]  # tried once, not again and again


def test_an_error_that_can_clear_is_retried_until_it_does() -> None:
    calls = []

    async def send_many(topic, records, shrink):
        calls.append(topic)
        if len(calls) < 3:
            raise KafkaTimeoutError()

    processor = processor_sending(send_many)
    processor.state = NoLabels()
    asyncio.run(asyncio.wait_for(processor.output(prepared_with_one_rejection(),
                                                  BatchResult()), 30))
    assert calls == [SETTINGS.topic_dlq] * 3
