"""Kafka client configuration from `Settings`, in one place.

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
