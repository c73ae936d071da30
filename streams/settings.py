"""One typed settings object, read from the environment.

Every setting is a `Setting` with its variable name, default, parser and a one-line doc; the
README's configuration table is checked against `SETTINGS` by a test, so the two stay equal.
An invalid value raises `SettingsError` whose message is one readable line naming the variable.
A `*_FILE` variant (e.g. `CPO_REDIS_URL_FILE=/run/secrets/redis_url`) reads the value from a file,
so secrets need not sit in the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class SettingsError(ValueError):
    """A setting has an invalid value; the message is one line naming the variable and the fix."""


def parse_duration(text: str) -> float:
    """'15m' -> 900.0 seconds. Units: ms, s, m, h, d, w."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 1h, 1d")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r} must be greater than zero")
    return seconds


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be a positive integer")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"{text!r} is not a TCP port (0-65535)")
    return value


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise ValueError("must list at least one name")
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a lower-case name of [a-z0-9_]")
    if len(set(names)) != len(names):
        raise ValueError("lists a name twice")
    return names


def _windows(text: str) -> tuple[str, ...]:
    windows = tuple(part.strip() for part in text.split(",") if part.strip())
    if not windows:
        raise ValueError("must list at least one window")
    for window in windows:
        parse_duration(window)
    if len(set(windows)) != len(windows):
        raise ValueError("lists a window twice")
    return windows


def _kafka_bootstrap(text: str) -> str:
    for server in text.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{server!r} is not host:port")
    return text.strip()


def _redis_url(text: str) -> str:
    if not re.match(r"^(redis|rediss|unix)://", text):
        raise ValueError(f"{text!r} must start with redis://, rediss:// or unix://")
    return text


def _topic(text: str) -> str:
    if not re.match(r"^[A-Za-z0-9._-]{1,249}$", text):
        raise ValueError(f"{text!r} is not a valid Kafka topic name")
    return text


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return text

    return parse


def _switch(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"{text!r} is not on or off")


def _text(text: str) -> str:
    return text


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    parse: Callable[[str], Any]
    doc: str
    secret: bool = False


SETTINGS: dict[str, Setting] = {
    "kafka_bootstrap": Setting("CPO_KAFKA_BOOTSTRAP", "localhost:9092", _kafka_bootstrap,
                               "Kafka bootstrap servers, comma-separated host:port"),
    "redis_url": Setting("CPO_REDIS_URL", "redis://localhost:6379/0", _redis_url,
                         "Redis holding shared state (`rediss://` for TLS, password in the URL)",
                         secret=True),
    "dimensions": Setting("CPO_DIMENSIONS", "carrier,warehouse,category,seller,region", _names,
                          "order attributes tracked as dimensions"),
    "windows": Setting("CPO_WINDOWS", "5m,1h,1d", _windows,
                       "event-time windows of the exporter's rates"),
    "join_grace": Setting("CPO_JOIN_GRACE", "15m", parse_duration,
                          "wall-clock time a contact waits for its order before `order_not_found`"),
    "metrics_port": Setting("CPO_METRICS_PORT", "9108", _port,
                            "worker `/metrics`, `/healthz`, `/readyz` port"),
    "exporter_port": Setting("CPO_EXPORTER_PORT", "9109", _port,
                             "exporter `/metrics` and `/api/v1/root-causes` port"),
    "bind_address": Setting("CPO_BIND_ADDRESS", "0.0.0.0", _text,
                            "address the metrics and health endpoints bind to"),
    "topic_orders": Setting("CPO_TOPIC_ORDERS", "orders", _topic, "order events topic (input)"),
    "topic_contacts": Setting("CPO_TOPIC_CONTACTS", "contacts", _topic,
                              "contact events topic (input)"),
    "topic_attributed": Setting("CPO_TOPIC_ATTRIBUTED", "cpo.contacts.attributed", _topic,
                                "every counted contact with its order's attributes (output)"),
    "topic_dlq": Setting("CPO_TOPIC_DLQ", "cpo.dlq", _topic,
                         "rejected records with the reason in headers (output)"),
    "partitions": Setting("CPO_PARTITIONS", "8", _positive_int,
                          "partitions of the topics `cpo topics create` makes; upper bound on workers"),
    "replication_factor": Setting("CPO_REPLICATION_FACTOR", "1", _positive_int,
                                  "replication factor of created topics"),
    "topic_retention": Setting("CPO_TOPIC_RETENTION", "7d", parse_duration,
                               "retention of created topics"),
    "max_causes": Setting("CPO_MAX_CAUSES", "64", _positive_int,
                          "distinct cause labels exported; the rest fold into `other`"),
    "max_values": Setting("CPO_MAX_VALUES", "50", _positive_int,
                          "values exported per dimension; the rest fold into `other`"),
    "order_retention": Setting("CPO_ORDER_RETENTION", "30d", parse_duration,
                               "how long an order's attributes and identity are kept for the "
                               "join (then forgotten within the hour)"),
    "contact_retention": Setting("CPO_CONTACT_RETENTION", "7d", parse_duration,
                                 "how long a contact identity is kept for deduplication (then "
                                 "forgotten within the hour)"),
    "rca_pairs": Setting("CPO_RCA_PAIRS", "on", _switch,
                         "count pairs of attribute values for root-cause drill-down"),
    "batch_size": Setting("CPO_BATCH_SIZE", "20000", _positive_int,
                          "records a worker processes per batch (one Redis round trip each)"),
    "data_dir": Setting("CPO_DATA_DIR", "/tmp/cpo-data", _text,
                        "Faust's working folder (holds nothing the pipeline needs to keep)"),
    "group_id": Setting("CPO_GROUP_ID", "cpo", _topic,
                        "Kafka consumer group and Faust application id"),
    "log_level": Setting("CPO_LOG_LEVEL", "INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR"),
                         "log level"),
    "kafka_security_protocol": Setting(
        "CPO_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
        _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"), "Kafka security protocol"),
    "kafka_sasl_mechanism": Setting(
        "CPO_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512",
        _choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), "SASL mechanism when SASL is on"),
    "kafka_sasl_username": Setting("CPO_KAFKA_SASL_USERNAME", "", _text, "SASL user name"),
    "kafka_sasl_password": Setting("CPO_KAFKA_SASL_PASSWORD", "", _text, "SASL password",
                                   secret=True),
    "kafka_ssl_cafile": Setting("CPO_KAFKA_SSL_CAFILE", "", _text,
                                "CA bundle for Kafka TLS (empty: system CAs)"),
    "kafka_compression": Setting(
        "CPO_KAFKA_COMPRESSION", "lz4", _choice("none", "gzip", "snappy", "lz4", "zstd"),
        "compression of the records the worker produces (attributed topic, DLQ)"),
}


