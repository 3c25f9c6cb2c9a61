"""The production model: one simulated line's ground truth and counter (pure, seeded, no I/O).

A :class:`SimLine` is shared by both PLC kinds: the servers only show its ``served_counter``
and ``state``. Faults of the counter tag (reset, freeze, jump) change what is shown without
changing what was built, and the line keeps the books a correct agent is judged against:
it must report ``produced - frozen_units`` units (jumps are not production).

A PLC whose counter reaches its communication image only every few seconds (a slow scan
or copy task) is a line with ``counter_update_s``: its ``counter`` moves unit by unit and
with every fault, but the ``served_counter`` takes the counter's value only at the
refreshes, every ``counter_update_s`` seconds of the simulator clock from when the
simulator started (:meth:`SimLine.start_clock`). Nothing else changes: not the units
built, not the books, not ``expected_units`` (a reset between two refreshes hides the
units built since the refresh before it, as one between two reads does).

The state a line serves is a *reason*: ``running``, or why it is not running (``stopped``,
``faulted``, or what the production config names: a changeover, a fault, blocked,
starved), served as the raw code its state tag's ``codes`` give. The line keeps the books
of time too: every change of the served reason goes into :attr:`SimLine.timeline` with
the wall-clock time (the injected ``clock``) and the units built and rejected so far, and
:attr:`SimLine.reason_seconds` sums the time served in each reason. A line with a reject
(or total) counter builds a share of its units as rejects: they move that counter, not
the good one.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import date, datetime, time, timedelta, tzinfo
from time import monotonic
from typing import Literal

from agent.config import Shift
from simulators.config import (
    DEFAULT_STATE_CODES,
    ModbusPlcConfig,
    OpcUaCounterNode,
    OpcUaLineConfig,
    OpcUaPlcConfig,
    ProductionConfig,
    SimLineConfig,
)

__all__ = ["STATE_CODES", "LineStateName", "ShiftCalendar", "SimLine", "Transition",
           "lines_from_config"]

LineStateName = Literal["stopped", "running", "faulted"]
#: the raw state value a PLC serves for each state, unless the line's codes say otherwise
STATE_CODES: dict[str, int] = dict(DEFAULT_STATE_CODES)
#: how many changes of the served reason a line remembers
TIMELINE = 10_000
#: (when, reason served from then on, units built so far, units rejected so far)
Transition = tuple[datetime, str, int, int]
_EPS = 1e-9
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ShiftCalendar:
    """Answers whether a wall-clock instant is planned production time (in a shift, not in a break)."""

    def __init__(self, shifts: Sequence[Shift], tz: tzinfo, holidays: Collection[date] = ()) -> None:
        self.shifts = tuple(shifts)
        self.tz = tz
        self.holidays = frozenset(holidays)

    def planned(self, when: datetime) -> bool:
        """True inside a shift and outside its breaks; ``when`` must be timezone-aware."""
        local = when.astimezone(self.tz)
        for shift in self.shifts:
            start_t = _time(shift.start)
            # a shift that crossed midnight started yesterday
            for day in (local.date() - timedelta(days=1), local.date()):
                if _WEEKDAYS[day.weekday()] not in shift.days or day in self.holidays:
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
    """One simulated line: what it built (ground truth), its PLC's counter and what the PLC serves.

    Attributes:
        counter: the PLC's own counter, always in ``0 .. modulus - 1``: it moves with every
            unit built (unless frozen) and with resets and jumps, at once.
        served_counter: what the PLC serves (registers, node); ``counter`` itself unless
            ``counter_update_s`` is set, see :attr:`served_counter`.
        produced: good units built since the simulator started.
        rejected: rejected units built since the simulator started (reject_rate).
        state: the reason served: ``"running"``, ``"stopped"``, ``"faulted"`` or one the
            production config names (served as it is, never late, as ``codes[state]``).
        resets / frozen_units / jumped: the books of the counter faults.
        counter_update_s: seconds between refreshes of the served counter, or None.
        timeline / reason_seconds: the books of the time in each reason (wall clock).
        second_role: ``"rejects"`` or ``"total"`` when the PLC serves a second counter
            (:attr:`served_second`), else None.

    ``clock_s`` is the simulator clock of the refreshes, in seconds (default ``time.monotonic``,
    the event loop's clock); ``clock`` is the wall clock of the shift calendar.
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
        state: str = "running",
        counter_update_s: float | None = None,
        clock_s: Callable[[], float] | None = None,
        codes: Mapping[str, int] | None = None,
        second_role: str | None = None,
        second_modulus: int = 2**32,
        second_start: int = 0,
    ) -> None:
        if modulus < 2:
            raise ValueError("modulus must be at least 2")
        if takt_s <= 0:
            raise ValueError("takt_s must be positive")
        if counter_update_s is not None and not (0 < counter_update_s < math.inf):
            raise ValueError("counter_update_s must be positive and finite")
        self.id = id
        self.plc = plc
        self.modulus = modulus
        self.counter = start % modulus
        self.produced = 0
        self.rejected = 0
        self.codes = dict(codes if codes is not None else STATE_CODES)
        if state not in self.codes:
            raise ValueError(f"state must be one of {', '.join(self.codes)}, not {state!r}")
        self.state = state
        self.second_role = second_role
        self.second_modulus = second_modulus
        self.second_counter = second_start % second_modulus
        self.resets = 0
        self.frozen_units = 0
        self.jumped = 0
        self.frozen = False
        self.takt_s = takt_s
        self.params = production or ProductionConfig()
        self.calendar = calendar
        self._clock = clock or (lambda: datetime.now().astimezone())
        self.counter_update_s = counter_update_s
        self._clock_s = clock_s or monotonic
        # the refresh schedule: refresh k is at _epoch + k * counter_update_s (None: not started)
        self._epoch: float | None = None
        self._refreshes = 0
        self._served = self.counter
        self._rng = random.Random(seed)
        # a state set by hand (set_state) holds until set_state("running") hands back to the model
        self._held = state != "running"
        self._phase: Literal["run", "micro", "repair", "changeover"] = "run"
        self._phase_left = 0.0
        self._micro_reason = self.params.micro_stop_reasons[0]
        self._to_unit = self._draw_takt()
        self._to_micro = self._draw_interval(self.params.micro_stop_rate_per_hour)
        self._to_breakdown = self._draw_interval(self.params.breakdown_rate_per_hour)
        self._to_changeover = self.params.changeover_every_s or math.inf
        # the books of time: when the served reason last changed, and the changes
        self._since = self._clock()
        self.timeline: deque[Transition] = deque([(self._since, state, 0, 0)], maxlen=TIMELINE)
        self._seconds: dict[str, float] = {}

    def __repr__(self) -> str:
        served = "" if self.counter_update_s is None else f", served_counter={self.served_counter}"
        return (f"SimLine({self.id!r}, counter={self.counter}{served}, produced={self.produced}, "
                f"state={self.state!r})")

    @property
    def expected_units(self) -> int:
        """What a correct agent reports in total: units built while the counter was visible."""
        return self.produced - self.frozen_units

    @property
    def state_code(self) -> int:
        """The raw state value the PLC serves now."""
        return self.codes[self.state]

    @property
    def served_second(self) -> int:
        """The second counter the PLC serves (rejects, or every unit built), at once."""
        return self.second_counter

    def reason_seconds(self, at: datetime | None = None) -> dict[str, float]:
        """Seconds served in each reason since the line was made, up to ``at`` (default now
        on the injected clock)."""
        out = dict(self._seconds)
        now = at if at is not None else self._clock()
        out[self.state] = out.get(self.state, 0.0) + max(0.0, (now - self._since).total_seconds())
        return out

    def _serve(self, reason: str, at: datetime | None = None) -> None:
        """Serve ``reason`` from ``at`` (default now); a change goes into the books."""
        if reason == self.state:
            return
        now = at if at is not None else self._clock()
        held = max(0.0, (now - self._since).total_seconds())
        self._seconds[self.state] = self._seconds.get(self.state, 0.0) + held
        self._since = now
        self.state = reason
        self.timeline.append((now, reason, self.produced, self.rejected))

    # --- what the PLC serves -----------------------------------------------------------

    @property
    def served_counter(self) -> int:
        """The counter value the PLC serves now.

        Without ``counter_update_s``: ``counter``. With it: the value ``counter`` had at the
        latest refresh (:attr:`refreshed_at`), so constant between refreshes; until the
        clock starts (the simulator is not serving yet) it follows ``counter``.
        """
        if self.counter_update_s is None or self._epoch is None:
            return self.counter
        self._sync(self._clock_s())
        return self._served

    @property
    def refreshes(self) -> int:
        """Refreshes of the served counter since the clock started, not counting the one at
        the start; 0 without ``counter_update_s``. A test that sees it unchanged across some
        reads knows no refresh happened in between."""
        if self.counter_update_s is None or self._epoch is None:
            return 0
        self._sync(self._clock_s())
        return self._refreshes

    @property
    def refreshed_at(self) -> float | None:
        """When the served counter was last refreshed, on the simulator clock (``clock_s``,
        ``time.monotonic`` by default); None without ``counter_update_s`` or before the
        clock starts."""
        if self.counter_update_s is None or self._epoch is None:
            return None
        self._sync(self._clock_s())
        return self._epoch + self._refreshes * self.counter_update_s

    @property
    def next_refresh_at(self) -> float | None:
        """When the next refresh comes, on the simulator clock; None as for :attr:`refreshed_at`."""
        last = self.refreshed_at
        return None if last is None or self.counter_update_s is None else last + self.counter_update_s

    def start_clock(self, at_s: float | None = None) -> None:
        """Start the refresh schedule at ``at_s`` (default: now on ``clock_s``), with a first
        refresh; later refreshes follow every ``counter_update_s`` from then. Later calls do
        nothing: a PLC restart keeps the schedule.

        The PLCs call it when they start (:class:`~simulators.runner.SimulatorSet` once for
        all its lines, so they refresh together).
        """
        if self._epoch is not None:
            return
        self._epoch = self._clock_s() if at_s is None else at_s
        self._refreshes = 0
        self._served = self.counter

    async def wait_refresh(self) -> int:
        """Wait for the next refresh of the served counter and return the value it shows.

        Returns once the simulator clock is past the first refresh after the call (Modbus
        reads from then on see the value; an OPC UA node takes it within its 20 ms copy
        period). Raises RuntimeError without ``counter_update_s`` or before the clock has
        started, when no refresh would come. Needs a running ``clock_s`` (the default).
        """
        if self.counter_update_s is None:
            raise RuntimeError(f"line {self.id} has no counter_update_s: its counter shows every unit")
        if self._epoch is None:
            raise RuntimeError(f"line {self.id}: the refresh clock has not started (start the PLC first)")
        target = self.refreshes + 1
        while True:
            now = self._clock_s()
            self._sync(now)
            if self._refreshes >= target:
                return self._served
            await asyncio.sleep(max(self._epoch + target * self.counter_update_s - now, 0.001))

    def _sync(self, now: float) -> None:
        """Apply the refreshes due by ``now``; called before every change of ``counter``, so a
        refresh shows the counter of its own instant."""
        if self.counter_update_s is None or self._epoch is None:
            return
        due = math.floor((now - self._epoch) / self.counter_update_s)
        if due > self._refreshes:
            self._refreshes = due
            self._served = self.counter

    def _counter_changes(self) -> None:
        """Bring the served counter up to date before ``counter`` changes."""
        if self.counter_update_s is not None:
            self._sync(self._clock_s())

    # --- what a test (or the model) does to the line -----------------------------------

    def restore_counters(self, counter: int, second: int) -> None:
        """Counters as a PLC's retentive memory kept them through a power cycle (the state
        file of :class:`~simulators.runner.SimulatorSet`): nothing built, nothing reset."""
        self.counter = counter % self.modulus
        self._served = self.counter
        self.second_counter = second % self.second_modulus

    def reject(self, n: int = 1) -> None:
        """Build ``n`` rejected units now: the reject (or total) counter moves, the good one not."""
        if n < 0:
            raise ValueError("cannot reject a negative number of units")
        self.rejected += n
        if self.second_role is not None:
            self.second_counter = (self.second_counter + n) % self.second_modulus

    def produce(self, n: int = 1) -> None:
        """Build ``n`` units now; the counter moves unless it is frozen (with
        ``counter_update_s`` the served counter shows them at the next refresh)."""
        if n < 0:
            raise ValueError("cannot build a negative number of units")
        self._counter_changes()
        self.produced += n
        if self.second_role == "total":
            self.second_counter = (self.second_counter + n) % self.second_modulus
        if self.frozen:
            self.frozen_units += n
        else:
            self.counter = (self.counter + n) % self.modulus

    def reset_counter(self, value: int = 0) -> None:
        """The PLC's counter restarts from ``value`` (a power cycle or an operator reset).

        With ``counter_update_s`` the served counter shows the reset at the next refresh,
        with the units built since; units built between the previous refresh and the reset
        are never shown (they still count in ``expected_units``, as units built between an
        agent's last read and a reset do).
        """
        self._counter_changes()
        self.counter = value % self.modulus
        self.resets += 1

    def freeze(self, on: bool = True) -> None:
        """Stop the counter tag while production goes on (those units are never visible).

        The counter itself stops, so with ``counter_update_s`` the refreshes go on showing
        it: units built before the freeze still show at the next refresh, those built while
        frozen never do.
        """
        self.frozen = on

    def jump(self, by: int) -> None:
        """Move the counter by ``by`` without building anything (a glitch or a mis-set preset);
        with ``counter_update_s`` the served counter shows it at the next refresh."""
        self._counter_changes()
        self.counter = (self.counter + by) % self.modulus
        self.jumped += by

    def set_state(self, state: str) -> None:
        """Force the reason served (one of ``codes``); any but running holds production
        until ``set_state("running")``."""
        if state not in self.codes:
            raise ValueError(f"state must be one of {', '.join(self.codes)}, not {state!r}")
        self._serve(state)
        self._held = state != "running"
        if not self._held:
            self._phase = "run"

    # --- the model ---------------------------------------------------------------------

    def advance(self, dt_s: float, *, now: datetime | None = None) -> int:
        """Run the line for ``dt_s`` seconds; return the units built.

        Cycle times jitter around ``takt_s``; short stops (state stopped) and breakdowns
        (state faulted for the repair time) arrive at random; outside planned production
        time of the shift calendar (``now``, default the injected clock) the line is stopped.
        The same seed and the same sequence of ``dt_s`` give the same events. The units are
        built (:meth:`produce`) at the end of the step, at the current ``clock_s``.
        """
        if dt_s <= 0 or self._held:
            return 0
        when = now or self._clock()
        if self.calendar is not None and not self.calendar.planned(when):
            self._serve("stopped", when)
            return 0
        p = self.params
        built = rejected = 0
        remaining = dt_s
        while remaining > _EPS:
            if self._phase == "run":
                step = min(remaining, self._to_unit, self._to_micro, self._to_breakdown,
                           self._to_changeover)
                remaining -= step
                self._to_unit -= step
                self._to_micro -= step
                self._to_breakdown -= step
                self._to_changeover -= step
                if self._to_unit <= _EPS:
                    # drawn only when rejects are simulated, so a seed's events stay the same
                    if p.reject_rate and self._rng.random() < p.reject_rate:
                        rejected += 1
                    else:
                        built += 1
                    self._to_unit = self._draw_takt()
                if self._to_breakdown <= _EPS:
                    self._phase, self._phase_left = "repair", self._draw_length(p.repair_s)
                    self._to_breakdown = self._draw_interval(p.breakdown_rate_per_hour)
                elif self._to_changeover <= _EPS:
                    self._phase, self._phase_left = "changeover", self._draw_length(p.changeover_s)
                    self._to_changeover = p.changeover_every_s or math.inf
                elif self._to_micro <= _EPS:
                    self._phase, self._phase_left = "micro", self._draw_length(p.micro_stop_s)
                    self._to_micro = self._draw_interval(p.micro_stop_rate_per_hour)
                    reasons = p.micro_stop_reasons
                    self._micro_reason = reasons[0] if len(reasons) == 1 else self._rng.choice(reasons)
            else:
                step = min(remaining, self._phase_left)
                remaining -= step
                self._phase_left -= step
                if self._phase_left <= _EPS:
                    self._phase = "run"
        if built:
            self.produce(built)
        if rejected:
            self.reject(rejected)
        self._serve({"run": "running", "micro": self._micro_reason, "repair": p.breakdown_reason,
                     "changeover": p.changeover_reason}[self._phase], when)
        return built

    def _draw_length(self, mean_s: float) -> float:
        """A stop's length: exactly ``mean_s`` with fixed durations, else exponential."""
        return mean_s if self.params.durations == "fixed" else self._rng.expovariate(1 / mean_s)

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
    clock_s: Callable[[], float] | None = None,
) -> dict[str, SimLine]:
    """The SimLines of one PLC; line i of the whole file draws from ``random.Random(seed + i)``."""
    lines: dict[str, SimLine] = {}
    cfgs: Sequence[SimLineConfig | OpcUaLineConfig] = plc.lines
    for i, cfg in enumerate(cfgs):
        second = cfg.second
        second_modulus = 2**32
        if second is not None:
            tag = second[1]
            second_modulus = tag.effective_modulus if isinstance(tag, OpcUaCounterNode) else tag.modulus
        lines[cfg.id] = SimLine(
            cfg.id, modulus=cfg.modulus, start=cfg.counter.start, takt_s=cfg.takt_s,
            production=cfg.production, seed=seed + first_index + i, calendar=calendar,
            clock=clock, plc=plc.id, counter_update_s=cfg.counter_update_s, clock_s=clock_s,
            codes=cfg.state.codes if cfg.state is not None else None,
            second_role=second[0] if second is not None else None,
            second_modulus=second_modulus, second_start=second[1].start if second else 0,
        )
    return lines
