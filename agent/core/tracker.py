"""Per-line window accumulation: units, events, quality, time in each state and reason.

A :class:`LineTracker` receives a line's readings as they arrive and is closed once per
publish window. Units land in the window in which they are read (units read after an
outage carry ``gap_recovered``). Time in each state is integrated over the monotonic
times carried by the readings and passed to :meth:`LineTracker.close_window`, so the
``state_seconds`` of a window always add up to the monotonic time it covered.

The state tag's map names, for each raw value, ``running``, a downtime *reason*
(``downtime.reasons``; each reports a coarse state, ``stopped`` or ``faulted``) or
``unknown``; a value the map does not name is ``unknown`` and its raw value is kept.
The window's planned time is split into exact buckets (running, minor stops, downtime by
reason, unknown) by :class:`~agent.core.timesplit.StopClassifier`.

A line may have a second counter (``total_counter`` or ``reject_counter``): counted by
its own :class:`~agent.core.counter.CounterEngine`, with the same guarantees, events and
quality of its own.

Quality of a window: ``bad`` when no good counter reading arrived in it; ``uncertain``
when one did but something went wrong too (a non-good reading, the source lost, an
invalid value, an implausible jump, a counter reset, units recovered after a gap);
``good`` otherwise. A rollover is normal operation and does not lower quality.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agent.contract.readings import Quality, Reading
from agent.core.counter import CounterEngine, CounterMemory
from agent.core.timesplit import RUNNING, UNKNOWN, StopClassifier, TimeSplit

__all__ = ["DEFAULT_MODULUS", "STATES", "LineTracker", "SecondResult", "WindowResult"]

log = logging.getLogger("plantfloor.counter")

STATES = ("running", "stopped", "faulted", "unknown")
#: counter modulus when neither the configuration nor the source says otherwise
DEFAULT_MODULUS = 2**32
#: the coarse state of the built-in reasons (a configuration adds its own)
BUILTIN_REASON_STATES: dict[str, str] = {"stopped": "stopped", "faulted": "faulted"}
#: events that make a window with good counter readings "uncertain"
_PROBLEMS = frozenset({
    "source_unreachable", "bad_quality", "uncertain_quality", "invalid_value",
    "implausible_jump", "counter_reset", "gap_recovered", "rebaselined", "new_epoch",
    "clock_unsynced",
})


@dataclass(frozen=True, slots=True)
class SecondResult:
    """What the line's second counter (all units, or rejects) counted in one window."""

    role: str
    units: int
    events: tuple[str, ...]
    quality: str
    counter: int | None
    memory: CounterMemory | None = None


@dataclass(frozen=True, slots=True)
class WindowResult:
    """What one line did in one window, before targets and totals are applied."""

    line: str
    units: int
    events: tuple[str, ...]
    quality: str
    state_seconds: dict[str, float]
    counter: int | None
    state: str
    tags: dict[str, int | float | None] = field(default_factory=dict)
    #: the counter engine's state at the window's end (persisted with the window)
    memory: CounterMemory | None = None
    #: the reason at the window's end: running, a downtime reason or unknown
    reason: str = UNKNOWN
    #: the state tag's last good raw value
    raw: int | None = None
    #: the window's planned time in buckets
    time: TimeSplit = field(default_factory=TimeSplit)
    #: False for a window the agent did not see (it was not running, or the loop stalled)
    covered: bool = True
    second: SecondResult | None = None


@dataclass(slots=True)
class _Segment:
    """A stretch of the window in one reason (and, when unknown, one raw value)."""

    reason: str
    raw: int | None
    seconds: float


def _engine(modulus: int, max_rate_per_hour: float, memory: CounterMemory | None) -> CounterEngine:
    """A counter engine resuming from ``memory`` when it is of the same modulus."""
    if memory is not None and memory.modulus == modulus:
        return CounterEngine(modulus=modulus, max_rate_per_hour=max_rate_per_hour,
                             baseline=memory.baseline, anchor=memory.anchor,
                             last=memory.last, rebaseline=memory.rebaseline)
    engine = CounterEngine(modulus=modulus, max_rate_per_hour=max_rate_per_hour)
    if memory is not None and (memory.baseline is not None or memory.rebaseline):
        engine.rebaseline(memory.rebaseline or f"the counter's range changed to {modulus}")
    return engine


