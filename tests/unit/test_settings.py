"""Settings: the contract's defaults, one-line errors naming the variable, *_FILE variables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.settings import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[2]

# CONTRACT.md section 4's table, section 1's topic names and section 3's label bounds.
CONTRACT_DEFAULTS = {
    "CPO_KAFKA_BOOTSTRAP": "localhost:9092",
    "CPO_REDIS_URL": "redis://localhost:6379/0",
    "CPO_DIMENSIONS": "carrier,warehouse,category,seller,region",
    "CPO_WINDOWS": "5m,1h,1d",
    "CPO_JOIN_GRACE": "15m",
    "CPO_METRICS_PORT": "9108",
    "CPO_EXPORTER_PORT": "9109",
    "CPO_TOPIC_ORDERS": "orders",
    "CPO_TOPIC_CONTACTS": "contacts",
    "CPO_TOPIC_ATTRIBUTED": "cpo.contacts.attributed",
    "CPO_TOPIC_DLQ": "cpo.dlq",
    "CPO_MAX_CAUSES": "64",
    "CPO_MAX_VALUES": "50",
}


def test_defaults_match_the_contract() -> None:
    settings = load_settings({})
    assert {env: settings.as_env()[env] for env in CONTRACT_DEFAULTS} == CONTRACT_DEFAULTS
    assert settings.kafka_bootstrap == "localhost:9092"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.dimensions == ("carrier", "warehouse", "category", "seller", "region")
    assert settings.window_seconds() == {"5m": 300.0, "1h": 3600.0, "1d": 86400.0}
    assert settings.join_grace == 900.0
    assert (settings.metrics_port, settings.exporter_port) == (9108, 9109)
    assert (settings.topic_orders, settings.topic_contacts) == ("orders", "contacts")
    assert (settings.topic_attributed, settings.topic_dlq) == ("cpo.contacts.attributed", "cpo.dlq")
    assert (settings.max_causes, settings.max_values) == (64, 50)


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("CPO_JOIN_GRACE", "soon"),
        ("CPO_JOIN_GRACE", "0s"),
        ("CPO_METRICS_PORT", "70000"),
        ("CPO_EXPORTER_PORT", "http"),
        ("CPO_KAFKA_BOOTSTRAP", "localhost"),
        ("CPO_KAFKA_BOOTSTRAP", "a:9092,b"),
        ("CPO_REDIS_URL", "http://user:hunter2@localhost:6379"),
        ("CPO_DIMENSIONS", " , "),
        ("CPO_WINDOWS", "5m,1h,5m"),
        ("CPO_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),  # without CPO_KAFKA_SASL_USERNAME
        ("CPO_METRICS_PORT", "9109"),  # equals CPO_EXPORTER_PORT
        ("CPO_JOIN_GRACE", "8d"),  # longer than CPO_CONTACT_RETENTION (7d)
    ],
)
def test_an_invalid_value_is_one_line_starting_with_its_variable(env: str, value: str) -> None:
    with pytest.raises(SettingsError) as failure:
        load_settings({env: value})
    message = str(failure.value)
    assert "\n" not in message
    variable = "CPO_KAFKA_SASL_USERNAME" if env == "CPO_KAFKA_SECURITY_PROTOCOL" else env
    assert message.startswith(variable + "=")


def test_a_join_grace_longer_than_the_contact_retention_is_refused() -> None:
    """A contact waiting longer than its identity is kept could be counted twice when it is
    redelivered after its identity was swept: the settings must not allow it."""
    with pytest.raises(SettingsError, match="CPO_CONTACT_RETENTION"):
        load_settings({"CPO_JOIN_GRACE": "2h", "CPO_CONTACT_RETENTION": "1h"})
    assert load_settings({"CPO_JOIN_GRACE": "1h", "CPO_CONTACT_RETENTION": "1h"}).join_grace == 3600


def test_a_secret_is_never_echoed() -> None:
    with pytest.raises(SettingsError) as failure:
        load_settings({"CPO_REDIS_URL": "http://user:hunter2@localhost:6379"})
    assert "hunter2" not in str(failure.value)


def test_sasl_with_a_username_is_valid() -> None:
    settings = load_settings({"CPO_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                              "CPO_KAFKA_SASL_USERNAME": "cpo"})
    assert (settings.kafka_security_protocol, settings.kafka_sasl_username) == ("SASL_SSL", "cpo")


def test_file_variables_are_read(tmp_path: Path) -> None:
    (tmp_path / "redis_url").write_text("redis://:s3cret@redis.internal:6380/2\n")
    (tmp_path / "password").write_text("pa ss\n")
    settings = load_settings({
        "CPO_REDIS_URL_FILE": str(tmp_path / "redis_url"),
        "CPO_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "password"),
        "CPO_REDIS_URL": "redis://ignored:6379/0",
    })
    assert settings.redis_url == "redis://:s3cret@redis.internal:6380/2"
    assert settings.kafka_sasl_password == "pa ss"


def test_an_unreadable_file_variable_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as failure:
        load_settings({"CPO_REDIS_URL_FILE": str(tmp_path / "missing")})
    message = str(failure.value)
    assert "\n" not in message and message.startswith("CPO_REDIS_URL_FILE=")


def test_the_cli_prints_one_line_and_exits_2_on_a_bad_setting() -> None:
    env = {**os.environ, "CPO_JOIN_GRACE": "soon"}
    result = subprocess.run([sys.executable, "-m", "streams.cli", "topics", "create"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "CPO_JOIN_GRACE='soon'" in lines[0]
