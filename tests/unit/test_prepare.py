"""A batch's decode in the worker (`BatchProcessor.prepare`, CPU only: no Redis call is made):
every record is either kept or rejected with its partition, whatever its value."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from streams.metrics import WorkerMetrics
from streams.processor import BatchProcessor
from streams.settings import load_settings
from streams.state import RedisState, connect

ORDER = b'{"order_id": "o-%d", "occurred_at": "2026-01-01T00:00:00Z", "attributes": {}}'
CONTACT = b'{"contact_id": "k-%d", "occurred_at": "2026-01-01T00:00:00Z", "cause": "late"}'


@dataclass
class Fetched:
    offset: int
    key: bytes | None
    value: bytes | None


def test_a_tombstone_is_rejected_as_an_empty_record_and_the_rest_is_kept() -> None:
    settings = load_settings({})
    orders, contacts = (settings.topic_orders, 2), (settings.topic_contacts, 5)
    fetched = [
        (orders, [Fetched(10, b"o-1", ORDER % 1), Fetched(11, b"o-x", None),
                  Fetched(12, b"o-2", ORDER % 2), Fetched(13, None, b"")]),
        (contacts, [Fetched(7, None, None), Fetched(8, b"k-1", CONTACT % 1)]),
    ]

    async def prepare() -> tuple:
        state = RedisState(connect(settings), settings)
        try:
            processor = BatchProcessor(settings, state, WorkerMetrics(), None)
            processor.clock.offset = 0.0  # clock taken as synced: no TIME round trip
            return await processor.prepare(fetched)
        finally:
            await state.client.aclose()

    prepared = asyncio.run(prepare())
    batch = prepared.script_batch
    assert [o.order_id for o in batch.orders] == ["o-1", "o-2"]
    assert [c.contact_id for c in batch.contacts] == ["k-1"]
    assert [(partition, record.offset, rejection.reason)
            for partition, record, rejection in prepared.rejected] == [
        (orders, 11, "invalid_json"), (orders, 13, "invalid_json"),
        (contacts, 7, "invalid_json")]
