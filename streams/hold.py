"""Timestamp synchronisation: a worker holds back the contacts that are ahead of its orders.

In a backfill (a replay, a catch-up after an outage, the benchmark's preloaded topics) a worker
reads both topics as fast as it can, and the contacts topic, a fraction of the orders topic's
size, runs ahead in event time: most contacts then reach Redis before their order and wait
there (`cpo:pq`, `cpo:pw`), which costs Redis about 4 µs more per record (bench/README.md).
Like Kafka Streams' timestamp synchronisation, the worker keeps such a contact in memory while
one of its orders partitions is behind (more than a batch of records not read yet) and has not
reached the contact's event time, and stops fetching that contact's partition meanwhile. Live,
no orders partition is behind, so nothing is held.

Holding changes when a contact is counted, never whether: it is released once the orders have
caught up with it, when no orders partition is behind any more, or after MAX_HOLD_SECONDS
whatever happens (a batch at a time: what one batch cannot take goes in the next); its join
grace runs from when the worker fetched it (CONTRACT.md); and the commit of its partition
stops at its offset, so a worker that crashes meanwhile loses nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from itertools import compress

import numpy as np

from streams.events import OCCURRED_AT, ContactEvent

# A partition: (topic, partition), which Faust's TP equals.
Partition = tuple[str, int]
# The longest a contact is held: bounds the delay a stalled orders partition can add to the
# contacts' metrics; a backfill's orders catch up with most contacts well within it.
MAX_HOLD_SECONDS = 10.0


class HeldContacts:
    """One contacts partition's held contacts, in offset order. Their event and fetch times are
    also kept as arrays: every batch checks all of them (a backfill holds tens of thousands),
    and one comparison per array does that in C."""

    __slots__ = ("contacts", "fetched", "offsets", "times")

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.contacts: list[ContactEvent] = []
        self.fetched = np.empty(0)  # wall clock, epoch seconds: the join grace runs from here
        self.times = np.empty(0)  # event times

    def add(self, offsets: list[int], contacts: list[ContactEvent], fetched: float) -> None:
        self.offsets += offsets
        self.contacts += contacts
        self.fetched = np.concatenate((self.fetched, np.full(len(contacts), fetched)))
        self.times = np.concatenate((self.times, np.fromiter(
            map(OCCURRED_AT, contacts), float, len(contacts))))

    def take(self, indexes: np.ndarray) -> tuple[list[ContactEvent], list[float]]:
        """Remove the contacts at `indexes` (ascending); returns them and their fetch times."""
        positions = indexes.tolist()
        taken = [self.contacts[i] for i in positions], self.fetched[indexes].tolist()
        kept = np.ones(len(self.contacts), dtype=bool)
        kept[indexes] = False
        keep = kept.tolist()
        self.offsets = list(compress(self.offsets, keep))
        self.contacts = list(compress(self.contacts, keep))
        self.fetched, self.times = self.fetched[kept], self.times[kept]
        return taken

    def __len__(self) -> int:
        return len(self.contacts)


class ContactHold:
    """What one worker holds, per contacts partition, and what its orders partitions have read."""

    def __init__(self, behind_records: int, release_limit: int,
                 max_hold_seconds: float = MAX_HOLD_SECONDS) -> None:
        self.behind_records = behind_records
        self.release_limit = release_limit
        self.max_hold_seconds = max_hold_seconds
        self.order_times: dict[Partition, float] = {}  # latest event time read per partition
        self.next_offsets: dict[Partition, int] = {}  # offset after the last one read
        self.held: dict[Partition, HeldContacts] = {}  # contacts partition -> its held
        self._committed: dict[Partition, int] = {}  # offsets last given by `commit_offsets`
        self.held_total = 0  # contacts held so far (each once)
        self.due_left = False  # the last batch left contacts that were due: fetch no wait

    def read(self, partition: Partition, next_offset: int) -> None:
        """A fetch returned `partition`'s records up to `next_offset` - 1."""
        self.next_offsets[partition] = next_offset

    def read_orders(self, partition: Partition, latest: float) -> None:
        """Orders up to event time `latest` were read from `partition`."""
        self.order_times[partition] = max(latest, self.order_times.get(partition, -math.inf))

    def watermark(self, lags: Mapping[Partition, int]) -> float:
        """Event time up to which every orders partition that is behind has been read
        (`lags`: records not read yet per assigned orders partition); inf if none is behind."""
        return min((self.order_times.get(partition, -math.inf)
                    for partition, lag in lags.items() if lag > self.behind_records),
                   default=math.inf)

    def pass_on(self, fetched: Iterable[tuple[Partition, int, ContactEvent]], watermark: float,
                now: float) -> tuple[list[ContactEvent], list[float]]:
        """The contacts to count now, with when each was fetched: the fetched ones not held,
        then the held ones whose time has come, up to `release_limit` contacts in all (a batch
        stays a batch: a backfill can hold tens of thousands at once). A contact is held if it
        has an order_id and its event time is past the watermark."""
        contacts: list[ContactEvent] = []
        held: dict[Partition, tuple[list[int], list[ContactEvent]]] = {}
        for partition, offset, contact in fetched:
            if contact.occurred_at > watermark and contact.order_id:
                offsets, events = held.setdefault(partition, ([], []))
                offsets.append(offset)
                events.append(contact)
            else:
                contacts.append(contact)
        fetched_at = [now] * len(contacts)
        for partition, (offsets, events) in held.items():
            self.held.setdefault(partition, HeldContacts()).add(offsets, events, now)
            self.held_total += len(events)
        self.due_left = False
        for partition, run in list(self.held.items()):
            due = np.flatnonzero((run.times <= watermark)
                                 | (now - run.fetched >= self.max_hold_seconds))
            room = max(self.release_limit - len(contacts), 0)
            if len(due) > room:
                due = due[:room]
                self.due_left = True
            if len(due):
                released, released_at = run.take(due)
                contacts += released
                fetched_at += released_at
            if not run:
                del self.held[partition]
        return contacts, fetched_at

    def commit_offsets(self) -> dict[Partition, int]:
        """The offsets to commit once this batch is counted, where they changed since the last
        call: each partition's next offset to read, or its first held contact's."""
        offsets: dict[Partition, int] = {}
        for partition in {*self.next_offsets, *self.held}:
            held = self.held.get(partition)
            offset = held.offsets[0] if held else self.next_offsets.get(partition)
            if offset is not None and offset != self._committed.get(partition):
                offsets[partition] = self._committed[partition] = offset
        return offsets

    def holding(self) -> set[Partition]:
        return set(self.held)

    def count(self) -> int:
        return sum(map(len, self.held.values()))

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Partitions revoked: their held contacts are fetched again by their next owner."""
        for partition in partitions:
            self.held.pop(partition, None)
            self.next_offsets.pop(partition, None)
            self.order_times.pop(partition, None)
            self._committed.pop(partition, None)