class _Count:
    """One counter of a line and what it counted in the current window."""

    def __init__(self, line_id: str, configured_modulus: int | None, max_rate_per_hour: float,
                 memory: CounterMemory | None) -> None:
        self.line_id = line_id
        self.configured_modulus = configured_modulus
        modulus = configured_modulus or (memory.modulus if memory else DEFAULT_MODULUS)
        self.engine = _engine(modulus, max_rate_per_hour, memory)
        #: why the last value was refused as a reading (None once one is accepted)
        self.value_error: str | None = None
        #: the engine's memory when the last window closed: what the outbox accounts for
        self.closed = self.engine.memory()
        self.reset(unreachable=False)

    def reset(self, *, unreachable: bool) -> None:
        self.units = 0
        self.good = 0
        self.events: dict[str, None] = {}
        if unreachable:
            # still unreachable: every window of the outage says so, not just the first
            self.events["source_unreachable"] = None

    def quality(self) -> str:
        if self.good == 0:
            return "bad"
        return "uncertain" if _PROBLEMS.intersection(self.events) else "good"

    def unreachable(self) -> None:
        self.events["source_unreachable"] = None
        self.engine.mark_unreachable()

    def on_reading(self, r: Reading) -> bool:
        """Account for one reading; True when the source answered with a good value."""
        value = r.value
        if r.quality is not Quality.GOOD or not isinstance(value, int):
            self.events[_quality_event(r.quality)] = None
            # whatever is built meanwhile is counted at the next good reading, as a gap
            self.engine.mark_unreachable()
            return False
        if value < 0 and r.modulus is not None:
            # a signed counter (int16, int32, Int64) counts on through its negative half:
            # two's complement over the type's full width
            value += r.modulus
        if self.configured_modulus is None:
            self.engine.set_modulus(r.modulus or DEFAULT_MODULUS)
        delta = self.engine.observe(value, r.mono)
        if "invalid_value" in delta.events:
            # not a reading of this counter: flagged like a bad status, never counted
            self.events["invalid_value"] = None
            self.engine.mark_unreachable()
            self.value_error = delta.note
            return True
        self.value_error = None
        self.good += 1
        self.units += delta.units
        for e in delta.events:
            self.events[e] = None
        if delta.note is not None:
            log.warning("line %s: %s%s", self.line_id,
                        "" if r.role == "counter" else f"{r.role} counter: ", delta.note)
        return True


