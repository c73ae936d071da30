"""Shared state in Redis: dedup identities, order attributes for the join, pending contacts,
bounded label registries and event-time buckets.

All changes go through one Lua script (`lua/state.lua`), one call per batch, so a batch is
applied atomically and a replayed batch changes nothing. This module builds the script's
arguments, parses its reply and reads the label registries; it holds no state of its own
beyond a cache of those registries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from streams.buckets import COARSE_SECONDS, FINE_SECONDS, bucket_ttls, fine_horizon, pair_ttl
from streams.events import ContactEvent, OrderEvent
from streams.settings import Settings

SCRIPT = (Path(__file__).parent / "lua" / "state.lua").read_text()
OTHER = "other"
OUTBOX = "cpo:outbox"
UNATTRIBUTED_REASONS = {"n": "no_order_id", "f": "order_not_found"}


@dataclass(frozen=True, slots=True)
class Attributed:
    contact_id: str
    cause_id: int
    order_id: str
    order_time: int
    contact_time: float
    pairs: tuple[tuple[int, int], ...]  # (dimension id, value id)


@dataclass(frozen=True, slots=True)
class Unattributed:
    contact_id: str
    cause_id: int
    reason: str  # "no_order_id" | "order_not_found"
    contact_time: float


@dataclass
class BatchResult:
    totals: dict[str, int] = field(default_factory=dict)
    attributed: list[Attributed] = field(default_factory=list)
    unattributed: list[Unattributed] = field(default_factory=list)
    pending: int = 0
    outbox_ids: list[str] = field(default_factory=list)  # entries holding these output records


@dataclass
class Labels:
    """Reverse label registries: ids in Redis fields -> label values. Id 0 is `other`."""

    causes: dict[int, str] = field(default_factory=dict)
    dimensions: dict[int, str] = field(default_factory=dict)
    values: dict[tuple[int, int], str] = field(default_factory=dict)

    def cause(self, cause_id: int) -> str:
        return self.causes.get(cause_id, OTHER)

    def value(self, dim_id: int, value_id: int) -> str:
        return self.values.get((dim_id, value_id), OTHER)

    def knows(self, cause_ids: Iterable[int], pairs: Iterable[tuple[int, int]]) -> bool:
        return all(c == 0 or c in self.causes for c in cause_ids) and all(
            d in self.dimensions and (v == 0 or (d, v) in self.values) for d, v in pairs
        )


def parse_pairs(text: str) -> tuple[tuple[int, int], ...]:
    """'1:3,2:0' -> ((1, 3), (2, 0))."""
    if not text:
        return ()
    return tuple((int(d), int(v)) for d, v in (pair.split(":") for pair in text.split(",")))


def connect(settings: Settings) -> aioredis.Redis:
    """An asyncio Redis client with bounded timeouts, so a hung server surfaces as an error."""
    return aioredis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=15,
    )


class RedisState:
    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.script = client.register_script(SCRIPT)
        self.dimensions = settings.dimensions
        self._dim_index = {name: i + 1 for i, name in enumerate(settings.dimensions)}
        windows = list(settings.window_seconds().values())
        fine_ttl, coarse_ttl = bucket_ttls(windows)
        self._common = [str(FINE_SECONDS), str(COARSE_SECONDS), str(fine_ttl), str(coarse_ttl),
                        str(fine_horizon(windows)),
                        str(pair_ttl(windows) if settings.rca_pairs else 0)]
        self._batch_head = [
            str(int(settings.join_grace)),
            str(int(settings.order_retention)),
            str(int(settings.contact_retention)),
            str(settings.max_causes),
            str(settings.max_values),
            str(len(settings.dimensions)),
            *settings.dimensions,
        ]
        self._labels = Labels()

    def batch_args(
        self, orders: list[OrderEvent], contacts: list[ContactEvent], now: float
    ) -> list[str | bytes]:
        """The script's arguments; the events travel as one JSON array (cheap to pack here and
        to decode in Lua, unlike thousands of separate arguments)."""
        events: list = [len(orders)]
        dim_index = self._dim_index
        for order in orders:
            # An empty value counts as the attribute being absent: an empty label value is a
            # missing label to Prometheus.
            tracked = [(dim_index[k], v) for k, v in order.attributes.items()
                       if v and k in dim_index]
            events += (order.order_id, order.occurred_at, len(tracked))
            for pair in tracked:
                events += pair
        events.append(len(contacts))
        for contact in contacts:
            events += (contact.contact_id, repr(contact.occurred_at), contact.cause,
                       contact.order_id or "")
        return ["batch", repr(now), *self._common, *self._batch_head, orjson.dumps(events)]

    async def apply_batch(
        self, orders: list[OrderEvent], contacts: list[ContactEvent], now: float
    ) -> BatchResult:
        """Count new orders and contacts, join, and park contacts whose order is not here yet."""
        return self._parse(await self.script(args=self.batch_args(orders, contacts, now)))

    async def expire_pending(self, now: float, limit: int = 5000) -> BatchResult:
        """Turn contacts whose join grace has passed into `order_not_found`; safe on any worker."""
        return self._parse(await self.script(args=["expire", repr(now), *self._common, str(limit)]))

    async def outbox_done(self, ids: list[str]) -> None:
        """Forget output records that Kafka has acknowledged."""
        if ids:
            await self.client.xdel(OUTBOX, *ids)

    async def outbox_orphans(self, older_than: float, limit: int = 2000) -> BatchResult:
        """Output records left by a crashed worker: older than `older_than` seconds (Redis clock)."""
        seconds, micros = await self.client.time()
        cutoff_ms = int((seconds + micros / 1e6 - older_than) * 1000)
        entries = await self.client.xrange(OUTBOX, "-", str(cutoff_ms), count=limit)
        result = BatchResult()
        for outbox_id, fields in entries:
            result.attributed += parse_attributed(orjson.loads(fields["a"]))
            result.unattributed += parse_unattributed(orjson.loads(fields["u"]))
            result.outbox_ids.append(outbox_id)
        return result

    async def pending_count(self) -> int:
        return int(await self.client.zcard("cpo:pq"))

    async def labels(self, result: BatchResult | None = None) -> Labels:
        """The label registries, reloaded when `result` mentions an id not seen before."""
        if result is not None:
            causes = [a.cause_id for a in result.attributed]
            causes += [u.cause_id for u in result.unattributed]
            pairs = [p for a in result.attributed for p in a.pairs]
            causes += [int(f.split(":")[1]) for f in result.totals if f.startswith(("c:", "a:", "u:"))]
            pairs += [_field_pair(f) for f in result.totals if f.startswith(("o:", "a:"))]
            if self._labels.knows(causes, pairs):
                return self._labels
        self._labels = await read_labels(self.client)
        return self._labels

    @staticmethod
    def _parse(reply: list) -> BatchResult:
        flat_totals, attributed, unattributed, pending, outbox_id = reply
        totals = {flat_totals[i]: int(flat_totals[i + 1]) for i in range(0, len(flat_totals), 2)}
        return BatchResult(
            totals=totals,
            attributed=parse_attributed(attributed),
            unattributed=parse_unattributed(unattributed),
            pending=int(pending),
            outbox_ids=[outbox_id] if outbox_id else [],
        )


def parse_attributed(flat: list | dict) -> list[Attributed]:
    """The script's flat attributed list (an empty one may arrive as `{}` from cjson)."""
    return [Attributed(str(flat[i]), int(flat[i + 1]), str(flat[i + 2]), int(flat[i + 3]),
                       float(flat[i + 4]), parse_pairs(str(flat[i + 5])))
            for i in range(0, len(flat), 6)]


def parse_unattributed(flat: list | dict) -> list[Unattributed]:
    return [Unattributed(str(flat[i]), int(flat[i + 1]), UNATTRIBUTED_REASONS[flat[i + 2]],
                         float(flat[i + 3]))
            for i in range(0, len(flat), 4)]


def _field_pair(field_name: str) -> tuple[int, int]:
    """'o:1:3' or 'a:2:1:3' -> (1, 3)."""
    parts = field_name.split(":")
    return int(parts[-2]), int(parts[-1])


async def read_labels(client: aioredis.Redis) -> Labels:
    """Load every registry in one pipelined round trip after reading the dimension list."""
    dims = await client.hgetall("cpo:reg:dim")
    dimensions = {int(i): name for name, i in dims.items()}
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall("cpo:reg:cause")
        for dim_id in dimensions:
            pipe.hgetall(f"cpo:reg:v:{dim_id}")
        replies = await pipe.execute()
    causes = {int(i): name for name, i in replies[0].items()}
    values = {
        (dim_id, int(i)): name
        for dim_id, reply in zip(dimensions, replies[1:])
        for name, i in reply.items()
    }
    return Labels(causes=causes, dimensions=dimensions, values=values)
