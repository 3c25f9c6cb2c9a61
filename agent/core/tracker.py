"""Per-line window accumulation: units, events, quality and time in each line state.

A :class:`LineTracker` receives a line's readings as they arrive and is closed once per
publish window. Units land in the window in which they are read (units read after an
outage carry ``gap_recovered``). Time in each state is integrated over the monotonic
times carried by the readings and passed to :meth:`LineTracker.close_window`, so the
``state_seconds`` of a window always add up to the monotonic time it covered.

Quality of a window: ``bad`` when no good counter reading arrived in it; ``uncertain``
when one did but something went wrong too (a non-good reading, the source lost, an
invalid value, an implausible jump, a counter reset, units recovered after a gap);
``good`` otherwise. A rollover is normal operation and does not lower quality.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agent.core.counter import CounterEngine, CounterMemory
from agent.readings import Quality, Reading

__all__ = ["DEFAULT_MODULUS", "STATES", "LineTracker", "WindowResult"]

log = logging.getLogger("plantfloor.counter")

STATES = ("running", "stopped", "faulted", "unknown")
#: counter modulus when neither the configuration nor the source says otherwise
DEFAULT_MODULUS = 2**32
#: events that make a window with good counter readings "uncertain"
_PROBLEMS = frozenset({
    "source_unreachable", "bad_quality", "uncertain_quality", "invalid_value",
    "implausible_jump", "counter_reset", "gap_recovered", "rebaselined", "new_epoch",
})


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


class LineTracker:
    """Accumulates one line's current window; pure, driven by monotonic times."""

    def __init__(self, *, line_id: str, configured_modulus: int | None,
                 max_rate_per_hour: float, state_map: Mapping[int, str],
                 has_state_tag: bool, start_mono: float, tag_names: Sequence[str] = (),
                 memory: CounterMemory | None = None) -> None:
        self.line_id = line_id
        self.tag_names = tuple(tag_names)
        self.state_map = dict(state_map)
        self.has_state_tag = has_state_tag
        self.configured_modulus = configured_modulus
        modulus = configured_modulus or (memory.modulus if memory else DEFAULT_MODULUS)
        if memory is not None and memory.modulus == modulus:
            self.engine = CounterEngine(modulus=modulus, max_rate_per_hour=max_rate_per_hour,
                                        baseline=memory.baseline, anchor=memory.anchor,
                                        last=memory.last, rebaseline=memory.rebaseline)
        else:
            self.engine = CounterEngine(modulus=modulus, max_rate_per_hour=max_rate_per_hour)
            if memory is not None and (memory.baseline is not None or memory.rebaseline):
                self.engine.rebaseline(memory.rebaseline or
                                       f"the counter's range changed to {modulus}")
        #: current line state: running | stopped | faulted | unknown
        self.state = "unknown"
        #: the last reason the source was unreachable (None once it is back)
        self.last_error: str | None = None
        #: why the last counter value was refused as a reading (None once one is accepted)
        self.value_error: str | None = None
        self._mark = start_mono
        self._reset()

    def _reset(self) -> None:
        self._units = 0
        self._events: dict[str, None] = {}
        self._good = 0
        self._seconds = dict.fromkeys(STATES, 0.0)
        self._tags: dict[str, int | float | None] = dict.fromkeys(self.tag_names)
        if self.last_error is not None:
            # still unreachable: every window of the outage says so, not just the first
            self._events["source_unreachable"] = None

    def _advance(self, mono: float) -> None:
        # readings can arrive with a time before the last mark (a poll answered just
        # before the window closed); time never runs backwards, so they add nothing
        if mono > self._mark:
            self._seconds[self.state] += mono - self._mark
            self._mark = mono

    def _set_state(self, state: str) -> bool:
        changed = state != self.state
        self.state = state
        return changed

    def on_reading(self, r: Reading) -> bool:
        """Account for one reading of this line; True when the line state changed."""
        self._advance(r.mono)
        if r.role == "counter":
            self._on_counter(r)
            return False
        if r.role == "tag":
            if r.name is not None and r.quality is Quality.GOOD and r.value is not None:
                self._tags[r.name] = r.value
            return False
        good = r.quality is Quality.GOOD and isinstance(r.value, int)
        if not good:
            self._events[_quality_event(r.quality)] = None
        if not self.has_state_tag or not good:
            return self._set_state("unknown")
        assert isinstance(r.value, int)
        return self._set_state(self.state_map.get(r.value, "unknown"))

    def _on_counter(self, r: Reading) -> None:
        value = r.value
        if r.quality is not Quality.GOOD or not isinstance(value, int):
            self._events[_quality_event(r.quality)] = None
            # whatever is built meanwhile is counted at the next good reading, as a gap
            self.engine.mark_unreachable()
            return
        self.last_error = None
        if value < 0 and r.modulus is not None:
            # a signed counter (int16, int32, Int64) counts on through its negative half:
            # two's complement over the type's full width
            value += r.modulus
        if self.configured_modulus is None:
            self.engine.set_modulus(r.modulus or DEFAULT_MODULUS)
        delta = self.engine.observe(value, r.mono)
        if "invalid_value" in delta.events:
            # not a reading of this counter: flagged like a bad status, never counted
            self._events["invalid_value"] = None
            self.engine.mark_unreachable()
            self.value_error = delta.note
            return
        self.value_error = None
        self._good += 1
        self._units += delta.units
        for e in delta.events:
            self._events[e] = None
        if delta.note is not None:
            log.warning("line %s: %s", self.line_id, delta.note)

    def on_source_down(self, mono: float, error: str) -> bool:
        """The line's source was lost: state unknown, ``source_unreachable``; True on change."""
        self._advance(mono)
        self.last_error = error
        self._events["source_unreachable"] = None
        self.engine.mark_unreachable()
        return self._set_state("unknown")

    def close_window(self, mono: float) -> WindowResult:
        """Close the window at ``mono`` and start the next one (the state carries over)."""
        self._advance(mono)
        events = tuple(self._events)
        if self._good == 0:
            quality = "bad"
        elif _PROBLEMS.intersection(events):
            quality = "uncertain"
        else:
            quality = "good"
        result = WindowResult(line=self.line_id, units=self._units, events=events,
                              quality=quality, state_seconds=dict(self._seconds),
                              counter=self.engine.baseline, state=self.state, tags=self._tags,
                              memory=self.engine.memory())
        self._reset()
        return result

    def discard_window(self, mono: float) -> None:
        """Drop what the current window accumulated and start a new one at ``mono``."""
        self._mark = max(self._mark, mono)
        self._reset()


def _quality_event(q: Quality) -> str:
    return "uncertain_quality" if q is Quality.UNCERTAIN else "bad_quality"
