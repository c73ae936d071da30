"""Compressed input against the real broker and a real worker (issue 27): record batches in
every codec Kafka producers use, from librdkafka (confluent-kafka), aiokafka and kafka-python,
mixed with uncompressed ones in one partition of each input topic, are counted exactly; a
batch no client can read (a corrupt compressed payload, a CRC mismatch), written by a raw
producer, goes to the DLQ with its offsets while the partition moves on."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import aiokafka
import orjson
import redis
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.produce import ProduceRequest
from confluent_kafka import Producer as LibrdkafkaProducer
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.util import calc_crc32c

from streams.kafka import aiokafka_config, kafka_python_config
from streams.local import free_port
from streams.processes import Pipeline
from streams.settings import Settings
from streams.state import count_identities, identity_key
from tests.integration.support import consume_all, wait_for

CODECS = ("gzip", "snappy", "lz4", "zstd")
PER_CHUNK = 40


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def order(order_id: str) -> bytes:
    return orjson.dumps({"order_id": order_id, "occurred_at": rfc3339(time.time() - 120),
                         "attributes": {"carrier": "acme"}})


def contact(order_id: str) -> bytes:
    return orjson.dumps({"contact_id": f"k-{order_id}", "order_id": order_id,
                         "occurred_at": rfc3339(time.time() - 60), "cause": "late_delivery"})


def chunks(kind: str) -> list[tuple[str, str | None, list[bytes]]]:
    """(producer, codec or None, values): each producer's chunk in each codec, each followed by
    an uncompressed one, so compressed and plain batches alternate in the partition."""
    make = order if kind == "orders" else contact
    out = []
    for producer in ("librdkafka", "aiokafka", "kafka-python"):
        for codec in CODECS:
            for compression in (codec, None):
                name = f"{producer}-{compression or 'none'}-{codec}"
                out.append((producer, compression,
                            [make(f"o-{name}-{i}") for i in range(PER_CHUNK)]))
    return out


def produce_chunk(settings: Settings, topic: str, producer: str, codec: str | None,
                  values: list[bytes]) -> None:
    """One producer's records to partition 0, in as few batches as its linger makes."""
    if producer == "librdkafka":
        client = LibrdkafkaProducer({"bootstrap.servers": settings.kafka_bootstrap,
                                     "compression.type": codec or "none", "linger.ms": 50})
        for value in values:
            client.produce(topic, value=value, partition=0)
        assert client.flush(30) == 0
    elif producer == "aiokafka":
        async def send() -> None:
            client = aiokafka.AIOKafkaProducer(**aiokafka_config(settings), linger_ms=50,
                                               compression_type=codec)
            await client.start()
            try:
                for future in [await client.send(topic, value, partition=0) for value in values]:
                    await future
            finally:
                await client.stop()
        asyncio.run(send())
    else:
        client = KafkaProducer(**kafka_python_config(settings), linger_ms=50,
                               compression_type=codec)
        for value in values:
            client.send(topic, value, partition=0)
        client.flush()
        client.close()


def test_every_codec_from_every_producer_is_counted_exactly(
        pipeline_settings: Settings, tmp_path: Path) -> None:
    settings = pipeline_settings
    sent = {}
    for kind, topic in (("orders", settings.topic_orders), ("contacts", settings.topic_contacts)):
        sent[kind] = 0
        for producer, codec, values in chunks(kind):
            produce_chunk(settings, topic, producer, codec, values)
            sent[kind] += len(values)
    assert sent == {"orders": 24 * PER_CHUNK, "contacts": 24 * PER_CHUNK}

    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    with Pipeline(settings, tmp_path) as pipeline:
        worker = pipeline.worker(0, free_port())
        worker.wait_ready()
        wait_for(lambda: count_identities(client, "o"), sent["orders"], 120, "every order")
        wait_for(lambda: count_identities(client, "c"), sent["contacts"], 120, "every contact")
        wait_for(lambda: client.zcard("cpo:pq"), 0, 60, "every contact joined")
        attributed = consume_all(settings, settings.topic_attributed, sent["contacts"])
        assert worker.alive, worker.log_tail()
    assert len({orjson.loads(r.value)["contact_id"] for r in attributed}) == sent["contacts"]
    assert consume_all(settings, settings.topic_dlq, 0, timeout=5) == []


