"""Redis time per batch when many contacts name one missing order_id ("unknown", "0", a lost
order): each batch of 2,000 such contacts parks them, then the order arrives and joins them all.

    python -m bench.hot_order [--contacts 50000]

Redis's own per-call time (SLOWLOG, microseconds) of every script call, printed as the
contacts pile up: it must stay flat however many already wait (issue 21 item 2). Runs on an
embedded redis-server, or CPO_REDIS_URL (flushed!).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import redis

from streams.events import ContactEvent, OrderEvent
from streams.lane import ScriptLane
from streams.local import redis_url
from streams.retry import Health, Retrying
from streams.settings import load_settings
from streams.state import RedisState, connect, redis_permanent

BATCH = 2000
ORDER_ID = "lost-order"


def script_micros(client: redis.Redis) -> int:
    """Redis time of the script call just made (the slowlog logs every call here)."""
    entries = [e for e in client.slowlog_get(10) if e["command"].startswith(b"EVALSHA")]
    return entries[0]["duration"]


async def measure(url: str, contacts: int) -> None:
    settings = load_settings({"CPO_REDIS_URL": url, "CPO_DIMENSIONS": "carrier"})
    client = redis.Redis.from_url(url)
    client.flushdb()
    slowlog = client.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"]
    client.config_set("slowlog-log-slower-than", 0)
    state = RedisState(connect(settings), settings)
    lane = ScriptLane(state, Retrying(Health(), "redis", lambda: None, redis_permanent))
    now = time.time()
    try:
        for first in range(0, contacts, BATCH):
            batch = [ContactEvent(contact_id=f"k{i}", occurred_at=now - 30, cause="late",
                                  order_id=ORDER_ID, channel=None, event_id=None)
                     for i in range(first, min(first + BATCH, contacts))]
            await lane.count(state.prepare(state.unique_orders([]), batch, now))
            waiting = first + len(batch)
            if waiting in (BATCH, contacts) or waiting % (contacts // 5) < BATCH:
                print(f"{waiting:>8} waiting: the last batch took {script_micros(client):>7} µs "
                      "of Redis time")
        order = OrderEvent(order_id=ORDER_ID, occurred_at=now - 60,
                           attributes={"carrier": "acme"}, event_id=None)
        result = await lane.count(state.prepare(state.unique_orders([order]), [], now))
        print(f"the order arrives: {len(result.attributed)} contacts joined in "
              f"{script_micros(client)} µs of Redis time")
    finally:
        client.config_set("slowlog-log-slower-than", slowlog)
        await lane.close()
        await state.client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=50_000)
    args = parser.parse_args()
    with redis_url() as url:
        asyncio.run(measure(url, args.contacts))


if __name__ == "__main__":
    main()
