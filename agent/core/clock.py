"""The plant clock: the one place the agent and the simulators read plant time from.

A :class:`Clock` gives the plant's wall clock (aware, UTC) and its monotonic clock in
plant seconds, and says how long a plant duration takes in real time. The production
agent runs on :class:`SystemClock` (the machine's clocks); the demo and the tests run on
:class:`SimulatedClock`, where plant time passes ``speed`` times faster than real time
from a chosen plant instant. Only plant time goes through a clock: network timeouts,
keepalives, back-off and the poll schedule stay on real time, because the network does
not run faster in a demo.

A simulated clock's monotonic time is the plant's POSIX time in seconds: it never steps,
and a demo restarted from the plant time it stopped at reads monotonic times that follow
on from those it persisted, as a gateway's do within one boot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SimulatedClock", "SystemClock", "describe"]


@runtime_checkable
class Clock(Protocol):
    """Plant time: ``wall()`` (aware, UTC), ``mono()`` (plant seconds, never backwards)."""

    #: plant seconds per real second (1 for the machine's own clocks)
    speed: float
    #: True when plant time is not the machine's (a demo, a test)
    simulated: bool

    def wall(self) -> datetime:
        """The plant's wall-clock time now, aware and in UTC."""
        ...

    def mono(self) -> float:
        """The plant's monotonic time now, in plant seconds."""
        ...

    def real_s(self, plant_s: float) -> float:
        """How many real seconds ``plant_s`` plant seconds take (for waiting on plant time)."""
        ...


class SystemClock:
    """The machine's clocks: what ``plantfloor run`` uses, and the default everywhere."""

    speed = 1.0
    simulated = False

    def wall(self) -> datetime:
        return datetime.now(UTC)

    def mono(self) -> float:
        return time.monotonic()

    def real_s(self, plant_s: float) -> float:
        return plant_s


class SimulatedClock:
    """Plant time running ``speed`` times faster than real time, from ``start`` on.

    ``real_mono`` is the real monotonic clock it is paced by (``time.monotonic``; a test
    may pass its own). ``speed`` 1 is real time from another instant. A clock made with
    ``running=False`` stands at ``start`` until :meth:`release`: the demo holds plant time
    while its PLCs and agent start, so that a restart resumes the plant day with no gap.
    """

    simulated = True

    def __init__(self, speed: float, start: datetime, *,
                 real_mono: Callable[[], float] = time.monotonic, running: bool = True) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"the plant clock's speed must be a positive number, not {speed!r}")
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError(f"the plant clock's start {start.isoformat()} needs a time zone")
        self.speed = float(speed)
        self.start = start.astimezone(UTC)
        self._real_mono = real_mono
        self._real0 = real_mono()
        self._posix0 = self.start.timestamp()
        # real seconds during which plant time stood still, and since when it stands
        self._held_s = 0.0
        self._held_since: float | None = None if running else self._real0

    def __repr__(self) -> str:
        return f"SimulatedClock(speed={self.speed:g}, start={self.start.isoformat()})"

    @property
    def running(self) -> bool:
        """False while plant time is held (:meth:`hold`)."""
        return self._held_since is None

    def hold(self) -> None:
        """Stop plant time where it is (it never goes back)."""
        if self._held_since is None:
            self._held_since = self._real_mono()

    def release(self) -> None:
        """Let plant time run on from where it was held."""
        if self._held_since is not None:
            self._held_s += self._real_mono() - self._held_since
            self._held_since = None

    def elapsed(self) -> float:
        """Plant seconds since ``start``."""
        now = self._real_mono() if self._held_since is None else self._held_since
        return (now - self._real0 - self._held_s) * self.speed

    def wall(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed())

    def mono(self) -> float:
        return self._posix0 + self.elapsed()

    def real_s(self, plant_s: float) -> float:
        return plant_s / self.speed


def describe(clock: Clock, tz: tzinfo) -> str:
    """One line for a person: ``simulated time x60, 2028-04-03 07:12 JST`` or the local time."""
    local = clock.wall().astimezone(tz)
    stamp = f"{local:%Y-%m-%d %H:%M} {local.tzname() or ''}".rstrip()
    if not clock.simulated:
        return stamp
    return f"simulated time x{clock.speed:g}, {stamp}"