def raw_batch(first: int, values: list[bytes], codec: int, damage: str | None = None) -> bytes:
    """A record batch as a producer sends it (codec 2: snappy); damage "payload" flips bytes
    of the compressed records and makes the CRC right again, "crc" breaks the CRC only."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=0,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 20)
    for i, value in enumerate(values):
        builder.append(first + i, timestamp=None, key=None, value=value, headers=[])
    data = bytearray(builder.build())
    if damage == "payload":
        data[70:90] = bytes(b ^ 0x5A for b in data[70:90])
        struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])))
    elif damage == "crc":
        data[-1] ^= 0xFF
    return bytes(data)


def produce_raw(settings: Settings, topic: str, batches: list[bytes]) -> None:
    """Each batch as one produce request to partition 0, bytes as given (no client would
    send a broken batch; a disk or a buggy producer can)."""
    async def send() -> None:
        client = AIOKafkaClient(bootstrap_servers=settings.kafka_bootstrap)
        await client.bootstrap()
        try:
            await client.force_metadata_update()
            node = client.cluster.leader_for_partition(aiokafka.TopicPartition(topic, 0))
            for batch in batches:
                response = await client.send(node, ProduceRequest(None, -1, 10_000,
                                                                  [(topic, [(0, batch)])]))
                assert response.topics[0][1][0][1] == 0, response  # no error code
        finally:
            await client.close()
    asyncio.run(send())


def test_an_unreadable_batch_goes_to_the_dlq_and_the_partition_moves_on(
        pipeline_settings: Settings, tmp_path: Path) -> None:
    settings = pipeline_settings
    values = [[order(f"o-{b}-{i}") for i in range(5)] for b in range(5)]
    produce_raw(settings, settings.topic_orders, [
        raw_batch(0, values[0], 2), raw_batch(0, values[1], 2, "payload"),
        raw_batch(0, values[2], 0), raw_batch(0, values[3], 2, "crc"),
        raw_batch(0, values[4], 2)])  # offsets 0-4, 5-9 unreadable, 10-14, 15-19 unreadable, 20-24

    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    committed = KafkaConsumer(**kafka_python_config(settings), group_id=settings.group_id)
    with Pipeline(settings, tmp_path) as pipeline:
        worker = pipeline.worker(0, free_port())
        worker.wait_ready()
        wait_for(lambda: count_identities(client, "o"), 15, 120, "the readable orders")
        dlq = consume_all(settings, settings.topic_dlq, 2)
        wait_for(lambda: committed.committed(TopicPartition(settings.topic_orders, 0)), 25, 60,
                 "the partition committed past the last batch")
        rejected = worker.scrape(("cpo_records_rejected_total",))
        assert worker.alive, worker.log_tail()
        log = worker.log_tail(200)
    committed.close()
    read = [b for b in range(5) if client.hexists(identity_key("o", f"o-{b}-0"), f"o-{b}-0")]
    assert read == [0, 2, 4]
    headers = sorted((dict(r.headers) for r in dlq), key=lambda h: int(h["cpo-source-offset"]))
    assert [(h["cpo-error-reason"], h["cpo-source-offset"], h["cpo-source-offset-last"])
            for h in headers] == [(b"unreadable_batch", b"5", b"9"),
                                  (b"unreadable_batch", b"15", b"19")]
    assert b"DecompressionError" in headers[0]["cpo-error-detail"]
    assert b"invalid CRC" in headers[1]["cpo-error-detail"]
    by_reason = {dict(labels)["reason"]: n for (_, labels), n in rejected.items()}
    assert by_reason == {"unreadable_batch": 10.0}  # the offsets skipped
    assert "offsets 5-9: a record batch that cannot be read" in log
