"""streams.events: what a decoded event holds, every rejection reason exactly, size and clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import (
    CONTACT_REASONS,
    MAX_FUTURE_SECONDS,
    MAX_RECORD_BYTES,
    ORDER_REASONS,
    ContactEvent,
    OrderEvent,
    Rejection,
    decode_contact,
    decode_order,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp()
TS = "2026-11-23T10:15:30Z"
TS_EPOCH = datetime(2026, 11, 23, 10, 15, 30, tzinfo=UTC).timestamp()
DROP = object()


def order(**fields: object) -> bytes:
    return _record({"order_id": "o-1", "occurred_at": TS}, fields)


def contact(**fields: object) -> bytes:
    return _record({"contact_id": "k-1", "occurred_at": TS, "cause": "late_delivery"}, fields)


def _record(doc: dict, fields: dict) -> bytes:
    doc = {**doc, **fields}
    return json.dumps({k: v for k, v in doc.items() if v is not DROP}, ensure_ascii=False).encode()


def padded_to(size: int, raw: bytes) -> bytes:
    """`raw` (a JSON object) grown to exactly `size` bytes with whitespace before its `}`."""
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


def in_an_hour(seconds: float = 0.0) -> str:
    moment = datetime.fromtimestamp(NOW + MAX_FUTURE_SECONDS + seconds, UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


# One record per reason, for each decoder; the coverage tests below keep the tables complete.
ORDER_CASES = {
    "too_large": padded_to(MAX_RECORD_BYTES + 1, order()),
    "invalid_json": b'{"order_id": "o-1",',
    "not_an_object": b'["o-1"]',
    "missing_field:order_id": order(order_id=DROP),
    "missing_field:occurred_at": order(occurred_at=DROP),
    "wrong_type:order_id": order(order_id=12345),
    "wrong_type:occurred_at": order(occurred_at=1795429530),
    "wrong_type:event_id": order(event_id=None),
    "wrong_type:customer_id": order(customer_id=42),
    "wrong_type:attributes": order(attributes={"carrier": 5}),
    "empty:order_id": order(order_id=""),
    "too_long:order_id": order(order_id="o" * 129),
    "too_long:attributes": order(attributes={"carrier": "v" * 129}),
    "too_many_attributes": order(attributes={f"k{i}": "v" for i in range(33)}),
    "bad_timestamp": order(occurred_at="2026-02-30T10:15:30Z"),
    "future_timestamp": order(occurred_at=in_an_hour(seconds=1)),
}
CONTACT_CASES = {
    "too_large": padded_to(MAX_RECORD_BYTES + 1, contact()),
    "invalid_json": b"contact k-1",
    "not_an_object": b"null",
    "missing_field:contact_id": contact(contact_id=DROP),
    "missing_field:occurred_at": contact(occurred_at=DROP),
    "missing_field:cause": contact(cause=DROP),
    "wrong_type:contact_id": contact(contact_id=["k-1"]),
    "wrong_type:occurred_at": contact(occurred_at={"at": TS}),
    "wrong_type:cause": contact(cause=None),
    "wrong_type:order_id": contact(order_id=12345),
    "wrong_type:channel": contact(channel=True),
    "wrong_type:event_id": contact(event_id=7),
    "wrong_type:customer_id": contact(customer_id=None),
    "empty:contact_id": contact(contact_id=""),
    "empty:cause": contact(cause=""),
    "too_long:contact_id": contact(contact_id="k" * 129),
    "too_long:cause": contact(cause="c" * 65),
    "bad_timestamp": contact(occurred_at="2026-11-23T10:15:30"),
    "future_timestamp": contact(occurred_at=in_an_hour(seconds=1)),
}


@pytest.mark.parametrize(("reason", "raw"), ORDER_CASES.items(), ids=ORDER_CASES)
def test_order_rejection_reason(reason: str, raw: bytes) -> None:
    assert decode_order(raw, NOW) == Rejection(reason, None)


@pytest.mark.parametrize(("reason", "raw"), CONTACT_CASES.items(), ids=CONTACT_CASES)
def test_contact_rejection_reason(reason: str, raw: bytes) -> None:
    assert decode_contact(raw, NOW) == Rejection(reason, None)


def test_every_reason_has_a_case() -> None:
    assert set(ORDER_CASES) == ORDER_REASONS
    assert set(CONTACT_CASES) == CONTACT_REASONS


def test_order_is_decoded() -> None:
    attributes = {"carrier": "dhl", "warehouse": "wh-3", "région": "Île-de-France"}
    raw = order(event_id="e-1", customer_id="c-1", attributes=attributes, extra={"x": [1]})
    assert decode_order(raw, NOW) == OrderEvent("o-1", TS_EPOCH, attributes, "e-1")


def test_order_without_optional_fields() -> None:
    assert decode_order(order(), NOW) == OrderEvent("o-1", TS_EPOCH, {}, None)


def test_customer_id_is_checked_but_not_kept() -> None:
    for event in (
        decode_order(order(customer_id="c-secret-42"), NOW),
        decode_contact(contact(customer_id="c-secret-42"), NOW),
    ):
        assert not isinstance(event, Rejection)
        assert "c-secret-42" not in repr(event)
        assert not hasattr(event, "customer_id")


def test_contact_is_decoded_with_cause_lower_cased() -> None:
    raw = contact(cause="Late_Delivery", order_id="o-1", channel="chat", event_id="e-9")
    expected = ContactEvent("k-1", TS_EPOCH, "late_delivery", "o-1", "chat", "e-9")
    assert decode_contact(raw, NOW) == expected


@pytest.mark.parametrize("order_id", [None, DROP])
def test_contact_without_order(order_id: object) -> None:
    event = decode_contact(contact(order_id=order_id), NOW)
    assert event == ContactEvent("k-1", TS_EPOCH, "late_delivery", None, None, None)


def test_cause_is_lower_cased_not_stripped() -> None:
    event = decode_contact(contact(cause=" Where_Is_My_ORDER "), NOW)
    assert isinstance(event, ContactEvent)
    assert event.cause == " where_is_my_order "


def test_cause_length_is_checked_before_lower_casing() -> None:
    # "İ" lower-cases to two code points: 64 of them are 64 characters as sent, 128 after.
    event = decode_contact(contact(cause="İ" * 64), NOW)
    assert isinstance(event, ContactEvent)
    assert event.cause == "i̇" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T10:15:30Z", datetime(2026, 11, 23, 10, 15, 30, tzinfo=UTC)),
        ("2026-11-23t10:15:30z", datetime(2026, 11, 23, 10, 15, 30, tzinfo=UTC)),
        ("2026-11-23T11:15:30.250+01:00", datetime(2026, 11, 23, 10, 15, 30, 250000, UTC)),
        ("2026-11-23T04:45:30-05:30", datetime(2026, 11, 23, 10, 15, 30, tzinfo=UTC)),
        ("2026-11-23T10:15:30-00:00", datetime(2026, 11, 23, 10, 15, 30, tzinfo=UTC)),
        ("2026-11-24T10:14:30+23:59", datetime(2026, 11, 23, 10, 15, 30, tzinfo=UTC)),
        ("2024-02-29T00:00:00Z", datetime(2024, 2, 29, tzinfo=UTC)),
        ("1969-12-31T23:59:59.5Z", datetime(1969, 12, 31, 23, 59, 59, 500000, UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        # digits past the microsecond are dropped, not rounded
        ("2026-11-23T10:15:30.123456999Z", datetime(2026, 11, 23, 10, 15, 30, 123456, UTC)),
    ],
)
def test_occurred_at_in_epoch_seconds(text: str, expected: datetime) -> None:
    event = decode_order(order(occurred_at=text), NOW)
    assert isinstance(event, OrderEvent)
    assert event.occurred_at == pytest.approx(expected.timestamp(), abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    offset_minutes=st.integers(-(24 * 60 - 1), 24 * 60 - 1),
)
def test_occurred_at_matches_datetime(moment: datetime, offset_minutes: int) -> None:
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    event = decode_order(order(occurred_at=aware.isoformat()), 4e11)
    assert isinstance(event, OrderEvent)
    assert event.occurred_at == pytest.approx(aware.timestamp(), abs=1e-6)


def test_an_hour_ahead_is_the_limit() -> None:
    assert isinstance(decode_order(order(occurred_at=in_an_hour()), NOW), OrderEvent)
    late = decode_order(order(occurred_at=in_an_hour(seconds=0.000001)), NOW)
    assert late == Rejection("future_timestamp", None)
    # the same instant written with an offset is just as far ahead
    ahead = datetime.fromtimestamp(NOW + MAX_FUTURE_SECONDS + 1, timezone(timedelta(hours=-7)))
    assert decode_contact(contact(occurred_at=ahead.isoformat()), NOW).reason == "future_timestamp"


def test_old_events_are_accepted() -> None:
    event = decode_order(order(occurred_at="2001-01-01T00:00:00Z"), NOW)
    assert isinstance(event, OrderEvent)


def test_one_mebibyte_is_the_limit() -> None:
    assert isinstance(decode_order(padded_to(MAX_RECORD_BYTES, order()), NOW), OrderEvent)
    assert isinstance(decode_contact(padded_to(MAX_RECORD_BYTES, contact()), NOW), ContactEvent)


def test_size_is_checked_before_parsing() -> None:
    assert decode_order(b"\xff" * (MAX_RECORD_BYTES + 1), NOW) == Rejection("too_large", None)


def test_rejection_keeps_a_string_event_id() -> None:
    rejected = decode_order(order(order_id="", event_id="e-7"), NOW)
    assert rejected == Rejection("empty:order_id", "e-7")
    rejected = decode_contact(contact(cause=5, event_id="e-8"), NOW)
    assert rejected == Rejection("wrong_type:cause", "e-8")


def test_rejection_has_no_event_id_when_it_cannot_have_one() -> None:
    assert decode_order(order(order_id="", event_id=99), NOW) == Rejection("empty:order_id", None)
    assert decode_order(b'{"event_id": "e-1"', NOW) == Rejection("invalid_json", None)


def test_first_failing_field_decides() -> None:
    raw = order(order_id=1, occurred_at="yesterday", attributes=None)
    assert decode_order(raw, NOW) == Rejection("wrong_type:order_id", None)


@settings(max_examples=300, deadline=None)
@given(
    raw=st.binary(max_size=64)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    ).map(lambda value: json.dumps(value).encode("utf-8", "surrogatepass"))
)
def test_any_input_gives_an_event_or_a_known_reason(raw: bytes) -> None:
    for decode, reasons in ((decode_order, ORDER_REASONS), (decode_contact, CONTACT_REASONS)):
        result = decode(raw, NOW)
        assert isinstance(result, (OrderEvent, ContactEvent)) or result.reason in reasons
