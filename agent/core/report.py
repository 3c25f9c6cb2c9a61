"""Payloads from window results: targets, attainment, and shift, day and plant totals.

Formulas (``W`` = window length in real seconds, ``P(a, b)`` = planned production
seconds within ``[a, b)`` from :class:`~agent.core.calendar.ShiftCalendar`, ``R`` = the
line's ``rate_target`` in units per planned hour):

Line, per window ``[start, end)``:

* ``rate_per_hour = units * 3600 / W``
* window target units ``T = R * P(start, end) / 3600``;
  ``target_per_hour = T * 3600 / W`` (0 in breaks and off shift, a fraction at edges)
* ``attainment = units / T``; null when ``T`` is 0
* shift = the period containing ``start``; its totals restart when the period changes.
  ``shift.units`` and ``shift.downtime_s`` (stopped + faulted seconds) are sums over the
  period's windows so far; ``shift.target = R * P(period) / 3600``;
  ``shift.projected = shift.units + rate * (P(period) - P(period.start, end))``, where
  ``rate = shift.units / P(period.start, end)``, or the window's ``units / W`` when no
  planned time has elapsed yet
* day = the production date of ``start``; ``day.units`` restarts on a new production
  date; ``day.target = R * (planned seconds of the shifts starting that date) / 3600``

Plant, per window (``Y`` = planned seconds of the production year, ``E`` = planned
seconds of it elapsed by the window's end, ``C`` = ``capacity_per_year``):

* ``units`` = sum of line units; ``lines`` = units per line
* ``units_today`` by production date, ``units_year_to_date`` by production year
* ``target_today`` = sum of the lines' ``day.target``
* ``year_counted_since``: the start of the first window counted in this production year
  (the agent cannot know what was built before it started counting); ``K`` = planned
  seconds between it and the window's end
* ``utilization = units_year_to_date / (C * K / Y)``; 0 while ``K`` is 0
* ``projected_year = units_year_to_date + (units_year_to_date / K) * (Y - E)``; while
  ``K`` is 0, ``C * planned_utilization``
* ``quality`` = the worst line quality (bad < uncertain < good)

Figures are rounded to 3 decimals (attainment and utilization to 4).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, Literal, cast

from agent.config import Config, LineConfig
from agent.core.calendar import Period, ShiftCalendar
from agent.core.tracker import WindowResult
from agent.payloads import DayTotals, LineOutput, PlantOutput, ShiftTotals, StateSeconds

__all__ = ["LineTotals", "PlantTotals", "Reporter"]

QualityName = Literal["good", "uncertain", "bad"]
_QUALITY_RANK: dict[str, int] = {"bad": 0, "uncertain": 1, "good": 2}


@dataclass
class LineTotals:
    """A line's running totals, persisted by the store as JSON with each window."""

    seq: int = 0
    shift_key: str | None = None
    shift_units: int = 0
    shift_downtime_s: float = 0.0
    day: date | None = None
    day_units: int = 0
    last_window_end: datetime | None = None
    year: int | None = None
    year_units: int = 0

    def to_json(self) -> str:
        """Compact JSON; dates and datetimes as ISO 8601."""
        return _dumps(self)

    @classmethod
    def from_json(cls, text: str) -> LineTotals:
        """The inverse of :meth:`to_json`."""
        raw = json.loads(text)
        raw["day"] = _date(raw.get("day"))
        raw["last_window_end"] = _datetime(raw.get("last_window_end"))
        return cls(**raw)


@dataclass
class PlantTotals:
    """The plant's running totals, persisted by the store as JSON with each window."""

    seq: int = 0
    day: date | None = None
    day_units: int = 0
    year: int | None = None
    year_units: int = 0
    last_window_end: datetime | None = None
    counted_since: datetime | None = None

    def to_json(self) -> str:
        """Compact JSON; dates and datetimes as ISO 8601."""
        return _dumps(self)

    @classmethod
    def from_json(cls, text: str) -> PlantTotals:
        """The inverse of :meth:`to_json`."""
        raw = json.loads(text)
        raw["day"] = _date(raw.get("day"))
        raw["last_window_end"] = _datetime(raw.get("last_window_end"))
        raw["counted_since"] = _datetime(raw.get("counted_since"))
        return cls(**raw)


@dataclass(frozen=True, slots=True)
class _WindowCalendar:
    planned: float            # planned seconds in the window
    period: Period            # the shift (or off-shift period) the window starts in
    period_planned: float     # planned seconds of the whole period
    period_elapsed: float     # planned seconds of the period before the window's end
    day: date                 # production date of the window
    day_planned: float        # planned seconds of that production day


def _dumps(totals: LineTotals | PlantTotals) -> str:
    # a shallow dict: dataclasses.asdict deep-copies every field, a cost paid per line per window
    return json.dumps({f: getattr(totals, f) for f in totals.__dataclass_fields__},
                      default=_iso, sort_keys=True)


