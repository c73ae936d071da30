"""A worker's memory when a dimension has far more distinct values than its registry holds
(an order id sent as `seller`, a free-text `category`): every value beyond CPO_MAX_VALUES - 1
folds into `other`, and must cost the worker nothing (issue 21 item 6).

    python -m bench.label_memory [--values 1000000]

Orders with that many distinct values go through a worker's state (its label caches) and the
real script, in batches of 20,000; printed is the Python memory the state holds afterwards
(tracemalloc, the batches let go). Runs on an embedded redis-server, or CPO_REDIS_URL (flushed!).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import tracemalloc

import redis

from streams.events import OrderEvent
from streams.lane import ScriptLane
from streams.local import redis_url
from streams.retry import Health, Retrying
from streams.settings import load_settings
from streams.state import RedisState, connect, redis_permanent

BATCH = 20_000


async def measure(url: str, values: int) -> None:
    settings = load_settings({"CPO_REDIS_URL": url, "CPO_DIMENSIONS": "carrier,seller"})
    redis.Redis.from_url(url).flushdb()
    state = RedisState(connect(settings), settings)
    lane = ScriptLane(state, Retrying(Health(), "redis", lambda: None, redis_permanent))
    now = time.time()
    tracemalloc.start()
    held = tracemalloc.get_traced_memory()[0]
    try:
        for first in range(0, values, BATCH):
            orders = [OrderEvent(order_id=f"o{i}", occurred_at=now - 60, event_id=None,
                                 attributes={"carrier": f"c{i % 5}", "seller": f"s{i}"})
                      for i in range(first, min(first + BATCH, values))]
            await lane.count(state.prepare(state.unique_orders(orders), [], now))
            if (first // BATCH) % 10 == 9 or first + BATCH >= values:
                del orders
                gc.collect()
                grown = (tracemalloc.get_traced_memory()[0] - held) / 2**20
                print(f"{first + BATCH:>9} distinct sellers seen: the worker holds {grown:6.2f} "
                      "MiB more than before the first", flush=True)
    finally:
        tracemalloc.stop()
        await lane.close()
        await state.client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1_000_000)
    args = parser.parse_args()
    with redis_url() as url:
        asyncio.run(measure(url, args.values))


if __name__ == "__main__":
    main()
