"""A deterministic corpus of hostile input records, generated at test time (not committed).

`generate(now)` returns about 16,000 records of two sorts, each saying what must become of it:
- garbage that must be rejected, with its DLQ reason: random bytes, truncated JSON, NaN and
  Infinity, nesting beyond the parser's limit, invalid UTF-8 and lone surrogates, records over
  1 MiB, wrong types, empty and over-long fields, unparseable and future timestamps;
- valid records built to hurt what comes after the decoder, with the order or contact they must
  count as (the types of `tests.integration.reference`, so its computation covers them): label
  injection (quotes, backslashes, newlines, braces) in causes and attribute values, 5,000
  distinct causes, 5,000 distinct values of one dimension, unicode and control characters,
  ids at their length limits, far-past and near-future times, odd offsets, unknown fields with
  huge or deeply nested values, and exact duplicates.

The expected reasons follow the contract and the schemas; `tests/unit/test_hostile_decode.py`
checks them against the decoder before the integration test sends them through real workers.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from tests.integration import reference
from tests.integration.reference import Contact, Order

MIB = 1024 * 1024
# The dimension that receives 5,000 distinct values; the other tracked ones get injection values.
WIDE_DIMENSION = "seller"
INJECTION_DIMENSION = "carrier"
DIMENSIONS = (*reference.DIMENSIONS, WIDE_DIMENSION)  # what the hostile test tracks
DISTINCT = 5000
CUSTOMER = "customer-7d1e-marker"  # the customer_id of many records: never in logs or labels
# Strings a Prometheus exposition must escape, or that break naive parsers and log lines.
INJECTIONS = [
    'quote"inside', 'back\\slash', "new\nline", "carriage\rreturn", "tab\there", "}", "{",
    '{cause="x"}', 'x",evil="1', "a\\\"b", "\\n", "label=\"v\"\n# HELP fake", " ", "=", ",",
    "\u00e9t\u00e9", "\U0001f4e6 parcel", "\u202eright-to-left", "\u0000nul", "\x01\x02\x7f",
    "zero\u200bwidth", "OTHER", "All", "other ", "\u0130stanbul", "\ufeffbom",
]
# The first byte of a JSON text is whitespace, a digit, `-`, `"`, `[`, `{`, `t`, `f` or `n`.
_NOT_JSON_START = bytes(b for b in range(256) if b not in b' \t\r\n0123456789-"[{tfn')
_BAD_TIMESTAMPS = [
    "yesterday", "", "2026-01-01", "2026-01-01T00:00:00", "2026-01-01 00:00:00Z",
    "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "0000-01-01T00:00:00Z",
    "2026-01-01T24:00:00Z", "2026-01-01T00:60:00Z", "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00:00Z\n", " 2026-01-01T00:00:00Z", "10000-01-01T00:00:00Z",
    "\uff12\uff10\uff12\uff16-01-01T00:00:00Z", "2026-01-01T00:00:00.Z", "1767225600",
    "2026-01-01T00:00:00+0100", "2026-W01-1T00:00:00Z", "NaN",
]
_WRONG_TYPES = [1, 1.5, -0.0, True, [], {}, ["x"], {"x": "y"}]  # and null, below


@dataclass(frozen=True)
class Hostile:
    kind: str                          # "orders" | "contacts"
    value: bytes
    reason: str | None                 # the DLQ reason, or None: counted as `truth`
    truth: Order | Contact | None = None
    key: bytes | None = None


@dataclass
class Corpus:
    registrations: list[Hostile] = field(default_factory=list)  # send first: label injection
    orders: list[Hostile] = field(default_factory=list)
    contacts: list[Hostile] = field(default_factory=list)

    def all(self) -> list[Hostile]:
        return self.registrations + self.orders + self.contacts


def iso(t: float, offset_minutes: int = 0, lower: bool = False) -> str:
    tz = timezone(timedelta(minutes=offset_minutes))
    text = datetime.fromtimestamp(t, tz=tz).isoformat()
    text = text.replace("+00:00", "Z") if offset_minutes == 0 else text
    return text.replace("T", "t").replace("Z", "z") if lower else text


def _dumps(doc: dict, extra: bytes = b"") -> bytes:
    """The document as JSON, plus an unknown field `x` holding the raw JSON `extra`, if any."""
    raw = json.dumps(doc, ensure_ascii=False).encode()
    return raw[:-1] + b', "x": ' + extra + b"}" if extra else raw


def _random_text(rng: random.Random, low: int, high: int) -> str:
    """Printable and unprintable code points from several planes, never a lone surrogate."""
    alphabet_ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x2FF), (0x400, 0x4FF),
                       (0x4E00, 0x4FFF), (0x1F300, 0x1F5FF), (0xE000, 0xE0FF)]
    chars = []
    for _ in range(rng.randint(low, high)):
        a, b = rng.choice(alphabet_ranges)
        chars.append(chr(rng.randint(a, b)))
    return "".join(chars)


class _Builder:
    def __init__(self, now: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.corpus = Corpus()
        self.n = 0

    def recent(self) -> float:
        """A whole second 30 s to 5 min ago: inside every window of the reference."""
        return float(int(self.now - self.rng.uniform(30, 300)))

    def next_id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n}"

    # valid records, with the truth they count as; `extra` is an unknown field's raw JSON value
    def order(self, doc: dict, truth: Order, into: list[Hostile] | None = None,
              extra: bytes = b"") -> Order:
        (self.corpus.orders if into is None else into).append(
            Hostile("orders", _dumps(doc, extra), None, truth, truth.order_id.encode()))
        return truth

    def contact(self, doc: dict, truth: Contact, into: list[Hostile] | None = None,
                extra: bytes = b"") -> None:
        (self.corpus.contacts if into is None else into).append(
            Hostile("contacts", _dumps(doc, extra), None, truth))

    # rejected records
    def bad(self, kind: str, value: bytes, reason: str) -> None:
        target = self.corpus.orders if kind == "orders" else self.corpus.contacts
        target.append(Hostile(kind, value, reason))

    def base(self, kind: str) -> dict:
        t = iso(self.recent())
        if kind == "orders":
            return {"order_id": self.next_id("ho"), "occurred_at": t}
        return {"contact_id": self.next_id("hk"), "occurred_at": t, "cause": "late_delivery"}


def _registrations(b: _Builder) -> None:
    """Injection strings as causes and as values of a tracked dimension, sent before anything
    else, so they are registered (not folded into `other`) and reach the exposition."""
    into = b.corpus.registrations
    for n, text in enumerate(INJECTIONS):
        t = b.recent()
        order = b.order({"order_id": f"inj-{n}\n\"{text}", "occurred_at": iso(t),
                         "attributes": {INJECTION_DIMENSION: text, "region": text}},
                        Order(f"inj-{n}\n\"{text}", t, {INJECTION_DIMENSION: text, "region": text}),
                        into)
        b.contact({"contact_id": f"inj-k-{n}{text}", "occurred_at": iso(t + 1), "cause": text,
                   "order_id": order.order_id},
                  Contact(f"inj-k-{n}{text}", t + 1, text.lower(), order.order_id), into)


def _valid(b: _Builder) -> None:
    rng = b.rng
    orders: list[Order] = []
    for n in range(DISTINCT):  # 5,000 distinct values of one dimension
        t = b.recent()
        value = f"{n}:{_random_text(rng, 0, 120)}"[:128]
        order_id = b.next_id("wide")
        orders.append(b.order({"order_id": order_id, "occurred_at": iso(t),
                               "customer_id": f"{CUSTOMER}-{n}",
                               "attributes": {WIDE_DIMENSION: value, "carrier": "acme"}},
                              Order(order_id, t, {WIDE_DIMENSION: value, "carrier": "acme"})))
    for n in range(DISTINCT):  # 5,000 distinct causes, some joined to the orders above
        t = b.recent()
        cause = f"{n}{_random_text(rng, 0, 60)}"[:64]
        order = rng.choice(orders) if n % 2 else None
        contact_id = b.next_id("many")
        doc = {"contact_id": contact_id, "occurred_at": iso(t), "cause": cause,
               "customer_id": f"{CUSTOMER}-{n}"}
        if order is not None:
            doc["order_id"] = order.order_id
        b.contact(doc, Contact(contact_id, t, cause.lower(), order and order.order_id))

    # times: far past, odd offsets, lower-case separators, many fraction digits, nearly future
    t_cases = [(-62135596800.0, "0001-01-01T00:00:00Z"), (-2208988800.0, "1900-01-01T00:00:00Z"),
               (0.0, "1970-01-01T00:00:00Z"), (951782400.0, "2000-02-29T00:00:00Z")]
    t0 = b.recent()
    t_cases += [(t0, iso(t0, 23 * 60 + 59)), (t0, iso(t0, -(23 * 60 + 59))), (t0, iso(t0, 330)),
                (t0, iso(t0, lower=True)), (t0, iso(t0)[:-1] + ".000000000000000000Z")]
    near_future = float(int(b.now + 3000))  # under the 1 h limit at any later processing time
    t_cases.append((near_future, iso(near_future)))
    for n, (t, text) in enumerate(t_cases):
        order = b.order({"order_id": f"time-{n}", "occurred_at": text},
                        Order(f"time-{n}", t, {}))
        b.contact({"contact_id": f"time-k-{n}", "occurred_at": text, "cause": "late_delivery",
                   "order_id": order.order_id},
                  Contact(f"time-k-{n}", t, "late_delivery", order.order_id))

    # ids and fields at their limits, control characters, unknown fields big and deep
    t = b.recent()
    longest = "\U0001f4e6" * 128
    limits = b.order({"order_id": longest, "occurred_at": iso(t), "customer_id": "c" * 10000,
                      "event_id": "\x00" * 1000,
                      "attributes": {**{f"k{i:02d}" + "x" * 61: "v" * 128 for i in range(29)},
                                     "carrier": "\u0000\u001f" * 64, "warehouse": "",
                                     "region": "other"}},
                     Order(longest, t, {"carrier": "\u0000\u001f" * 64, "warehouse": "",
                                        "region": "other"}))
    b.contact({"contact_id": "\u0000" * 128, "occurred_at": iso(t), "cause": "\u0130" * 64,
               "order_id": limits.order_id, "channel": "\n" * 100, "event_id": "",
               "customer_id": ""},
              Contact("\u0000" * 128, t, ("\u0130" * 64).lower(), limits.order_id))
    deep = b"[" * 1000 + b"]" * 1000  # within the parser's nesting limit
    for n, extra in enumerate([b'"' + b"x" * (MIB - 200) + b'"', deep, b'{"order_id": null}']):
        t = b.recent()
        order_id, contact_id = f"extra-{n}", f"extra-k-{n}"
        b.order({"order_id": order_id, "occurred_at": iso(t)}, Order(order_id, t, {}),
                extra=extra)
        b.contact({"contact_id": contact_id, "occurred_at": iso(t), "cause": "other"},
                  Contact(contact_id, t, "other", None), extra=extra)
    t = b.recent()  # dimension names are case-sensitive and exact: these are untracked
    b.order({"order_id": "untracked", "occurred_at": iso(t),
             "attributes": {"Carrier": "acme", "carrier ": "acme", "SELLER": "s"}},
            Order("untracked", t, {}))
    # contacts whose order_id names no order: empty (no order), enormous, odd
    for n, order_id in enumerate(["", "o" * 5000, " ", "\n", "null"]):
        t = b.recent()
        b.contact({"contact_id": f"orphan-{n}", "occurred_at": iso(t), "cause": "wrong_item",
                   "order_id": order_id},
                  Contact(f"orphan-{n}", t, "wrong_item", order_id or None))

    # exact duplicates: the same bytes again count nothing
    for target in (b.corpus.orders, b.corpus.contacts):
        for record in rng.sample(target, 100):
            target.append(Hostile(record.kind, record.value, None, None, record.key))


def _rejected(b: _Builder) -> None:
    rng = b.rng
    kinds = ("orders", "contacts")
    id_field = {"orders": "order_id", "contacts": "contact_id"}
    for n in range(2000):  # random bytes that cannot start a JSON text
        value = bytes([rng.choice(_NOT_JSON_START)]) + rng.randbytes(rng.randint(0, 2000))
        b.bad(kinds[n % 2], value, "invalid_json")
    for n in range(500):  # valid JSON cut short
        kind = kinds[n % 2]
        doc = _dumps(b.base(kind))
        b.bad(kind, doc[:rng.randint(0, len(doc) - 1)], "invalid_json")
    for n in range(400):  # what strict JSON forbids
        kind = kinds[n % 2]
        doc = _dumps(b.base(kind))[:-1]
        tail = [b', "x": NaN}', b', "x": Infinity}', b', "x": -Infinity}', b', "x": 1e400}',
                b', "x": "\\ud800"}', b', "x": "\xff\xfe"}', b', "x": 01}', b', "x": [1,]}'][n % 8]
        b.bad(kind, doc + tail, "invalid_json")
    for n in range(100):  # nesting beyond the parser's limit, a byte-order mark, blanks
        kind = kinds[n % 2]
        depth = rng.randint(1025, 100_000)
        b.bad(kind, b"[" * depth + b"]" * depth, "invalid_json")
        b.bad(kind, b"\xef\xbb\xbf" + _dumps(b.base(kind)), "invalid_json")
        b.bad(kind, rng.choice([b"", b" ", b"\n", b"\x00"]), "invalid_json")
    for n, text in enumerate([b"[]", b'"order"', b"42", b"null", b"true", b"[{}]", b'"{}"'] * 40):
        b.bad(kinds[n % 2], text, "not_an_object")
    for kind in kinds:
        doc = _dumps(b.base(kind))
        b.bad(kind, doc[:-1] + b', "pad": "' + b"p" * MIB + b'"}', "too_large")
        b.bad(kind, rng.randbytes(2 * MIB), "too_large")
        b.bad(kind, b"[" * (3 * MIB), "too_large")
        # larger than the worker's producer takes in one request (16 MiB)
        b.bad(kind, b"{" + b" " * (17 * MIB) + b"}", "too_large")
        target = b.corpus.orders if kind == "orders" else b.corpus.contacts
        target.append(Hostile(kind, b"{}", "missing_field:" + id_field[kind],
                              key=b"k" * (2 * MIB)))  # a key as large as a record may be

    for n in range(60):
        for kind in kinds:
            name = id_field[kind]
            doc = b.base(kind)
            wrong = rng.choice([*_WRONG_TYPES, None])
            cases = [({name: None}, f"wrong_type:{name}"), ({name: wrong}, f"wrong_type:{name}"),
                     ({name: ""}, f"empty:{name}"), ({name: "i" * 129}, f"too_long:{name}"),
                     ({"occurred_at": wrong}, "wrong_type:occurred_at"),
                     ({"occurred_at": rng.choice(_BAD_TIMESTAMPS)}, "bad_timestamp"),
                     ({"occurred_at": iso(b.now + rng.uniform(4200, 10**9))}, "future_timestamp"),
                     ({"occurred_at": "9999-12-31T23:59:59Z"}, "future_timestamp"),
                     ({"event_id": rng.choice(_WRONG_TYPES)}, "wrong_type:event_id"),
                     ({"event_id": None}, "wrong_type:event_id"),
                     ({"customer_id": rng.choice([*_WRONG_TYPES, None])}, "wrong_type:customer_id")]
            if kind == "orders":
                cases += [({"attributes": rng.choice([None, "a", 1, ["x"]])}, "wrong_type:attributes"),
                          ({"attributes": {"carrier": rng.choice(_WRONG_TYPES)}},
                           "wrong_type:attributes"),
                          ({"attributes": {f"k{i}": "v" for i in range(33)}}, "too_many_attributes"),
                          ({"attributes": {"carrier": "v" * 129}}, "too_long:attributes"),
                          ({"attributes": {"k" * 65: "v"}}, "too_long:attributes")]
            else:
                cases += [({"cause": rng.choice(_WRONG_TYPES)}, "wrong_type:cause"),
                          ({"cause": None}, "wrong_type:cause"), ({"cause": ""}, "empty:cause"),
                          ({"cause": "c" * 65}, "too_long:cause"),
                          ({"cause": '"}\n{' * 17}, "too_long:cause"),
                          ({"order_id": rng.choice(_WRONG_TYPES)}, "wrong_type:order_id"),
                          ({"channel": rng.choice([*_WRONG_TYPES, None])}, "wrong_type:channel")]
            doc["customer_id"] = CUSTOMER  # rejected records carry it too
            for change, reason in cases:
                b.bad(kind, _dumps({**doc, **change}), reason)
            for missing in ([name], ["occurred_at"], ["cause"] if kind == "contacts" else []):
                if missing:
                    b.bad(kind, _dumps({k: v for k, v in doc.items() if k not in missing}),
                          f"missing_field:{missing[0]}")


def generate(now: float, seed: int = 11) -> Corpus:
    """The corpus for a run whose records are processed at or after `now` (epoch seconds) and
    within 10 minutes of it (future timestamps are over an hour plus that margin ahead)."""
    builder = _Builder(now, seed)
    _registrations(builder)
    _valid(builder)
    _rejected(builder)
    rng = builder.rng
    rng.shuffle(builder.corpus.orders)
    rng.shuffle(builder.corpus.contacts)
    return builder.corpus
