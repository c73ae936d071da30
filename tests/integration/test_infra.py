"""The local infrastructure works end to end: topics, a produce/consume round trip, Redis."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import redis
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from streams.kafka import aiokafka_config, kafka_python_config
from streams.local import EmbeddedRedis, LocalInfraError
from streams.settings import Settings, load_settings
from streams.topics import TopicsError, create_topics, retention_ms, topic_names

RECORDS = 100


def produce(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(**kafka_python_config(settings), acks="all")
    try:
        for key, value in records:
            producer.send(settings.topic_orders, key=key, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()


async def consume(settings: Settings, count: int) -> list[tuple[bytes, bytes]]:
    """Read with a consumer group until `count` records arrived (or 60 s passed)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.topic_orders, group_id=settings.group_id, session_timeout_ms=10000,
        auto_offset_reset="earliest", **aiokafka_config(settings),
    )
    received: list[tuple[bytes, bytes]] = []
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while len(received) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            received.extend((r.key, r.value) for batch in batches.values() for r in batch)
    finally:
        await consumer.stop()
    return received


def test_records_round_trip_through_kafka(pipeline_settings: Settings) -> None:
    sent = [(f"order-{i % 7}".encode(), f'{{"n": {i}}}'.encode()) for i in range(RECORDS)]
    produce(pipeline_settings, sent)
    received = asyncio.run(consume(pipeline_settings, RECORDS))
    assert sorted(received) == sorted(sent)


def test_create_topics_is_idempotent_and_applies_the_settings(pipeline_settings: Settings) -> None:
    names = topic_names(pipeline_settings)
    assert create_topics(pipeline_settings) == {name: "exists" for name in names}

    admin = KafkaAdminClient(**kafka_python_config(pipeline_settings))
    try:
        described = {t["name"]: t for t in admin.describe_topics(names)}
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names], config_filter="all"
        )["topic"]
    finally:
        admin.close()
    assert {name: len(described[name]["partitions"]) for name in names} == {
        name: pipeline_settings.partitions for name in names
    }
    assert {name: configs[name]["retention.ms"]["value"] for name in names} == {
        name: retention_ms(pipeline_settings) for name in names
    }


def test_unreachable_kafka_is_one_line_naming_the_variable() -> None:
    settings = load_settings({}, kafka_bootstrap="127.0.0.1:1")
    with pytest.raises(TopicsError) as failure:
        create_topics(settings, timeout=1)
    message = str(failure.value)
    assert "\n" not in message and "CPO_KAFKA_BOOTSTRAP" in message


def test_redis_set_get(redis_db_url: str) -> None:
    with redis.Redis.from_url(redis_db_url) as client:
        assert client.dbsize() == 0
        client.set("cpo:test", "value")
        assert client.get("cpo:test") == b"value"


@pytest.mark.parametrize("appendonly", [True, False])
def test_redis_restart_keeps_data_only_with_appendonly(appendonly: bool) -> None:
    with EmbeddedRedis(appendonly=appendonly) as server:
        with redis.Redis.from_url(server.url) as client:
            client.set("cpo:kept", "1")
        server.restart()
        with redis.Redis.from_url(server.url) as client:
            assert client.get("cpo:kept") == (b"1" if appendonly else None)
        last_pid = server.pid
    with pytest.raises(ProcessLookupError):
        os.kill(last_pid, 0)
    assert not server.workdir.exists()


def test_a_taken_port_is_one_line() -> None:
    with EmbeddedRedis() as server:
        second = EmbeddedRedis(port=server.port)
        with pytest.raises(LocalInfraError) as failure:
            second.start()
        second.stop()
    message = str(failure.value)
    assert "\n" not in message and f"port 127.0.0.1:{server.port} is taken" in message
