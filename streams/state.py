"""Shared state in Redis: dedup identities, order attributes for the join, pending contacts,
bounded label registries and event-time buckets.

All changes go through one Lua script (`lua/state.lua`), one call per batch, so a batch is
applied atomically and a replayed batch changes nothing. This module counts the batch's orders
(`streams.tally`), builds the script's arguments, parses its reply and reads the label
registries; it holds no state of its own beyond a cache of those registries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from pathlib import Path
from zlib import crc32

import msgspec
import numpy as np
import orjson
import redis
import redis.asyncio as aioredis
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams.buckets import COARSE_SECONDS, FINE_SECONDS, bucket_ttls, fine_horizon, pair_ttl
from streams.events import ATTRIBUTES, OCCURRED_AT, ContactEvent, OrderEvent
from streams.settings import Settings
from streams.tally import ABSENT, OrderTally, Tally

SCRIPT = (Path(__file__).parent / "lua" / "state.lua").read_text()
OTHER = "other"
_ORDER_ID = attrgetter("order_id")
OUTBOX = "cpo:outbox"
UNATTRIBUTED_REASONS = {"n": "no_order_id", "f": "order_not_found"}
# Identities live in this many small hashes per kind (`cpo:o:<shard>`, `cpo:c:<shard>`). Part of
# the data layout: changing it orphans every stored identity.
IDENTITY_SHARDS = 16384
# Each identity shard is swept once per retention / SWEEPS_PER_RETENTION: an identity outlives
# its retention by at most that much (4%), and the sweep examines 24 identities per identity
# stored per retention, a bounded page per call (lua/state.lua).
SWEEPS_PER_RETENTION = 24


def sweep_period(retention: float) -> float:
    """Seconds between two sweeps of one identity shard."""
    return retention / SWEEPS_PER_RETENTION
PAIR_QUEUE = "cpo:pbq"  # pair counts waiting to be folded into the pair buckets
MAX_FOLD_ENTRIES = 500  # batches' pair counts per fold call


def shard_of(identity: str) -> int:
    return crc32(identity.encode()) % IDENTITY_SHARDS


def identity_key(kind: str, identity: str) -> str:
    """The hash holding an order ("o") or contact ("c") identity, as a field named after it."""
    return f"cpo:{kind}:{shard_of(identity)}"


def count_identities(client: redis.Redis, kind: str) -> int:
    """Order ("o") or contact ("c") identities stored: a scan, for tests and the benchmark."""
    keys = list(client.scan_iter(match=f"cpo:{kind}:*", count=1000))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hlen(key)
        return sum(pipe.execute())


class Attributed(msgspec.Struct, frozen=True, gc=False):
    """A contact the script joined to its order (a Struct: thousands are made per batch, and a
    frozen dataclass's __init__ took 2.5 times as long)."""

    contact_id: str
    cause_id: int
    order_id: str
    order_time: int
    contact_time: float
    values: str  # the order's attribute values, "d:v,d:v" (dimension id:value id), or ""


class Unattributed(msgspec.Struct, frozen=True, gc=False):
    """A contact counted without an order."""

    contact_id: str
    cause_id: int
    reason: str  # "no_order_id" | "order_not_found"
    contact_time: float


Stamp = tuple[str, str]  # (version, token) of the label registries: see lua/state.lua


@dataclass
class BatchResult:
    totals: dict[str, int] = field(default_factory=dict)
    attributed: list[Attributed] = field(default_factory=list)
    unattributed: list[Unattributed] = field(default_factory=list)
    pending: int = 0
    outbox_ids: list[str] = field(default_factory=list)  # entries holding these output records
    stamp: Stamp | None = None  # the registries' stamp its ids belong to (None: not known)
    redis_time: float = 0.0  # Redis's clock when the call ran


@dataclass
class Labels:
    """Reverse label registries: ids in Redis fields -> label values. Id 0 is `other`."""

    causes: dict[int, str] = field(default_factory=dict)
    dimensions: dict[int, str] = field(default_factory=dict)
    values: dict[tuple[int, int], str] = field(default_factory=dict)
    # the registries' stamp tokens by version, as read with them (lua/state.lua, reg:stamp)
    tokens: dict[str, str] = field(default_factory=dict)
    # "d:v" (as in fields and an attributed contact's values) -> (dimension, value)
    pairs: dict[str, tuple[str, str]] = field(init=False)
    # "d:v" -> '"<dimension>":"<value>"' (JSON), made on first use
    _fragments: dict[str, bytes] = field(init=False, default_factory=dict, compare=False,
                                         repr=False)

    def __post_init__(self) -> None:
        self.pairs = {f"{d}:0": (name, OTHER) for d, name in self.dimensions.items()}
        self.pairs.update({f"{d}:{v}": (self.dimensions[d], value)
                           for (d, v), value in self.values.items() if d in self.dimensions})

    def cause(self, cause_id: int) -> str:
        return self.causes.get(cause_id, OTHER)

    def cause_named(self, cause_id: int) -> str | None:
        """The cause's label, or None for an id no registry here has (id 0 is `other`)."""
        return OTHER if cause_id == 0 else self.causes.get(cause_id)

    def value(self, dim_id: int, value_id: int) -> str:
        return self.values.get((dim_id, value_id), OTHER)

    def attributes_json(self, values: str) -> bytes:
        """An attributed contact's "d:v,d:v" as the JSON object {dimension: value}, joined
        from each pair's JSON, made once (output records are the worker's busiest JSON)."""
        if not values:
            return b"{}"
        pairs = values.split(",")
        fragments = self._fragments
        for pair in pairs:
            if pair not in fragments:
                fragments[pair] = orjson.dumps(dict([self.pairs[pair]]))[1:-1]
        return b"{" + b",".join(map(fragments.__getitem__, pairs)) + b"}"

    def names(self, stamp: Stamp | None) -> bool:
        """Whether these labels name the ids of a reply made at `stamp`: the registries read
        here are those of that stamp, or grew from it (same token at its version). False once
        Redis lost registrations (a flush, a rollback), whatever ids were given since."""
        return stamp is None or self.tokens.get(stamp[0]) == stamp[1]


# Every error a Redis call can raise; `redis_permanent` tells those worth retrying.
REDIS_ERRORS = (RedisError, OSError)
# Error replies that clear by themselves: another script running long (BUSY), a restart
# (LOADING), memory freed by expiring keys (OOM), a failover in progress (READONLY,
# MASTERDOWN, TRYAGAIN, CLUSTERDOWN, NOREPLICAS), a failing snapshot's disk (MISCONF).
RETRIED_REPLIES = frozenset({"BUSY", "LOADING", "OOM", "READONLY", "MASTERDOWN", "TRYAGAIN",
                             "CLUSTERDOWN", "NOREPLICAS", "MISCONF"})


def reply_code(exc: BaseException) -> str:
    """The code of an error reply ("BUSY", "STALE_REGISTRY", ...): its first word."""
    code = getattr(exc, "status_code", None)
    return code or (str(exc).split(" ", 1)[0] if str(exc) else "")


def redis_permanent(exc: BaseException) -> str | None:
    """What to fix when no retry can clear `exc`, else None. Lost connections, timeouts and the
    RETRIED_REPLIES can clear; a refused login or right, a script error (a bug) or a wrong
    command cannot, and retrying them forever would stall the partition silently."""
    if isinstance(exc, (AuthenticationError, AuthorizationError, NoPermissionError)):
        return ("check the user and password in CPO_REDIS_URL and that user's ACL (it needs "
                "the scripting commands and the keys cpo:*)")
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
        return None
    if isinstance(exc, ResponseError) and reply_code(exc) in RETRIED_REPLIES:
        return None
    return "no retry clears this Redis error; report it with this line"


def connect(settings: Settings) -> aioredis.Redis:
    """An asyncio Redis client with bounded timeouts, so a hung server surfaces as an error."""
    return aioredis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=15,
    )


