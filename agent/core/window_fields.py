"""A window payload's parts as the contract writes them: rounding, the state seconds, the
time buckets, the second counter, a block's coverage (for :mod:`agent.core.report`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agent.contract.payloads import LineOutput, LinePayload, rfc3339
from agent.core.oee import Acc
from agent.core.tracker import WindowResult

__all__ = [
    "STATES",
    "coverage",
    "day_target",
    "rnd",
    "rnd4",
    "second",
    "seconds_by",
    "secs",
    "state_seconds",
    "tags",
    "utc",
    "window_seconds",
    "window_time",
]


def coverage(acc: Acc, elapsed_s: float, since: datetime) -> dict[str, Any]:
    """A block's coverage fields: the planned time observed, its share of the planned time
    elapsed (1 while none has), and where counting began."""
    covered = acc.covered_ms / 1000
    return {"covered_s": rnd(covered),
            "coverage": rnd4(min(1.0, covered / elapsed_s)) if elapsed_s > 0 else 1.0,
            "counted_since": rfc3339(since)}


def utc(t: datetime) -> datetime:
    """The instant in UTC."""
    return t.astimezone(UTC)


def window_seconds(start: datetime, end: datetime) -> float:
    """A window's length in real seconds; an empty window is an error."""
    s = (utc(end) - utc(start)).total_seconds()
    if s <= 0:
        raise ValueError(f"empty window {start.isoformat()} .. {end.isoformat()}")
    return s


def rnd(x: float, digits: int = 3) -> float:
    """A figure as published: rounded to ``digits`` decimals."""
    return round(float(x), digits)


def rnd4(x: float | None) -> float | None:
    """A ratio as published (4 decimals), null kept."""
    return None if x is None else round(float(x), 4)


def day_target(o: LinePayload | LineOutput) -> float:
    """A line's ``day.target`` from its payload (fast or validated)."""
    return o.day_target if isinstance(o, LinePayload) else o.day.target


STATES = ("running", "stopped", "faulted", "unknown")


def state_seconds(seconds: dict[str, float]) -> dict[str, float]:
    """The four states' seconds of a window, rounded, each present."""
    return {k: round(float(v), 3) if (v := seconds.get(k)) else 0.0 for k in STATES}


def tags(tags: dict[str, int | float | None]) -> dict[str, int | float | None]:
    """The window's extra process values as the model holds them (a boolean as its integer)."""
    out = dict(tags)  # the tracker's dict goes on changing
    if bool in map(type, out.values()):
        # as the model's int | float | None: a boolean is its integer
        out = {k: int(v) if isinstance(v, bool) else v for k, v in out.items()}
    return out


def secs(ms: int) -> float:
    """Milliseconds as published seconds."""
    return round(ms / 1000, 3)


def window_time(result: WindowResult) -> dict[str, Any]:
    """The ``time`` block: the window's planned time in exact buckets."""
    t = result.time
    return {
        "planned_s": secs(t.planned_ms), "run_s": secs(t.run_ms), "minor_stop_s": secs(t.minor_ms),
        "down_s": seconds_by(t.down_ms), "unknown_s": secs(t.unknown_ms),
        "unknown_values": {str(k): secs(ms) for k, ms in sorted(t.unknown_values.items())}
        if t.unknown_values else {},
        "stops": dict(sorted(t.stops.items())) if t.stops else {}, "minor_stops": t.minor_stops,
        "reclassified_s": seconds_by(t.reclassified_ms)}


def seconds_by(ms: dict[str, int]) -> dict[str, float]:
    """Milliseconds by key as published seconds by key."""
    return {r: secs(v) for r, v in sorted(ms.items())} if ms else {}


def second(result: WindowResult) -> dict[str, Any] | None:
    """The ``second_counter`` block, or None without a second counter."""
    s = result.second
    if s is None:
        return None
    return {"role": s.role, "units": s.units, "counter": s.counter, "quality": s.quality,
            "events": list(s.events)}