class Reporter:
    """Builds the line and plant payloads of a window from results and running totals."""

    def __init__(self, cfg: Config, calendar: ShiftCalendar) -> None:
        self.cfg = cfg
        self.calendar = calendar
        self._window: tuple[datetime, datetime, _WindowCalendar] | None = None

    def _calendar_of(self, start: datetime, end: datetime) -> _WindowCalendar:
        """The calendar figures of a window, computed once for all its lines."""
        cached = self._window
        if cached is not None and cached[0] == start and cached[1] == end:
            return cached[2]
        cal = self.calendar
        period = cal.period_at(start)
        day = cal.production_date(start)
        figures = _WindowCalendar(
            planned=cal.planned_seconds(start, end), period=period,
            period_planned=period.planned_seconds, period_elapsed=period.planned_before(end), day=day,
            day_planned=cal.day_planned_seconds(day))
        self._window = (start, end, figures)
        return figures

    def line_output(self, line: LineConfig, result: WindowResult, start: datetime,
                    end: datetime, totals: LineTotals, *, epoch: int = 0,
                    historical: bool = False) -> tuple[LineOutput, LineTotals]:
        """The ``R/lines/<line>/output`` payload and the line's new totals.

        The first window of a line in an epoch carries ``new_epoch`` (and is at best
        ``uncertain``: what was built before its first reading is not known).
        """
        figures = self._calendar_of(start, end)
        rate = line.rate_target
        window_s = _seconds(start, end)
        target_units = rate * figures.planned / 3600.0

        period = figures.period
        new_shift = totals.shift_key != period.key
        shift_units = (0 if new_shift else totals.shift_units) + result.units
        downtime = ((0.0 if new_shift else totals.shift_downtime_s)
                    + result.state_seconds.get("stopped", 0.0)
                    + result.state_seconds.get("faulted", 0.0))
        period_planned = figures.period_planned
        elapsed = figures.period_elapsed
        pace = shift_units / elapsed if elapsed > 0 else result.units / window_s
        projected = shift_units + pace * max(period_planned - elapsed, 0.0)

        # a production day never goes back (windows tile time; this guards the totals too)
        day = figures.day if totals.day is None or figures.day >= totals.day else totals.day
        day_units = (0 if totals.day != day else totals.day_units) + result.units
        events = list(result.events)
        quality = result.quality
        if totals.seq == 0:
            events.append("new_epoch")
            quality = "uncertain" if quality == "good" else quality

        out = LineOutput(
            site=self.cfg.site, line=line.id, product=line.product, epoch=epoch, seq=totals.seq + 1,
            window_start=start, window_end=end, units=result.units,
            rate_per_hour=_r(result.units * 3600.0 / window_s),
            target_per_hour=_r(target_units * 3600.0 / window_s),
            attainment=_r(result.units / target_units, 4) if target_units > 0 else None,
            shift=ShiftTotals(name=period.name, units=shift_units,
                              target=_r(rate * period_planned / 3600.0),
                              projected=_r(projected), downtime_s=_r(downtime)),
            day=DayTotals(date=day, units=day_units,
                          target=_r(rate * figures.day_planned / 3600.0)),
            state_seconds=StateSeconds(**{k: _r(v) for k, v in result.state_seconds.items()}),
            quality=cast(QualityName, quality),
            events=cast(Any, events),
            counter=result.counter, tags=dict(result.tags), historical=historical,
        )
        year_units = (0 if totals.year != day.year else totals.year_units) + result.units
        new = replace(totals, seq=totals.seq + 1, shift_key=period.key, shift_units=shift_units,
                      shift_downtime_s=downtime, day=day, day_units=day_units,
                      last_window_end=end, year=day.year, year_units=year_units)
        return out, new

    def plant_output(self, outputs: Sequence[LineOutput], start: datetime, end: datetime,
                     totals: PlantTotals, *, epoch: int = 0,
                     historical: bool = False) -> tuple[PlantOutput, PlantTotals]:
        """The ``R/plant/output`` payload and the plant's new totals."""
        cal = self.calendar
        plant = self.cfg.plant
        units = sum(o.units for o in outputs)
        day = cal.production_date(start)
        if totals.day is not None and day < totals.day:
            day = totals.day  # the day and the year never go back
        today = (0 if totals.day != day else totals.day_units) + units
        new_year = totals.year != day.year
        ytd = (0 if new_year else totals.year_units) + units
        since = start if new_year or totals.counted_since is None else totals.counted_since

        year_s = cal.year_planned_seconds(day.year)
        elapsed = min(cal.year_planned_elapsed(end, year=day.year), year_s)
        counted = elapsed - min(cal.year_planned_elapsed(since, year=day.year), elapsed)
        if counted > 0:
            utilization = ytd / (plant.capacity_per_year * counted / year_s)
            projected = ytd + ytd / counted * (year_s - elapsed)
        else:
            utilization = 0.0
            projected = plant.capacity_per_year * plant.planned_utilization
        quality = min((o.quality for o in outputs), key=_QUALITY_RANK.__getitem__, default="bad")

        out = PlantOutput(
            site=self.cfg.site, epoch=epoch, seq=totals.seq + 1, window_start=start, window_end=end,
            units=units, units_today=today, units_year_to_date=ytd,
            target_today=_r(sum(o.day.target for o in outputs)),
            capacity_per_year=plant.capacity_per_year,
            planned_utilization=plant.planned_utilization,
            utilization=_r(utilization, 4), projected_year=_r(projected),
            year_counted_since=since,
            lines={o.line: o.units for o in outputs}, quality=quality, historical=historical,
        )
        new = replace(totals, seq=totals.seq + 1, day=day, day_units=today, year=day.year,
                      year_units=ytd, last_window_end=end, counted_since=since)
        return out, new


def _utc(t: datetime) -> datetime:
    return t.astimezone(UTC)


def _seconds(start: datetime, end: datetime) -> float:
    s = (_utc(end) - _utc(start)).total_seconds()
    if s <= 0:
        raise ValueError(f"empty window {start.isoformat()} .. {end.isoformat()}")
    return s


def _r(x: float, digits: int = 3) -> float:
    return round(x, digits)


def _iso(v: object) -> str:
    if isinstance(v, date | datetime):
        return v.isoformat()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def _date(v: str | None) -> date | None:
    return None if v is None else date.fromisoformat(v)


def _datetime(v: str | None) -> datetime | None:
    return None if v is None else datetime.fromisoformat(v)
