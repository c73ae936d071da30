"""The Redis script on a real Redis: identities, the join and its grace, label folding, pair
counts, the fine horizon and replays, each checked against hand-computed numbers."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
import redis

from streams.buckets import COARSE_SECONDS, FINE_SECONDS, bucket_key, bucket_start
from streams.events import ContactEvent, OrderEvent
from streams.settings import Settings, load_settings
from streams.state import (
    IDENTITY_SHARDS,
    SWEEP_SECONDS,
    RedisState,
    connect,
    count_identities,
    identity_key,
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


def run(settings: Settings, *calls):
    """Apply each (method, args) in turn with a fresh client; return the results."""
    async def go():
        state = RedisState(connect(settings), settings)
        try:
            return [await getattr(state, name)(*args) for name, *args in calls]
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
    early = [contact("k1", "late", "o-late"), contact("k2", "late", "o-never")]
    parked, joined, too_early, expired = run(
        settings,
        ("apply_batch", [], early, NOW),
        ("apply_batch", [order("o-late", carrier="acme")], [], NOW + 1),
        ("expire_pending", NOW + settings.join_grace - 1),
        ("expire_pending", NOW + settings.join_grace + 1),
    )
    assert parked.pending == 2 and parked.attributed == []
    assert [a.contact_id for a in joined.attributed] == ["k1"]
    assert joined.totals["oc"] == 1
    assert too_early.unattributed == []
    assert [(u.contact_id, u.reason) for u in expired.unattributed] == [("k2", "order_not_found")]
    # counted at the contact's event time; a quarter hour later that is past the fine horizon
    assert bucket(settings, COARSE_SECONDS, NOW - 30)["u:1:f"] == 1
    assert "u:1:f" not in bucket(settings, FINE_SECONDS, NOW - 30)


def test_a_held_contacts_grace_runs_from_when_it_was_fetched(settings: Settings) -> None:
    """A contact held back by the worker (streams/hold.py) for 8 s: its grace started then."""
    fetched = NOW - 8
    _, too_early, expired = run(
        settings,
        ("apply_batch", [], [contact("k1", "late", "o-never")], NOW, [fetched]),
        ("expire_pending", fetched + settings.join_grace - 1),
        ("expire_pending", fetched + settings.join_grace + 1),
    )
    assert too_early.unattributed == []
    assert [(u.contact_id, u.reason) for u in expired.unattributed] == [("k1", "order_not_found")]


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
    assert [a.contact_id for a in orphans_now.attributed] == ["k1"]
    assert orphans_now.outbox_ids == result.outbox_ids
    run(settings, ("outbox_done", result.outbox_ids))
    (left,) = run(settings, ("outbox_orphans", -60.0))
    assert left.outbox_ids == [] and orphans_after.outbox_ids == result.outbox_ids


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
            await state.apply_batch([order("o1", carrier="acme"), order("o2", carrier="bolt")],
                                    [], NOW)
            await state.client.flushdb()
            result = await state.apply_batch([order("o3", carrier="bolt")], [], NOW)
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
            await state.apply_batch([order("o1", carrier="acme"), order("o2", carrier="bolt")],
                                    [], NOW)  # acme 1, bolt 2
            first = state.prepare(state.unique_orders([order("o3", carrier="bolt")]), [], NOW)
            second = state.prepare(state.unique_orders([order("o4", carrier="acme")]), [], NOW)
            await state.client.flushdb()
            await state.apply(first)  # meets the reset: bolt is 1 now, acme 2
            result = await state.apply(second)
            return result, await state.labels(result)
        finally:
            await state.client.aclose()
    result, labels = asyncio.run(go())
    assert labels.values == {(1, 1): "bolt", (1, 2): "acme"}
    assert result.totals == {"o": 1, "o:1:2": 1}
    assert bucket(settings, COARSE_SECONDS, NOW - 60) == {"o": 2, "o:1:1": 1, "o:1:2": 1}


def test_identities_are_forgotten_after_their_retention(settings: Settings) -> None:
    swept_at = NOW + settings.order_retention + SWEEP_SECONDS + 1
    run(settings, ("apply_batch", [order("old")], [contact("k-old", "late", None)], NOW),
        ("expire_pending", NOW),  # starts the sweep's clock
        ("apply_batch", [order("recent")], [], swept_at - SWEEP_SECONDS))
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert (count_identities(client, "o"), count_identities(client, "c")) == (2, 1)
    run(settings, *[("expire_pending", swept_at)] * (IDENTITY_SHARDS // 256))
    assert client.hexists(identity_key("o", "recent"), "recent")
    assert (count_identities(client, "o"), count_identities(client, "c")) == (1, 0)
    (again,) = run(settings, ("apply_batch", [order("old")], [], swept_at))
    assert again.totals["o"] == 1  # a forgotten order counts as new


def test_contacts_waiting_for_one_order_expire_and_join_each_on_its_own(settings: Settings) -> None:
    grace = settings.join_grace
    first, second, expired, joined = run(
        settings,
        ("apply_batch", [], [contact("k1", "late", "o-shared")], NOW),
        ("apply_batch", [], [contact("k2", "wismo", "o-shared")], NOW + grace / 2),
        ("expire_pending", NOW + grace + 1),
        ("apply_batch", [order("o-shared", carrier="acme")], [], NOW + grace + 2),
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
            await state.apply_batch([order("o1", carrier="acme", region="eu")], [], NOW)
            stale = await state.client.lrange("cpo:pbq", 0, -1)  # what the slower worker read
            folded = await state.fold_pairs()  # the faster worker
            await state.apply_batch([order("o2", carrier="bolt", region="eu")], [], NOW)
            late = await state.script(args=[
                "fold", "0", *state._common, stale[0].split("\n", 1)[0], str(len(stale)),
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
