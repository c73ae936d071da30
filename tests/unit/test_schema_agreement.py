"""The JSON Schemas in schemas/ and streams.events accept and reject the same documents.

Each document goes through two independent paths: a strict JSON parse plus jsonschema's
Draft202012Validator with a format checker that really checks `date-time`, and the decoder.
Their decisions must be equal. The documents are the hand-written corpus in tests/corpus/
(whose expected reasons are also checked exactly) and near-valid documents made by hypothesis
by mutating valid ones. `now` is far in the future here, so the clock never decides; the
future-timestamp and size rules are tested in test_events.py.
"""

from __future__ import annotations

import codecs
import json
import math
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from streams import events
from streams.events import (
    CONTACT_REASONS,
    ORDER_REASONS,
    Rejection,
    check_contact,
    check_order,
    decode_contact,
    decode_contacts,
    decode_order,
    decode_orders,
)

ROOT = Path(__file__).resolve().parents[2]
NOW = 4e11  # about the year 14600: later than any valid timestamp, so time never decides here
KINDS = ("order", "contact")
DECODERS = {"order": decode_order, "contact": decode_contact}
RUN_DECODERS = {"order": decode_orders, "contact": decode_contacts}  # many records in one go
CHECKERS = {"order": check_order, "contact": check_contact}  # the rule-by-rule path
REASONS = {"order": ORDER_REASONS, "contact": CONTACT_REASONS}
SCHEMAS = {
    kind: json.loads((ROOT / "schemas" / f"{kind}-event.v1.json").read_text()) for kind in KINDS
}


def _format_checker() -> FormatChecker:
    checker = FormatChecker()
    if "date-time" not in checker.checkers:
        raise RuntimeError(
            "jsonschema checks date-time only when rfc3339-validator is "
            "installed: pip install rfc3339-validator"
        )
    rfc3339 = checker.checkers["date-time"][0]

    @checker.checks("date-time")
    def date_time(instance: object) -> bool:
        # rfc3339-validator anchors its regex with `$`, which also matches before a final "\n".
        return not (isinstance(instance, str) and instance.endswith("\n")) and rfc3339(instance)

    return checker


CHECKER = _format_checker()
VALIDATORS = {kind: Draft202012Validator(SCHEMAS[kind], format_checker=CHECKER) for kind in KINDS}


def _finite(number: str) -> float:
    value = float(number)
    if math.isinf(value):
        raise ValueError(f"{number} does not fit a double")
    return value


def _int_fitting_a_double(digits: str) -> int:
    value = int(digits)  # ValueError past 4300 digits
    float(value)  # OverflowError past a double, where orjson refuses too
    return value


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _no_lone_surrogates(value: object) -> None:
    if isinstance(value, str):
        value.encode("utf-8")  # raises UnicodeEncodeError (a ValueError) on a lone surrogate
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_lone_surrogates(key)
            _no_lone_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _no_lone_surrogates(item)


def strict_json(raw: bytes) -> object:
    """RFC 8259 JSON as the contract means it, independently of orjson.

    UTF-8 without a byte order mark, no NaN or Infinity, numbers that fit a double, and
    strings that are Unicode text (no lone surrogates). Raises ValueError otherwise.
    """
    if raw.startswith(codecs.BOM_UTF8):
        raise ValueError("byte order mark")
    doc = json.loads(
        raw.decode("utf-8"),
        parse_constant=_refuse,
        parse_float=_finite,
        parse_int=_int_fitting_a_double,
    )
    _no_lone_surrogates(doc)
    return doc


def schema_accepts(kind: str, raw: bytes) -> bool:
    try:
        doc = strict_json(raw)
    except (ValueError, OverflowError, RecursionError):
        return False
    return VALIDATORS[kind].is_valid(doc)


def decoder_reason(kind: str, raw: bytes) -> str | None:
    """None when the decoder accepts, else its reason (which must be a known one)."""
    result = DECODERS[kind](raw, NOW)
    if isinstance(result, Rejection):
        assert result.reason in REASONS[kind]
        return result.reason
    return None


# --- the hand-written corpus ---------------------------------------------------------------


def _corpus(kind: str) -> list:
    cases = []
    lines = (ROOT / "tests" / "corpus" / f"{kind}.jsonl").read_text(encoding="utf-8")
    for line in lines.splitlines():
        case = json.loads(line)
        if "doc" in case:
            raw = json.dumps(case["doc"], ensure_ascii=False).encode()
        elif "text" in case:
            raw = case["text"].encode()
        else:
            raw = bytes.fromhex(case["hex"])
        cases.append(pytest.param(kind, raw, case["reason"], id=f"{kind}: {case['case']}"))
    return cases


