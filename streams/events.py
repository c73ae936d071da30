"""Decode raw order and contact records into typed events, or say exactly why not.

This is the only place that parses input records, and it sits on the hot path of every worker.
Two paths give the same answers:
- `check_order` / `check_contact` apply the rules one by one (one `orjson.loads`, `type(x) is
  str` tests, `len` bounds, one compiled regex plus `datetime.fromisoformat` for
  `occurred_at`) and name the first rule a record breaks;
- `decode_order` / `decode_contact` first try msgspec, which parses and type-checks a record in
  one C call, into a struct of exactly the schema's fields (about half the CPU per record,
  bench/README.md). It only takes records it can judge exactly: ASCII (so no UTF-8 to check in
  a skipped value) with no field outside the schema (so no number or nesting that msgspec and
  orjson bound differently); anything it refuses or does not take goes to the checking path,
  which gives the reason. `tests/unit/test_schema_agreement.py` checks that both paths give
  equal answers.
The rules are those of `schemas/order-event.v1.json` and `schemas/contact-event.v1.json`;
`tests/unit/test_schema_agreement.py` checks that a real JSON Schema validator and this module
accept and reject the same documents. Rejection reasons are a closed set of short strings (they
become the `reason` label of `cpo_records_rejected_total` and the DLQ's `cpo-error-reason`
header), so a reason never contains data from the record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import msgspec
import orjson
from msgspec import UNSET, Meta, UnsetType

MAX_RECORD_BYTES = 1024 * 1024
MAX_FUTURE_SECONDS = 3600

MAX_ID_CHARS = 128
MAX_CAUSE_CHARS = 64
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_KEY_CHARS = 64
MAX_ATTRIBUTE_VALUE_CHARS = 128

# RFC 3339 `date-time` with a mandatory offset. Range checks for hour, minute, second and offset
# live here; the day-of-month check (Feb 30, year 0) is left to `datetime.fromisoformat`.
# `fullmatch` with re.ASCII: no trailing newline, no non-ASCII digits.
_RFC3339 = re.compile(
    r"\d{4}-\d\d-\d\d[Tt](?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d+)?"
    r"(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,
)

# Every reason each decoder can give: a closed set, so `reason` is a bounded metric label.
_COMMON_REASONS = {
    "too_large",
    "invalid_json",
    "not_an_object",
    "missing_field:occurred_at",
    "wrong_type:occurred_at",
    "bad_timestamp",
    "future_timestamp",
    "wrong_type:event_id",
    "wrong_type:customer_id",
}
ORDER_REASONS = frozenset(
    _COMMON_REASONS
    | {
        "missing_field:order_id",
        "wrong_type:order_id",
        "empty:order_id",
        "too_long:order_id",
        "wrong_type:attributes",
        "too_many_attributes",
        "too_long:attributes",
    }
)
CONTACT_REASONS = frozenset(
    _COMMON_REASONS
    | {
        "missing_field:contact_id",
        "wrong_type:contact_id",
        "empty:contact_id",
        "too_long:contact_id",
        "missing_field:cause",
        "wrong_type:cause",
        "empty:cause",
        "too_long:cause",
        "wrong_type:order_id",
        "wrong_type:channel",
    }
)


@dataclass(slots=True)
class OrderEvent:
    order_id: str
    occurred_at: float  # epoch seconds
    attributes: dict[str, str]
    event_id: str | None


@dataclass(slots=True)
class ContactEvent:
    contact_id: str
    occurred_at: float  # epoch seconds
    cause: str  # lower-cased
    order_id: str | None
    channel: str | None
    event_id: str | None


@dataclass(slots=True)
class Rejection:
    """Why a record was refused; `event_id` is the record's own, when it had a string one."""

    reason: str
    event_id: str | None


