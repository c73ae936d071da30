"""The pipeline's clock is Redis's.

A worker's own clock may be off (a VM without NTP, a container's drifting host). Everything the
pipeline compares across workers (join deadlines, identity retention, the fine-bucket horizon)
is decided by Redis's TIME inside the script; what a worker stamps before the script runs (its
order counts' horizon, its order records' arrival, the future bound of the decoder, its held
contacts' fetch times) uses `RedisClock.now()`: its own clock corrected by the offset to Redis
measured by a TIME round trip, NTP-style (error at most half the round trip).
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis


class RedisClock:
    def __init__(self) -> None:
        self.offset: float | None = None  # Redis's clock minus this host's; None: not measured

    @property
    def synced(self) -> bool:
        return self.offset is not None

    def now(self) -> float:
        """Epoch seconds by Redis's clock (this host's until the first `sync`)."""
        return time.time() + (self.offset or 0.0)

    async def sync(self, client: aioredis.Redis) -> None:
        """Measure the offset with one TIME round trip."""
        sent = time.time()
        seconds, micros = await client.time()
        received = time.time()
        self.offset = seconds + micros / 1e6 - (sent + received) / 2
