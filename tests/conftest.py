"""Shared fixtures: a real Kafka broker and Redis, started once per test process on free ports
(`make test` runs two processes, pytest-xdist, a test file each at a time).

Set CPO_KAFKA_BOOTSTRAP or CPO_REDIS_URL to run against servers of your own instead. Every
test gets its own topics, consumer group and Redis database, so tests never see each
other's data. Tests under tests/integration/ are marked `integration` automatically.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from streams import local
from streams.local import EmbeddedKafka, free_port, with_redis_db
from streams.settings import Settings, load_settings
from streams.topics import create_topics

_INTEGRATION_DIR = Path(__file__).parent / "integration"
_REDIS_DBS = itertools.cycle(range(1, 16))  # DB 0 is left to whoever owns an external Redis
TEST_PARTITIONS = 4

# `make test` runs two test processes on a machine whose cores the servers share: a generated
# example's run time says nothing about the code, so no test has a Hypothesis deadline.
hypothesis_settings.register_profile("shared-cores", deadline=None)
hypothesis_settings.load_profile("shared-cores")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """host:port of a Kafka broker: CPO_KAFKA_BOOTSTRAP, or an embedded Tansu broker."""
    if os.environ.get("CPO_KAFKA_BOOTSTRAP"):
        yield os.environ["CPO_KAFKA_BOOTSTRAP"]
        return
    with EmbeddedKafka() as kafka:
        yield kafka.bootstrap


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis server: CPO_REDIS_URL, or an embedded redis-server."""
    with local.redis_url() as url:
        yield url


@pytest.fixture
def redis_db_url(redis_url: str) -> str:
    """A Redis database of this test's own (1..15 in turn), empty when the test starts."""
    import redis

    url = with_redis_db(redis_url, next(_REDIS_DBS))
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


@pytest.fixture
def pipeline_settings(kafka_bootstrap: str, redis_db_url: str) -> Settings:
    """Settings for one test: its own topics (created, 4 partitions), group, Redis DB and ports."""
    suffix = uuid.uuid4().hex[:8]
    metrics_port = free_port()
    exporter_port = free_port()
    while exporter_port == metrics_port:
        exporter_port = free_port()
    settings = load_settings(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_db_url,
        topic_orders=f"orders-{suffix}",
        topic_contacts=f"contacts-{suffix}",
        topic_attributed=f"cpo.contacts.attributed-{suffix}",
        topic_dlq=f"cpo.dlq-{suffix}",
        group_id=f"cpo-test-{suffix}",
        partitions=str(TEST_PARTITIONS),
        metrics_port=str(metrics_port),
        exporter_port=str(exporter_port),
        bind_address="127.0.0.1",
    )
    create_topics(settings)
    return settings