class Registry:
    """The worker's copy of the registry ids it has used, valid while its stamp is (the
    registries only grow meanwhile, so the copy only grows). A dimension whose registry is full
    is known whole: every other value of it is `other`, with no entry per value here (a
    dimension with millions of distinct values costs no memory)."""

    def __init__(self, stamp: Stamp, dim_ids: list[int], dimensions: tuple[str, ...],
                 max_values: int, tally: OrderTally) -> None:
        self.stamp = stamp
        # One column per dimension, in ascending dimension id (the order of pairs in fields).
        order = sorted(range(len(dimensions)), key=lambda i: dim_ids[i])
        self.columns = {dimensions[i]: column for column, i in enumerate(order)}
        self.names = tuple(dimensions[i] for i in order)
        # Per column, value -> id: an absent or empty value maps to ABSENT, `other` to 0.
        self.ids = [{None: ABSENT, "": ABSENT, OTHER: 0} for _ in order]
        self.full = [False for _ in order]  # whether the column's registry is full, and here
        # Per column, value id -> ",d:v" (ABSENT, i.e. -1, is the last item: "").
        self._pair_texts = [[f",{dim_ids[i]}:{v}" for v in range(max_values)] + [""]
                           for i in order]
        self._values_of = itemgetter(*self.names) if len(order) > 1 else None
        self.tally = tally

    def known(self, dimension: str, value: str) -> bool:
        column = self.columns[dimension]
        return self.full[column] or value in self.ids[column]

    def learn(self, dimension: str, value: str, value_id: int) -> None:
        column = self.columns[dimension]
        if not self.full[column]:  # a full one has every registered value, the rest are 0
            self.ids[column][value] = value_id

    def learn_full(self, dimension: str, registered: dict[str, int]) -> None:
        """The whole registry of a full dimension: its values' ids, every other one is 0."""
        column = self.columns[dimension]
        self.ids[column].update(registered)
        self.full[column] = True

    def columns_of(self, attributes: list[dict[str, str]]) -> list[list[int | None]]:
        """The orders' value ids, column by column, by C-level maps rather than a Python loop
        per order; None for a value without an id yet."""
        values: list | None = None
        if self._values_of is not None and attributes:
            try:  # one call per order takes all its values, when it has every dimension
                values = list(zip(*map(self._values_of, attributes)))
            except KeyError:
                pass
        if values is None:
            values = [list(map(dict.get, attributes, repeat(name))) for name in self.names]
        columns = [list(map(ids.get, column)) for ids, column in zip(self.ids, values)]
        for i, column in enumerate(columns):
            if self.full[i] and None in column:
                columns[i] = [0 if v is None else v for v in column]
        return columns

    def texts_of(self, columns: list[list[int]]) -> list[str]:
        """Each order's ",d:v,..." (the attributes part of its record), from its value ids."""
        return list(map("".join, zip(*[map(texts.__getitem__, column)
                                      for texts, column in zip(self._pair_texts, columns)])))