CORPUS = _corpus("order") + _corpus("contact")


@pytest.mark.parametrize(("kind", "raw", "reason"), CORPUS)
def test_corpus_document(kind: str, raw: bytes, reason: str | None) -> None:
    assert decoder_reason(kind, raw) == reason
    assert schema_accepts(kind, raw) is (reason is None)


@pytest.mark.parametrize(("kind", "raw", "reason"), CORPUS)
def test_corpus_document_same_on_both_paths(kind: str, raw: bytes, reason: str | None) -> None:
    assert DECODERS[kind](raw, NOW) == CHECKERS[kind](raw, NOW)


@pytest.mark.parametrize("kind", KINDS)
def test_corpus_has_every_reason_but_size_and_clock(kind: str) -> None:
    covered = {case.values[2] for case in CORPUS if case.values[0] == kind}
    assert covered - {None} == REASONS[kind] - {"too_large", "future_timestamp"}
    assert None in covered


@pytest.mark.parametrize("kind", KINDS)
def test_schema_examples_pass_both(kind: str) -> None:
    for example in SCHEMAS[kind]["examples"]:
        raw = json.dumps(example).encode()
        assert schema_accepts(kind, raw)
        assert decoder_reason(kind, raw) is None


def test_format_checker_really_checks_date_time() -> None:
    assert CHECKER.conforms("2026-11-23T10:15:30Z", "date-time")
    for bad in (
        "2026-02-30T10:15:30Z",
        "2026-11-23T10:15:30",
        "2026-11-23",
        "2026-11-23T10:15:30Z\n",
    ):
        assert not CHECKER.conforms(bad, "date-time"), bad


# --- generated near-valid documents ---------------------------------------------------------

