"""The Redis script on a real Redis: identities, the join and its grace, label folding, pair
counts, the fine horizon and replays, each checked against hand-computed numbers."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time

import orjson
import pytest
import redis

from streams.buckets import COARSE_SECONDS, FINE_SECONDS, bucket_key, bucket_start
from streams.events import ContactEvent, OrderEvent
from streams.lane import ScriptLane, apply
from streams.retry import Health, Retrying
from streams.settings import Settings, load_settings
from streams.state import (
    BatchResult,
    RedisState,
    connect,
    count_identities,
    identity_key,
    redis_permanent,
)

NOW = time.time()


def order(order_id: str, t: float = NOW - 60, **attributes: str) -> OrderEvent:
    return OrderEvent(order_id=order_id, occurred_at=t, attributes=attributes, event_id=None)


def contact(contact_id: str, cause: str, order_id: str | None, t: float = NOW - 30) -> ContactEvent:
    return ContactEvent(contact_id=contact_id, occurred_at=t, cause=cause, order_id=order_id,
                        channel=None, event_id=None)


@pytest.fixture
def settings(redis_db_url: str) -> Settings:
    return load_settings({"CPO_REDIS_URL": redis_db_url, "CPO_DIMENSIONS": "carrier,region",
                          "CPO_MAX_CAUSES": "3", "CPO_MAX_VALUES": "3", "CPO_WINDOWS": "5m,1h"})


async def apply_batch(state: RedisState, orders: list[OrderEvent],
                      contacts: list[ContactEvent], now: float | None = None,
                      fetched_at: list[float] | None = None) -> BatchResult:
    """One batch through the script, as a worker's lane sends it; `now`: the worker's clock
    (this host's, which the tests' Redis shares)."""
    batch = state.prepare(state.unique_orders(orders), contacts, now or time.time(), fetched_at)
    return await apply(state, batch, retrying())


def retrying() -> Retrying:
    return Retrying(Health(), "redis", lambda: None, redis_permanent)


def run(settings: Settings, *calls):
    """Make each (method, args) call in turn with a fresh client ("apply_batch": the helper
    above); return the results."""
    async def go():
        state = RedisState(connect(settings), settings)
        try:
            return [await (apply_batch(state, *args) if name == "apply_batch"
                           else getattr(state, name)(*args)) for name, *args in calls]
        finally:
            await state.client.aclose()
    return asyncio.run(go())


def bucket(settings: Settings, resolution: int, t: float) -> dict[str, int]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    fields = client.hgetall(bucket_key(resolution, bucket_start(t, resolution)))
    return {name: int(n) for name, n in fields.items()}


def test_a_replayed_batch_changes_nothing(settings: Settings) -> None:
    orders = [order("o1", carrier="acme", region="eu"), order("o2", carrier="bolt")]
    contacts = [contact("k1", "late_delivery", "o1"), contact("k2", "wismo", None)]
    first, second = run(settings, ("apply_batch", orders, contacts, NOW),
                        ("apply_batch", orders, contacts, NOW))
    assert first.totals["o"] == 2 and first.totals["oc"] == 1
    assert second.totals == {"do": 2, "dc": 2}
    assert (second.attributed, second.unattributed, second.outbox_ids) == ([], [], [])
    assert bucket(settings, COARSE_SECONDS, NOW - 60)["o"] == 2


def test_causes_and_values_fold_into_other_beyond_the_bounds(settings: Settings) -> None:
    # max 3 labels including "other": the first two names get ids, the rest fold into 0.
    orders = [order(f"o{i}", carrier=c) for i, c in enumerate(["a", "b", "c", "d"])]
    contacts = [contact(f"k{i}", cause, f"o{i}") for i, cause in
                enumerate(["late", "wismo", "damaged", "all"])]
    result, labels = run(settings, ("apply_batch", orders, contacts, NOW), ("labels",))
    assert labels.causes == {1: "late", 2: "wismo"}
    assert sorted(labels.values.values()) == ["a", "b"]
    assert result.totals["c:1"] == 1 and result.totals["c:2"] == 1
    assert result.totals["c:0"] == 2  # "damaged" beyond the bound, "all" reserved
    assert result.totals["o:1:0"] == 2  # carriers c and d


def test_a_contact_waits_for_its_order_then_expires_after_the_grace(settings: Settings) -> None:
    """The grace runs from when the worker fetched a contact (a held one, streams/hold.py, was
    fetched a while before its batch): k2 was fetched a grace ago, k3 a minute less."""
    now, grace = time.time(), settings.join_grace
    early = [contact("k1", "late", "o-late"), contact("k2", "late", "o-never"),
             contact("k3", "late", "o-never-either")]
    parked, joined, expired = run(
        settings,
        ("apply_batch", [], early, now, [now, now - grace - 1, now - grace + 60]),
        ("apply_batch", [order("o-late", carrier="acme")], [], now),
        ("expire_pending",),
    )
    assert parked.pending == 3 and parked.attributed == []
    assert [a.contact_id for a in joined.attributed] == ["k1"]
    assert joined.totals["oc"] == 1
    assert [(u.contact_id, u.reason) for u in expired.unattributed] == [("k2", "order_not_found")]
    # counted at the contact's event time
    assert bucket(settings, COARSE_SECONDS, NOW - 30)["u:1:f"] == 1
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert client.zrange("cpo:pq", 0, -1) == ['["k3",1,"%r","o-never-either"]' % (NOW - 30)]


def test_pairs_of_values_are_counted_for_orders_and_joined_contacts(settings: Settings) -> None:
    # the contact at the order's time: both land in the same 5-minute bucket; the pair counts
    # are queued, and folded into the pair buckets by a worker's timer
    run(settings, ("apply_batch", [order("o1", carrier="acme", region="eu")],
                   [contact("k1", "late", "o1", t=NOW - 60)], NOW), ("fold_pairs",))
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    start = bucket_start(NOW - 60, COARSE_SECONDS)
    pairs = client.hgetall(f"cpo:pb:{COARSE_SECONDS}:{start}")
    # carrier is dimension 1, region 2; acme and eu are value 1 of each.
    assert pairs == {"p:1:1:2:1": "1", "q:1:1:1:2:1": "1"}


def test_events_older_than_the_fine_horizon_skip_the_fine_buckets(settings: Settings) -> None:
    old = NOW - 3600  # 5m is the only short window: the horizon is 7 minutes
    run(settings, ("apply_batch", [order("o1", old), order("o2")], [], NOW))
    assert bucket(settings, FINE_SECONDS, old) == {}
    assert bucket(settings, COARSE_SECONDS, old)["o"] == 1
    assert bucket(settings, FINE_SECONDS, NOW - 60)["o"] == 1


def test_the_outbox_holds_output_until_acknowledged(settings: Settings) -> None:
    result, orphans_now, _, orphans_after = run(
        settings,
        ("apply_batch", [order("o1", carrier="acme")], [contact("k1", "late", "o1")], NOW),
        ("outbox_orphans", -60.0),  # everything counts as orphaned when older than -60 s
        ("outbox_done", []),
        ("outbox_orphans", -60.0),
    )
    (orphan,) = orphans_now  # one stamp: the call's, under which its ids are named
    assert [a.contact_id for a in orphan.attributed] == ["k1"]
    assert (orphan.outbox_ids, orphan.stamp) == (result.outbox_ids, result.stamp)
    run(settings, ("outbox_done", result.outbox_ids))
    (left,) = run(settings, ("outbox_orphans", -60.0))
    assert left == [] and [o.outbox_ids for o in orphans_after] == [result.outbox_ids]


def test_a_duplicate_orders_attributes_take_no_label_slot(settings: Settings) -> None:
    first = [order("o1", carrier="acme")]
    duplicate = [order("o1", carrier="bolt"), order("o2", carrier="swift")]
    _, second, labels = run(settings, ("apply_batch", first, [], NOW),
                            ("apply_batch", duplicate, [], NOW), ("labels",))
    assert second.totals["do"] == 1
    assert sorted(labels.values.values()) == ["acme", "swift"]  # bolt was only in a duplicate


def all_buckets(settings: Settings) -> dict[str, dict[str, str]]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    return {key: client.hgetall(key) for key in client.scan_iter(match="cpo:*b:*")}


def test_a_later_duplicate_leaves_every_count_as_it_was(settings: Settings) -> None:
    """The worker counts the duplicate as new; the script must take back exactly that, in the
    duplicate's own buckets and pairs (another time, other values), leaving no zero field."""
    run(settings, ("apply_batch", [order("o1", carrier="acme", region="eu")], [], NOW),
        ("fold_pairs",))
    before = all_buckets(settings)
    result, _ = run(settings, ("apply_batch",
                               [order("o1", NOW - 4000, carrier="bolt", region="us"),
                                order("o1", NOW - 60, carrier="acme")], [], NOW),
                    ("fold_pairs",))
    assert result.totals == {"do": 2}  # one in Redis already, one twice in the batch
    assert all_buckets(settings) == before


