"""Security settings reach the clients that use them, secrets can come from files, and customer
identifiers are dropped before anything that becomes a label or a Redis key.

The settings are loaded from an environment, as the processes load them, with the secrets in
`*_FILE` variables; the checks look at what each client is actually constructed with: the
options of kafka-python and aiokafka, the credentials Faust hands to its aiokafka consumer and
producer, and the connection pool of the Redis client the worker and the exporter share. The
checks that need running processes (no customer id in logs or /metrics, endpoints bound to
CPO_BIND_ADDRESS) are in tests/integration/test_hostile_input.py.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from redis.asyncio.connection import Connection, SSLConnection

from streams.events import decode_contact, decode_order
from streams.kafka import aiokafka_config, faust_broker_settings, kafka_python_config
from streams.settings import Settings, load_settings
from streams.state import RedisState, connect
from streams.worker import create_app
from tests.unit import test_kafka_config
from tests.unit.test_kafka_config import VERIFIED_BY_TEST_CA, tls_summary

cafile = test_kafka_config.cafile  # its throwaway CA fixture, shared rather than copied

PASSWORD = "s3cret pass/word"  # a space and a slash: read verbatim from the file
REDIS_PASSWORD = "r3dis-secret"
CUSTOMER = "CUSTOMER-MARKER-7f3a"


def from_env(tmp_path: Path, **env: str) -> Settings:
    """Settings as a process loads them, with the Kafka password and Redis URL in files."""
    (tmp_path / "kafka_password").write_text(PASSWORD + "\n")
    return load_settings({"CPO_KAFKA_BOOTSTRAP": "k1.example:9093",
                          "CPO_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "kafka_password"),
                          **env})


def redis_url_file(tmp_path: Path, url: str) -> str:
    path = tmp_path / "redis_url"
    path.write_text(url + "\n")
    return str(path)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_scram_over_tls_reaches_every_kafka_client(tmp_path: Path, cafile: str,
                                                        mechanism: str) -> None:
    settings = from_env(tmp_path, CPO_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                        CPO_KAFKA_SASL_MECHANISM=mechanism, CPO_KAFKA_SASL_USERNAME="cpo",
                        CPO_KAFKA_SSL_CAFILE=cafile)
    expected = {"security_protocol": "SASL_SSL", "sasl_mechanism": mechanism,
                "sasl_plain_username": "cpo", "sasl_plain_password": PASSWORD}
    for config in (kafka_python_config(settings), aiokafka_config(settings)):
        assert {key: config[key] for key in expected} == expected
        assert tls_summary(config["ssl_context"]) == VERIFIED_BY_TEST_CA

    # The worker's Faust app: what its aiokafka consumer and producer are built with.
    app = create_app(settings)
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)
    faust_auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    producer_auth = app.producer._settings_auth()  # what Faust passes to AIOKafkaProducer
    for auth in (faust_auth, producer_auth):
        assert {key: auth[key] for key in expected} == expected
        assert tls_summary(auth["ssl_context"]) == VERIFIED_BY_TEST_CA
    assert PASSWORD not in repr(app.conf.broker_credentials)


def test_tls_without_sasl_reaches_every_kafka_client(tmp_path: Path, cafile: str) -> None:
    settings = from_env(tmp_path, CPO_KAFKA_SECURITY_PROTOCOL="SSL", CPO_KAFKA_SSL_CAFILE=cafile)
    for config in (kafka_python_config(settings), aiokafka_config(settings)):
        assert config["security_protocol"] == "SSL" and "sasl_mechanism" not in config
        assert tls_summary(config["ssl_context"]) == VERIFIED_BY_TEST_CA
    credentials = faust_broker_settings(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)
    auth = create_app(settings).producer._settings_auth()
    assert auth["security_protocol"] == "SSL"
    assert tls_summary(auth["ssl_context"]) == VERIFIED_BY_TEST_CA


def test_plaintext_kafka_has_no_credentials(tmp_path: Path) -> None:
    settings = from_env(tmp_path)
    assert "sasl_plain_password" not in kafka_python_config(settings)
    assert create_app(settings).conf.broker_credentials is None


def test_redis_auth_and_tls_from_a_url_file(tmp_path: Path) -> None:
    url = (f"rediss://cpo:{REDIS_PASSWORD}@redis.internal:6380/2"
           "?ssl_ca_certs=/etc/ssl/certs/ca-certificates.crt")
    settings = from_env(tmp_path, CPO_REDIS_URL="redis://ignored:6379/0",
                        CPO_REDIS_URL_FILE=redis_url_file(tmp_path, url))
    pool = connect(settings).connection_pool  # the client of the worker and the exporter
    assert pool.connection_class is SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.internal", 6380, 2)
    assert (kwargs["username"], kwargs["password"]) == ("cpo", REDIS_PASSWORD)
    connection = pool.make_connection()  # builds its TLS context; connects only when used
    assert connection.ssl_context.cert_reqs == ssl.CERT_REQUIRED
    assert connection.ssl_context.check_hostname is True
    assert connection.ssl_context.ca_certs == "/etc/ssl/certs/ca-certificates.crt"
    assert REDIS_PASSWORD not in repr(connect(settings))


def test_redis_password_in_a_plain_url(tmp_path: Path) -> None:
    settings = from_env(tmp_path, CPO_REDIS_URL=f"redis://:{REDIS_PASSWORD}@10.0.0.5:6379/0")
    pool = connect(settings).connection_pool
    assert pool.connection_class is Connection
    assert pool.connection_kwargs["password"] == REDIS_PASSWORD


def test_the_worker_web_server_binds_to_the_configured_address(tmp_path: Path) -> None:
    settings = from_env(tmp_path, CPO_BIND_ADDRESS="127.0.0.1", CPO_METRICS_PORT="9300")
    app = create_app(settings)
    assert (app.conf.web_bind, app.conf.web_port) == ("127.0.0.1", 9300)
    assert create_app(from_env(tmp_path)).conf.web_bind == "0.0.0.0"  # the documented default


def test_customer_ids_are_dropped_before_redis(tmp_path: Path) -> None:
    """Labels and Redis keys are built from the script's arguments: no customer id in them,
    neither from `customer_id` nor from an attribute outside CPO_DIMENSIONS."""
    settings = from_env(tmp_path, CPO_DIMENSIONS="carrier,seller")
    order = decode_order(
        b'{"order_id": "o-1", "occurred_at": "2026-01-01T00:00:00Z", "customer_id": "'
        + CUSTOMER.encode() + b'", "attributes": {"carrier": "acme", "seller": "s-1", '
        b'"customer": "' + CUSTOMER.encode() + b'"}}', 1.8e9)
    contact = decode_contact(
        b'{"contact_id": "k-1", "occurred_at": "2026-01-01T00:00:00Z", "cause": "other", '
        b'"order_id": "o-1", "customer_id": "' + CUSTOMER.encode() + b'"}', 1.8e9)
    assert CUSTOMER not in repr(contact) and order.attributes["customer"] == CUSTOMER
    state = RedisState(connect(settings), settings)
    batch = state.prepare(state.unique_orders([order]), [contact], 1.8e9)
    registering = state.register_args(batch.orders, None)
    text = " ".join(arg.decode() if isinstance(arg, bytes) else str(arg)
                    for arg in [*registering, batch.contacts_arg])
    assert CUSTOMER not in text
    assert "acme" in text and "s-1" in text  # the tracked attributes do reach the script
