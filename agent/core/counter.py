"""Counter deltas: units produced from successive raw readings of a good-unit counter.

The rules (CONTRACT.md, "Counter semantics"):

* The first accepted reading with no baseline becomes the baseline and counts 0 units.
* A value outside ``[0, modulus)`` counts 0 units (``invalid_value``); the baseline stays.
* ``value >= baseline``: ``d = value - baseline`` units, unless a rate bound applies and
  ``d > allowed(elapsed)``: then 0 units, ``implausible_jump``, and the value becomes the
  new baseline (a wrong word order or a replaced PLC must not count millions of units).
* ``value < baseline``: the forward distance ``f = (value - baseline) mod modulus`` is a
  ``rollover`` of ``f`` units when plausible, ``f <= min(modulus // 4, allowed(elapsed))``
  (the rate bound only where one applies). Otherwise it is a ``counter_reset``: the value
  counts as the units built since the reset, unless a rate bound applies and the value
  itself exceeds ``allowed(elapsed)`` (then also ``implausible_jump``, 0 units).

``allowed(elapsed) = max_rate_per_hour * elapsed / 3600 + 1``; the extra unit tolerates
read jitter. ``elapsed`` is the monotonic time since the last accepted reading and is
known only when both readings carry a monotonic time from the same process: a baseline
restored from disk without ``baseline_mono`` has no elapsed time, so the first comparison
after a restart applies no rate bound. The wall clock is never used.

The only units this cannot see are those built between the last successful read and a
PLC counter reset; such readings carry ``counter_reset``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CounterDelta", "CounterEngine"]


@dataclass(frozen=True, slots=True)
class CounterDelta:
    """The outcome of one counter reading.

    ``units`` (>= 0) are the units to count now; ``events`` is a subset of
    ``rollover``, ``counter_reset``, ``implausible_jump``, ``invalid_value``,
    ``gap_recovered`` and ``rebaselined`` (a restored baseline outside the modulus was
    dropped), in the order they arose.
    """

    units: int
    events: tuple[str, ...] = ()


class CounterEngine:
    """Turns raw counter values into unit deltas; holds the baseline between readings."""

    def __init__(self, *, modulus: int, max_rate_per_hour: float | None = None,
                 baseline: int | None = None, baseline_mono: float | None = None) -> None:
        _check_modulus(modulus)
        if max_rate_per_hour is not None and not max_rate_per_hour > 0:
            raise ValueError(f"max_rate_per_hour must be positive, not {max_rate_per_hour}")
        self.modulus = modulus
        self.max_rate_per_hour = max_rate_per_hour
        #: last accepted raw value (persisted by the store with each window)
        self.baseline = baseline
        self._last_mono = baseline_mono if baseline is not None else None
        self._gap = False
        self._observed = False

    def set_modulus(self, modulus: int) -> None:
        """Set the modulus once it is known (from the first reading's data type)."""
        _check_modulus(modulus)
        if self._observed and modulus != self.modulus:
            raise ValueError("the counter modulus cannot change after the first reading")
        self.modulus = modulus

    def mark_unreachable(self) -> None:
        """The source was lost: the next accepted reading also carries ``gap_recovered``."""
        self._gap = True

    def allowed(self, elapsed: float | None) -> float | None:
        """The largest plausible increase over ``elapsed`` seconds; None without a bound."""
        if self.max_rate_per_hour is None or elapsed is None:
            return None
        return self.max_rate_per_hour * max(elapsed, 0.0) / 3600.0 + 1.0

    def observe(self, value: int, mono: float) -> CounterDelta:
        """Account for one good reading of the counter taken at monotonic time ``mono``."""
        self._observed = True
        if not 0 <= value < self.modulus:
            return CounterDelta(0, ("invalid_value",))
        events: list[str] = []
        if self.baseline is not None and not 0 <= self.baseline < self.modulus:
            # a restored baseline that cannot be a value of this counter (the counter's
            # type was reconfigured): start afresh rather than invent a huge delta
            self.baseline = None
            self._last_mono = None
            events.append("rebaselined")
        units = self._units(value, mono, events)
        self.baseline = value
        self._last_mono = mono
        if self._gap:
            events.append("gap_recovered")
            self._gap = False
        return CounterDelta(units, tuple(events))

    def _units(self, value: int, mono: float, events: list[str]) -> int:
        base = self.baseline
        if base is None:
            return 0
        elapsed = None if self._last_mono is None else mono - self._last_mono
        allowed = self.allowed(elapsed)
        if value >= base:
            d = value - base
            if allowed is not None and d > allowed:
                events.append("implausible_jump")
                return 0
            return d
        forward = (value - base) % self.modulus
        limit: float = self.modulus // 4
        if allowed is not None:
            limit = min(limit, allowed)
        if forward <= limit:
            events.append("rollover")
            return forward
        events.append("counter_reset")
        if allowed is not None and value > allowed:
            events.append("implausible_jump")
            return 0
        return value


def _check_modulus(modulus: int) -> None:
    if modulus < 2:
        raise ValueError(f"a counter modulus must be at least 2, not {modulus}")