def test_reset_registries_are_registered_again(settings: Settings) -> None:
    """A worker caches registry ids; after the registries are gone (Redis flushed) it must not
    write the old ids, which would now name nothing or another value."""
    async def go():
        state = RedisState(connect(settings), settings)
        try:
            await apply_batch(state, [order("o1", carrier="acme"), order("o2", carrier="bolt")],
                              [])
            await state.client.flushdb()
            result = await apply_batch(state, [order("o3", carrier="bolt")], [])
            return result, await state.labels(result)
        finally:
            await state.client.aclose()
    result, labels = asyncio.run(go())
    assert labels.values == {(1, 1): "bolt"}
    assert result.totals == {"o": 1, "o:1:1": 1}
    assert bucket(settings, COARSE_SECONDS, NOW - 60) == {"o": 1, "o:1:1": 1}


def test_a_batch_prepared_before_the_registries_were_reset_is_encoded_again(
        settings: Settings) -> None:
    """Batches are prepared (their values turned into registry ids) while earlier ones run. A
    batch prepared before the registries were reset must not be counted under the old ids,
    whichever batch met the reset first."""
    async def go():
        state = RedisState(connect(settings), settings)
        try:
            await apply_batch(state, [order("o1", carrier="acme"), order("o2", carrier="bolt")],
                              [])  # acme 1, bolt 2
            first = state.prepare(state.unique_orders([order("o3", carrier="bolt")]), [], NOW)
            second = state.prepare(state.unique_orders([order("o4", carrier="acme")]), [], NOW)
            await state.client.flushdb()
            lane = ScriptLane(state, retrying())
            try:
                await lane.count(first)  # meets the reset: bolt is 1 now, acme 2
                result = await lane.count(second)
            finally:
                await lane.close()
            return result, await state.labels(result)
        finally:
            await state.client.aclose()
    result, labels = asyncio.run(go())
    assert labels.values == {(1, 1): "bolt", (1, 2): "acme"}
    assert result.totals == {"o": 1, "o:1:2": 1}
    assert bucket(settings, COARSE_SECONDS, NOW - 60) == {"o": 2, "o:1:1": 1, "o:1:2": 1}