_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
_Cause = Annotated[str, Meta(min_length=1, max_length=MAX_CAUSE_CHARS)]
_Attributes = Annotated[
    dict[Annotated[str, Meta(max_length=MAX_ATTRIBUTE_KEY_CHARS)],
         Annotated[str, Meta(max_length=MAX_ATTRIBUTE_VALUE_CHARS)]],
    Meta(max_length=MAX_ATTRIBUTES),
]


class _OrderFields(msgspec.Struct, forbid_unknown_fields=True):
    """An order record's fields as the schema bounds them (the fast path's parse target)."""

    order_id: _Id
    occurred_at: str
    attributes: _Attributes = {}
    event_id: str | UnsetType = UNSET
    customer_id: str | UnsetType = UNSET


class _ContactFields(msgspec.Struct, forbid_unknown_fields=True):
    """A contact record's fields as the schema bounds them (the fast path's parse target)."""

    contact_id: _Id
    occurred_at: str
    cause: _Cause
    order_id: str | None = None
    channel: str | UnsetType = UNSET
    event_id: str | UnsetType = UNSET
    customer_id: str | UnsetType = UNSET


_ORDER_FIELDS = msgspec.json.Decoder(_OrderFields)
_CONTACT_FIELDS = msgspec.json.Decoder(_ContactFields)


