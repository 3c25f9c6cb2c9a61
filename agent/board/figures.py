"""What the board shows, as the API returns it: pydantic models, and their assembly from the
rows the agent committed.

Every figure comes from the agent's payloads or from sums of its per-hour rows; the ratios
are the core's (:mod:`agent.core.hourly`, :mod:`agent.core.plan`), so the page, the API and
the payloads agree. Nothing here reads a file or a clock: rows and ``now`` come in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import orjson
from pydantic import BaseModel, ConfigDict, Field

from agent.config import Config
from agent.contract.payloads import ShiftReport
from agent.core.calendar import ShiftCalendar
from agent.core.hourly import ahead, attainment, coverage, hour_start
from agent.core.plan import year_plan
from agent.store.board import HourRow, LatestRow

__all__ = ["BoardSite", "BoardState", "HistoryPoint", "LineView", "PlantView", "ShiftSummary", "build_state",
           "history_points", "shift_summary"]


@dataclass(frozen=True)
class BoardSite:
    """What the board needs of a config: a gateway's (the agent's) or the site's (the roll-up's)."""

    site: str
    timezone: str
    interval_s: int
    red_after_s: float
    lines: tuple[str, ...]
    history_days: int

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @classmethod
    def of_agent(cls, cfg: Config) -> BoardSite:
        """A gateway's board, from the agent's config."""
        return cls(cfg.site, cfg.timezone, cfg.publish.interval_s, cfg.board.red_after_s,
                   tuple(ln.id for ln in cfg.lines), cfg.storage.history_days)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Figure(_Model):
    """Good units against the target so far, over an hour, a shift or a day."""

    units: int = Field(..., ge=0, description="good units")
    target: float = Field(..., ge=0, description="target units of the planned time so far")
    attainment: float | None = Field(..., description="units / target; null while the target is 0")
    ahead: float = Field(..., description="units - target: ahead (positive) or behind (negative)")


def _figure(units: int, target: float) -> Figure:
    return Figure(units=units, target=round(target, 1), attainment=attainment(units, target),
                  ahead=ahead(units, target))


class Oee(_Model):
    """OEE of the shift so far (the agent's figures) with the share of it the agent saw."""

    availability: float | None = Field(..., description="run time / planned busy time")
    performance: float | None = Field(..., description="ideal cycle x total units / run time")
    quality: float | None = Field(..., description="good / total units (1 when not measured)")
    oee: float | None = Field(..., description="availability x performance x quality")
    coverage: float = Field(..., ge=0, le=1, description="planned time so far in windows the agent was counting for / planned time so far")


class LineView(_Model):
    """One line on the board."""

    line: str = Field(..., description="line id")
    product: str = Field(..., description="the line's product")
    window_end: datetime = Field(..., description="end of the line's latest window (its last update)")
    stale: bool = Field(..., description="the latest window ended more than two windows ago (the agent or the line is not reporting)")
    state: Literal["running", "down", "unknown"] = Field(..., description="running, down (a reason) or unknown")
    reason: str | None = Field(..., description="running, a downtime reason, or unknown")
    since: datetime = Field(..., description="end of the first window in this reason")
    for_s: float = Field(..., ge=0, description="seconds in this reason so far")
    red: bool = Field(..., description="down for longer than board.red_after_s of planned time (a break or time off shift does not count)")
    quality: str = Field(..., description="the latest window's quality")
    hour: Figure = Field(..., description="this plant-local hour")
    shift_name: str | None = Field(..., description="the current shift; null off shift")
    shift: Figure = Field(..., description="this shift so far")
    day: Figure = Field(..., description="this production day so far")
    oee: Oee = Field(..., description="OEE of this shift so far")


class YearView(_Model):
    """The plant's production year against its plan."""

    capacity_per_year: int = Field(..., description="plant.capacity_per_year")
    planned_utilization: float = Field(..., description="plant.planned_utilization")
    plan: float = Field(..., description="capacity_per_year x planned_utilization")
    year_to_date: int = Field(..., ge=0, description="units built this production year: measured + recorded")
    measured: int = Field(..., ge=0, description="what plantfloor counted this production year")
    recorded: int = Field(..., ge=0, description="the opening balance an operator recorded (plantfloor state opening), not measured; 0 without one")
    recorded_through: dt.date | None = Field(..., description="the last production day the recorded balance covers")
    gap: float = Field(..., ge=0, description="units still to build to reach the plan")
    projected_year: float = Field(..., description="year to date + its rate over the planned time left")
    utilization: float = Field(..., description="year to date / capacity pro rata to the planned time counted")
    production_days_left: int = Field(..., ge=0, description="days with planned production left, today included while it has some")
    rate_needed_per_day: float | None = Field(..., description="gap / production days left; null when none is left")
    counted_since: datetime | None = Field(..., description="start of the first window counted this year (measured, not recorded)")


class PlantView(_Model):
    """The plant on the board."""

    window_end: datetime = Field(..., description="end of the plant's latest window")
    stale: bool = Field(..., description="no window for more than two windows: the agent is not reporting")
    today: Figure = Field(..., description="units today against the target so far")
    shift: Figure = Field(..., description="units this shift against the target so far")
    year: YearView = Field(..., description="the year against the plan")


class ShiftHour(_Model):
    """One hour of the current shift, the plant's lines summed."""

    start: datetime = Field(..., description="the hour's start (UTC; shown in plant local time)")
    figure: Figure = Field(..., description="units and target of the hour")
    break_min: float = Field(..., ge=0, description="minutes of the hour in a break")


class ShiftView(_Model):
    """The current shift hour by hour."""

    name: str | None = Field(..., description="shift name; null off shift")
    start: datetime = Field(..., description="start of the shift (or off-shift period)")
    end: datetime = Field(..., description="its end")
    hours: list[ShiftHour] = Field(..., description="every hour of it, the future ones with 0 units")


class ReasonMinutes(_Model):
    """Downtime of one reason, every line summed, this shift so far."""

    reason: str = Field(..., description="downtime reason")
    minutes: float = Field(..., ge=0, description="minutes")


class ShiftSummary(_Model):
    """A finished shift of a line or of the plant, from its report."""

    line: str | None = Field(None, description="the line; null for the plant")
    date: str = Field(..., description="production date")
    shift: str = Field(..., description="shift name")
    start: datetime = Field(..., description="its start")
    units: int = Field(..., ge=0, description="good units")
    target: float = Field(..., ge=0, description="planned units")
    attainment: float | None = Field(..., description="units / target")
    availability: float | None = Field(..., description="as the report")
    performance: float | None = Field(..., description="as the report")
    quality: float | None = Field(..., description="as the report")
    oee: float | None = Field(..., description="as the report")
    coverage: float = Field(..., ge=0, le=1, description="share of the shift the agent saw")


class BoardState(_Model):
    """Everything the board shows at once: the first paint and every live update."""

    id: str = Field(..., description="identity of this state (the event id of the live stream)")
    site: str = Field(..., description="site id")
    timezone: str = Field(..., description="plant time zone: every time is shown in it")
    interval_s: int = Field(..., description="window length")
    red_after_s: float = Field(..., description="board.red_after_s")
    generated_at: datetime = Field(..., description="when this state was read")
    offline: bool = Field(..., description="no line reported for more than two windows (the agent is down) or nothing was ever committed")
    lines: list[LineView] = Field(..., description="every line, in config order")
    plant: PlantView | None = Field(..., description="the plant; null before the first window")
    shift: ShiftView = Field(..., description="the current shift hour by hour")
    pareto: list[ReasonMinutes] = Field(..., description="downtime minutes by reason this shift, largest first")
    previous_shifts: list[ShiftSummary] = Field(..., description="the plant's last finished shifts, newest first")


class HistoryPoint(_Model):
    """Units against target over one hour, day or week (plant-local)."""

    start: datetime = Field(..., description="start of the bucket (UTC)")
    label: str = Field(..., description="the bucket in plant local time")
    figure: Figure = Field(..., description="units and target")


def build_state(cfg: BoardSite, calendar: ShiftCalendar, latest: Sequence[LatestRow],
                shift_hours: Sequence[HourRow], down: dict[str, dict[str, float]],
                previous: Sequence[ShiftSummary], now: datetime, state_id: str) -> BoardState:
    """The board from the committed rows: ``shift_hours`` are the current shift's hours (every
    line), ``down`` its downtime by line and reason, ``previous`` the plant's last shifts."""
    stale_after = timedelta(seconds=2 * cfg.interval_s)
    rows = {r.line: r for r in latest}
    this_hour = hour_start(now, cfg.tz)
    hour_of = {(h.line, h.hour): h for h in shift_hours}
    lines: list[LineView] = []
    for line_id in cfg.lines:
        row = rows.get(line_id)
        if row is None:
            continue
        p: dict[str, Any] = orjson.loads(row.payload)
        h = hour_of.get((line_id, this_hour))
        reason = row.reason
        state: Literal["running", "down", "unknown"] = (
            "running" if reason == "running" else "unknown" if reason in (None, "unknown") else "down")
        for_s = max(0.0, (now - row.reason_since).total_seconds())
        same_day = row.day_key == str(p["day"]["date"])
        sh = p["shift"]
        lines.append(LineView(
            line=line_id, product=str(p["product"]), window_end=row.window_end,
            stale=now - row.window_end > stale_after, state=state, reason=reason,
            since=row.reason_since, for_s=round(for_s, 1),
            red=state == "down" and _down_too_long(calendar, row.reason_since, now, for_s,
                                                   cfg.red_after_s),
            quality=str(p["quality"]),
            hour=_figure(h.units if h else 0, h.target if h else 0.0),
            shift_name=sh["name"], shift=_figure(int(sh["units"]), row.shift_target),
            day=_figure(int(p["day"]["units"]), row.day_target if same_day else 0.0),
            oee=Oee(availability=sh["availability"], performance=sh["performance"],
                    quality=sh["quality"], oee=sh["oee"],
                    coverage=coverage(row.shift_covered, row.shift_planned))))
    plant = _plant(cfg, calendar, rows.get(""), now, stale_after, lines)
    period = calendar.period_at(now)
    totals: dict[str, float] = {}
    for by_reason in down.values():
        for reason, seconds in by_reason.items():
            totals[reason] = totals.get(reason, 0.0) + seconds
    pareto = [ReasonMinutes(reason=r, minutes=round(s / 60, 1))
              for r, s in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])) if s > 0]
    return BoardState(
        id=state_id, site=cfg.site, timezone=cfg.timezone, interval_s=cfg.interval_s,
        red_after_s=cfg.red_after_s, generated_at=now,
        offline=plant is None or all(ln.stale for ln in lines), lines=lines, plant=plant,
        shift=ShiftView(name=period.name, start=period.start, end=period.end,
                        hours=_shift_hours(cfg, calendar, period.start, period.end,
                                           period.name is not None, shift_hours)),
        pareto=pareto, previous_shifts=list(previous))