def test_identities_are_forgotten_after_their_retention(redis_db_url: str) -> None:
    """With retentions of 6 s, an identity is swept within 6 s + 6/24 s of its arrival (Redis
    time), over calls that each visit a bounded page of shards."""
    settings = load_settings({"CPO_REDIS_URL": redis_db_url, "CPO_ORDER_RETENTION": "6s",
                              "CPO_CONTACT_RETENTION": "6s", "CPO_JOIN_GRACE": "1s"})
    run(settings, ("apply_batch", [order("old")], [contact("k-old", "late", None)]),
        ("expire_pending",))  # starts the sweeps' clocks
    time.sleep(7)
    run(settings, ("apply_batch", [order("recent")], []))
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert (count_identities(client, "o"), count_identities(client, "c")) == (2, 1)
    calls = 0
    while count_identities(client, "o") + count_identities(client, "c") > 1 and calls < 200:
        run(settings, *[("expire_pending",)] * 20)
        calls += 20
    assert client.hexists(identity_key("o", "recent"), "recent")
    assert (count_identities(client, "o"), count_identities(client, "c")) == (1, 0)
    (again,) = run(settings, ("apply_batch", [order("old")], []))
    assert again.totals["o"] == 1  # a forgotten order counts as new


def test_contacts_waiting_for_one_order_expire_and_join_each_on_its_own(settings: Settings) -> None:
    now, grace = time.time(), settings.join_grace
    first, second, expired, joined = run(
        settings,
        ("apply_batch", [], [contact("k1", "late", "o-shared")], now, [now - grace - 1]),
        ("apply_batch", [], [contact("k2", "wismo", "o-shared")], now),
        ("expire_pending",),
        ("apply_batch", [order("o-shared", carrier="acme")], []),
    )
    assert (first.pending, second.pending) == (1, 1)
    assert [(u.contact_id, u.reason) for u in expired.unattributed] == [("k1", "order_not_found")]
    assert [a.contact_id for a in joined.attributed] == ["k2"]
    assert joined.totals["oc"] == 1
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert (client.zcard("cpo:pq"), client.exists("cpo:pw")) == (0, 0)


