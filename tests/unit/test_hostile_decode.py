"""The decoder against hostile input: it never raises, every answer is an event or a Rejection
with a reason from the closed set, and an accepted event satisfies the contract's bounds.

Hypothesis drives arbitrary bytes, arbitrary JSON and documents that are almost valid (the real
field names with hostile values) through both decoders; the generated hostile corpus
(tests/corpus/hostile) is checked record by record against the reason or event it expects,
before the integration test sends it through real workers.
"""

from __future__ import annotations

import json
import math
import time

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
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
from tests.corpus import hostile
from tests.integration.reference import Contact, Order

NOW = 1_795_000_000.0  # 2026-11-18: a fixed clock, so every run sees the same future limit

json_scalars = (st.none() | st.booleans() | st.integers() | st.text()
                | st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
timestamps = st.one_of(
    st.text(max_size=40),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.from_regex(r"\A\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d{1,25})?([Zz]|[+-]\d\d:\d\d)?\Z"),
)
# Strings of any code point but lone surrogates, which strict JSON cannot carry.
texts = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=140)
field_values = st.one_of(texts, json_values, timestamps)


def almost_valid(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy[dict]:
    """Documents with the real field names, each present or not, valid or hostile."""
    return st.fixed_dictionaries({}, optional={
        name: st.one_of(valid, field_values) for name, valid in fields.items()
    }).flatmap(lambda doc: st.dictionaries(st.text(max_size=10), json_values, max_size=3)
               .map(lambda extra: {**extra, **doc}))


valid_ids = st.text(min_size=1, max_size=128)
valid_times = st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
attributes = st.dictionaries(st.text(max_size=70), st.one_of(texts, json_values), max_size=34)
ORDER_FIELDS = {"order_id": valid_ids, "occurred_at": valid_times, "event_id": texts,
                "customer_id": texts, "attributes": attributes}
CONTACT_FIELDS = {"contact_id": valid_ids, "occurred_at": valid_times,
                  "cause": st.text(min_size=1, max_size=70), "order_id": st.none() | texts,
                  "channel": texts, "event_id": texts, "customer_id": texts}


def encodable(text: str | None) -> bool:
    """Everything downstream encodes strings to UTF-8 (Redis, Kafka keys, headers)."""
    try:
        return text is None or text.encode("utf-8") is not None
    except UnicodeEncodeError:  # a lone surrogate
        return False


def check_order(raw: bytes, now: float = NOW) -> OrderEvent | Rejection:
    result = decode_order(raw, now)
    if isinstance(result, Rejection):
        assert result.reason in ORDER_REASONS
        assert encodable(result.event_id)
        return result
    assert isinstance(result, OrderEvent)
    doc = orjson.loads(raw)
    assert len(raw) <= MAX_RECORD_BYTES
    assert type(result.order_id) is str and 1 <= len(result.order_id) <= 128
    assert result.order_id == doc["order_id"] and encodable(result.order_id)
    assert math.isfinite(result.occurred_at) and result.occurred_at <= now + MAX_FUTURE_SECONDS
    assert len(result.attributes) <= 32
    for key, value in result.attributes.items():
        assert type(key) is str and len(key) <= 64 and encodable(key)
        assert type(value) is str and len(value) <= 128 and encodable(value)
    assert result.event_id is None or (type(result.event_id) is str and encodable(result.event_id))
    return result


def check_contact(raw: bytes, now: float = NOW) -> ContactEvent | Rejection:
    result = decode_contact(raw, now)
    if isinstance(result, Rejection):
        assert result.reason in CONTACT_REASONS
        assert encodable(result.event_id)
        return result
    assert isinstance(result, ContactEvent)
    doc = orjson.loads(raw)
    assert len(raw) <= MAX_RECORD_BYTES
    assert type(result.contact_id) is str and 1 <= len(result.contact_id) <= 128
    assert math.isfinite(result.occurred_at) and result.occurred_at <= now + MAX_FUTURE_SECONDS
    cause = doc["cause"]
    assert type(cause) is str and 1 <= len(cause) <= 64 and result.cause == cause.lower()
    assert result.order_id == doc.get("order_id") and encodable(result.order_id)
    for text in (result.contact_id, result.cause, result.channel, result.event_id):
        assert encodable(text)
    return result


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
@example(b"\xef\xbb\xbf{}")
@example(b'"\\ud800"')
@example(b"[" * 5000)
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    check_order(raw)
    check_contact(raw)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_arbitrary_json_never_raises(value: object) -> None:
    raw = json.dumps(value).encode()
    check_order(raw)
    check_contact(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(almost_valid(ORDER_FIELDS), st.booleans(),
       st.floats(min_value=-1e10, max_value=1e11, allow_nan=False))
def test_almost_valid_orders(doc: dict, nan: bool, now: float) -> None:
    raw = json.dumps(doc, allow_nan=nan, ensure_ascii=False).encode("utf-8", "surrogatepass")
    check_order(raw, now)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(almost_valid(CONTACT_FIELDS), st.booleans(),
       st.floats(min_value=-1e10, max_value=1e11, allow_nan=False))
def test_almost_valid_contacts(doc: dict, nan: bool, now: float) -> None:
    raw = json.dumps(doc, allow_nan=nan, ensure_ascii=False).encode("utf-8", "surrogatepass")
    check_contact(raw, now)


@settings(max_examples=200, deadline=None)
@given(timestamps, st.floats(min_value=-1e10, max_value=1e11, allow_nan=False))
def test_timestamps_are_bounded_or_rejected(text: str, now: float) -> None:
    result = check_order(json.dumps({"order_id": "o", "occurred_at": text}).encode(), now)
    if isinstance(result, Rejection):
        assert result.reason in {"bad_timestamp", "future_timestamp"}
    else:  # year 1 is the earliest a four-digit RFC 3339 year can name
        assert -62135596800.0 - 86400 <= result.occurred_at <= now + MAX_FUTURE_SECONDS


def test_size_limit_is_exact() -> None:
    doc = b'{"order_id": "o", "occurred_at": "2026-01-01T00:00:00Z", "pad": "'
    fill = MAX_RECORD_BYTES - len(doc) - 2
    assert isinstance(check_order(doc + b"p" * fill + b'"}'), OrderEvent)
    assert check_order(doc + b"p" * (fill + 1) + b'"}') == Rejection("too_large", None)


# --- the generated hostile corpus ------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus() -> hostile.Corpus:
    return hostile.generate(time.time())


def test_corpus_is_large_and_covers_every_reason(corpus: hostile.Corpus) -> None:
    records = corpus.all()
    assert len(records) >= 10_000
    rejected = [r for r in records if r.reason is not None]
    assert len(rejected) >= 5_000
    assert sum(len(r.value) > MAX_RECORD_BYTES for r in rejected) >= 6
    reasons = {(r.kind, r.reason) for r in rejected}
    assert {reason for kind, reason in reasons if kind == "orders"} == ORDER_REASONS
    assert {reason for kind, reason in reasons if kind == "contacts"} == CONTACT_REASONS
    causes = {r.truth.cause for r in records if isinstance(r.truth, Contact)}
    values = {r.truth.attributes.get(hostile.WIDE_DIMENSION) for r in records
              if isinstance(r.truth, Order)}
    assert len(causes) >= hostile.DISTINCT and len(values) >= hostile.DISTINCT


def test_corpus_records_decode_as_expected(corpus: hostile.Corpus) -> None:
    now = time.time()
    for record in corpus.all():
        check = check_order if record.kind == "orders" else check_contact
        result = check(record.value, now)
        if record.reason is not None:
            assert isinstance(result, Rejection) and result.reason == record.reason, record
            continue
        assert not isinstance(result, Rejection), (result, record.value[:300])
        truth = record.truth
        if isinstance(truth, Order):
            tracked = {k: v for k, v in result.attributes.items() if k in hostile.DIMENSIONS}
            assert (result.order_id, result.occurred_at, tracked) == (
                truth.order_id, truth.t, truth.attributes)
        elif isinstance(truth, Contact):
            assert (result.contact_id, result.occurred_at, result.cause,
                    result.order_id or None) == (
                truth.contact_id, truth.t, truth.cause, truth.order_id)
