"""Kafka client configuration from `Settings`, and which Kafka errors can clear, in one place.

Every Kafka client of the project (kafka-python, aiokafka, Faust) gets its connection and
security options from here, so a SASL or TLS setting reaches all of them or none.
"""

from __future__ import annotations

import ssl
from typing import Any

from streams.settings import Settings, SettingsError


def bootstrap_servers(settings: Settings) -> list[str]:
    """['host:port', ...] from CPO_KAFKA_BOOTSTRAP."""
    return [server.strip() for server in settings.kafka_bootstrap.split(",") if server.strip()]


def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL_")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context every client shares: hostname checked, CA from CPO_KAFKA_SSL_CAFILE or
    the system's CAs. None without TLS."""
    if not uses_tls(settings):
        return None
    from aiokafka.helpers import create_ssl_context

    cafile = settings.kafka_ssl_cafile or None
    try:
        return create_ssl_context(cafile=cafile)
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise SettingsError(
            f"CPO_KAFKA_SSL_CAFILE={cafile!r}: cannot load the CA bundle ({exc.strerror}); "
            "point it at a PEM file of CA certificates"
        ) from None


def _client_config(settings: Settings) -> dict[str, Any]:
    """The options kafka-python and aiokafka both take, under the same names."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(settings),
        "security_protocol": settings.kafka_security_protocol,
    }
    if uses_sasl(settings):
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = settings.kafka_sasl_password
    if uses_tls(settings):
        config["ssl_context"] = ssl_context(settings)
    return config


def kafka_python_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's KafkaProducer, KafkaConsumer and KafkaAdminClient."""
    return _client_config(settings)


def aiokafka_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's AIOKafkaProducer and AIOKafkaConsumer."""
    return _client_config(settings)


def missing_codecs() -> list[str]:
    """The compression codecs (of the four Kafka producers use) whose library this process
    lacks, for aiokafka (the worker) or kafka-python (`cpo replay`, the tools): a batch in one
    of them could not be read. The package's dependencies install them all."""
    import aiokafka.codec
    import kafka.codec

    return [codec for codec in ("snappy", "lz4", "zstd")
            if not (getattr(aiokafka.codec, f"has_{codec}")()
                    and getattr(kafka.codec, f"has_{codec}")())]


def compression_type(settings: Settings) -> str | None:
    """CPO_KAFKA_COMPRESSION as producers take it (None: uncompressed)."""
    return None if settings.kafka_compression == "none" else settings.kafka_compression


# Kafka's default `message.max.bytes`: the limit of a topic that reports none.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


def permanent_error(exc: BaseException) -> str | None:
    """What to fix when `exc` is a produce or commit error that no retry can clear (the broker
    refuses the worker's rights, the topic or its requests as they are), else None: every
    other error, timeouts and connection losses included, may clear and is retried."""
    from aiokafka import errors

    fixes = {
        errors.TopicAuthorizationFailedError: "grant the worker's principal WRITE on the "
                                              "output topics and READ on the input topics",
        errors.ClusterAuthorizationFailedError: "grant the worker's principal the cluster "
                                                "rights of a producer (IdempotentWrite)",
        errors.GroupAuthorizationFailedError: "grant the worker's principal READ on the "
                                              "consumer group CPO_GROUP_ID",
        errors.InvalidTopicError: "check the CPO_TOPIC_* names",
        errors.UnsupportedVersionError: "use Kafka 2.x or newer",
        errors.UnsupportedForMessageFormatError: "use Kafka 2.x or newer",
        errors.InvalidTimestampError: "set the worker host's clock (NTP): the broker refuses "
                                      "its record timestamps",
        errors.PolicyViolationError: "ask the Kafka administrators which policy refuses it",
        errors.MessageSizeTooLargeError: "raise max.message.bytes of the topic",
        errors.RecordListTooLargeError: "raise max.message.bytes of the topic",
    }
    for error_class, fix in fixes.items():
        if isinstance(exc, error_class):
            return fix
    return None


async def topic_max_message_bytes(settings: Settings, topic: str) -> int:
    """The topic's `max.message.bytes` as the broker reports it, or Kafka's default when it
    reports none (a broker that keeps only the configs set, like Tansu)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(**aiokafka_config(settings), request_timeout_ms=5000)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    for response in responses:
        for resource in response.resources:
            for entry in resource[4]:  # (name, value, read_only, source, sensitive, ...)
                if entry[0] == "max.message.bytes" and entry[1]:
                    return int(entry[1])
    return DEFAULT_MAX_MESSAGE_BYTES


def faust_broker_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for faust.App: `broker`, and `broker_credentials` when secured."""
    import faust

    config: dict[str, Any] = {
        "broker": ";".join(f"kafka://{server}" for server in bootstrap_servers(settings)),
    }
    if uses_sasl(settings):
        config["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context(settings),
        )
    elif uses_tls(settings):
        config["broker_credentials"] = faust.SSLCredentials(ssl_context(settings))
    return config
