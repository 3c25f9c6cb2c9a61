"""One supervised loop per source: connect, poll, back off, reconnect.

This is the only layer that reconnects to PLCs (the protocol clients have their own
reconnection switched off). Polls never overlap: the next one is scheduled when the
current one has finished, one interval after the start of the current one when it
finished in time, at once when it overran. Connection attempts back off exponentially
with full jitter (a uniform delay between 0 and the current cap), capped at
``backoff_max_s``; the back-off starts again from the bottom once the source has worked
for ``stable_after_s``.

A failure is logged once when the source turns unhealthy and once when it recovers,
never on every poll; ``on_health`` is called on the same transitions.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from agent.contract.errors import SourceUnavailable
from agent.contract.readings import Reading, SourceHealth
from agent.sources.base import Source

__all__ = ["SourceSupervisor", "backoff_delay", "poll_phase"]

log = logging.getLogger(__name__)
_RNG = random.Random()


def poll_phase(poll_interval_s: float) -> float:
    """Where in each poll interval (seconds past a multiple of it, wall clock) polls fall,
    so that they stay clear of window boundaries (whole seconds): half-way through an
    interval of up to a second, half a second past one otherwise."""
    return poll_interval_s / 2 if poll_interval_s <= 1 else 0.5


def backoff_delay(attempt: int, *, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter back-off: uniform in [0, min(max_s, initial_s * 2**attempt)]."""
    cap = min(max_s, initial_s * 2 ** min(attempt, 62))
    return rng.uniform(0.0, cap)


def _raise_if_cancelled() -> None:
    """Raise CancelledError when this task was cancelled and the cancellation got lost.

    A protocol client awaiting ``asyncio.wait_for`` (pymodbus, asyncua) returns its answer
    instead of raising when the answer and the cancellation arrive together (Python 3.11):
    the task is then still marked as cancelling, and a loop that never ends on its own
    would run on, so the agent's stop would wait for it forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class SourceSupervisor:
    """Runs one :class:`Source` until cancelled.

    Counters for metrics and tests: ``polls`` (reads attempted), ``overruns`` (reads
    that took longer than the poll interval), ``reconnects`` (successful connections
    after the first), ``last_poll_latency_s`` (duration of the last successful read),
    ``backoffs`` (every back-off delay chosen, most recent last, bounded).
    ``first_ok`` is set after the first successful read.
    """

    def __init__(self, source: Source, *, poll_interval_s: float, backoff_max_s: float = 30.0,
                 on_readings: Callable[[Sequence[Reading]], None],
                 on_health: Callable[[SourceHealth], None],
                 stable_after_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, backoff_initial_s: float = 0.5,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 phase_s: float | None = None,
                 wall: Callable[[], float] = time.time,
                 stamp: Callable[[], float] | None = None) -> None:
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be positive")
        self.source = source
        self.poll_interval_s = poll_interval_s
        self.backoff_max_s = backoff_max_s
        self.backoff_initial_s = min(backoff_initial_s, backoff_max_s)
        self.stable_after_s = stable_after_s
        self._on_readings = on_readings
        self._on_health = on_health
        self._clock = clock
        # one generator for every supervisor (a Random holds 2.5 KB of state)
        self._rng = rng if rng is not None else _RNG
        self._sleep = sleep
        #: with a phase, polls after the first fall on wall-clock instants that are
        #: ``phase_s`` past a multiple of the interval (:func:`poll_phase`)
        self._phase_s = phase_s
        self._wall = wall
        #: the plant's monotonic clock when it is not the machine's (a simulated plant
        #: clock): readings are stamped with it on arrival, so that rates and state
        #: durations are in plant seconds while polling stays on real time
        self._stamp = stamp
        self.polls = 0
        self.overruns = 0
        self.reconnects = 0
        self.last_poll_latency_s: float | None = None
        self.last_ok_mono: float | None = None
        self.backoffs: list[float] = []
        self.first_ok = asyncio.Event()
        self._attempt = 0
        self._healthy: bool | None = None  # None until the first transition
        self._connections = 0

    @property
    def healthy(self) -> bool | None:
        """True while reads succeed, False after a failure, None before either."""
        return self._healthy

    async def run(self) -> None:
        """Supervise the source until cancelled; never returns otherwise."""
        try:
            while True:
                try:
                    await self.source.connect()
                    _raise_if_cancelled()
                    self._connections += 1
                    if self._connections > 1:
                        self.reconnects += 1
                    await self._poll_loop()
                except SourceUnavailable as exc:
                    self._failed(str(exc).removeprefix(f"source {self.source.id}: "), exc_info=False)
                except Exception as exc:
                    # a bug in an adapter must not stop the agent: treat it like a lost source
                    self._failed(f"{type(exc).__name__}: {exc}", exc_info=True)
                await self.source.close()
                _raise_if_cancelled()
                delay = backoff_delay(self._attempt, initial_s=self.backoff_initial_s,
                                      max_s=self.backoff_max_s, rng=self._rng)
                self._attempt += 1
                self.backoffs.append(delay)
                del self.backoffs[:-100]
                await self._sleep(delay)
        finally:
            await self.source.close()

    async def _poll_loop(self) -> None:
        good_since: float | None = None
        # sources started together poll together: one wake-up serves many of them, which
        # costs about half the CPU of spreading them over the interval (see BENCHMARKS.md)
        scheduled = self._clock()
        if self._phase_s is not None:
            # the first poll at once, the next ones on the phase: away from the window
            # boundaries, so closing a window never waits behind a burst of polls
            ahead = (self._phase_s - self._wall()) % self.poll_interval_s
            if ahead < self.poll_interval_s / 2:
                ahead += self.poll_interval_s  # the first poll needs its time
            scheduled += ahead - self.poll_interval_s
        while True:
            start = self._clock()
            self.polls += 1
            readings = await self.source.read()
            _raise_if_cancelled()
            end = self._clock()
            self.last_poll_latency_s = end - start
            self.last_ok_mono = end
            if self._stamp is not None:
                at = self._stamp()
                readings = [replace(r, mono=at) for r in readings]
            self._on_readings(readings)
            self._recovered()
            if good_since is None:
                good_since = start
            elif self._attempt and end - good_since >= self.stable_after_s:
                self._attempt = 0
            # a fixed grid: late wake-ups do not accumulate into missed polls
            scheduled += self.poll_interval_s
            if end > scheduled:
                self.overruns += 1
                scheduled = end  # re-anchor rather than poll in a burst to catch up
                await self._sleep(0)  # let the rest of the agent run between back-to-back polls
            else:
                await self._sleep(scheduled - end)

    def _recovered(self) -> None:
        self.first_ok.set()
        if self._healthy is True:
            return
        if self._healthy is False:
            log.info("source %s: recovered", self.source.id)
        else:
            log.info("source %s: connected", self.source.id)
        self._healthy = True
        self._on_health(SourceHealth(self.source.id, True, self.last_ok_mono, None))

    def _failed(self, error: str, *, exc_info: bool) -> None:
        if self._healthy is False:
            log.debug("source %s: still failing: %s", self.source.id, error)
            return
        self._healthy = False
        log.warning("source %s: %s", self.source.id, error, exc_info=exc_info)
        self._on_health(SourceHealth(self.source.id, False, self.last_ok_mono, error))