CHARS = st.characters(exclude_categories=["Cs"])  # lone surrogates come from one mutation only
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(CHARS, max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(CHARS, max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def _two_digits(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map("{:02d}".format)


def _offset(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _rfc3339(moment: datetime, timespec: str, offset: int | None, lower: bool) -> str:
    text = moment.isoformat(timespec=timespec) + ("Z" if offset is None else _offset(offset))
    return text.lower() if lower else text


VALID_TIMESTAMPS = st.builds(
    _rfc3339,
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.sampled_from(["seconds", "milliseconds", "microseconds"]),
    st.none() | st.integers(-(24 * 60 - 1), 24 * 60 - 1),
    st.booleans(),
)


def _mostly(valid: st.SearchStrategy[str], *edges: str) -> st.SearchStrategy[str]:
    """`valid` nine times in ten, otherwise one of `edges`."""
    return st.integers(0, 9).flatmap(lambda i: st.sampled_from(edges) if i == 0 else valid)


# Almost RFC 3339: each part is usually in range (a 31st of April or a 29th of February in a
# common year still happen often), and now and then replaced by a near miss.
NEAR_TIMESTAMPS = st.tuples(
    _mostly(st.just(""), " ", "\n"),
    _mostly(st.integers(1, 9999).map("{:04d}".format), "0000", "202", "12026", "２０２６"),
    st.just("-"),
    _mostly(_two_digits(1, 12), "00", "13", "1"),
    st.just("-"),
    _mostly(_two_digits(1, 31), "00", "32"),
    _mostly(st.sampled_from("Tt"), " ", "", "_", "TT"),
    _mostly(_two_digits(0, 23), "24", "1"),
    st.just(":"),
    _mostly(_two_digits(0, 59), "60", "5"),
    st.just(":"),
    _mostly(_two_digits(0, 59), "60", "5"),
    _mostly(
        st.just("") | st.text("0123456789", min_size=1, max_size=10).map(".{}".format), ".", ",5"
    ),
    _mostly(
        st.sampled_from("Zz")
        | st.builds(
            "{}{}:{}".format, st.sampled_from("+-"), _two_digits(0, 23), _two_digits(0, 59)
        ),
        "",
        "+24:00",
        "+05:60",
        "+05",
        "+0530",
        "+05:30:00",
        "05:30",
        "UTC",
    ),
    _mostly(st.just(""), "\n", " ", "Z"),
).map("".join)


def _text_near(*bounds: int) -> st.SearchStrategy[str]:
    """Strings whose length is at, just under or just over one of `bounds`."""
    lengths = sorted({n + d for n in bounds for d in (-1, 0, 1) if n + d >= 0})
    return st.sampled_from(lengths).flatmap(lambda n: st.text(CHARS, min_size=n, max_size=n))


ATTRIBUTES = st.dictionaries(st.text(CHARS, max_size=64), st.text(CHARS, max_size=128), max_size=8)
NEAR_ATTRIBUTES = st.one_of(
    st.dictionaries(_text_near(64), _text_near(128), max_size=3),
    st.dictionaries(st.text(CHARS, max_size=3), JSON_VALUES, max_size=3),
    st.integers(30, 34).map(lambda n: {f"k{i}": "v" for i in range(n)}),
    JSON_VALUES,
)

VALID = {
    "order": st.fixed_dictionaries(
        {"order_id": st.text(CHARS, min_size=1, max_size=128), "occurred_at": VALID_TIMESTAMPS},
        optional={
            "event_id": st.text(CHARS, max_size=40),
            "customer_id": st.text(CHARS),
            "attributes": ATTRIBUTES,
            "extra": JSON_VALUES,
        },
    ),
    "contact": st.fixed_dictionaries(
        {
            "contact_id": st.text(CHARS, min_size=1, max_size=128),
            "occurred_at": VALID_TIMESTAMPS,
            "cause": st.text(CHARS, min_size=1, max_size=64),
        },
        optional={
            "order_id": st.none() | st.text(CHARS),
            "channel": st.text(CHARS),
            "event_id": st.text(CHARS, max_size=40),
            "customer_id": st.text(CHARS),
            "attributes": JSON_VALUES,
            "extra": JSON_VALUES,
        },
    ),
}
FIELDS = {
    "order": ["order_id", "occurred_at", "event_id", "customer_id", "attributes"],
    "contact": [
        "contact_id",
        "occurred_at",
        "cause",
        "order_id",
        "channel",
        "event_id",
        "customer_id",
    ],
}
BOUNDED = {"order": {"order_id": (1, 128)}, "contact": {"contact_id": (1, 128), "cause": (1, 64)}}


@st.composite
def near_valid(draw: st.DrawFn, kind: str) -> bytes:
    """A valid document with one to three mutations, serialised to bytes."""
    doc = draw(VALID[kind])
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        field = draw(st.sampled_from(FIELDS[kind] + ["extra"]))
        mutation = draw(
            st.sampled_from(
                [
                    "drop",
                    "any value",
                    "near bound",
                    "near bound",
                    "timestamp",
                    "timestamp",
                    "timestamp",
                    "attributes",
                    "attributes",
                    "surrogate",
                    "nan",
                ]
            )
        )
        if mutation == "drop":
            doc.pop(field, None)
        elif mutation == "any value":
            doc[field] = draw(JSON_VALUES)
        elif mutation == "near bound":
            bounds = BOUNDED[kind].get(field, (0, 64, 128))
            doc[field] = draw(_text_near(*bounds))
        elif mutation == "timestamp":
            doc["occurred_at"] = draw(NEAR_TIMESTAMPS)
        elif mutation == "attributes":
            doc["attributes"] = draw(NEAR_ATTRIBUTES)
        elif mutation == "surrogate":
            doc[field] = draw(st.text(CHARS, max_size=3)) + draw(st.sampled_from("\ud800\udfff"))
        else:
            doc[field] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    raw = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 19)) == 0:  # now and then, damage the bytes themselves
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=2)) + raw[cut + draw(st.integers(0, 2)) :]
    return raw


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_generated_documents_agree(kind: str, data: st.DataObject) -> None:
    raw = data.draw(near_valid(kind), label="raw")
    reason = decoder_reason(kind, raw)
    event(f"{kind}: {reason or 'accepted'}")
    assert schema_accepts(kind, raw) is (reason is None), reason


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_generated_valid_documents_are_accepted(kind: str, data: st.DataObject) -> None:
    raw = json.dumps(data.draw(VALID[kind], label="doc"), ensure_ascii=False).encode()
    assert schema_accepts(kind, raw)
    assert decoder_reason(kind, raw) is None


# --- the fast path (msgspec) against the rule-by-rule path ---------------------------------

