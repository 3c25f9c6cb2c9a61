"""A window's planned time in exact buckets, and the classification of stops (ISO 22400).

Every millisecond of a window's planned time lands in exactly one bucket::

    planned_ms = run_ms + minor_ms + sum(down_ms by reason) + unknown_ms

The tracker integrates the time of each *segment* of a window (a stretch in one reason:
``running``, a downtime reason, or ``unknown`` with the raw value it was unknown for) on
the monotonic clock. :func:`allocate` hands the window's planned milliseconds to the
segments in proportion to their monotonic seconds, by the largest-remainder method, so
the buckets add up to the window exactly (the monotonic length of a window differs from
its wall-clock length by the few milliseconds it closed late).

A *stop* is a stretch in one downtime reason; it may span windows, breaks and shifts, and
ends when the reason changes (to running, unknown or another reason). Its length counts
planned time only. While it is shorter than ``downtime.minor_stop_s`` its time is a minor
stop; when it reaches the threshold it becomes downtime of its reason from its start: the
window in which it does counts it once in ``stops`` and reports in ``reclassified_ms`` the
minor milliseconds of the stop from earlier windows of the same shift instance (a running
total moves them from minor stops to the reason; earlier shift instances keep theirs as
minor stops). A stop that ends below the threshold counts once as a minor stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

__all__ = ["RUNNING", "UNKNOWN", "StopClassifier", "TimeSplit", "allocate"]

RUNNING = "running"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class TimeSplit:
    """A window's planned milliseconds by bucket (see the module docstring)."""

    planned_ms: int = 0
    run_ms: int = 0
    minor_ms: int = 0
    down_ms: dict[str, int] = field(default_factory=dict)
    unknown_ms: int = 0
    #: the part of ``unknown_ms`` spent with a raw state value the map does not name
    unknown_values: dict[int, int] = field(default_factory=dict)
    #: stops that reached the threshold in this window, by reason
    stops: dict[str, int] = field(default_factory=dict)
    #: stops that ended in this window below the threshold
    minor_stops: int = 0
    #: minor milliseconds of earlier windows (same period) that became downtime of a reason
    reclassified_ms: dict[str, int] = field(default_factory=dict)

    @classmethod
    def unknown(cls, planned_ms: int) -> TimeSplit:
        """A window whose planned time is all unknown (the agent was not counting)."""
        return cls(planned_ms=planned_ms, unknown_ms=planned_ms)

    def holds(self) -> bool:
        """The identity: planned = run + minor + downtime by reason + unknown."""
        return self.planned_ms == (self.run_ms + self.minor_ms + sum(self.down_ms.values())
                                   + self.unknown_ms)


def allocate(weights: Sequence[float], total: int) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder, ties to the earlier).

    The parts are non-negative integers adding up to ``total`` exactly. When no weight is
    positive, everything goes to the last part.
    """
    n = len(weights)
    if n == 0 or total <= 0:
        return [0] * n
    if n == 1:
        return [total]  # one segment (a line in one state all window): the common case
    exact = [Fraction(max(w, 0.0)) for w in weights]
    whole = sum(exact)
    if whole == 0:
        return [0] * (n - 1) + [total]
    quotas = [total * w / whole for w in exact]
    parts = [int(q) for q in quotas]  # floor: the quotas are non-negative
    left = total - sum(parts)
    for i in sorted(range(n), key=lambda i: (parts[i] - quotas[i], i))[:left]:
        parts[i] += 1
    return parts


@dataclass(slots=True)
class _Stop:
    reason: str
    ms: int = 0            # planned milliseconds of the stop so far
    minor_ms: int = 0      # of which minor-stop milliseconds in the current period
    down: bool = False     # reached the threshold: downtime of its reason


@dataclass(slots=True)
class _Buckets:
    run: int = 0
    minor: int = 0
    unknown: int = 0
    down: dict[str, int] = field(default_factory=dict)
    unknown_values: dict[int, int] = field(default_factory=dict)
    stops: dict[str, int] = field(default_factory=dict)
    minor_stops: int = 0
    reclassified: dict[str, int] = field(default_factory=dict)


def _add(d: dict[str, int], key: str, n: int) -> None:
    d[key] = d.get(key, 0) + n


class StopClassifier:
    """Splits a line's windows into buckets, carrying the open stop from window to window.

    Pure; one per line. ``minor_stop_ms`` is ``downtime.minor_stop_s`` in milliseconds.
    """

    def __init__(self, minor_stop_ms: int = 0) -> None:
        self.threshold = max(0, minor_stop_ms)
        self._stop: _Stop | None = None
        self._period: str | None = None

    @property
    def open_stop(self) -> str | None:
        """The reason of the stop in progress, if any."""
        return self._stop.reason if self._stop is not None else None

    def split(self, segments: Sequence[tuple[str, int | None, float]], planned_ms: int,
              period: str | None = None) -> TimeSplit:
        """Bucket one window.

        ``segments`` are (reason, raw value of an unknown state or None, monotonic seconds)
        in time order; ``planned_ms`` is the window's planned time (0 off shift and in
        breaks); ``period`` names the shift instance (or off-shift period) the window
        belongs to: a stop's minor time is moved to its reason only within one period.
        """
        if period is not None and period != self._period:
            if self._stop is not None:
                self._stop.minor_ms = 0   # the earlier period's minor time stays there
            self._period = period
        if not segments:
            segments = [(UNKNOWN, None, 0.0)]
        parts = allocate([s for _, _, s in segments], planned_ms)
        b = _Buckets()
        for (reason, raw, _), ms in zip(segments, parts, strict=True):
            if reason in (RUNNING, UNKNOWN):
                self._end_stop(b)
                if reason == RUNNING:
                    b.run += ms
                else:
                    b.unknown += ms
                    if raw is not None:
                        b.unknown_values[raw] = b.unknown_values.get(raw, 0) + ms
                continue
            if self._stop is None or self._stop.reason != reason:
                self._end_stop(b)
                self._stop = _Stop(reason)
            self._stop_time(self._stop, ms, b)
        return TimeSplit(planned_ms=planned_ms, run_ms=b.run, minor_ms=b.minor, down_ms=b.down,
                         unknown_ms=b.unknown, unknown_values=b.unknown_values, stops=b.stops,
                         minor_stops=b.minor_stops, reclassified_ms=b.reclassified)

    def _stop_time(self, stop: _Stop, ms: int, b: _Buckets) -> None:
        if stop.down:
            _add(b.down, stop.reason, ms)
        elif ms > 0 and stop.ms + ms >= self.threshold:
            # the stop reaches the threshold: downtime of its reason from its start
            _add(b.down, stop.reason, ms)
            if stop.minor_ms:
                _add(b.reclassified, stop.reason, stop.minor_ms)
            _add(b.stops, stop.reason, 1)
            stop.down = True
            stop.minor_ms = 0
        else:
            b.minor += ms
            stop.minor_ms += ms
        stop.ms += ms

    def _end_stop(self, b: _Buckets) -> None:
        stop, self._stop = self._stop, None
        if stop is not None and not stop.down and stop.ms > 0:
            b.minor_stops += 1
