"""A worker's batch script calls, applied by Redis in the order the worker made them.

First event wins per partition (contract section 2) only if batch N's call is applied before
batch N+1's: a re-sent order in N+1 must not beat the first one in N, even when N waits for a
registration round trip or fails and is retried. The calls go out on one connection, up to
`depth` at a time (Redis then starts the next the moment one ends, instead of waiting for the
worker to read a reply and send again: bench/README, session 9), and each carries the lane's id
and its sequence number: the script refuses (OUT_OF_ORDER, changing nothing) a call whose
predecessor it has not applied. So whatever happens in between (a lost connection, a refused
registry stamp, BUSY), no call is applied before the one ahead of it, and the lane sends the
calls not applied again, lowest first. A call whose reply was lost but that Redis applied is a
redo when sent again: its identities make it count nothing twice.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import deque
from dataclasses import dataclass, field
from uuid import uuid4

from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError

from streams.retry import Retrying
from streams.state import (
    REDIS_ERRORS,
    SCRIPT,
    BatchResult,
    RedisState,
    ScriptBatch,
    Stamp,
    reply_code,
)

# Script calls in flight at once: one runs in Redis, the next waits in Redis's queue.
DEPTH = 2


@dataclass(eq=False)
class _Call:
    seq: int
    batch: ScriptBatch
    result: asyncio.Future
    # The script starts the lane at this call: its predecessors are all applied, but Redis lost
    # the lane's record of them (a flush, a rollback, or a day without a call).
    first: bool = False
    stamp: Stamp | None = field(default=None)


class ScriptLane:
    def __init__(self, state: RedisState, retrying: Retrying, depth: int = DEPTH,
                 script: str = SCRIPT) -> None:
        self.state = state
        self.script = script  # bench/script_costs.py measures copies with parts left out
        self.retrying = retrying  # how a failed call waits, or stops the worker
        self.depth = depth
        self.id = uuid4().hex
        self._seq = 0
        self._unsent: list[_Call] = []  # by seq
        self._in_flight: deque[_Call] = deque()  # sent on the connection, replies in this order
        self._resolved: set[int] = set()
        self._resolved_upto = 0  # every call up to this seq is applied
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._connection: Connection | None = None
        self._sha: str | None = None
        self._failure: BaseException | None = None

    async def count(self, batch: ScriptBatch) -> BatchResult:
        """Apply `batch` after every batch given before it; returns the script's reply."""
        if self._failure is not None:
            raise self._failure
        self._seq += 1
        call = _Call(self._seq, batch, asyncio.get_running_loop().create_future())
        self._unsent.append(call)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return await asyncio.shield(call.result)  # a caller that stops waiting stops nothing

    async def close(self) -> None:
        """Stop: calls not answered yet are cancelled (their batches are redelivered)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for call in [*self._in_flight, *self._unsent]:
            if not call.result.done():
                call.result.cancel()
        self._in_flight.clear()
        self._unsent.clear()
        await self._disconnect()
        self.retrying.succeeded()  # nobody retries any more: readiness must not stay stuck

    async def _run(self) -> None:
        try:
            while True:
                await self._send()
                if self._in_flight:
                    await self._read()
                elif not self._unsent:
                    self._wake.clear()
                    await self._wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (FatalError, or a bug: every waiting call fails)
            self._failure = exc
            for call in [*self._in_flight, *self._unsent]:
                if not call.result.done():
                    call.result.set_exception(exc)

    async def _send(self) -> None:
        """Send the lowest calls not applied, up to `depth` in flight."""
        while self._unsent and len(self._in_flight) < self.depth:
            call = self._unsent[0]
            try:
                call.stamp = await self.state.encode(call.batch)  # may register values first
                if self._sha is None:
                    self._sha = await self.state.client.script_load(self.script)
                if self._connection is None:
                    self._connection = await self.state.client.connection_pool.get_connection()
                args = self.state.batch_args(call.batch, call.stamp, self.id, call.seq,
                                             call.first)
                await self._connection.send_command("EVALSHA", self._sha, 0, *args)
            except REDIS_ERRORS as exc:
                await self._lost(exc)
                return
            self._in_flight.append(self._unsent.pop(0))

    async def _read(self) -> None:
        """Read the reply of the oldest call in flight."""
        call = self._in_flight[0]
        assert self._connection is not None
        try:
            reply = await self._connection.read_response()
        except ResponseError as exc:  # refused, changing nothing; the connection is fine
            self._in_flight.popleft()
            self._again(call)
            code = reply_code(exc)
            if code == "STALE_REGISTRY":
                self.state.registries_lost(call.stamp)
            elif code == "OUT_OF_ORDER":
                call.first = call.seq == self._resolved_upto + 1
            elif code == "NOSCRIPT":  # Redis restarted without its scripts
                self._sha = None
            else:  # BUSY, OOM, READONLY, ... wait; a script error stops the worker
                await self.retrying.failed("apply batch", exc)
            return
        except REDIS_ERRORS as exc:
            await self._lost(exc)
            return
        self._in_flight.popleft()
        self.retrying.succeeded()
        self._resolved.add(call.seq)
        while self._resolved_upto + 1 in self._resolved:
            self._resolved_upto += 1
            self._resolved.discard(self._resolved_upto)
        call.result.set_result(self.state.batch_result(reply, call.batch))

    def _again(self, call: _Call) -> None:
        """`call` is to be sent again, in its place among the others."""
        bisect.insort(self._unsent, call, key=lambda c: c.seq)

    async def _lost(self, exc: BaseException) -> None:
        """The connection failed: whether the calls in flight were applied is not known, so
        they are all sent again (a redo changes nothing)."""
        for call in self._in_flight:
            self._again(call)
        self._in_flight.clear()
        await self._disconnect()
        await self.retrying.failed("apply batch", exc)

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()
            await self.state.client.connection_pool.release(connection)


async def apply(state: RedisState, batch: ScriptBatch, retrying: Retrying) -> BatchResult:
    """One batch through a lane of its own: for tools and tests that apply batches one at a
    time."""
    lane = ScriptLane(state, retrying)
    try:
        return await lane.count(batch)
    finally:
        await lane.close()