def test_queued_pair_counts_are_folded_once_when_two_workers_race(settings: Settings) -> None:
    """Two workers read the same queued entries; the second fold must change nothing, not even
    drop the entry queued since."""
    async def go():
        state = RedisState(connect(settings), settings)
        try:
            await apply_batch(state, [order("o1", carrier="acme", region="eu")], [])
            stale = await state.client.lrange("cpo:pbq", 0, -1)  # what the slower worker read
            folded = await state.fold_pairs()  # the faster worker
            await apply_batch(state, [order("o2", carrier="bolt", region="eu")], [])
            late = await state.script(args=[
                "fold", *state._common, stale[0].split("\n", 1)[0], str(len(stale)),
                orjson.dumps([str(bucket_start(NOW - 60, COARSE_SECONDS)), 1, "p:1:1:2:1", 1])])
            return folded, int(late)
        finally:
            await state.client.aclose()
    folded, late = asyncio.run(go())
    assert (folded, late) == (1, 0)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    start = bucket_start(NOW - 60, COARSE_SECONDS)
    assert client.hgetall(f"cpo:pb:{COARSE_SECONDS}:{start}") == {"p:1:1:2:1": "1"}
    assert client.llen("cpo:pbq") == 1  # o2's counts, still queued


def snapshot(client: redis.Redis) -> dict[bytes, tuple[bytes, int]]:
    """Every key of the database, as DUMP gives it, with its time to live (ms; 0: none)."""
    return {key: (client.dump(key), max(client.pttl(key), 0)) for key in client.scan_iter()}


def roll_back(client: redis.Redis, keys: dict[bytes, tuple[bytes, int]]) -> None:
    """The database as it was at `snapshot`: what a crash under appendfsync everysec, an RDB
    restore or a failover to a lagging replica leaves."""
    client.flushdb()
    for key, (dump, ttl) in keys.items():
        client.restore(key, ttl, dump)


def test_ids_lost_in_a_rollback_and_given_to_other_values_are_never_used(
        redis_db_url: str) -> None:
    """Worker A registers bolt (id 2); Redis rolls back to before that; worker B then gets id 2
    for fedex. A's cached bolt -> 2 must be refused and bolt registered again (issue 21 item
    1): counting A's bolt order as o:1:2 would name it fedex from then on."""
    settings = load_settings({"CPO_REDIS_URL": redis_db_url, "CPO_DIMENSIONS": "carrier"})
    client = redis.Redis.from_url(settings.redis_url)

    async def go():
        a = RedisState(connect(settings), settings)
        b = RedisState(connect(settings), settings)
        try:
            await apply_batch(a, [order("o1", carrier="acme")], [])
            before = snapshot(client)
            lost = await apply_batch(a, [order("o2", carrier="bolt")],
                                     [contact("k2", "late", "o2")])
            roll_back(client, before)
            await apply_batch(b, [order("o3", carrier="fedex")], [])
            counted = await apply_batch(a, [order("o4", carrier="bolt")], [])
            return await a.labels(lost), counted, await a.labels(counted)
        finally:
            await a.client.aclose()
            await b.client.aclose()
    lost_labels, counted, labels = asyncio.run(go())
    assert lost_labels is None  # the lost call's ids name nothing any more, not fedex
    assert labels.values == {(1, 1): "acme", (1, 2): "fedex", (1, 3): "bolt"}
    assert counted.totals == {"o": 1, "o:1:3": 1}
    assert bucket(settings, COARSE_SECONDS, NOW - 60) == {
        "o": 3, "o:1:1": 1, "o:1:2": 1, "o:1:3": 1}


