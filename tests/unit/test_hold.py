"""The contact hold (timestamp synchronisation) as pure logic: what it holds, when it lets go,
and which offsets may be committed meanwhile. The worker's use of it against a real broker is
covered by the exact-count integration tests (held contacts are counted once, a worker killed
while holding loses none)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import ContactEvent
from streams.hold import ContactHold

ORDERS = [("orders", 0), ("orders", 1)]
C0, C1 = ("contacts", 0), ("contacts", 1)


def contact(contact_id: str, t: float, order_id: str | None = "o1") -> ContactEvent:
    return ContactEvent(contact_id, t, "late", order_id, None, None)


def ids(contacts: list[ContactEvent]) -> list[str]:
    return [c.contact_id for c in contacts]


def test_watermark_is_the_slowest_orders_partition_that_is_behind() -> None:
    hold = ContactHold(behind_records=100, release_limit=1000)
    hold.read_orders(ORDERS[0], 500.0)
    hold.read_orders(ORDERS[1], 300.0)
    hold.read_orders(ORDERS[1], 200.0)  # an older order later in the partition: no step back
    assert hold.watermark({ORDERS[0]: 1000, ORDERS[1]: 1000}) == 300.0
    assert hold.watermark({ORDERS[0]: 1000, ORDERS[1]: 100}) == 500.0  # 1 is not behind
    assert hold.watermark({ORDERS[0]: 5, ORDERS[1]: 0}) == math.inf  # live: nothing is held
    assert hold.watermark({}) == math.inf
    assert hold.watermark({("orders", 2): 1000}) == -math.inf  # behind, nothing read yet


def test_contacts_ahead_of_the_orders_wait_and_go_in_a_later_batch() -> None:
    hold = ContactHold(behind_records=100, release_limit=1000)
    fetched = [(C0, 10, contact("a", 100.0)), (C0, 11, contact("b", 400.0)),
               (C0, 12, contact("c", 450.0, order_id=None)), (C1, 7, contact("d", 350.0))]
    out, fetched_at = hold.pass_on(fetched, watermark=300.0, now=1000.0)
    # at or before the watermark, or without an order to wait for: counted now
    assert ids(out) == ["a", "c"] and fetched_at == [1000.0, 1000.0]
    assert hold.count() == 2 and hold.holding() == {C0, C1}
    out, fetched_at = hold.pass_on([], watermark=360.0, now=1002.0)
    assert ids(out) == ["d"] and fetched_at == [1000.0]  # the grace runs from the fetch
    out, _ = hold.pass_on([(C0, 13, contact("e", 390.0))], watermark=math.inf, now=1003.0)
    assert ids(out) == ["e", "b"] and hold.count() == 0 and hold.holding() == set()
    assert hold.held_total == 2  # b and d, each counted once however long it waited


def test_a_contact_is_held_at_most_max_hold_seconds() -> None:
    hold = ContactHold(behind_records=100, release_limit=1000, max_hold_seconds=10.0)
    hold.pass_on([(C0, 1, contact("a", 400.0))], watermark=300.0, now=1000.0)
    assert hold.pass_on([], watermark=300.0, now=1009.9)[0] == []
    out, fetched_at = hold.pass_on([], watermark=300.0, now=1010.0)
    assert ids(out) == ["a"] and fetched_at == [1000.0]


def test_a_batch_releases_at_most_release_limit_contacts() -> None:
    hold = ContactHold(behind_records=100, release_limit=3)
    hold.pass_on([(C0, n, contact(f"h{n}", 400.0 + n)) for n in range(5)], watermark=300.0,
                 now=1000.0)
    out, _ = hold.pass_on([(C1, 0, contact("new", 100.0))], watermark=math.inf, now=1001.0)
    assert ids(out) == ["new", "h0", "h1"] and hold.count() == 3 and hold.due_left
    out, _ = hold.pass_on([], watermark=math.inf, now=1002.0)
    assert ids(out) == ["h2", "h3", "h4"] and hold.count() == 0 and not hold.due_left


def test_commits_stop_at_the_first_held_contact() -> None:
    hold = ContactHold(behind_records=100, release_limit=1000)
    hold.read(ORDERS[0], 500)
    hold.read(C0, 13)
    hold.pass_on([(C0, 10, contact("a", 100.0)), (C0, 11, contact("b", 400.0)),
                  (C0, 12, contact("c", 100.0))], watermark=300.0, now=1000.0)
    assert hold.commit_offsets() == {ORDERS[0]: 500, C0: 11}
    # nothing new: nothing to commit again
    hold.pass_on([], watermark=300.0, now=1001.0)
    assert hold.commit_offsets() == {}
    # "b" goes out in a batch that fetched nothing from its partition: the commit moves on
    hold.pass_on([], watermark=400.0, now=1002.0)
    assert hold.commit_offsets() == {C0: 13}


def test_revoked_partitions_are_forgotten() -> None:
    hold = ContactHold(behind_records=100, release_limit=1000)
    hold.read(C0, 12)
    hold.read_orders(ORDERS[0], 100.0)
    hold.pass_on([(C0, 11, contact("a", 400.0))], watermark=300.0, now=1000.0)
    hold.forget([C0, ORDERS[0]])
    assert hold.count() == 0 and hold.commit_offsets() == {}
    assert hold.watermark({ORDERS[0]: 1000}) == -math.inf


class ReferenceHold:
    """`pass_on` and `commit_offsets` written as the plain rules, one contact at a time."""

    def __init__(self, release_limit: int, max_hold_seconds: float) -> None:
        self.release_limit = release_limit
        self.max_hold_seconds = max_hold_seconds
        self.held: dict = {}  # partition -> [(offset, contact, fetched)]

    def pass_on(self, fetched: list, watermark: float, now: float) -> tuple[list, list, bool]:
        out, out_at, due_left = [], [], False
        for partition, offset, event in fetched:
            if event.occurred_at > watermark and event.order_id:
                self.held.setdefault(partition, []).append((offset, event, now))
            else:
                out.append(event)
                out_at.append(now)
        for partition, held in list(self.held.items()):
            kept = []
            for offset, event, at in held:
                if event.occurred_at > watermark and now - at < self.max_hold_seconds:
                    kept.append((offset, event, at))
                elif len(out) < self.release_limit:
                    out.append(event)
                    out_at.append(at)
                else:
                    kept.append((offset, event, at))
                    due_left = True
            if kept:
                self.held[partition] = kept
            else:
                del self.held[partition]
        return out, out_at, due_left


@settings(deadline=None)  # no timing assertion: a loaded machine is slow
@given(st.lists(st.tuples(
    st.lists(st.tuples(st.sampled_from([C0, C1, ("contacts", 2)]),
                       st.integers(0, 50), st.booleans()), max_size=12),
    st.sampled_from([-math.inf, 0.0, 10.0, 25.0, 40.0, math.inf]),
    st.integers(0, 4)), max_size=8),
    st.integers(1, 12))
def test_pass_on_releases_exactly_what_the_plain_rules_release(
        batches: list, release_limit: int) -> None:
    """Random batches (partition, event time, has an order) against the rules one contact at a
    time: the same contacts out, in the same order, with the same fetch times, the same ones
    left held, and the same first held offset per partition."""
    hold = ContactHold(behind_records=100, release_limit=release_limit, max_hold_seconds=3.0)
    reference = ReferenceHold(release_limit, max_hold_seconds=3.0)
    offsets: dict = {}
    now = 1000.0
    for n, (records, watermark, seconds_later) in enumerate(batches):
        now += seconds_later
        fetched = []
        for i, (partition, t, has_order) in enumerate(records):
            offsets[partition] = offsets.get(partition, -1) + 1
            fetched.append((partition, offsets[partition],
                            contact(f"b{n}r{i}", float(t), "o" if has_order else None)))
        out, out_at = hold.pass_on(fetched, watermark, now)
        expected, expected_at, due_left = reference.pass_on(fetched, watermark, now)
        assert (ids(out), out_at, hold.due_left) == (ids(expected), expected_at, due_left)
        assert hold.count() == sum(map(len, reference.held.values()))
        assert hold.holding() == set(reference.held)
        assert {p: run.offsets[0] for p, run in hold.held.items()} == {
            p: held[0][0] for p, held in reference.held.items()}