class UniqueOrders:
    """A batch's orders as they are decoded: the first occurrence of each order_id, and the
    registry ids of their attribute values. The ids are looked up run by run, while the orders'
    attribute dicts are still in the CPU cache; a whole batch's dicts no longer are, and the
    lookup then costs more (0.97 against 0.59 µs per order, bench/README session 10)."""

    def __init__(self, registry: Registry | None) -> None:
        self.registry = registry  # the cache the ids come from; None: none yet
        self.first: dict[str, OrderEvent] = {}  # order_id -> its first order in the batch
        self.duplicates = 0  # later occurrences of an order_id in the batch
        self._columns: list[list[list[int | None]]] = []  # per run added, per column

    def add(self, orders: list[OrderEvent]) -> None:
        """Orders decoded after those added before, in record order."""
        ids = list(map(_ORDER_ID, orders))
        by_id = dict(zip(ids, orders))  # each order_id where it first occurs, with its last order
        if len(by_id) < len(orders):  # then each one's first order (a key keeps its place)
            by_id.update(zip(reversed(ids), reversed(orders)))
        first = self.first
        if not first.keys().isdisjoint(by_id):
            for order_id in first.keys() & by_id.keys():  # seen in an earlier run
                del by_id[order_id]
        first.update(by_id)
        new = list(by_id.values())
        self.duplicates += len(orders) - len(new)
        if self.registry is not None and new:
            self._columns.append(self.registry.columns_of(list(map(ATTRIBUTES, new))))

    def columns(self) -> list[list[int | None]] | None:
        """The value ids of the first orders, column by column (as `Registry.columns_of`)."""
        if self.registry is None:
            return None
        return [list(chain.from_iterable(runs)) for runs in zip(*self._columns)]