def _down_too_long(calendar: ShiftCalendar, since: datetime, now: datetime, for_s: float,
                   red_after_s: float) -> bool:
    """Down for more than ``red_after_s`` of planned time: a break or the time off shift
    is no lost time, so a line standing through its break does not turn red."""
    return for_s > red_after_s and calendar.planned_seconds(since, now) > red_after_s


def _plant(cfg: BoardSite, calendar: ShiftCalendar, row: LatestRow | None, now: datetime,
           stale_after: timedelta, lines: Sequence[LineView]) -> PlantView | None:
    if row is None:
        return None
    p: dict[str, Any] = orjson.loads(row.payload)
    # the payload's year to date includes the recorded opening balance: shown apart
    recorded = int(p.get("year_opening_units") or 0)
    through = p.get("year_opening_through")
    plan = year_plan(int(p["capacity_per_year"]), float(p["planned_utilization"]),
                     int(p["units_year_to_date"]) - recorded, calendar, now, recorded=recorded)
    since = p.get("year_counted_since")
    return PlantView(
        window_end=row.window_end, stale=now - row.window_end > stale_after,
        today=_figure(int(p["units_today"]), row.day_target),
        shift=_figure(sum(ln.shift.units for ln in lines), row.shift_target),
        year=YearView(capacity_per_year=int(p["capacity_per_year"]),
                      planned_utilization=float(p["planned_utilization"]), plan=plan.plan,
                      year_to_date=plan.year_to_date, measured=plan.measured,
                      recorded=plan.recorded,
                      recorded_through=dt.date.fromisoformat(through) if through and recorded
                      else None,
                      gap=plan.gap,
                      projected_year=float(p["projected_year"]),
                      utilization=float(p["utilization"]),
                      production_days_left=plan.production_days_left,
                      rate_needed_per_day=plan.rate_needed_per_day,
                      counted_since=datetime.fromisoformat(since) if since else None))


