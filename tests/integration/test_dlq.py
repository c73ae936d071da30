"""The DLQ against the real broker and a real worker: `cpo topics create` gives the DLQ room
for every record the input topics take, a record that fits the input limit reaches the DLQ
whole, and a larger one is cut to the DLQ's limit, so no DLQ record can be refused for good
and stop its partition (issue 21, item 3).

Tansu stores `max.message.bytes` and reports it, but does not enforce it: the broker's refusal
itself is exercised by tests/unit/test_dlq.py."""

from __future__ import annotations

import time
from pathlib import Path

import redis
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from streams.events import MAX_RECORD_BYTES
from streams.kafka import kafka_python_config
from streams.local import free_port
from streams.processes import Pipeline
from streams.processor import record_bytes
from streams.settings import Settings
from streams.state import count_identities
from streams.topics import DLQ_MAX_MESSAGE_BYTES
from tests.integration.support import consume_all, wait_for


def dlq_limit(settings: Settings) -> int:
    admin = KafkaAdminClient(**kafka_python_config(settings))
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.topic_dlq)], config_filter="all")
    finally:
        admin.close()
    return int(described["topic"][settings.topic_dlq]["max.message.bytes"]["value"])


def test_every_rejected_record_fits_the_dlq(pipeline_settings: Settings, tmp_path: Path) -> None:
    settings = pipeline_settings
    assert dlq_limit(settings) == DLQ_MAX_MESSAGE_BYTES  # set by cpo topics create (fixture)
    near_limit = b'{"order_id": ' + b"9" * (MAX_RECORD_BYTES - 200)  # malformed, fits as input
    over_limit = b'{"order_id": "o-big", "pad": "' + b"p" * (DLQ_MAX_MESSAGE_BYTES + 1000) + b'"}'
    valid = b'{"order_id": "o-1", "occurred_at": "%s"}' % time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()
    producer = KafkaProducer(**kafka_python_config(settings), max_request_size=8 * 1024 * 1024)
    for key, value in [(b"near", near_limit), (b"over", over_limit), (b"o-1", valid)]:
        producer.send(settings.topic_orders, key=key, value=value, partition=0)
    producer.flush()
    producer.close()

    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    with Pipeline(settings, tmp_path) as pipeline:
        worker = pipeline.worker(0, free_port())
        worker.wait_ready()
        wait_for(lambda: count_identities(client, "o"), 1, 120, "the valid order counted")
        dlq = consume_all(settings, settings.topic_dlq, 2)
        assert worker.alive, worker.log_tail()

    by_offset = {int(dict(r.headers)["cpo-source-offset"]): r for r in dlq}
    assert sorted(by_offset) == [0, 1]
    whole, cut = by_offset[0], by_offset[1]
    assert (whole.key, whole.value) == (b"near", near_limit)
    assert "cpo-original-size" not in dict(whole.headers)
    assert dict(cut.headers)["cpo-original-size"] == str(len(over_limit)).encode()
    assert over_limit.startswith(cut.value) and cut.key is None
    assert record_bytes((cut.key, cut.value, cut.headers)) <= DLQ_MAX_MESSAGE_BYTES
    assert len(cut.value) > DLQ_MAX_MESSAGE_BYTES - 1024  # cut no more than needed