@dataclass
class ScriptBatch:
    """A batch ready for the script: its orders counted in the worker, its arguments packed.

    `prepare` does this for the next batch while the previous one runs in Redis; orders with a
    value the worker has no registry id for yet are encoded by `encode`, after registering it.
    """

    now: float  # the worker's clock (Redis-corrected, streams/clock.py) it was counted at
    orders: list[OrderEvent]  # first occurrence of each order_id in the batch
    contacts: list[ContactEvent]
    batch_duplicates: int  # later occurrences of an order_id in the batch
    contacts_arg: bytes
    orders_arg: bytes | None = None  # None: some value needs registering first
    tally: Tally | None = None
    encoded_with: Registry | None = None  # the registry cache whose ids orders_arg holds

    def release(self) -> None:
        """Drop the events and arguments once the script has counted the batch (20,000
        records' events and arguments are about 20 MB)."""
        self.orders, self.contacts = [], []
        self.contacts_arg, self.orders_arg, self.tally = b"", None, None


class RedisState:
    """The script's calls and their arguments and replies, and the worker's caches of the label
    registries: value ids (`Registry`) and names (`Labels`), each under the registries' stamp
    it was read at. A batch's script call is made by the worker's lane (streams/lane.py)."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.script = client.register_script(SCRIPT)
        self.dimensions = settings.dimensions
        windows = list(settings.window_seconds().values())
        fine_ttl, coarse_ttl = bucket_ttls(windows)
        self._fine_horizon = fine_horizon(windows)
        self._ttls = (fine_ttl, coarse_ttl)
        self._common = [str(FINE_SECONDS), str(COARSE_SECONDS), str(fine_ttl), str(coarse_ttl),
                        str(self._fine_horizon),
                        str(pair_ttl(windows) if settings.rca_pairs else 0)]
        self._expire_tail = [str(int(settings.order_retention)),
                             str(int(settings.contact_retention)), str(IDENTITY_SHARDS),
                             str(sweep_period(settings.order_retention)),
                             str(sweep_period(settings.contact_retention))]
        self._registry: Registry | None = None
        self._labels = Labels()

    def unique_orders(self, orders: Iterable[OrderEvent] = ()) -> UniqueOrders:
        """An empty batch's orders, with the registry ids known now; then `orders` added."""
        unique = UniqueOrders(self._registry)
        unique.add(list(orders))
        return unique

    def prepare(self, orders: UniqueOrders, contacts: list[ContactEvent],
                now: float, fetched_at: list[float] | None = None) -> ScriptBatch:
        """Everything the batch needs before Redis, CPU only. `now`: the worker's
        Redis-corrected clock; `fetched_at`: when each contact was fetched, by that clock (its
        join grace runs from there; streams/hold.py), `now` if not given."""
        flat: list = []
        for contact, fetched in zip(contacts, fetched_at or [now] * len(contacts), strict=True):
            order_id = contact.order_id or ""
            flat += (contact.contact_id, shard_of(contact.contact_id), repr(contact.occurred_at),
                     contact.cause, order_id, shard_of(order_id) if order_id else "",
                     max(0.0, now - fetched))
        batch = ScriptBatch(now, list(orders.first.values()), contacts, orders.duplicates,
                            orjson.dumps(flat))
        registry = self._registry
        if registry is not None and batch.orders:
            columns = orders.columns() if orders.registry is registry else None
            self._encode(batch, registry, columns)
        return batch

    async def encode(self, batch: ScriptBatch) -> Stamp:
        """Make the batch's arguments hold ids of the registries as they are now, registering
        values first if the worker lacks some; returns the stamp they belong to."""
        registry = self._registry
        if batch.encoded_with is not registry:  # encoded with ids of registries since reset
            batch.orders_arg = None
        if registry is None or (batch.orders and batch.orders_arg is None):
            registry = self._registry = await self._register(batch.orders, registry)
            if batch.orders:
                self._encode(batch, registry, provisional=True)
        return registry.stamp

    def registries_lost(self, stamp: Stamp | None) -> None:
        """The script refused `stamp` (STALE_REGISTRY): Redis lost registrations. Every cached
        name may now mean another value, and so may every id cached under that stamp (a cache
        that has moved to a later stamp since is tried with it)."""
        self._labels = Labels()
        if self._registry is not None and self._registry.stamp == stamp:
            self._registry = None

    def batch_args(self, batch: ScriptBatch, stamp: Stamp, lane: str, seq: int,
                   first: bool) -> list[str | bytes]:
        tally = batch.tally or Tally()
        return ["batch", *self._common, repr(batch.now), str(int(self.settings.join_grace)),
                str(self.settings.max_causes), *stamp, lane, str(seq), "1" if first else "0",
                batch.orders_arg or b"[]", batch.contacts_arg, orjson.dumps(tally.script_arg()),
                orjson.dumps({"p": tally.pairs}) if tally.pairs else b""]

    def batch_result(self, reply: list, batch: ScriptBatch) -> BatchResult:
        """The script's reply to a batch, with the worker's order counts added."""
        return self._merge(self._parse(reply), batch)

    def _encode(self, batch: ScriptBatch, registry: Registry,
                columns: list[list[int | None]] | None = None, provisional: bool = False) -> None:
        """Records and counts of the batch's orders, or nothing if a value has no id yet.
        `columns`: the orders' value ids from `registry`, if already looked up (the ids of
        values learnt since then are looked up again).

        With `provisional`, a value still without an id is counted as `other`: only the values
        of already-known orders are left unregistered, and the script takes those back.
        """
        orders = batch.orders
        if columns is None or any(None in column for column in columns):
            columns = registry.columns_of(list(map(ATTRIBUTES, orders)))
        for i, column in enumerate(columns):
            if None in column:
                if not provisional:
                    return
                columns[i] = [0 if v is None else v for v in column]
        texts = registry.texts_of(columns)
        times = list(map(math.floor, map(OCCURRED_AT, orders)))
        order_ids = list(map(_ORDER_ID, orders))
        records = map(f"0{int(batch.now)},{{}}{{}}".format, times, texts)
        batch.orders_arg = orjson.dumps(list(chain.from_iterable(
            zip(order_ids, map(shard_of, order_ids), records))))
        batch.tally = registry.tally.count(
            np.array(times, dtype=np.int64), np.array(columns, dtype=np.int64).T, batch.now)
        batch.encoded_with = registry

    def register_args(self, orders: list[OrderEvent], known: Registry | None) -> list:
        """The script's arguments registering the values `known` lacks, order by order (the
        script skips the values of orders that are duplicates: they take no label slot)."""
        dims = self.dimensions
        index = {name: i for i, name in enumerate(dims)}
        new: list = []
        for order in orders:
            for name, value in order.attributes.items():
                i = index.get(name)
                if i is not None and value and (known is None or not known.known(name, value)):
                    new += (order.order_id, shard_of(order.order_id), i + 1, value)
        stamp = known.stamp if known is not None else ("", "")
        return ["register", *self._common, str(self.settings.max_values), *stamp,
                str(len(dims)), *dims, orjson.dumps(new)]

    async def _register(self, orders: list[OrderEvent], known: Registry | None) -> Registry:
        """Register the values the cache lacks; returns the cache, with their ids: `known`
        grown if its stamp is still valid, else a new one."""
        dims = self.dimensions
        version, token, valid, dim_ids, flat, full = await self.script(
            args=self.register_args(orders, known))
        if known is not None and int(valid):
            registry = known
            registry.stamp = (version, token)
        else:
            registry = Registry(
                (version, token), [int(d) for d in dim_ids], dims, self.settings.max_values,
                OrderTally(sorted(int(d) for d in dim_ids), self.settings.max_values,
                           self._fine_horizon, self._ttls, self.settings.rca_pairs))
        for dim, registered in zip(dims, full):
            if registered:
                registry.learn_full(dim, {str(registered[i]): int(registered[i + 1])
                                          for i in range(0, len(registered), 2)})
        for i in range(0, len(flat), 3):
            registry.learn(dims[int(flat[i]) - 1], str(flat[i + 1]), int(flat[i + 2]))
        return registry

    @staticmethod
    def _merge(result: BatchResult, batch: ScriptBatch) -> BatchResult:
        """The script's totals plus the worker's order counts; fields that net to 0 dropped."""
        totals = dict(batch.tally.totals) if batch.tally else {}
        for name, n in result.totals.items():
            totals[name] = totals.get(name, 0) + n
        if batch.batch_duplicates:
            totals["do"] = totals.get("do", 0) + batch.batch_duplicates
        result.totals = {name: n for name, n in totals.items() if n}
        return result

    async def expire_pending(self, limit: int = 5000) -> BatchResult:
        """Turn contacts whose join grace has passed (by Redis's clock) into `order_not_found`,
        and sweep identities past their retention a page at a time; safe on any worker."""
        return self._parse(await self.script(
            args=["expire", *self._common, str(limit), *self._expire_tail]))

    async def fold_pairs(self, limit: int = MAX_FOLD_ENTRIES) -> int:
        """Add the queued pair counts of many batches to the pair buckets; returns how many
        batches' counts. The sums and the expansion of joined contacts into pairs are done
        here, not in Redis's single thread; the script applies them only if no other worker
        folded the same entries first, so each entry counts exactly once."""
        if not self.settings.rca_pairs:
            await self.client.delete(PAIR_QUEUE)  # pairs were switched off
            return 0
        entries = await self.client.lrange(PAIR_QUEUE, 0, limit - 1)
        if not entries:
            return 0
        sums: dict[str, dict[str, int]] = {}
        for entry in entries:
            for line in entry.split("\n")[1:]:
                if line:
                    add_pair_counts(sums, orjson.loads(line))
        flat: list = []
        for start, counts in sums.items():
            counts = {name: n for name, n in counts.items() if n}
            flat += (start, len(counts))
            for name, n in counts.items():
                flat += (name, n)
        header = entries[0].split("\n", 1)[0]
        return int(await self.script(args=["fold", *self._common, header, str(len(entries)),
                                           orjson.dumps(flat)]))

    async def outbox_done(self, ids: list[str]) -> None:
        """Forget output records that Kafka has acknowledged."""
        if ids:
            await self.client.xdel(OUTBOX, *ids)

    async def outbox_orphans(self, older_than: float, limit: int = 2000) -> list[BatchResult]:
        """Output records left by a crashed worker: older than `older_than` seconds (Redis
        clock), one result per registry stamp they were written under."""
        seconds, micros = await self.client.time()
        cutoff_ms = int((seconds + micros / 1e6 - older_than) * 1000)
        entries = await self.client.xrange(OUTBOX, "-", str(cutoff_ms), count=limit)
        results: dict[str | None, BatchResult] = {}
        for outbox_id, fields in entries:
            stamp = fields.get("s")  # entries of versions before 0.3 have none
            result = results.get(stamp)
            if result is None:
                result = results[stamp] = BatchResult(
                    stamp=tuple(stamp.split(" ", 1)) if stamp else None)  # type: ignore[arg-type]
            result.attributed += parse_attributed(fields["a"])
            result.unattributed += parse_unattributed(fields["u"])
            result.outbox_ids.append(outbox_id)
        return list(results.values())

    async def pending_count(self) -> int:
        return int(await self.client.zcard("cpo:pq"))

    async def labels(self, result: BatchResult | None = None) -> Labels | None:
        """Labels that name `result`'s ids: the cached ones, or the registries read again when
        those do not (ids registered since, or Redis lost registrations). None when Redis no
        longer has the registries the result's ids came from: a rollback lost them, and with
        them that call's counts."""
        if result is not None and self._labels.names(result.stamp):
            return self._labels
        self._labels = await read_labels(self.client)
        return self._labels if result is None or self._labels.names(result.stamp) else None

    @staticmethod
    def _parse(reply: list) -> BatchResult:
        flat_totals, attributed, unattributed, pending, outbox_id, version, token, now = reply
        totals = {flat_totals[i]: int(flat_totals[i + 1]) for i in range(0, len(flat_totals), 2)}
        return BatchResult(
            totals=totals,
            attributed=parse_attributed(attributed),
            unattributed=parse_unattributed(unattributed),
            pending=int(pending),
            outbox_ids=[outbox_id] if outbox_id else [],
            stamp=(version, token),
            redis_time=float(now),
        )