class LineTracker:
    """Accumulates one line's current window; pure, driven by monotonic times.

    ``state_map`` maps raw state values to ``running``, a reason or ``unknown``;
    ``reasons`` gives each reason's coarse state (``stopped`` or ``faulted``; the built-in
    ``stopped`` and ``faulted`` need not be given); ``minor_stop_s`` is the minor-stop
    threshold. ``second_role`` (``total`` or ``rejects``) names the line's second counter,
    restored from ``second_memory``.
    """

    def __init__(self, *, line_id: str, configured_modulus: int | None,
                 max_rate_per_hour: float, state_map: Mapping[int, str],
                 has_state_tag: bool, start_mono: float, tag_names: Sequence[str] = (),
                 memory: CounterMemory | None = None, reasons: Mapping[str, str] | None = None,
                 minor_stop_s: float = 0.0, second_role: str | None = None,
                 second_modulus: int | None = None,
                 second_memory: CounterMemory | None = None) -> None:
        self.line_id = line_id
        self.tag_names = tuple(tag_names)
        self.state_map = dict(state_map)
        self.reason_states = {**BUILTIN_REASON_STATES, **(reasons or {})}
        self.has_state_tag = has_state_tag
        self.configured_modulus = configured_modulus
        self._main = _Count(line_id, configured_modulus, max_rate_per_hour, memory)
        self.engine = self._main.engine
        self._second = (_Count(line_id, second_modulus, max_rate_per_hour, second_memory)
                        if second_role is not None else None)
        self.second_role = second_role
        #: current line state: running | stopped | faulted | unknown
        self.state = UNKNOWN
        #: current reason: running, a downtime reason, or unknown
        self.reason = UNKNOWN
        #: the state tag's last good raw value (None before one, or while it reads bad)
        self.raw: int | None = None
        #: the last reason the source was unreachable (None once it is back)
        self.last_error: str | None = None
        self._second_error: str | None = None
        self._classifier = StopClassifier(round(minor_stop_s * 1000))
        self._mark = start_mono
        self._reset()

    @property
    def value_error(self) -> str | None:
        """Why the last counter value was refused as a reading (None once one is accepted)."""
        return self._main.value_error

    @property
    def second_engine(self) -> CounterEngine | None:
        """The second counter's engine, if the line has one."""
        return self._second.engine if self._second is not None else None

    def _reset(self) -> None:
        self._main.reset(unreachable=self.last_error is not None)
        if self._second is not None:
            self._second.reset(unreachable=self._second_error is not None)
        self._seconds = dict.fromkeys(STATES, 0.0)
        self._segments: list[_Segment] = []
        self._tags: dict[str, int | float | None] = dict.fromkeys(self.tag_names)

    def _advance(self, mono: float) -> None:
        # readings can arrive with a time before the last mark (a poll answered just
        # before the window closed); time never runs backwards, so they add nothing
        if mono > self._mark:
            d = mono - self._mark
            self._seconds[self.state] += d
            raw = self.raw if self.reason == UNKNOWN else None
            last = self._segments[-1] if self._segments else None
            if last is not None and last.reason == self.reason and last.raw == raw:
                last.seconds += d
            else:
                self._segments.append(_Segment(self.reason, raw, d))
            self._mark = mono

    def _set_reason(self, reason: str, raw: int | None) -> bool:
        """Enter ``reason``; True when the reason (or the raw value of an unknown) changed."""
        unknown_raw = raw if reason == UNKNOWN else None
        before = (self.reason, self.raw if self.reason == UNKNOWN else None)
        self.reason = reason
        self.raw = raw
        if reason in (RUNNING, UNKNOWN):
            self.state = reason
        else:
            self.state = self.reason_states.get(reason, "stopped")
        return before != (reason, unknown_raw)

    def on_reading(self, r: Reading) -> bool:
        """Account for one reading of this line; True when the line's reason changed."""
        self._advance(r.mono)
        if r.role == "counter":
            if self._main.on_reading(r):
                self.last_error = None
            return False
        if r.role in ("total", "rejects"):
            if self._second is not None and self._second.on_reading(r):
                self._second_error = None
            return False
        if r.role == "tags":
            if r.values:
                self._tags.update(r.values)
            return False
        if r.role == "tag":
            if r.name is not None and r.quality is Quality.GOOD and r.value is not None:
                self._tags[r.name] = r.value
            return False
        good = r.quality is Quality.GOOD and isinstance(r.value, int)
        if not good:
            self._main.events[_quality_event(r.quality)] = None
        if not self.has_state_tag or not good:
            return self._set_reason(UNKNOWN, None)
        assert isinstance(r.value, int)
        return self._set_reason(self.state_map.get(r.value, UNKNOWN), r.value)

    def hold_reading(self, r: Reading) -> None:
        """A good counter reading that must not be counted yet (``clock_unsynced``).

        After a reboot with a wall clock that contradicts the store, the time since the
        stored baseline is unknown: the reading neither counts nor moves the baseline.
        """
        self._advance(r.mono)
        count = self._main if r.role == "counter" else self._second
        if count is None:
            return
        count.good += 1
        count.events["clock_unsynced"] = None
        if r.role == "counter":
            self.last_error = None
        else:
            self._second_error = None

    def restore(self, memory: CounterMemory | None, second_memory: CounterMemory | None) -> None:
        """Resume the counters from ``memory`` (and ``second_memory``) dated anew.

        Used once a held first delta can be bounded: nothing was counted meanwhile.
        """
        main = self._main
        modulus = main.configured_modulus or (memory.modulus if memory else DEFAULT_MODULUS)
        main.engine = _engine(modulus, main.engine.max_rate_per_hour, memory)
        main.closed = main.engine.memory()
        self.engine = main.engine
        if self._second is not None:
            c = self._second
            modulus = c.configured_modulus or (second_memory.modulus if second_memory
                                               else DEFAULT_MODULUS)
            c.engine = _engine(modulus, c.engine.max_rate_per_hour, second_memory)
            c.closed = c.engine.memory()

    def on_source_down(self, mono: float, error: str, *, counter: bool = True,
                       second: bool = True, state: bool | None = None) -> bool:
        """A source of the line was lost; True when the line's reason changed.

        ``counter``, ``second`` and ``state`` say whether it serves the good-unit counter,
        the second counter and the state tag (``state`` defaults to ``counter``). Losing
        the counter's source flags ``source_unreachable``; losing the state's makes the
        state unknown and leaves the counter's health to its own source.
        """
        self._advance(mono)
        if second and self._second is not None:
            self._second_error = error
            self._second.unreachable()
        if counter:
            self.last_error = error
            self._main.unreachable()
        if counter if state is None else state:
            return self._set_reason(UNKNOWN, None)
        return False

    def close_window(self, mono: float, *, planned_ms: int = 0,
                     period: str | None = None) -> WindowResult:
        """Close the window at ``mono`` and start the next one (the state carries over).

        ``planned_ms`` is the window's planned time, split into buckets in proportion to
        the monotonic time of each reason; ``period`` names its shift instance.
        """
        self._advance(mono)
        segments = ([(g.reason, g.raw, g.seconds) for g in self._segments]
                    or [(self.reason, self.raw if self.reason == UNKNOWN else None, 0.0)])
        split = self._classifier.split(segments, planned_ms, period)
        main = self._main
        second = None
        if self._second is not None and self.second_role is not None:
            c = self._second
            c.closed = c.engine.memory()
            second = SecondResult(role=self.second_role, units=c.units, events=tuple(c.events),
                                  quality=c.quality(), counter=c.engine.baseline,
                                  memory=c.closed)
        main.closed = main.engine.memory()
        result = WindowResult(line=self.line_id, units=main.units, events=tuple(main.events),
                              quality=main.quality(), state_seconds=dict(self._seconds),
                              counter=main.engine.baseline, state=self.state, tags=self._tags,
                              memory=main.closed, reason=self.reason, raw=self.raw,
                              time=split, second=second)
        self._reset()
        return result

    def offline_window(self, event: str, seconds: float, planned_ms: int) -> WindowResult:
        """A window that closed while nothing was counting: no units, quality bad, and
        its planned time unknown (the tracker's own window is left as it is).

        It carries the counter memory of the last *closed* window, not the engine's current
        one: readings taken meanwhile (polling goes on during a gap fill) are counted in the
        open window, and a baseline stored ahead of the outbox would lose their units to a
        crash before that window closes.
        """
        second = None
        if self._second is not None and self.second_role is not None:
            c = self._second.closed
            second = SecondResult(role=self.second_role, units=0, events=(event,), quality="bad",
                                  counter=c.baseline, memory=c)
        main = self._main.closed
        return WindowResult(
            line=self.line_id, units=0, events=(event,), quality="bad",
            state_seconds={"running": 0.0, "stopped": 0.0, "faulted": 0.0, "unknown": seconds},
            counter=main.baseline, state=UNKNOWN, memory=main,
            reason=UNKNOWN, time=TimeSplit.unknown(planned_ms), covered=False, second=second)

    def discard_window(self, mono: float) -> None:
        """Drop what the current window accumulated and start a new one at ``mono``."""
        self._mark = max(self._mark, mono)
        self._reset()


def _quality_event(q: Quality) -> str:
    return "uncertain_quality" if q is Quality.UNCERTAIN else "bad_quality"
