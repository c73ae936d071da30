"""Every Kafka security setting reaches kafka-python, aiokafka and Faust, the same way."""

from __future__ import annotations

import argparse
import inspect
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from streams.kafka import (
    aiokafka_config,
    faust_broker_settings,
    kafka_python_config,
    missing_codecs,
)
from streams.settings import Settings, SettingsError, load_settings

CA_NAME = "cpo-test-ca"


@pytest.fixture(scope="module")
def cafile(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A throwaway self-signed CA certificate (PEM)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found: run apt-get install -y openssl")
    directory = tmp_path_factory.mktemp("ca")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", f"/CN={CA_NAME}",
         "-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.pem")],
        check=True, capture_output=True,
    )
    return str(directory / "ca.pem")


def tls_summary(context: ssl.SSLContext) -> tuple[Any, ...]:
    """What matters about a TLS context: verification on, and which CAs it trusts."""
    names = {value for cert in context.get_ca_certs() for rdn in cert["subject"]
             for key, value in rdn if key == "commonName"}
    return context.verify_mode, context.check_hostname, CA_NAME in names


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {key: tls_summary(value) if isinstance(value, ssl.SSLContext) else value
            for key, value in config.items()}


def secured(**env: str) -> Settings:
    return load_settings({"CPO_KAFKA_BOOTSTRAP": "k1.example:9093, k2.example:9094", **env})


SERVERS = ["k1.example:9093", "k2.example:9094"]
VERIFIED_BY_TEST_CA = (ssl.CERT_REQUIRED, True, True)


def test_plaintext() -> None:
    settings = secured()
    expected = {"bootstrap_servers": SERVERS, "security_protocol": "PLAINTEXT"}
    assert kafka_python_config(settings) == expected
    assert aiokafka_config(settings) == expected
    assert faust_broker_settings(settings) == {
        "broker": "kafka://k1.example:9093;kafka://k2.example:9094"
    }


def test_sasl_ssl_with_scram_sha_512_and_a_cafile(cafile: str) -> None:
    settings = secured(CPO_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                       CPO_KAFKA_SASL_MECHANISM="SCRAM-SHA-512", CPO_KAFKA_SASL_USERNAME="cpo",
                       CPO_KAFKA_SASL_PASSWORD="s3cret", CPO_KAFKA_SSL_CAFILE=cafile)
    expected = {
        "bootstrap_servers": SERVERS, "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "cpo",
        "sasl_plain_password": "s3cret", "ssl_context": VERIFIED_BY_TEST_CA,
    }
    assert comparable(kafka_python_config(settings)) == expected
    assert comparable(aiokafka_config(settings)) == expected
    credentials = faust_broker_settings(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    expected.pop("bootstrap_servers")
    assert comparable(dict(credentials_to_aiokafka_auth(credentials))) == expected


def test_sasl_plaintext_has_no_tls() -> None:
    settings = secured(CPO_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
                       CPO_KAFKA_SASL_MECHANISM="PLAIN", CPO_KAFKA_SASL_USERNAME="cpo",
                       CPO_KAFKA_SASL_PASSWORD="s3cret")
    expected = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "cpo", "sasl_plain_password": "s3cret"}
    assert kafka_python_config(settings) == {"bootstrap_servers": SERVERS, **expected}
    assert aiokafka_config(settings) == {"bootstrap_servers": SERVERS, **expected}
    credentials = faust_broker_settings(settings)["broker_credentials"]
    assert dict(credentials_to_aiokafka_auth(credentials)) == {**expected, "ssl_context": None}


def test_ssl_with_a_cafile(cafile: str) -> None:
    settings = secured(CPO_KAFKA_SECURITY_PROTOCOL="SSL", CPO_KAFKA_SSL_CAFILE=cafile)
    expected = {"bootstrap_servers": SERVERS, "security_protocol": "SSL",
                "ssl_context": VERIFIED_BY_TEST_CA}
    assert comparable(kafka_python_config(settings)) == expected
    assert comparable(aiokafka_config(settings)) == expected
    credentials = faust_broker_settings(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)
    expected.pop("bootstrap_servers")
    assert comparable(dict(credentials_to_aiokafka_auth(credentials))) == expected


def test_ssl_without_a_cafile_verifies_with_the_system_cas() -> None:
    context = kafka_python_config(secured(CPO_KAFKA_SECURITY_PROTOCOL="SSL"))["ssl_context"]
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_an_unusable_cafile_is_one_line_naming_the_variable(tmp_path: Path,
                                                            content: str | None) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError) as failure:
        aiokafka_config(secured(CPO_KAFKA_SECURITY_PROTOCOL="SSL", CPO_KAFKA_SSL_CAFILE=str(path)))
    message = str(failure.value)
    assert "\n" not in message and message.startswith("CPO_KAFKA_SSL_CAFILE=")


def test_faust_app_takes_the_settings(cafile: str) -> None:
    settings = secured(CPO_KAFKA_SECURITY_PROTOCOL="SASL_SSL", CPO_KAFKA_SASL_USERNAME="cpo",
                       CPO_KAFKA_SSL_CAFILE=cafile)
    app = faust.App("cpo-config-test", **faust_broker_settings(settings))
    assert [str(url) for url in app.conf.broker] == [f"kafka://{s}" for s in SERVERS]
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)


def test_every_key_is_an_option_of_every_client(cafile: str) -> None:
    settings = secured(CPO_KAFKA_SECURITY_PROTOCOL="SASL_SSL", CPO_KAFKA_SASL_USERNAME="cpo",
                       CPO_KAFKA_SSL_CAFILE=cafile)
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        assert set(kafka_python_config(settings)) <= set(client.DEFAULT_CONFIG), client
    for client in (AIOKafkaProducer, AIOKafkaConsumer):
        options = inspect.signature(client.__init__).parameters
        assert set(aiokafka_config(settings)) <= set(options), client


def test_the_package_reads_every_codec_kafka_producers_use() -> None:
    """gzip, snappy, lz4 and zstd batches, in aiokafka (the worker) and kafka-python (the
    tools): a missing library crashed every worker on the first such batch (issue 27)."""
    assert missing_codecs() == []


def test_a_worker_without_a_codec_library_refuses_to_start(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import aiokafka.codec

    from streams import worker

    monkeypatch.setattr(aiokafka.codec, "cramjam", None)  # as with aiokafka installed alone
    assert worker.run(argparse.Namespace(metrics_port=None)) == 2
    assert capsys.readouterr().err == (
        "cpo worker: cannot read snappy, lz4, zstd-compressed record batches: install the "
        "package's dependencies (pip install cramjam python-snappy lz4 zstandard)\n")


@pytest.mark.parametrize(("setting", "producer"), [("lz4", "lz4"), ("zstd", "zstd"),
                                                   ("none", None)])
def test_the_worker_compresses_its_output_as_set(setting: str, producer: str | None) -> None:
    from streams.worker import create_app

    app = create_app(load_settings({"CPO_KAFKA_COMPRESSION": setting}))
    assert app.conf.producer_compression_type == producer