def test_a_batch_waiting_for_a_registration_is_not_overtaken_by_the_next(
        settings: Settings) -> None:
    """First event wins per partition: batch N holds o1 with a new carrier (a registration
    round trip before its call), batch N+1 o1 again with a known one. Sent together on one
    lane, N's o1 must be the one counted (issue 21 item 5)."""
    async def go():
        state = RedisState(connect(settings), settings)
        lane = ScriptLane(state, retrying())
        try:
            await apply_batch(state, [order("o0", carrier="acme")], [])
            first = state.prepare(state.unique_orders([order("o1", carrier="bolt")]), [], NOW)
            second = state.prepare(state.unique_orders([order("o1", carrier="acme")]), [], NOW)
            assert first.orders_arg is None and second.orders_arg is not None
            return await asyncio.gather(lane.count(first), lane.count(second))
        finally:
            await lane.close()
            await state.client.aclose()
    first, second = asyncio.run(go())
    assert (first.totals, second.totals) == ({"o": 1, "o:1:2": 1}, {"do": 1})
    assert bucket(settings, COARSE_SECONDS, NOW - 60) == {"o": 2, "o:1:1": 1, "o:1:2": 1}


def test_the_script_refuses_a_call_whose_predecessor_is_not_applied(settings: Settings) -> None:
    """What keeps a lane's calls in order whatever fails between them: call 2 of a lane whose
    call 1 Redis has not applied changes nothing."""
    async def go():
        state = RedisState(connect(settings), settings)
        try:
            batch = state.prepare(state.unique_orders([order("o1", carrier="acme")]), [], NOW)
            stamp = await state.encode(batch)
            with pytest.raises(redis.exceptions.ResponseError, match="OUT_OF_ORDER"):
                await state.script(args=state.batch_args(batch, stamp, "lane-1", 2, False))
            refused_keys = await state.client.keys("cpo:b:*")
            reply = await state.script(args=state.batch_args(batch, stamp, "lane-1", 1, False))
            return refused_keys, state.batch_result(reply, batch)
        finally:
            await state.client.aclose()
    refused_keys, applied = asyncio.run(go())
    assert refused_keys == [] and applied.totals == {"o": 1, "o:1:1": 1}


def test_a_worker_remembers_no_value_beyond_a_full_registry(settings: Settings) -> None:
    """Values folded into `other` are not remembered one by one (issue 21 item 6: ~100 MiB per
    million distinct values): with 3 labels per dimension, a worker that saw 6000 distinct
    carriers holds the 2 registered ones and its 3 fixed entries, and counts the rest as other."""
    async def go():
        state = RedisState(connect(settings), settings)
        try:
            results = [await apply_batch(state, [order(f"o{b}-{i}", carrier=f"c{b}-{i}")
                                                 for i in range(1000)], [])
                       for b in range(6)]
            return results, state._registry, await state.labels(results[-1])
        finally:
            await state.client.aclose()
    results, registry, labels = asyncio.run(go())
    carrier = registry.ids[registry.columns["carrier"]]
    assert len(carrier) == 2 + 3 and registry.known("carrier", "never-seen")
    assert sorted(labels.values.values()) == ["c0-0", "c0-1"]
    assert [r.totals.get("o:1:0") for r in results] == [998] + [1000] * 5


def test_a_sweep_after_a_gap_examines_a_bounded_page_per_call(redis_db_url: str) -> None:
    """After a gap (no worker swept for hours), one call must not walk millions of identities
    (issue 21 item 7): each call examines at most 5000 per kind plus one HSCAN page, shard
    by shard, and the calls together delete every expired identity and nothing else."""
    settings = load_settings({"CPO_REDIS_URL": redis_db_url, "CPO_ORDER_RETENTION": "60s",
                              "CPO_CONTACT_RETENTION": "60s", "CPO_JOIN_GRACE": "1s"})
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    now = client.time()[0]
    old, recent = f"0{now - 3600},1", f"0{now},1"
    for shard, size in ((0, 12_000), (1, 3_000), (2, 100)):
        entries = {f"s{shard}-{i}": old for i in range(size)}
        entries.update({f"s{shard}-new-{i}": recent for i in range(10)})
        client.hset(f"cpo:o:{shard}", mapping=entries)
    client.hset("cpo:sweep:o", mapping={"shard": 0, "cursor": "0", "at": now - 7200})
    left = [count_identities(client, "o")]
    while left[-1] > 30 and len(left) < 20:
        run(settings, ("expire_pending",))
        left.append(count_identities(client, "o"))
    swept = [before - after for before, after in itertools.pairwise(left)]
    assert left[0] == 15_130 and left[-1] == 30  # the recent ones are kept
    assert max(swept) <= 5000 + 2000, swept  # a page is about 1000 (HSCAN COUNT is a hint)
    assert client.hlen("cpo:o:0") == 10


