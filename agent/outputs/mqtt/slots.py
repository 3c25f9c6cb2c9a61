"""In-flight slots for QoS > 0 publishes: at most ``limit`` unacknowledged at once (the
broker's Receive Maximum, capped by ``mqtt.max_inflight``), waiters served first in, first
out, one wake-up per freed slot."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["Slots"]


class Slots:
    """Counted slots; ``used`` may exceed a lowered ``limit`` until enough are released."""

    def __init__(self, limit: int) -> None:
        self.used = 0
        self.limit = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.used < self.limit and not self._waiters:
            self.used += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(1)  # the slot was handed over just as we were cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self, count: int) -> None:
        self.used -= count
        self.hand_over()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self.hand_over()

    def hand_over(self) -> None:
        while self._waiters and self.used < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.used += 1
                waiter.set_result(None)
