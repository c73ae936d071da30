"""Decode raw order and contact records into typed events, or say exactly why not.

This is the only place that parses input records, and it sits on the hot path of every worker.
Two paths give the same answers:
- `check_order` / `check_contact` apply the rules one by one (one `orjson.loads`, `type(x) is
  str` tests, `len` bounds, one compiled regex plus `datetime.fromisoformat` for
  `occurred_at`) and name the first rule a record breaks;
- `decode_orders` / `decode_contacts` decode a run of records at once: one msgspec call parses
  and type-checks them all as one JSON array of structs of exactly the schema's fields, and one
  regex plus one msgspec call checks and converts their `occurred_at` (about half the CPU per
  record of the rule-by-rule path, bench/README.md). It only takes records it can judge
  exactly: ASCII (so no UTF-8 to check in a skipped value) with no field outside the schema (so
  no number or nesting that msgspec and orjson bound differently). When a run holds a record it
  does not take, the run is cut at that record (msgspec's error, or the failed check, names
  it), which goes alone to the checking path; that path gives the reason.
  `decode_order` / `decode_contact` are a run of one.
  `tests/unit/test_schema_agreement.py` checks that both paths give equal answers, for
  single records and for runs.
The rules are those of `schemas/order-event.v1.json` and `schemas/contact-event.v1.json`;
`tests/unit/test_schema_agreement.py` checks that a real JSON Schema validator and this module
accept and reject the same documents. Rejection reasons are a closed set of short strings (they
become the `reason` label of `cpo_records_rejected_total` and the DLQ's `cpo-error-reason`
header), so a reason never contains data from the record.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable
from datetime import datetime
from itertools import accumulate, chain
from operator import attrgetter, itemgetter
from typing import Annotated, Any, TypeVar

import msgspec
import orjson
from msgspec import Meta

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
_RFC3339_SHAPE = (r"\d{4}-\d\d-\d\d[Tt](?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d%s)?"
                  r"(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)")
_RFC3339 = re.compile(_RFC3339_SHAPE % "+", re.ASCII)
# The batch path's times, one per line: at most 6 fraction digits, where msgspec's datetime
# and `fromisoformat` agree (beyond, msgspec rounds and `fromisoformat` truncates).
_RFC3339_LINES = re.compile("(?:{0}\n)*{0}".format(_RFC3339_SHAPE % "{1,6}"), re.ASCII)

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


class OrderEvent(msgspec.Struct, gc=False):
    """A valid order (a Struct: one is made per record, in C, and the garbage collector does
    not track it)."""

    order_id: str
    occurred_at: float  # epoch seconds
    attributes: dict[str, str]
    event_id: str | None


class ContactEvent(msgspec.Struct, gc=False):
    """A valid contact."""

    contact_id: str
    occurred_at: float  # epoch seconds
    cause: str  # lower-cased
    order_id: str | None
    channel: str | None
    event_id: str | None


class Rejection(msgspec.Struct, gc=False):
    """Why a record was refused; `event_id` is the record's own, when it had a string one."""

    reason: str
    event_id: str | None


class UnreadableBatch(msgspec.Struct, frozen=True, gc=False):
    """A fetched record batch whose records cannot be read (a corrupt compressed payload, an
    unknown codec, a CRC mismatch), standing in for them among a partition's records: it goes
    to the DLQ like a rejected record, and its offset (the batch's last) is committed, so the
    partition moves on. `first_offset` is the first offset not read."""

    first_offset: int
    offset: int
    error: str  # the exception, as "<type>: <message>"
    key: None = None
    value: None = None


UNREADABLE_BATCH = Rejection("unreadable_batch", None)


_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
_Cause = Annotated[str, Meta(min_length=1, max_length=MAX_CAUSE_CHARS)]
# Names are not bounded here: a bound on dict keys costs msgspec its key cache, a third of the
# decode; `_orders_of` checks them once per run instead.
_Attributes = Annotated[
    dict[str, Annotated[str, Meta(max_length=MAX_ATTRIBUTE_VALUE_CHARS)]],
    Meta(max_length=MAX_ATTRIBUTES),
]