@dataclass(frozen=True)
class Settings:
    """The parsed settings; build it with `load_settings()`."""

    kafka_bootstrap: str
    redis_url: str = field(repr=False)  # may hold a password
    dimensions: tuple[str, ...]
    windows: tuple[str, ...]
    join_grace: float
    metrics_port: int
    exporter_port: int
    bind_address: str
    topic_orders: str
    topic_contacts: str
    topic_attributed: str
    topic_dlq: str
    partitions: int
    replication_factor: int
    topic_retention: float
    max_causes: int
    max_values: int
    order_retention: float
    contact_retention: float
    rca_pairs: bool
    batch_size: int
    data_dir: str
    group_id: str
    log_level: str
    kafka_security_protocol: str
    kafka_sasl_mechanism: str
    kafka_sasl_username: str
    kafka_sasl_password: str = field(repr=False)
    kafka_ssl_cafile: str
    kafka_compression: str
    raw: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def window_seconds(self) -> dict[str, float]:
        """{'5m': 300.0, ...} in the configured order."""
        return {window: parse_duration(window) for window in self.windows}

    def as_env(self) -> dict[str, str]:
        """The settings as environment variables, to hand to child processes."""
        return {setting.env: self.raw[name] for name, setting in SETTINGS.items()}


def _raw_value(setting: Setting, environ: Mapping[str, str]) -> str:
    file_var = setting.env + "_FILE"
    if environ.get(file_var):
        path = environ[file_var]
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise SettingsError(f"{file_var}={path}: cannot read the file ({exc.strerror})") from exc
    return environ.get(setting.env, setting.default)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: str) -> Settings:
    """Parse every setting from `environ` (default: os.environ); `overrides` win over it.

    Raises SettingsError with one line such as
    `CPO_JOIN_GRACE='soon': 'soon' is not a duration like 30s, 15m, 1h, 1d`.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    raw_by_name: dict[str, str] = {}
    for name, setting in SETTINGS.items():
        raw = overrides[name] if name in overrides else _raw_value(setting, environ)
        raw_by_name[name] = raw
        try:
            values[name] = setting.parse(raw)
        except ValueError as exc:
            if setting.secret:  # neither the value nor the parser's message may echo it
                message = str(exc).replace(repr(raw), "the value").replace(raw, "***")
                raise SettingsError(f"{setting.env}=***: {message}") from None
            raise SettingsError(f"{setting.env}={raw!r}: {exc}") from None
    if values["metrics_port"] and values["metrics_port"] == values["exporter_port"]:
        raise SettingsError(
            f"CPO_METRICS_PORT={values['metrics_port']}: equals CPO_EXPORTER_PORT; give each its own port"
        )
    if values["join_grace"] > values["contact_retention"]:
        # a waiting contact whose identity is swept would be counted again when redelivered
        raise SettingsError(
            f"CPO_JOIN_GRACE={raw_by_name['join_grace']!r}: longer than CPO_CONTACT_RETENTION="
            f"{raw_by_name['contact_retention']!r}; shorten the grace or keep contacts longer")
    if values["kafka_security_protocol"].startswith("SASL") and not values["kafka_sasl_username"]:
        raise SettingsError(
            "CPO_KAFKA_SASL_USERNAME='': required when CPO_KAFKA_SECURITY_PROTOCOL is SASL_*"
        )
    return Settings(**values, raw=raw_by_name)
