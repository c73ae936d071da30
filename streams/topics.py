"""`cpo topics create`: make the four contract topics, idempotently.

Existing topics are reported as `exists` and left as they are. A broker that rejects the
retention config gets the topic without it and a warning; so does a broker that accepts it but
reports another value back, since retention may then not be enforced.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from streams.events import MAX_RECORD_BYTES
from streams.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0
# Kafka protocol error codes of a CreateTopics result.
_CREATED, _EXISTS, _INVALID_CONFIG, _POLICY_VIOLATION = 0, 36, 40, 44


class TopicsError(RuntimeError):
    """Topics cannot be created; the message is one line that names the fix."""


def topic_names(settings: Settings) -> list[str]:
    return [settings.topic_orders, settings.topic_contacts, settings.topic_attributed,
            settings.topic_dlq]


# The DLQ's `max.message.bytes`: a record as large as the decoder accepts (1 MiB, the contract)
# fits whole with 64 KiB of headers, so every record the input topics take (Kafka's default
# limit is 1 MiB + 12 bytes) reaches the DLQ unchanged; the worker cuts only larger ones.
DLQ_MAX_MESSAGE_BYTES = MAX_RECORD_BYTES + 64 * 1024


def retention_ms(settings: Settings) -> str:
    return str(max(1, round(settings.topic_retention * 1000)))


def _admin(settings: Settings, timeout: float) -> Any:
    """A KafkaAdminClient, retrying a retriable failure until `timeout` seconds have passed."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from streams.kafka import kafka_python_config

    config = kafka_python_config(settings)
    deadline = time.monotonic() + timeout
    while True:
        attempt_ms = int(min(5.0, max(1.0, deadline - time.monotonic())) * 1000)
        try:
            return KafkaAdminClient(**config, bootstrap_timeout_ms=attempt_ms,
                                    request_timeout_ms=10000)
        except KafkaError as exc:
            if exc.retriable and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            waited = f" within {timeout:g}s" if exc.retriable else ""
            raise TopicsError(
                f"cannot reach Kafka at {settings.kafka_bootstrap}{waited} ({exc}); "
                "start the broker or fix CPO_KAFKA_BOOTSTRAP and the CPO_KAFKA_* security settings"
            ) from None


def _create(admin: Any, specs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{topic: result} of one CreateTopics request, errors returned rather than raised."""
    response = admin.create_topics(specs, raise_errors=False)
    return {result["name"]: result for result in response["topics"]}


def _warn_unless_retention_applied(admin: Any, topics: list[str], expected: str) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.errors import KafkaError

    if not topics:
        return
    # All configs, not just retention.ms: Tansu 0.6 drops the connection on a key-filtered request.
    resources = [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
    try:
        described = admin.describe_configs(resources, config_filter="all").get("topic", {})
    except KafkaError as exc:
        log.warning("cannot read retention.ms back from the broker (%s)", exc)
        return
    reported = {topic: described.get(topic, {}).get("retention.ms", {}).get("value")
                for topic in topics}
    unapplied = [topic for topic, value in reported.items() if value != expected]
    if unapplied:
        log.warning("topics %s: the broker reports retention.ms=%s, not %s; it may not enforce "
                    "CPO_TOPIC_RETENTION", ", ".join(unapplied), reported[unapplied[0]], expected)


def create_topics(settings: Settings, partitions: int | None = None,
                  replication_factor: int | None = None,
                  timeout: float = CONNECT_TIMEOUT) -> dict[str, str]:
    """Create the orders, contacts, attributed and DLQ topics; {topic: "created" | "exists"}.

    Partitions and replication factor default to CPO_PARTITIONS and CPO_REPLICATION_FACTOR;
    retention is CPO_TOPIC_RETENTION; the DLQ takes records of DLQ_MAX_MESSAGE_BYTES. Raises TopicsError when Kafka stays unreachable for
    `timeout` seconds or refuses a topic.
    """
    from kafka.errors import KafkaError

    retention = retention_ms(settings)
    shape = {"num_partitions": partitions or settings.partitions,
             "replication_factor": replication_factor or settings.replication_factor}
    names = topic_names(settings)
    admin = _admin(settings, timeout)
    try:
        configs = {name: {"retention.ms": retention} for name in names}
        configs[settings.topic_dlq]["max.message.bytes"] = str(DLQ_MAX_MESSAGE_BYTES)
        results = _create(admin, {name: {**shape, "configs": configs[name]} for name in names})
        rejected = [name for name in names
                    if results[name]["error_code"] in (_INVALID_CONFIG, _POLICY_VIOLATION)]
        if rejected:
            log.warning("topics %s: the broker rejected retention.ms=%s (%s); creating them with "
                        "the broker's default retention", ", ".join(rejected), retention,
                        results[rejected[0]]["error_message"])
            results.update(_create(admin, {name: shape for name in rejected}))
        for name, result in results.items():
            if result["error_code"] not in (_CREATED, _EXISTS):
                raise TopicsError(f"topic {name}: the broker refused it (Kafka error "
                                  f"{result['error_code']}: {result['error_message']})")
        created = [name for name in names if results[name]["error_code"] == _CREATED]
        if created:
            admin.wait_for_topics(created)
            _warn_unless_retention_applied(
                admin, [name for name in created if name not in rejected], retention)
        return {name: "created" if name in created else "exists" for name in names}
    except KafkaError as exc:
        raise TopicsError(f"Kafka at {settings.kafka_bootstrap} failed while creating topics "
                          f"({exc}); check the broker's health and retry") from None
    finally:
        admin.close()


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create the four topics; existing ones are kept")
    create.add_argument("--partitions", type=_positive, default=None,
                        help="partitions per topic (default: CPO_PARTITIONS)")
    create.add_argument("--replication-factor", type=_positive, default=None,
                        help="replication factor (default: CPO_REPLICATION_FACTOR)")


def run(args: argparse.Namespace) -> int:
    from streams.settings import load_settings

    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":  # a failure ends in one TopicsError line that names the cause
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    partitions = args.partitions or settings.partitions
    replication_factor = args.replication_factor or settings.replication_factor
    try:
        outcome = create_topics(settings, partitions, replication_factor)
    except TopicsError as exc:
        print(f"cpo topics: {exc}", file=sys.stderr)
        return 1
    for name, state in outcome.items():
        detail = (f" (partitions={partitions}, replication_factor={replication_factor}, "
                  f"retention.ms={retention_ms(settings)})" if state == "created" else "")
        print(f"{name}: {state}{detail}")
    return 0