def hot_contacts(state: RedisState, order_id: str, n: int, fetched: float) -> list:
    """`n` contacts naming `order_id`, in batches of 2000 fetched at `fetched` (by this host's
    clock, which the tests' Redis shares)."""
    now = time.time()
    return [state.prepare(state.unique_orders([]),
                          [contact(f"{order_id}-{i}", "late", order_id)
                           for i in range(first, min(first + 2000, n))], now,
                          [fetched] * (min(first + 2000, n) - first))
            for first in range(0, n, 2000)]


def test_50000_contacts_on_one_missing_order_expire_or_join_exactly(settings: Settings) -> None:
    """A hot order_id ("unknown", a lost order) costs O(1) per waiting contact (issue 21 item
    2): 50,000 contacts wait on each of two order_ids; one order never comes and its contacts
    expire, the other arrives and its contacts join, each counted exactly once."""
    async def go():
        state = RedisState(connect(settings), settings)
        lane = ScriptLane(state, retrying())
        try:
            due = time.time() - settings.join_grace - 1
            parked = [await lane.count(batch) for batch in
                      hot_contacts(state, "unknown", 50_000, due)
                      + hot_contacts(state, "lost", 50_000, time.time())]
            expired = []
            while await state.pending_count() > 50_000 and len(expired) < 20:
                expired.append(await state.expire_pending())
            joined = await lane.count(state.prepare(
                state.unique_orders([order("lost", carrier="acme")]), [], NOW))
            return parked, expired, joined
        finally:
            await lane.close()
            await state.client.aclose()
    parked, expired, joined = asyncio.run(go())
    assert sum(r.pending for r in parked) == 100_000
    gone = [u.contact_id for r in expired for u in r.unattributed]
    assert len(gone) == len(set(gone)) == 50_000 and all(c.startswith("unknown-") for c in gone)
    assert {u.reason for r in expired for u in r.unattributed} == {"order_not_found"}
    assert len({a.contact_id for a in joined.attributed}) == 50_000
    assert joined.totals["oc"] == 1 and joined.totals["a:1:1:1"] == 50_000
    counts = bucket(settings, COARSE_SECONDS, NOW - 30)
    assert (counts["c:1"], counts["u:1:f"], counts["a:1:1:1"]) == (100_000, 50_000, 50_000)
    client = redis.Redis.from_url(settings.redis_url)
    assert client.keys("cpo:w:*") == []
    assert (client.zcard("cpo:pq"), client.exists("cpo:pw")) == (0, 0)


BUSY_SCRIPT = """
local t = redis.call('TIME')
local start = t[1] * 1e6 + t[2]
repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - start > 1500000
return 1
"""


def test_a_busy_redis_is_waited_out_and_logged_once(settings: Settings,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Another script running past Redis's busy threshold makes every call fail with BUSY, an
    error reply that clears by itself: the batch is retried with backoff until it is applied,
    and the episode is logged once (issue 21 item 2; BUSY used to stop the worker)."""
    client = redis.Redis.from_url(settings.redis_url)
    threshold = client.config_get("busy-reply-threshold")["busy-reply-threshold"]
    client.config_set("busy-reply-threshold", 100)
    busy = threading.Thread(target=redis.Redis.from_url(settings.redis_url).eval,
                            args=(BUSY_SCRIPT, 0))

    async def go():
        state = RedisState(connect(settings), settings)
        try:
            batch = state.prepare(state.unique_orders([order("o1", carrier="acme")]), [], NOW)
            await state.encode(batch)  # registered before Redis is busy: the call is the test
            busy.start()
            while True:
                try:
                    client.get("x")
                except redis.exceptions.ResponseError as exc:
                    assert str(exc).startswith("BUSY")
                    break
            health = Health()
            return await apply(state, batch, Retrying(health, "redis", lambda: None,
                                                      redis_permanent)), health
        finally:
            await state.client.aclose()
    try:
        with caplog.at_level(logging.INFO, logger="streams.retry"):
            result, health = asyncio.run(go())
    finally:
        busy.join()
        client.config_set("busy-reply-threshold", threshold)
    assert result.totals == {"o": 1, "o:1:1": 1} and health.ready is False  # never probed
    assert health.failing["redis"] == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "BUSY" in warnings[0], warnings
    assert any("redis recovered" in r.getMessage() for r in caplog.records)