class _OrderFields(msgspec.Struct, forbid_unknown_fields=True):
    """An order record's fields as the schema bounds them (the fast path's parse target)."""

    order_id: _Id
    occurred_at: str
    attributes: _Attributes = {}
    event_id: str = None  # type: ignore[assignment]  # absent: None; null is refused
    customer_id: str = None  # type: ignore[assignment]


class _ContactFields(msgspec.Struct, forbid_unknown_fields=True):
    """A contact record's fields as the schema bounds them (the fast path's parse target)."""

    contact_id: _Id
    occurred_at: str
    cause: _Cause
    order_id: str | None = None
    channel: str = None  # type: ignore[assignment]
    event_id: str = None  # type: ignore[assignment]
    customer_id: str = None  # type: ignore[assignment]


_ORDERS_FIELDS = msgspec.json.Decoder(list[_OrderFields])
_CONTACTS_FIELDS = msgspec.json.Decoder(list[_ContactFields])
_DATETIMES = msgspec.json.Decoder(list[datetime])
# Getters of many events' fields in one C-level map (the batch paths here and in the worker).
OCCURRED_AT = attrgetter("occurred_at")
ATTRIBUTES = attrgetter("attributes")
_FIRST_BYTE = itemgetter(0)


class _Invalid(Exception):
    """Raised by the field checks below; caught once per decode and turned into a Rejection."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


_TOO_LARGE = Rejection("too_large", None)
_INVALID_JSON = Rejection("invalid_json", None)
_NOT_AN_OBJECT = Rejection("not_an_object", None)


def decode_orders(values: list[bytes], now: float) -> list[OrderEvent | Rejection]:
    """Decode order records, one answer per record; `now` (epoch seconds) bounds how far in
    the future an event may be."""
    return _decode_run(values, now, _ORDERS_FIELDS, _orders_of, check_order)


def decode_contacts(values: list[bytes], now: float) -> list[ContactEvent | Rejection]:
    """Decode contact records, one answer per record; `now` as for `decode_orders`."""
    return _decode_run(values, now, _CONTACTS_FIELDS, _contacts_of, check_contact)


def decode_order(raw: bytes, now: float) -> OrderEvent | Rejection:
    return decode_orders([raw], now)[0]


def decode_contact(raw: bytes, now: float) -> ContactEvent | Rejection:
    return decode_contacts([raw], now)[0]


def _orders_of(fields: list[_OrderFields], seconds: list[float]) -> list[OrderEvent] | int:
    """The events, or the index of an order with an attribute name too long (names seen in the
    run, once)."""
    names = set(chain.from_iterable(map(ATTRIBUTES, fields)))
    if names and max(map(len, names)) > MAX_ATTRIBUTE_KEY_CHARS:
        return next(i for i, f in enumerate(fields)
                    if any(len(name) > MAX_ATTRIBUTE_KEY_CHARS for name in f.attributes))
    return [OrderEvent(f.order_id, t, f.attributes, f.event_id) for f, t in zip(fields, seconds)]


def _contacts_of(fields: list[_ContactFields], seconds: list[float]) -> list[ContactEvent] | int:
    return [ContactEvent(f.contact_id, t, f.cause.lower(), f.order_id, f.channel, f.event_id)
            for f, t in zip(fields, seconds)]


_Event = TypeVar("_Event", OrderEvent, ContactEvent)
# Records per msgspec call. A run holding a record the fast path refuses is decoded about twice,
# so shorter runs lose less to the few malformed records (0.1% in the benchmark); 125 decoded
# fastest of 60 to 500 (bench/README.md, session 9).
FAST_PATH_RUN = 125


def _decode_run(values: list[bytes], now: float, decoder: msgspec.json.Decoder,
                events_of: Callable[[Any, list[float]], list[_Event] | int],
                check: Callable[[bytes, float], _Event | Rejection]) -> list[_Event | Rejection]:
    """The fast path over the records, FAST_PATH_RUN at a time. Where it refuses a record, the
    records before that one take the fast path again, that one goes to `check` alone, and the
    rest starts over; a run whose refused record is not known is split in halves. Which record
    is refused only decides how the records are cut into runs: every run gets the same answers
    as its records one by one."""
    answers: list[_Event | Rejection] = []
    latest = now + MAX_FUTURE_SECONDS
    first = 0
    while first < len(values):
        run = values[first:first + FAST_PATH_RUN]
        refused = _fields_of(run, decoder)
        if type(refused) is list:
            fields = refused
            stamps = list(map(OCCURRED_AT, fields))
            seconds = _seconds_of(stamps)
            if seconds is None:
                refused = next((i for i, stamp in enumerate(stamps)
                                if _seconds_of([stamp]) is None), None)
            elif max(seconds) > latest:
                refused = next(i for i, t in enumerate(seconds) if t > latest)
            else:
                refused = events_of(fields, seconds)
                if type(refused) is list:
                    answers += refused
                    first += len(run)
                    continue
        if len(run) == 1:
            answers.append(check(run[0], now))
            first += 1
        elif refused is None:
            answers += _decode_run(run[:len(run) // 2], now, decoder, events_of, check)
            first += len(run) // 2
        else:
            answers += _decode_run(run[:refused], now, decoder, events_of, check)
            answers.append(check(run[refused], now))
            first += refused + 1
    return answers


_VALIDATION_INDEX = re.compile(r"- at `\$\[(\d+)\]")  # msgspec: "... - at `$[12].order_id`"
_MALFORMED_AT = re.compile(r"\(byte (\d+)\)$")  # msgspec: "JSON is malformed: ... (byte 345)"


def _fields_of(values: list[bytes], decoder: msgspec.json.Decoder) -> list | int | None:
    """Every record's fields from one msgspec call over `[r1\n,r2\n,...]`, or the index of a
    record the fast path refuses (from the check that failed, or msgspec's error), or None
    when that is not known.

    Why each element is exactly one record: every record starts with `{`, and a successful
    parse can have `,{` only between the array's elements (the structs have no array field,
    and in an object a `,` is followed by a key); the `\n` before each joining comma cannot
    sit in a string (JSON refuses a raw newline there). So the n - 1 joining commas are element
    separators, and n elements leave no room for another.
    """
    try:
        firsts = bytes(map(_FIRST_BYTE, values))
    except IndexError:  # an empty record
        return values.index(b"")
    if firsts.count(b"{") != len(values):
        return len(firsts) - len(firsts.lstrip(b"{"))
    if max(map(len, values)) > MAX_RECORD_BYTES:
        return next(i for i, value in enumerate(values) if len(value) > MAX_RECORD_BYTES)
    text = b"[" + b"\n,".join(values) + b"]"
    if not text.isascii():
        return next(i for i, value in enumerate(values) if not value.isascii())
    try:
        fields = decoder.decode(text)
    except msgspec.ValidationError as exc:
        found = _VALIDATION_INDEX.search(str(exc))
        return min(int(found[1]), len(values) - 1) if found else None
    except msgspec.DecodeError as exc:
        found = _MALFORMED_AT.search(str(exc))
        if not found:
            return None
        starts = list(accumulate((len(value) + 2 for value in values[:-1]), initial=1))
        return max(bisect_left(starts, int(found[1])) - 1, 0)  # at a record's `{`: the one before
    return fields if len(fields) == len(values) else None


def _seconds_of(stamps: list[str]) -> list[float] | None:
    """Epoch seconds of each time, equal to `_seconds`, or None unless every one has the shape
    of `_RFC3339_LINES` and a real date. A time with a newline or a quote fails the shape or
    the JSON, so each parsed time is one of `stamps`."""
    if _RFC3339_LINES.fullmatch("\n".join(stamps)) is None:
        return None
    try:
        times = _DATETIMES.decode(('["' + '","'.join(stamps) + '"]').encode())
    except msgspec.MsgspecError:  # a day the month does not have, or year 0
        return None
    return list(map(datetime.timestamp, times))


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
