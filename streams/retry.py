"""How the worker rides out its dependencies' faults: which errors are retried, how long it
waits between tries, and how readiness and the logs report a fault episode.

An error that can clear (a lost connection, a timeout, Redis busy or loading, a Kafka leader
moving) is retried with backoff, 0.1 s doubling to 5 s, for as long as it lasts. One that no
retry can clear (the dependency refuses the worker's rights or its request as it is) is not:
it is logged once at CRITICAL with the fix and raised as FatalError, which stops the worker;
its uncommitted batches are redelivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 5.0


class FatalError(RuntimeError):
    """A dependency refuses what the worker does in a way no retry can clear; the message is one
    line naming the fix. The worker stops, and its uncommitted batches are redelivered."""


@dataclass
class Health:
    """What readiness reports: per dependency ("redis", "kafka"), the calls failing right now.

    A dependency's fault episode starts when one of its calls fails and ends when none is
    failing any more. However many calls and retries it spans (a batch, a timer and the probe
    all fail together when Redis stops), it is logged once at WARNING and once at INFO.
    """

    failing: dict[str, dict[object, str]] = field(
        default_factory=lambda: {"redis": {}, "kafka": {}})
    since: dict[str, float] = field(default_factory=dict)
    # A worker is ready only once a probe has reached each dependency (a worker starting while
    # Redis or the broker is down must not answer 200 before it has tried).
    probed: set[str] = field(default_factory=set)

    def fail(self, dependency: str, call: object, reason: str) -> None:
        failing = self.failing[dependency]
        if not failing:
            self.since[dependency] = time.monotonic()
            log.warning("%s unavailable (%s); retrying with backoff, not ready until it recovers",
                        dependency, reason)
        failing[call] = reason

    def recover(self, dependency: str, call: object) -> None:
        failing = self.failing[dependency]
        if failing.pop(call, None) is not None and not failing:
            log.info("%s recovered after %.1fs", dependency,
                     time.monotonic() - self.since[dependency])

    def probe_succeeded(self, dependency: str) -> None:
        self.probed.add(dependency)
        self.recover(dependency, "probe")

    def fault(self, dependency: str) -> str | None:
        """The reason of one failing call of `dependency`, or None."""
        if dependency not in self.probed and not self.failing[dependency]:
            return f"{dependency}: not reached yet"
        return next(iter(self.failing[dependency].values()), None)

    @property
    def ready(self) -> bool:
        return self.probed >= self.failing.keys() and not any(self.failing.values())


def _never_permanent(exc: BaseException) -> str | None:
    return None


class Retrying:
    """The retries of one call, or of one stream of calls (the worker's batch lane): the backoff
    between tries, the call among its dependency's failing calls in `health` while it fails,
    each failure counted by `count_error`. `permanent(exc)` names the fix of an error no retry
    can clear, or None."""

    def __init__(self, health: Health, dependency: str, count_error: Callable[[], None],
                 permanent: Callable[[BaseException], str | None] = _never_permanent) -> None:
        self.health, self.dependency = health, dependency
        self.count_error, self.permanent = count_error, permanent
        self.delay = FIRST_BACKOFF_SECONDS

    async def failed(self, what: str, exc: BaseException) -> None:
        """Wait out a failed try, or raise FatalError if it can never succeed."""
        self.count_error()
        fix = self.permanent(exc)
        if fix is not None:
            message = (f"{self.dependency} refuses {what} ({type(exc).__name__}: {exc}): "
                       f"{fix}")
            log.critical("%s; stopping the worker", message)
            raise FatalError(message) from exc
        self.health.fail(self.dependency, self, f"{what}: {type(exc).__name__}: {exc}")
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, MAX_BACKOFF_SECONDS)

    def succeeded(self) -> None:
        """A try succeeded (or nobody retries any more): the call leaves the failing ones."""
        self.delay = FIRST_BACKOFF_SECONDS
        self.health.recover(self.dependency, self)


async def retry_forever(operation: Callable[[], Awaitable[T]], *, what: str,
                        transient: tuple[type[BaseException], ...], retrying: Retrying) -> T:
    """Run `operation` until it succeeds, as `retrying` says. It leaves the failing calls when
    it succeeds or is abandoned (cancelled by a rebalance or a shutdown), so readiness never
    stays stuck on a call that nobody retries any more."""
    try:
        while True:
            try:
                return await operation()
            except transient as exc:
                await retrying.failed(what, exc)
    finally:
        retrying.succeeded()