def _shift_hours(cfg: BoardSite, calendar: ShiftCalendar, start: datetime, end: datetime,
                 on_shift: bool, rows: Sequence[HourRow]) -> list[ShiftHour]:
    sums: dict[datetime, tuple[int, float]] = {}
    for r in rows:
        u, t = sums.get(r.hour, (0, 0.0))
        sums[r.hour] = (u + r.units, t + r.target)
    out: list[ShiftHour] = []
    h = hour_start(start, cfg.tz)
    while h < end and len(out) < 48:
        nxt = hour_start(h + timedelta(hours=1, minutes=1), cfg.tz)
        within = (min(nxt, end) - max(h, start)).total_seconds()
        planned = calendar.planned_seconds(max(h, start), min(nxt, end))
        u, t = sums.get(h, (0, 0.0))
        # a shift's unplanned time is its breaks; off shift nothing is a break
        gap = max(0.0, within - planned) if on_shift else 0.0
        out.append(ShiftHour(start=h, figure=_figure(u, t), break_min=round(gap / 60, 1)))
        h = nxt
    return out


def shift_summary(r: ShiftReport) -> ShiftSummary:
    """A shift report as the board lists it."""
    return ShiftSummary(line=r.line, date=r.shift.date.isoformat(), shift=r.shift.name, start=r.shift.start,
                        units=r.units, target=r.target, attainment=r.attainment,
                        availability=r.availability, performance=r.performance,
                        quality=r.quality, oee=r.oee, coverage=r.coverage)


def history_points(cfg: BoardSite, rows: Sequence[HourRow], bucket: Literal["hour", "day", "week"]
                   ) -> list[HistoryPoint]:
    """Hours summed by plant-local hour, day or ISO week (every line given summed)."""
    tz = cfg.tz
    sums: dict[datetime, tuple[int, float]] = {}
    for r in rows:
        local = r.hour.astimezone(tz)
        if bucket == "hour":
            key = r.hour
        else:
            day = local.replace(hour=0, minute=0, second=0, microsecond=0)
            if bucket == "week":
                day = (day - timedelta(days=day.weekday())).replace(tzinfo=None).replace(tzinfo=tz)
            key = day.astimezone(r.hour.tzinfo)
        u, t = sums.get(key, (0, 0.0))
        sums[key] = (u + r.units, t + r.target)
    fmt = {"hour": "%Y-%m-%d %H:%M", "day": "%Y-%m-%d", "week": "%G-W%V"}[bucket]
    return [HistoryPoint(start=k, label=k.astimezone(tz).strftime(fmt), figure=_figure(u, t))
            for k, (u, t) in sorted(sums.items())]