VALID_ASCII = {kind: VALID[kind].map(lambda doc: json.dumps(doc).encode()) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_fast_path_answers_as_the_rules_do(kind: str, data: st.DataObject) -> None:
    """Equal events (every field) and equal rejections (reason and event_id)."""
    raw = data.draw(st.one_of(near_valid(kind), VALID_ASCII[kind]), label="raw")
    assert DECODERS[kind](raw, NOW) == CHECKERS[kind](raw, NOW)


DEEP = b"[" * 1000 + b"]" * 1000  # orjson's depth limit is 1024; msgspec's is lower
FAST_PATH_TRAPS = [  # where msgspec alone would answer differently from the rules
    b'{"order_id":"o1","occurred_at":"2026-11-23T10:00:00Z","x":1e400}',  # orjson: not a double
    b'{"order_id":"o1","occurred_at":"2026-11-23T10:00:00Z","x":"\xff"}',  # not UTF-8
    b'{"order_id":"o1","occurred_at":"2026-11-23T10:00:00Z","x":' + DEEP + b"}",
    b'{"order_id":5,"order_id":"o1","occurred_at":"2026-11-23T10:00:00Z"}',  # the last one wins
    b'{"order_id":"o1","occurred_at":"2026-11-23T10:00:00Z","event_id":null}',
    b'{"order_id":"o1","occurred_at":"2026-02-30T10:00:00Z"}',
    b'{"order_id":"o1","occurred_at":"2026-11-23t10:00:00.123456789z"}',
    b'{"contact_id":"c1","occurred_at":"2026-11-23T10:00:00+01:00","cause":"Late","x":1e400}',
    b'{"contact_id":"c1","occurred_at":"2026-11-23T10:00:00Z","cause":"Late","order_id":null}',
    b'{"contact_id":"c1","occurred_at":"2026-11-23T10:00:00Z","cause":"\\u00c9t\\u00c9"}',
    b'{"order_id":"o1","occurred_at":"2026-11-23 10:00:00Z"}',  # msgspec's datetime takes " "
    b'{"order_id":"o1","occurred_at":"2026-11-23T10:00:00+0100"}',  # and an offset without ":"
    b'{"order_id":"o1","occurred_at":"2026-11-23T10:00:00.9999999Z"}',  # and rounds up
    b' {"order_id":"o1","occurred_at":"2026-11-23T10:00:00Z"}',
    b'{"order_id":"o1","occurred_at":"2026-11-23T10:00:00Z"}\n',
]


@pytest.mark.parametrize("raw", FAST_PATH_TRAPS, ids=range(len(FAST_PATH_TRAPS)))
def test_fast_path_traps(raw: bytes) -> None:
    kind = "order" if raw.startswith(b'{"order_id"') else "contact"
    assert DECODERS[kind](raw, NOW) == CHECKERS[kind](raw, NOW)


@pytest.mark.parametrize("kind", KINDS)
def test_a_plain_record_takes_the_fast_path(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules are only asked about records the fast path refuses or does not take."""
    monkeypatch.setattr(events, f"check_{kind}", lambda raw, now: pytest.fail("not fast"))
    raw = json.dumps(SCHEMAS[kind]["examples"][0], ensure_ascii=True).encode()
    assert not isinstance(DECODERS[kind](raw, NOW), Rejection)


# --- runs of records decoded at once, against the rules record by record --------------------


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_run_answers_as_the_rules_do_record_by_record(kind: str, data: st.DataObject) -> None:
    """One answer per record, in order, equal to the rules' answer for that record alone."""
    raws = data.draw(st.lists(st.one_of(VALID_ASCII[kind], VALID_ASCII[kind], near_valid(kind),
                                        st.sampled_from(FAST_PATH_TRAPS)), max_size=12),
                     label="raws")
    assert RUN_DECODERS[kind](raws, NOW) == [CHECKERS[kind](raw, NOW) for raw in raws]


ORDER_ALONE = b'{"order_id":"o%d","occurred_at":"2026-11-23T10:00:00Z"}'
RUNS_THAT_JOIN_DIFFERENTLY = [  # records invalid alone that are valid joined with ","
    [b'{"order_id":"o1"', b'"occurred_at":"2026-11-23T10:00:00Z"}',
     ORDER_ALONE % 2 + b"," + ORDER_ALONE % 3],  # a record split in two, one holding two
    [b'{"order_id":"o1","occurred_at":"2026-11-23T10:00:00Z","attributes":{"a":"}',
     b'{"}}', ORDER_ALONE % 2 + b"," + ORDER_ALONE % 3],  # a string spanning two records
    [b'{"order_id":"o1","occurred_at":"2026-11-23T10:00:00Z","x":[{"a":1}',
     b'{"b":2}]}'],  # an array spanning two records, of records that start with "{"
    [ORDER_ALONE % 1 + b"\n," + ORDER_ALONE % 2],  # two in one
    [ORDER_ALONE % 1, b""],  # an empty one
]


@pytest.mark.parametrize("raws", RUNS_THAT_JOIN_DIFFERENTLY,
                         ids=range(len(RUNS_THAT_JOIN_DIFFERENTLY)))
def test_records_never_merge_or_split_in_a_run(raws: list[bytes]) -> None:
    assert decode_orders(raws, NOW) == [check_order(raw, NOW) for raw in raws]


def test_a_bad_record_in_a_run_is_the_only_one_the_rules_see(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other records stay on the fast path; a time too far ahead is found the same way."""
    asked: list[bytes] = []

    def check(raw: bytes, now: float) -> events.OrderEvent | Rejection:
        asked.append(raw)
        return check_order(raw, now)

    monkeypatch.setattr(events, "check_order", check)
    raws = [ORDER_ALONE % i for i in range(100)]
    raws[37] = b'{"order_id":5}'
    raws[80] = b'{"order_id":"o80","occurred_at":"2026-11-23T12:00:00Z"}'
    answers = decode_orders(raws, datetime.fromisoformat("2026-11-23T10:30:00Z").timestamp())
    assert asked == [raws[37], raws[80]]
    assert [i for i, a in enumerate(answers) if isinstance(a, Rejection)] == [37, 80]
    assert (answers[37].reason, answers[80].reason) == ("wrong_type:order_id", "future_timestamp")
    assert [a.order_id for a in answers if not isinstance(a, Rejection)] == [
        f"o{i}" for i in range(100) if i not in (37, 80)]


REFUSED_BY_THE_FAST_PATH = [
    b'{"order_id":5,"occurred_at":"2026-11-23T10:00:00Z"}',  # msgspec: wrong type
    b'{"order_id":"x","occurred_at":"2026-11-23T10:00:00Z"',  # malformed: error at the next `{`
    b'{"order_id":"x",,"occurred_at":"2026-11-23T10:00:00Z"}',  # malformed inside the record
    b'{"order_id":"x","occurred_at":"2026-11-23T10:00:00Z","extra":1}',  # a field msgspec has not
    b'{"order_id":"\xc3\xa9","occurred_at":"2026-11-23T10:00:00Z"}',  # not ASCII
    b"",
    b'["order_id"]',
    b'{"order_id":"x","occurred_at":"2026-02-30T10:00:00Z"}',  # no such day
    b'{"order_id":"x","occurred_at":"2026-11-23 10:00"}',  # not the shape
    b'{"order_id":"x","occurred_at":"2026-11-23T10:00:00Z","attributes":{"%s":"v"}}' % (
        b"k" * 65),
]


@pytest.mark.parametrize("bad", REFUSED_BY_THE_FAST_PATH, ids=range(len(REFUSED_BY_THE_FAST_PATH)))
@pytest.mark.parametrize("position", [0, 1, 130, 299])
def test_a_refused_record_costs_its_neighbours_one_more_fast_decode_at_most(
    monkeypatch: pytest.MonkeyPatch, bad: bytes, position: int,
) -> None:
    """The fast path names the record it refuses, so the run is cut there instead of being
    halved down to it (which decoded the records near it about log2(run) times)."""
    raws = [ORDER_ALONE % i for i in range(300)]
    raws[position] = bad
    attempts = [0] * len(raws)
    index = {raw: i for i, raw in enumerate(raws)}
    fields_of = events._fields_of

    def counting(values: list[bytes], decoder: object) -> object:
        for value in values:
            attempts[index[value]] += 1
        return fields_of(values, decoder)

    asked: list[bytes] = []

    def check(raw: bytes, now: float) -> events.OrderEvent | Rejection:
        asked.append(raw)
        return check_order(raw, now)

    monkeypatch.setattr(events, "_fields_of", counting)
    monkeypatch.setattr(events, "check_order", check)
    answers = decode_orders(raws, NOW)
    assert asked == [bad]  # the rules see the refused record only (they may still accept it)
    assert answers == [check_order(raw, NOW) for raw in raws]
    assert max(attempts) <= 2, attempts
