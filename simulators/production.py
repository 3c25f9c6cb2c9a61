"""The production model: one simulated line's ground truth and counter (pure, seeded, no I/O).

A :class:`SimLine` is shared by both PLC kinds: the servers only show its ``counter`` and
``state``. Faults of the counter tag (reset, freeze, jump) change what is shown without
changing what was built, and the line keeps the books a correct agent is judged against:
it must report ``produced - frozen_units`` units (jumps are not production).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Literal, get_args

from agent.config import Shift
from simulators.config import (
    ModbusPlcConfig,
    OpcUaLineConfig,
    OpcUaPlcConfig,
    ProductionConfig,
    SimLineConfig,
)

__all__ = ["STATE_CODES", "LineStateName", "ShiftCalendar", "SimLine", "lines_from_config"]

LineStateName = Literal["stopped", "running", "faulted"]
#: the raw state value a PLC serves for each state
STATE_CODES: dict[str, int] = {"stopped": 0, "running": 1, "faulted": 2}
_EPS = 1e-9
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ShiftCalendar:
    """Answers whether a wall-clock instant is planned production time (in a shift, not in a break)."""

    def __init__(self, shifts: Sequence[Shift], tz: tzinfo) -> None:
        self.shifts = tuple(shifts)
        self.tz = tz

    def planned(self, when: datetime) -> bool:
        """True inside a shift and outside its breaks; ``when`` must be timezone-aware."""
        local = when.astimezone(self.tz)
        for shift in self.shifts:
            start_t = _time(shift.start)
            # a shift that crossed midnight started yesterday
            for day in (local.date() - timedelta(days=1), local.date()):
                if _WEEKDAYS[day.weekday()] not in shift.days:
                    continue
                offset_min = _minutes_between(day, start_t, local)
                if not 0 <= offset_min < shift.span_minutes():
                    continue
                in_break = any(shift.offset_minutes(b.start) <= offset_min < shift.offset_minutes(b.end)
                               for b in shift.breaks)
                return not in_break
        return False


def _time(hhmm: str) -> time:
    h, m = hhmm.split(":")
    return time(int(h), int(m))


def _minutes_between(day: date, start: time, local: datetime) -> float:
    """Wall-clock minutes from ``day`` at ``start`` to ``local`` (naive arithmetic, as a shift board reads)."""
    begin = datetime.combine(day, start)
    return (local.replace(tzinfo=None) - begin).total_seconds() / 60.0


class SimLine:
    """One simulated line: what it built (ground truth) and the counter its PLC shows.

    Attributes:
        counter: raw counter value as served, always in ``0 .. modulus - 1``.
        produced: units built since the simulator started.
        state: ``"stopped"``, ``"running"`` or ``"faulted"``.
        resets / frozen_units / jumped: the books of the counter faults.
    """

    def __init__(
        self,
        id: str,
        *,
        modulus: int,
        start: int = 0,
        takt_s: float = 3.0,
        production: ProductionConfig | None = None,
        seed: int = 0,
        calendar: ShiftCalendar | None = None,
        clock: Callable[[], datetime] | None = None,
        plc: str = "",
        state: LineStateName = "running",
    ) -> None:
        if modulus < 2:
            raise ValueError("modulus must be at least 2")
        if takt_s <= 0:
            raise ValueError("takt_s must be positive")
        self.id = id
        self.plc = plc
        self.modulus = modulus
        self.counter = start % modulus
        self.produced = 0
        self.state: LineStateName = state
        self.resets = 0
        self.frozen_units = 0
        self.jumped = 0
        self.frozen = False
        self.takt_s = takt_s
        self.params = production or ProductionConfig()
        self.calendar = calendar
        self._clock = clock or (lambda: datetime.now().astimezone())
        self._rng = random.Random(seed)
        # a state set by hand (set_state) holds until set_state("running") hands back to the model
        self._held = state != "running"
        self._phase: Literal["run", "micro", "repair"] = "run"
        self._phase_left = 0.0
        self._to_unit = self._draw_takt()
        self._to_micro = self._draw_interval(self.params.micro_stop_rate_per_hour)
        self._to_breakdown = self._draw_interval(self.params.breakdown_rate_per_hour)

    def __repr__(self) -> str:
        return (f"SimLine({self.id!r}, counter={self.counter}, produced={self.produced}, "
                f"state={self.state!r})")

    @property
    def expected_units(self) -> int:
        """What a correct agent reports in total: units built while the counter was visible."""
        return self.produced - self.frozen_units

    # --- what a test (or the model) does to the line -----------------------------------

    def produce(self, n: int = 1) -> None:
        """Build ``n`` units now; the counter moves unless it is frozen."""
        if n < 0:
            raise ValueError("cannot build a negative number of units")
        self.produced += n
        if self.frozen:
            self.frozen_units += n
        else:
            self.counter = (self.counter + n) % self.modulus

    def reset_counter(self, value: int = 0) -> None:
        """The PLC's counter restarts from ``value`` (a power cycle or an operator reset)."""
        self.counter = value % self.modulus
        self.resets += 1

    def freeze(self, on: bool = True) -> None:
        """Stop the counter tag while production goes on (those units are never visible)."""
        self.frozen = on

    def jump(self, by: int) -> None:
        """Move the counter by ``by`` without building anything (a glitch or a mis-set preset)."""
        self.counter = (self.counter + by) % self.modulus
        self.jumped += by

    def set_state(self, state: str) -> None:
        """Force the state; stopped or faulted holds production until ``set_state("running")``."""
        if state not in get_args(LineStateName):
            raise ValueError(f"state must be one of {', '.join(get_args(LineStateName))}, not {state!r}")
        self.state = state  # type: ignore[assignment]  # checked just above
        self._held = state != "running"
        if not self._held:
            self._phase = "run"

    # --- the model ---------------------------------------------------------------------

    def advance(self, dt_s: float, *, now: datetime | None = None) -> int:
        """Run the line for ``dt_s`` seconds; return the units built.

        Cycle times jitter around ``takt_s``; short stops (state stopped) and breakdowns
        (state faulted for the repair time) arrive at random; outside planned production
        time of the shift calendar (``now``, default the injected clock) the line is stopped.
        The same seed and the same sequence of ``dt_s`` give the same events.
        """
        if dt_s <= 0 or self._held:
            return 0
        if self.calendar is not None and not self.calendar.planned(now or self._clock()):
            self.state = "stopped"
            return 0
        built = 0
        remaining = dt_s
        while remaining > _EPS:
            if self._phase == "run":
                step = min(remaining, self._to_unit, self._to_micro, self._to_breakdown)
                remaining -= step
                self._to_unit -= step
                self._to_micro -= step
                self._to_breakdown -= step
                if self._to_unit <= _EPS:
                    built += 1
                    self._to_unit = self._draw_takt()
                if self._to_breakdown <= _EPS:
                    self._phase, self._phase_left = "repair", self._rng.expovariate(1 / self.params.repair_s)
                    self._to_breakdown = self._draw_interval(self.params.breakdown_rate_per_hour)
                elif self._to_micro <= _EPS:
                    self._phase, self._phase_left = "micro", self._rng.expovariate(1 / self.params.micro_stop_s)
                    self._to_micro = self._draw_interval(self.params.micro_stop_rate_per_hour)
            else:
                step = min(remaining, self._phase_left)
                remaining -= step
                self._phase_left -= step
                if self._phase_left <= _EPS:
                    self._phase = "run"
        self.state = {"run": "running", "micro": "stopped", "repair": "faulted"}[self._phase]  # type: ignore[assignment]
        if built:
            self.produce(built)
        return built

    def _draw_takt(self) -> float:
        jitter = self._rng.gauss(1.0, self.params.takt_jitter) if self.params.takt_jitter else 1.0
        return self.takt_s * min(max(jitter, 0.5), 1.5)

    def _draw_interval(self, rate_per_hour: float) -> float:
        """Running seconds to the next random event of a Poisson process."""
        if rate_per_hour <= 0:
            return math.inf
        return self._rng.expovariate(rate_per_hour / 3600.0)


def lines_from_config(
    plc: ModbusPlcConfig | OpcUaPlcConfig,
    *,
    seed: int,
    first_index: int = 0,
    calendar: ShiftCalendar | None = None,
    clock: Callable[[], datetime] | None = None,
) -> dict[str, SimLine]:
    """The SimLines of one PLC; line i of the whole file draws from ``random.Random(seed + i)``."""
    lines: dict[str, SimLine] = {}
    cfgs: Sequence[SimLineConfig | OpcUaLineConfig] = plc.lines
    for i, cfg in enumerate(cfgs):
        lines[cfg.id] = SimLine(
            cfg.id, modulus=cfg.modulus, start=cfg.counter.start, takt_s=cfg.takt_s,
            production=cfg.production, seed=seed + first_index + i, calendar=calendar,
            clock=clock, plc=plc.id,
        )
    return lines