def add_pair_counts(sums: dict[str, dict[str, int]], entry: dict) -> None:
    """Add one pair-queue line: `p` counts as they are, and each joined contact of `q`
    (coarse start, cause id, "d:v,d:v,...") as one `q:` count per pair of its values."""
    for start, counts in entry.get("p", {}).items():
        into = sums.setdefault(start, {})
        for name, n in counts.items():
            into[name] = into.get(name, 0) + n
    joined = entry.get("q", [])
    for i in range(0, len(joined), 3):
        start, cause, values = joined[i], joined[i + 1], joined[i + 2].split(",")
        into = sums.setdefault(start, {})
        for a in range(len(values) - 1):
            prefix = f"q:{cause}:{values[a]}:"
            for b in range(a + 1, len(values)):
                name = prefix + values[b]
                into[name] = into.get(name, 0) + 1


def parse_attributed(text: str) -> list[Attributed]:
    """The script's JSON flat attributed list ("" or `{}` from cjson when empty)."""
    flat = orjson.loads(text) if text else ()
    return [Attributed(flat[i], flat[i + 1], flat[i + 2], int(flat[i + 3]), float(flat[i + 4]),
                       flat[i + 5])
            for i in range(0, len(flat), 6)]


def parse_unattributed(text: str) -> list[Unattributed]:
    flat = orjson.loads(text) if text else ()
    return [Unattributed(flat[i], flat[i + 1], UNATTRIBUTED_REASONS[flat[i + 2]],
                         float(flat[i + 3]))
            for i in range(0, len(flat), 4)]


