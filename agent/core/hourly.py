"""What a board needs of each closed window, kept with the window: per line and plant-local
hour, and the latest figures of every line and of the plant.

Pure: a window's payloads (built once by :mod:`agent.core.report`) become

- :class:`HourDelta` increments, one per line, keyed by the plant-local hour the window
  starts in (``hour`` is that hour's start in UTC, so text order is time order even
  across a daylight-saving change): good units, target units, planned, run, minor-stop,
  unknown and covered seconds, and downtime seconds by reason. Windows never straddle a
  shift or break boundary; with a window length that does not divide an hour, a window
  counts whole in the hour it starts in.
- :class:`Latest` rows, one per line and one for the plant (line ``""``): the payload as
  published, the line's reason, and this window's share of the running shift and day
  sums (target so far, planned and covered seconds) that the store adds up while the
  shift or day stays the same (``shift_key``, ``day_key``).

The store adds the increments up in the window's own transaction, so the board's history
is exactly what was published, through restarts. The ratios a board shows of these sums
are computed here too (:func:`attainment`, :func:`coverage`), by the rules the payloads
use, never in a view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from agent.contract.payloads import LinePayload, PlantOutput, encode

__all__ = ["DEFAULT_DAYS", "HourDelta", "Latest", "ahead", "attainment", "coverage", "hour_start",
           "window_rows"]

#: days of hourly history kept by default: a month and its first week compared with the last
DEFAULT_DAYS = 35


@dataclass(frozen=True, slots=True)
class HourDelta:
    """One window's contribution to its line's hour."""

    line: str
    hour: datetime
    units: int
    target: float
    planned_s: float
    run_s: float
    minor_stop_s: float
    unknown_s: float
    covered_s: float
    down_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Latest:
    """A line's (or the plant's, line ``""``) latest window as a board reads it."""

    line: str
    window_end: datetime
    reason: str | None
    shift_key: str
    day_key: str
    target: float
    planned_s: float
    covered_s: float
    payload: bytes


def hour_start(t: datetime, tz: ZoneInfo) -> datetime:
    """The start (UTC) of the plant-local hour that contains ``t``."""
    local = t.astimezone(tz)
    return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)


def attainment(units: float, target: float) -> float | None:
    """units / target, as the payloads round it (4 decimals); None when the target is 0."""
    return round(units / target, 4) if target > 0 else None


def ahead(units: float, target: float) -> float:
    """Units ahead of the target so far (negative: behind), to one decimal."""
    return round(units - target, 1)


def coverage(covered_s: float, planned_s: float) -> float:
    """Planned time the agent was counting for over planned time (1 when nothing was planned)."""
    return round(min(1.0, covered_s / planned_s), 4) if planned_s > 0 else 1.0


def window_rows(outputs: Sequence[LinePayload], plant: PlantOutput, start: datetime,
                end: datetime, tz: ZoneInfo) -> tuple[list[HourDelta], list[Latest]]:
    """The hour increments and latest rows of one closed window [start, end)."""
    hour = hour_start(start, tz)
    hours_long = (end - start).total_seconds() / 3600
    deltas: list[HourDelta] = []
    latest: list[Latest] = []
    plant_target = 0.0
    plant_planned = plant_covered = 0.0
    for out in outputs:
        f = out.fields
        target = float(f["target_per_hour"]) * hours_long
        t = f.get("time")
        planned = float(t["planned_s"]) if t else 0.0
        # a window the agent did not see (filled after it was down) covers none of its time
        covered = 0.0 if "agent_offline" in f["events"] else planned
        deltas.append(HourDelta(
            line=out.line, hour=hour, units=out.units, target=target, planned_s=planned,
            run_s=float(t["run_s"]) if t else 0.0,
            minor_stop_s=float(t["minor_stop_s"]) if t else 0.0,
            unknown_s=float(t["unknown_s"]) if t else 0.0, covered_s=covered,
            down_s={k: float(v) for k, v in t["down_s"].items() if v} if t else {}))
        shift_key = f"{f['day']['date']}/{f['shift']['name'] or '-'}"
        day_key = str(f["day"]["date"])
        latest.append(Latest(line=out.line, window_end=end, reason=f.get("reason"),
                             shift_key=shift_key, day_key=day_key, target=target,
                             planned_s=planned, covered_s=covered, payload=out.json))
        plant_target += target
        plant_planned += planned
        plant_covered += covered
    if outputs:
        first = outputs[0].fields
        latest.append(Latest(
            line="", window_end=end, reason=None,
            shift_key=f"{first['day']['date']}/{first['shift']['name'] or '-'}",
            day_key=str(first["day"]["date"]), target=plant_target, planned_s=plant_planned,
            covered_s=plant_covered, payload=encode(plant)))
    return deltas, latest