class _Invalid(Exception):
    """Raised by the field checks below; caught once per decode and turned into a Rejection."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


_TOO_LARGE = Rejection("too_large", None)
_INVALID_JSON = Rejection("invalid_json", None)
_NOT_AN_OBJECT = Rejection("not_an_object", None)


def _fast_fields(raw: bytes, decoder: msgspec.json.Decoder,
                 now: float) -> tuple[Any, float] | None:
    """The record's fields and event time when msgspec takes it and the time is good; None
    sends it to the rule-by-rule path, which names what is wrong."""
    if len(raw) > MAX_RECORD_BYTES or not raw.isascii():
        return None
    try:
        fields = decoder.decode(raw)
    except msgspec.MsgspecError:
        return None
    seconds = _seconds(fields.occurred_at)
    if seconds is None or seconds > now + MAX_FUTURE_SECONDS:
        return None
    return fields, seconds


def decode_order(raw: bytes, now: float) -> OrderEvent | Rejection:
    """Decode one order record; `now` (epoch seconds) bounds how far in the future it may be."""
    fast = _fast_fields(raw, _ORDER_FIELDS, now)
    if fast is None:
        return check_order(raw, now)
    fields, seconds = fast
    event_id = fields.event_id
    return OrderEvent(fields.order_id, seconds, fields.attributes,
                      None if event_id is UNSET else event_id)


def decode_contact(raw: bytes, now: float) -> ContactEvent | Rejection:
    """Decode one contact record; `now` (epoch seconds) bounds how far in the future it may be."""
    fast = _fast_fields(raw, _CONTACT_FIELDS, now)
    if fast is None:
        return check_contact(raw, now)
    fields, seconds = fast
    channel, event_id = fields.channel, fields.event_id
    return ContactEvent(fields.contact_id, seconds, fields.cause.lower(), fields.order_id,
                        None if channel is UNSET else channel,
                        None if event_id is UNSET else event_id)


def check_order(raw: bytes, now: float) -> OrderEvent | Rejection:
    """`decode_order` rule by rule: the reference, and the path that names a rejection."""
    obj = _load(raw)
    if type(obj) is not dict:
        return obj
    try:
        order_id = _text(obj, "order_id", MAX_ID_CHARS)
        occurred_at = _occurred_at(obj, now)
        event_id = _optional_text(obj, "event_id")
        _optional_text(obj, "customer_id")  # checked, never kept: it must not reach labels
        attributes = _attributes(obj)
    except _Invalid as exc:
        return _reject(exc, obj)
    return OrderEvent(order_id, occurred_at, attributes, event_id)


def check_contact(raw: bytes, now: float) -> ContactEvent | Rejection:
    """`decode_contact` rule by rule: the reference, and the path that names a rejection."""
    obj = _load(raw)
    if type(obj) is not dict:
        return obj
    try:
        contact_id = _text(obj, "contact_id", MAX_ID_CHARS)
        occurred_at = _occurred_at(obj, now)
        cause = _text(obj, "cause", MAX_CAUSE_CHARS).lower()
        order_id = obj.get("order_id")  # absent and null both mean "no order"
        if order_id is not None and type(order_id) is not str:
            raise _Invalid("wrong_type:order_id")
        channel = _optional_text(obj, "channel")
        event_id = _optional_text(obj, "event_id")
        _optional_text(obj, "customer_id")  # checked, never kept: it must not reach labels
    except _Invalid as exc:
        return _reject(exc, obj)
    return ContactEvent(contact_id, occurred_at, cause, order_id, channel, event_id)


def _load(raw: bytes) -> dict | Rejection:
    """Size check before parsing, then strict JSON (orjson refuses NaN, BOM, bad UTF-8)."""
    if len(raw) > MAX_RECORD_BYTES:
        return _TOO_LARGE
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _INVALID_JSON
    return obj if type(obj) is dict else _NOT_AN_OBJECT


def _reject(exc: _Invalid, obj: dict) -> Rejection:
    event_id = obj.get("event_id")
    return Rejection(exc.reason, event_id if type(event_id) is str else None)


def _type_reason(obj: dict, name: str) -> str:
    return f"wrong_type:{name}" if name in obj else f"missing_field:{name}"


def _text(obj: dict, name: str, max_chars: int) -> str:
    """A required string of 1..max_chars characters (code points, as JSON Schema counts)."""
    value = obj.get(name)
    if type(value) is not str:
        raise _Invalid(_type_reason(obj, name))
    if not 0 < len(value) <= max_chars:
        raise _Invalid(f"too_long:{name}" if value else f"empty:{name}")
    return value


def _optional_text(obj: dict, name: str) -> str | None:
    """An optional string: absent is fine, null or any other type is not."""
    value = obj.get(name)
    if type(value) is str or (value is None and name not in obj):
        return value
    raise _Invalid(f"wrong_type:{name}")


def _occurred_at(obj: dict, now: float) -> float:
    """Epoch seconds of an RFC 3339 date-time with offset, at most MAX_FUTURE_SECONDS ahead."""
    value = obj.get("occurred_at")
    if type(value) is not str:
        raise _Invalid(_type_reason(obj, "occurred_at"))
    seconds = _seconds(value)
    if seconds is None:
        raise _Invalid("bad_timestamp")
    if seconds > now + MAX_FUTURE_SECONDS:
        raise _Invalid("future_timestamp")
    return seconds


def _seconds(value: str) -> float | None:
    """Epoch seconds of an RFC 3339 date-time with offset, or None if it is not one.

    The regex settles the shape and the ranges, `fromisoformat` the calendar (Feb 30, year 0).
    Since Python 3.11 `fromisoformat` takes any separator and a `Z`, but not a lower-case `z`.
    """
    if _RFC3339.fullmatch(value) is None:
        return None
    if value[-1] == "z":
        value = value[:-1] + "Z"
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:  # a day the month does not have, or year 0
        return None


def _attributes(obj: dict) -> dict[str, str]:
    attributes = obj.get("attributes")
    if type(attributes) is not dict:
        if attributes is None and "attributes" not in obj:
            return {}
        raise _Invalid("wrong_type:attributes")
    if len(attributes) > MAX_ATTRIBUTES:
        raise _Invalid("too_many_attributes")
    for key, value in attributes.items():
        if (
            type(value) is not str
            or len(value) > MAX_ATTRIBUTE_VALUE_CHARS
            or len(key) > MAX_ATTRIBUTE_KEY_CHARS
        ):
            raise _Invalid("too_long:attributes" if type(value) is str else "wrong_type:attributes")
    return attributes