async def read_snapshot(client: aioredis.Redis, keys: Iterable[str] = ()
                        ) -> tuple[Labels, dict[str, dict[str, str]]]:
    """The label registries and the hashes at `keys` (a missing key reads as empty), as of one
    moment: one MULTI/EXEC. Read in two steps, a flush and rebuild in between named the counts
    with another registry's ids. The dimension list is read first, to know the value
    registries; if it changed by the time of the transaction, the read is made again."""
    unique_keys = sorted(set(keys))
    dims = await client.hgetall("cpo:reg:dim")
    while True:
        async with client.pipeline(transaction=True) as pipe:
            pipe.hgetall("cpo:reg:dim")
            pipe.hgetall("cpo:reg:stamp")
            pipe.hgetall("cpo:reg:cause")
            for dim_id in dims.values():
                pipe.hgetall(f"cpo:reg:v:{dim_id}")
            for key in unique_keys:
                pipe.hgetall(key)
            replies = await pipe.execute()
        if replies[0] == dims:
            break
        dims = replies[0]
    dimensions = {int(i): name for name, i in dims.items()}
    tokens = {version: token for version, token in replies[1].items() if version != "v"}
    causes = {int(i): name for name, i in replies[2].items()}
    values = {
        (dim_id, int(i)): name
        for dim_id, reply in zip(dimensions, replies[3:3 + len(dimensions)])
        for name, i in reply.items()
    }
    hashes = dict(zip(unique_keys, replies[3 + len(dimensions):]))
    return Labels(causes=causes, dimensions=dimensions, values=values, tokens=tokens), hashes


async def read_labels(client: aioredis.Redis) -> Labels:
    """The label registries, read at one moment."""
    return (await read_snapshot(client))[0]
