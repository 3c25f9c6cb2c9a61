"""Counter deltas: units produced from successive raw readings of a good-unit counter.

The rules (CONTRACT.md, "Counter semantics" and "Plausibility"):

* The first accepted reading with no baseline becomes the baseline and counts 0 units.
  When the baseline was dropped on purpose (the counter's identity changed, an operator
  asked for it, the modulus changed), that reading also carries ``rebaselined``.
* A value outside ``[0, modulus)`` counts 0 units (``invalid_value``); the baseline stays.
* Every delta is bounded. ``allowed = max_rate_per_hour * elapsed / 3600 + 1`` where
  ``elapsed`` is the time since the counter *could last have advanced*: the time of the
  last reading before the one that first showed the current baseline (the anchor). A PLC
  that refreshes its counter in bursts is therefore counted exactly: the bound covers
  everything the line could have built since the previous burst. The extra unit
  tolerates read jitter. A counter read for the first time (a new store, a new counter, a
  re-baseline) may have reached its value up to :data:`BASELINE_LAG_S` before: a PLC that
  refreshes its counter in bursts of up to that period is counted exactly from its
  first burst on.
* ``value >= baseline``: ``d = value - baseline`` units, unless ``d > allowed``: then 0
  units, ``implausible_jump``, and the value becomes the new baseline (a wrong word order
  or a replaced PLC must not count millions of units).
* ``value < baseline``: the forward distance ``f = (value - baseline) mod modulus`` is a
  ``rollover`` of ``f`` units when ``f <= min(modulus // 4, allowed)``. Otherwise it is a
  ``counter_reset``: the value counts as the units built since the reset when
  ``value <= allowed``; beyond that nothing is counted (``implausible_jump`` too) and the
  value becomes the baseline.

Times are monotonic seconds. A baseline restored after a restart comes with its anchor
and last reading converted into this process's monotonic timeline by the caller (from
the monotonic clock when the machine has not rebooted, else from the wall clock), so the
first reading after a restart is bounded like any other.

The only units this cannot see are those built between the last successful read and a
PLC counter reset, or while the baseline was being re-established; such readings carry
``counter_reset`` or ``rebaselined``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["BASELINE_LAG_S", "CounterDelta", "CounterEngine", "CounterMemory", "untrusted_clock"]

#: how long before its first reading a counter may have last advanced (see the docstring)
BASELINE_LAG_S = 60.0


@dataclass(frozen=True, slots=True)
class CounterDelta:
    """The outcome of one counter reading.

    ``units`` (>= 0) are the units to count now; ``events`` is a subset of
    ``rollover``, ``counter_reset``, ``implausible_jump``, ``invalid_value``,
    ``gap_recovered`` and ``rebaselined``, in the order they arose. ``note`` explains a
    refused delta with its raw values (for the log), else None.
    """

    units: int
    events: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True, slots=True)
class CounterMemory:
    """What the engine must remember across a restart (persisted with every window).

    ``anchor`` and ``last`` are monotonic times of this process; ``rebaseline`` is the
    reason of a pending re-baseline, kept until a reading applies it.
    """

    baseline: int | None
    modulus: int
    anchor: float | None
    last: float | None
    rebaseline: str | None = None


class CounterEngine:
    """Turns raw counter values into unit deltas; holds the baseline between readings."""

    def __init__(self, *, modulus: int, max_rate_per_hour: float,
                 baseline: int | None = None, anchor: float | None = None,
                 last: float | None = None, rebaseline: str | None = None) -> None:
        _check_modulus(modulus)
        if not max_rate_per_hour > 0:
            raise ValueError(f"max_rate_per_hour must be positive, not {max_rate_per_hour}")
        if baseline is not None and anchor is None:
            raise ValueError("a restored baseline needs the time it is bounded from (anchor)")
        self.modulus = modulus
        self.max_rate_per_hour = max_rate_per_hour
        #: last accepted raw value (persisted by the store with each window)
        self.baseline = baseline
        self._anchor = anchor if baseline is not None else None
        self._last = (last if last is not None else anchor) if baseline is not None else None
        self._rebaseline = rebaseline
        self._gap = False
        if baseline is not None and not 0 <= baseline < modulus:
            # a restored baseline that cannot be a value of this counter: start afresh
            self.rebaseline("the stored baseline is outside the counter's range")

    def memory(self) -> CounterMemory:
        """A snapshot of what must survive a restart."""
        return CounterMemory(self.baseline, self.modulus, self._anchor, self._last, self._rebaseline)

    def rebaseline(self, reason: str) -> None:
        """The next good reading becomes the baseline without counting (``rebaselined``)."""
        self.baseline = None
        self._anchor = None
        self._last = None
        self._rebaseline = reason

    def set_modulus(self, modulus: int) -> None:
        """The counter's modulus (from the reading's data type); a change re-baselines."""
        _check_modulus(modulus)
        if modulus != self.modulus:
            self.modulus = modulus
            if self.baseline is not None:
                self.rebaseline(f"the counter's range changed to {modulus}")

    def mark_unreachable(self) -> None:
        """The source was lost: the next accepted reading also carries ``gap_recovered``."""
        self._gap = True

    def allowed(self, elapsed: float) -> float:
        """The largest plausible increase over ``elapsed`` seconds."""
        return self.max_rate_per_hour * max(elapsed, 0.0) / 3600.0 + 1.0

    def observe(self, value: int, mono: float) -> CounterDelta:
        """Account for one good reading of the counter taken at monotonic time ``mono``."""
        if not 0 <= value < self.modulus:
            return CounterDelta(0, ("invalid_value",),
                                f"raw value {value} is outside 0..{self.modulus - 1}")
        events: list[str] = []
        note = None
        base = self.baseline
        if base is None:
            units = 0
            if self._rebaseline is not None:
                events.append("rebaselined")
                note = f"re-baselined at raw value {value}: {self._rebaseline}"
                self._rebaseline = None
        else:
            assert self._anchor is not None
            units, note = self._units(base, value, mono - self._anchor, events)
        if base is None or value != base:
            # the counter advanced (or was first seen) now; it could have done so as early
            # as the previous reading, so that is where the next bound is measured from
            self._anchor = self._last if self._last is not None else mono - BASELINE_LAG_S
        self.baseline = value
        self._last = max(mono, self._last) if self._last is not None else mono
        if self._gap:
            events.append("gap_recovered")
            self._gap = False
        return CounterDelta(units, tuple(events), note)

    def _units(self, base: int, value: int, elapsed: float,
               events: list[str]) -> tuple[int, str | None]:
        allowed = self.allowed(elapsed)
        if value >= base:
            d = value - base
            if d > allowed:
                events.append("implausible_jump")
                return 0, (f"raw {base} -> {value}: +{d} in {elapsed:.1f} s exceeds the bound of "
                           f"{allowed:.0f} ({self.max_rate_per_hour:g}/h); not counted, re-baselined")
            return d, None
        forward = (value - base) % self.modulus
        if forward <= min(self.modulus // 4, allowed):
            events.append("rollover")
            return forward, None
        events.append("counter_reset")
        if value > allowed:
            events.append("implausible_jump")
            return 0, (f"raw {base} -> {value}: a reset, but {value} units in {elapsed:.1f} s "
                       f"exceed the bound of {allowed:.0f} ({self.max_rate_per_hour:g}/h); "
                       "not counted, re-baselined")
        return value, None


def untrusted_clock(stored: datetime, now: datetime, max_outage_s: float) -> str | None:
    """Why a wall clock read after a reboot cannot date the stored reading, or None.

    Only the wall clock can tell how long a rebooted machine was down. One behind the
    last stored reading, or further ahead of it than ``max_outage_s``, is not trusted
    with the first delta (a gateway without an RTC before NTP has synchronised).
    """
    if now < stored:
        return (f"the wall clock ({now.isoformat()}) is behind the last stored reading "
                f"({stored.isoformat()})")
    if (now - stored).total_seconds() > max_outage_s:
        return (f"the wall clock ({now.isoformat()}) is more than {max_outage_s / 86400:g} days "
                f"past the last stored reading ({stored.isoformat()})")
    return None


def _check_modulus(modulus: int) -> None:
    if modulus < 2:
        raise ValueError(f"a counter modulus must be at least 2, not {modulus}")
