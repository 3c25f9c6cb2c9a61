"""Payloads from window results: targets, attainment, and shift, day and plant totals.

Formulas (``W`` = window length in real seconds, ``P(a, b)`` = planned production
seconds within ``[a, b)`` from :class:`~agent.core.calendar.ShiftCalendar`, ``R`` = the
line's ``rate_target`` in units per planned hour):

Line, per window ``[start, end)``:

* ``rate_per_hour = units * 3600 / W``
* window target units ``T = R * P(start, end) / 3600``;
  ``target_per_hour = T * 3600 / W`` (0 in breaks and off shift, a fraction at edges)
* ``attainment = units / T``; null when ``T`` is 0
* the line's own calendar: on a production day before ``lines[].start`` or within one of
  its ``not_planned`` periods the line has no planned time (``R`` is 0: no target, no
  attainment, no downtime, its window's time is not planned); during a ramp-up ``R`` is
  the step's share of the full rate
* shift = the period containing ``start``; its totals restart when the period changes.
  ``shift.units`` and ``shift.downtime_s`` (stopped + faulted seconds) are sums over the
  period's windows so far; ``shift.target = R * P(period) / 3600``.
  ``K`` = planned seconds in which the shift's units were built, as far as the agent
  knows: its windows since ``shift.counted_since`` (the first in the agent's books), an
  outage's windows included once the counter, read again, brought the units built
  meanwhile (not when it lost them: ``counter_reset``, ``rebaselined``,
  ``implausible_jump``); ``rate = shift.units / K`` (the window's ``units / W`` while
  ``K`` is 0); ``shift.projected = shift.units + rate * (P(period) - P(period.start,
  end))``: units so far and the counted rate over the planned time left
* coverage: ``covered_s`` = planned seconds in windows the agent observed (an outage's
  windows are not observed); ``coverage = covered_s / P(period.start, end)`` for the
  shift, the same over the production day's shifts for the day (1 while none has elapsed)
* day = the production date of ``start``; ``day.units`` restarts on a new production
  date; ``day.target = R * (planned seconds of the shifts starting that date) / 3600``

Plant, per window (``Y`` = planned seconds of the production year, ``E`` = planned
seconds of it elapsed by the window's end, ``C`` = ``capacity_per_year``):

* ``units`` = sum of line units; ``lines`` = units per line
* ``units_today`` by production date; ``units_year_to_date`` by production year, plus
  the year's opening balance (``year_opening_units``, recorded with ``plantfloor state
  opening`` for the production days up to ``year_opening_through``)
* ``target_today`` = sum of the lines' ``day.target``
* ``year_counted_since``: the start of the first window counted in this production year;
  ``K`` = planned seconds between it and the window's end, plus the opening balance's
  planned seconds (the year's start to the end of ``year_opening_through``, not counted
  twice)
* one rate for both figures, the units known over the planned time they cover (``K``):
  ``utilization = units_year_to_date / (C * K / Y)``;
  ``projected_year = units_year_to_date + units_year_to_date / K * (Y - E)``; while
  ``K`` is 0, 0 and ``C * planned_utilization``
* ``year_covered_s``: planned seconds of the year in windows some line observed;
  ``year_coverage = year_covered_s / E``
* ``quality`` = the worst line quality (bad < uncertain < good)

OEE (ISO 22400; :mod:`agent.core.oee`): each window's planned time is split into exact
buckets (:mod:`agent.core.timesplit`) and added to the line's shift and day accumulators
(``LineTotals.shift_acc``, ``day_acc``), persisted with every window; the window's
``shift`` and ``day`` blocks carry availability, performance, quality and OEE so far
(over the planned time of the windows published so far; availability over the time
observed, :mod:`agent.core.oee`). The
window whose end reaches its shift instance's end also yields the shift's report
(:class:`~agent.contract.payloads.ShiftReport`), built from the persisted accumulator.

Figures are rounded to 3 decimals (attainment, utilization and OEE figures to 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Literal

from agent.config import Config, LineConfig
from agent.contract.payloads import (
    OUTPUT_SCHEMA,
    LineOutput,
    LinePayload,
    PlantOutput,
    ShiftRef,
    ShiftReport,
)
from agent.core import window_fields as part
from agent.core.calendar import Period, ShiftCalendar
from agent.core.oee import Acc, ReportSubject, counts, shift_report
from agent.core.oee import figures as figures_of
from agent.core.timesplit import TimeSplit
from agent.core.totals import LineTotals, PlantTotals, YearOpening
from agent.core.tracker import WindowResult
from agent.core.year import year_figures

__all__ = ["LineTotals", "LineWindow", "PlantTotals", "Reporter", "year_figures"]

QualityName = Literal["good", "uncertain", "bad"]
_QUALITY_RANK: dict[str, int] = {"bad": 0, "uncertain": 1, "good": 2}
#: events of a window whose counter lost what was built before it (an outage's units gone)
_LOST_COUNTS = frozenset({"counter_reset", "rebaselined", "implausible_jump"})


@dataclass(frozen=True, slots=True)
class _WindowCalendar:
    planned: float            # planned seconds in the window
    period: Period            # the shift (or off-shift period) the window starts in
    period_planned: float     # planned seconds of the whole period
    period_elapsed: float     # planned seconds of the period before the window's end
    day: date                 # production date of the window
    day_planned: float        # planned seconds of that production day
    day_elapsed: float        # planned seconds of that production day before the window's end
    planned_ms: int           # planned ms of the window within its period (truncated ms)
    period_planned_ms: int    # planned ms of the whole period


@dataclass(frozen=True, slots=True)
class LineWindow:
    """A line's window: its payload, its new totals and, at a shift's end, its report."""

    output: LinePayload
    totals: LineTotals
    #: the reports of the shift instances this window ended, each with the accumulator it
    #: was built from (the plant's report sums them)
    reports: tuple[tuple[ShiftReport, Acc], ...] = ()


def _trunc_ms(t: datetime) -> datetime:
    """``t`` truncated to the millisecond (as published), so windows' planned ms telescope."""
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def _planned_ms(period: Period, t: datetime) -> int:
    return round(period.planned_before(_trunc_ms(t)) * 1000)


class Reporter:
    """Builds the line and plant payloads of a window from results and running totals."""

    def __init__(self, cfg: Config, calendar: ShiftCalendar) -> None:
        self.cfg = cfg
        self.calendar = calendar
        self._window: tuple[datetime, datetime, _WindowCalendar] | None = None
        self._cats: dict[str, str] | None = None
        #: the opening balance of each production year (the state file's, set at start)
        self.openings: dict[int, YearOpening] = {}

    def _calendar_of(self, start: datetime, end: datetime) -> _WindowCalendar:
        """The calendar figures of a window, computed once for all its lines."""
        cached = self._window
        if cached is not None and cached[0] == start and cached[1] == end:
            return cached[2]
        cal = self.calendar
        period = cal.period_at(start)
        day = period.production_date
        figures = _WindowCalendar(
            planned=cal.planned_seconds(start, end), period=period,
            period_planned=period.planned_seconds, period_elapsed=period.planned_before(end), day=day,
            day_planned=cal.day_planned_seconds(day),
            day_elapsed=sum(p.planned_before(end) for p in cal.shifts_on(day)),
            planned_ms=_planned_ms(period, end) - _planned_ms(period, start),
            period_planned_ms=round(period.planned_seconds * 1000))
        self._window = (start, end, figures)
        return figures

    def window_split(self, start: datetime, end: datetime) -> tuple[int, str]:
        """The window's planned milliseconds within its shift instance, and the instance's key
        (what each line's tracker needs to split the window's time into buckets)."""
        figures = self._calendar_of(start, end)
        return figures.planned_ms, figures.period.key

    def line_output(self, line: LineConfig, result: WindowResult, start: datetime,
                    end: datetime, totals: LineTotals, *, epoch: int = 0,
                    historical: bool = False) -> tuple[LineOutput, LineTotals]:
        """The ``R/lines/<line>/output`` payload and the line's new totals."""
        w = self.line_window(line, result, start, end, totals, epoch=epoch, historical=historical)
        return w.output.model(), w.totals

    def line_window(self, line: LineConfig, result: WindowResult, start: datetime,
                    end: datetime, totals: LineTotals, *, epoch: int = 0,
                    historical: bool = False) -> LineWindow:
        """The ``R/lines/<line>/output`` payload, the line's new totals and, when the window
        reaches the end of its shift instance, the shift's report.

        The first window of a line in an epoch carries ``new_epoch`` (and is at best
        ``uncertain``: what was built before its first reading is not known).
        """
        figures = self._calendar_of(start, end)
        period = figures.period
        # the line's own calendar: a day before its start or in a period not planned has
        # no planned time for it (no target, attainment or downtime), a ramp-up a share
        share = line.plan_share(period.production_date) if line.has_plan else 1.0
        if share == 0.0:
            result = replace(result, time=TimeSplit(), covered=False)
        rate = line.rate_target * share
        window_s = part.window_seconds(start, end)
        planned = figures.planned if share else 0.0
        target_units = rate * planned / 3600.0

        new_shift = totals.shift_key != period.key
        shift_units = (0 if new_shift else totals.shift_units) + result.units
        downtime = (0.0 if new_shift else totals.shift_downtime_s)
        if share:
            downtime += (result.state_seconds.get("stopped", 0.0)
                         + result.state_seconds.get("faulted", 0.0))
        period_planned = figures.period_planned if share else 0.0
        shift_since = start if new_shift or totals.shift_since is None else totals.shift_since

        # a production day never goes back (windows tile time; this guards the totals too)
        day = figures.day if totals.day is None or figures.day >= totals.day else totals.day
        day_units = (0 if totals.day != day else totals.day_units) + result.units
        events = list(result.events)
        quality = result.quality
        if totals.seq == 0:
            events.append("new_epoch")
            quality = "uncertain" if quality == "good" else quality

        # OEE: the window's buckets and counts into the shift's and the day's accumulators
        unreported = None
        if new_shift and totals.shift_name is not None and not totals.shift_reported:
            unreported = self._report(line, totals, totals.shift_acc, epoch)
        second = result.second
        role = line.second_counter[0] if line.second_counter is not None else None
        rejects, carry = counts(role, result.units, second.units if second else 0,
                                second.events if second else (), totals.count_carry)
        def add(acc: Acc) -> Acc:
            return acc.plus_window(result.time, covered=result.covered, good=result.units,
                                   rejects=rejects, ideal_cycle_s=line.ideal_cycle)

        shift_acc = add(Acc() if new_shift else totals.shift_acc)
        day_acc = add(Acc() if totals.day != day else totals.day_acc)
        measured = {"time_measured": line.state is not None, "quality_measured": role is not None}
        cats = self._categories
        shift_fig = figures_of(shift_acc, cats, **measured)
        day_fig = figures_of(day_acc, cats, **measured)

        # the projection's rate is the units over the planned time they were built in: the
        # windows counted since the shift's first one in the books, and an outage's windows
        # once the counter, read again, brought the units built meanwhile (not when it had
        # lost them: a reset, a re-baseline); then units + rate x the planned time left
        shift_elapsed = figures.period_elapsed if share else 0.0
        if new_shift:
            counted_s, pending_s = 0.0, 0.0
        elif totals.shift_since is None:
            # totals of an older version, mid-shift: counted from the shift's start, as then
            counted_s, pending_s = max(shift_elapsed - planned, 0.0), 0.0
        else:
            counted_s, pending_s = totals.shift_counted_s, totals.shift_pending_s
        if not result.covered:
            pending_s += planned
        elif _LOST_COUNTS.intersection(result.events):
            counted_s, pending_s = counted_s + planned, 0.0
        else:
            counted_s, pending_s = counted_s + pending_s + planned, 0.0
        pace = shift_units / counted_s if counted_s > 0 else result.units / window_s
        projected = shift_units + pace * max(period_planned - shift_elapsed, 0.0)
        day_since = start if totals.day != day or totals.day_since is None else totals.day_since
        day_elapsed = figures.day_elapsed if share else 0.0
        shift_target = rate * period_planned / 3600.0
        # the payload's fields by alias in the model's order, without validating them
        # again (LinePayload: its JSON equals the model's, tests/test_payloads_fast.py)
        out = LinePayload({
            "schema": OUTPUT_SCHEMA, "site": self.cfg.site, "line": line.id,
            "product": line.product, "epoch": epoch, "seq": totals.seq + 1,
            "window_start": start, "window_end": end, "units": result.units,
            "rate_per_hour": part.rnd(result.units * 3600.0 / window_s),
            "target_per_hour": part.rnd(target_units * 3600.0 / window_s),
            "attainment": part.rnd(result.units / target_units, 4) if target_units > 0 else None,
            "shift": {"name": period.name, "units": shift_units, "target": part.rnd(shift_target),
                      "projected": part.rnd(projected), "downtime_s": part.rnd(downtime),
                      "availability": part.rnd4(shift_fig.availability),
                      "performance": part.rnd4(shift_fig.performance),
                      "quality": part.rnd4(shift_fig.quality), "oee": part.rnd4(shift_fig.oee),
                      "quality_measured": shift_fig.quality_measured,
                      **part.coverage(shift_acc, shift_elapsed, shift_since)},
            "day": {"date": day, "units": day_units,
                    "target": part.rnd(line.rate_target * line.plan_share(day) * figures.day_planned
                                 / 3600.0),
                    "availability": part.rnd4(day_fig.availability),
                    "performance": part.rnd4(day_fig.performance),
                    "quality": part.rnd4(day_fig.quality), "oee": part.rnd4(day_fig.oee),
                    **part.coverage(day_acc, day_elapsed, day_since)},
            "state_seconds": part.state_seconds(result.state_seconds),
            "quality": quality, "events": events, "counter": result.counter,
            "tags": part.tags(result.tags), "reason": result.reason,
            "rejects": rejects if role is not None else None,
            "total": result.units + rejects if role is not None else None,
            "time": part.window_time(result), "second_counter": part.second(result),
            "historical": historical,
        })
        year_units = (0 if totals.year != day.year else totals.year_units) + result.units
        # every field given (dataclasses.replace would look each one up again)
        new = LineTotals(seq=totals.seq + 1, shift_key=period.key, shift_units=shift_units,
                         shift_downtime_s=downtime, day=day, day_units=day_units,
                         last_window_end=end, year=day.year, year_units=year_units,
                         shift_name=period.name, shift_start=period.start, shift_end=period.end,
                         shift_date=period.production_date,
                         shift_planned_ms=figures.period_planned_ms, shift_target=shift_target,
                         shift_reported=False if new_shift else totals.shift_reported,
                         shift_acc=shift_acc, day_acc=day_acc, count_carry=carry,
                         shift_since=shift_since, day_since=day_since,
                         shift_counted_s=counted_s, shift_pending_s=pending_s)
        reports: list[tuple[ShiftReport, Acc]] = []
        if unreported is not None:
            # a shift instance that ended without a window reaching its end (a calendar
            # changed between runs): reported from its books as they stand
            reports.append((unreported, totals.shift_acc))
        if period.name is not None and end >= period.end and not new.shift_reported:
            # the window reaching the end of its shift instance closes the shift's books
            reports.append((self._report(line, new, shift_acc, epoch), shift_acc))
            new = replace(new, shift_reported=True)
        return LineWindow(out, new, tuple(reports))

    @property
    def _categories(self) -> dict[str, str]:
        cats = self._cats
        if cats is None:
            cats = self._cats = {r: c.category for r, c in self.cfg.downtime.all_reasons().items()}
        return cats

    def _report(self, line: LineConfig, totals: LineTotals, acc: Acc, epoch: int) -> ShiftReport:
        """The report of the shift instance ``totals`` names, from its accumulator."""
        assert totals.shift_name
        assert totals.shift_start
        assert totals.shift_end
        assert totals.shift_date
        ref = ShiftRef(name=totals.shift_name, start=totals.shift_start, end=totals.shift_end,
                       date=totals.shift_date)
        subject = ReportSubject(line=line.id, product=line.product, lines=None,
                                ideal_cycle_s=line.ideal_cycle, time_measured=line.state is not None,
                                quality_measured=line.second_counter is not None)
        return shift_report(subject, site=self.cfg.site, epoch=epoch, ref=ref, acc=acc,
                            calendar_ms=totals.shift_planned_ms, target=totals.shift_target,
                            categories=self._categories, counted_since=totals.shift_since)

    def plant_reports(self, windows: Sequence[tuple[LineConfig, LineWindow]], *,
                      epoch: int = 0) -> list[ShiftReport]:
        """The plant's report of each shift instance some lines reported in this window: the
        lines' times (those with a state tag) and counts summed, never their percentages."""
        by_shift: dict[tuple[str, datetime], list[tuple[LineConfig, ShiftReport, Acc]]] = {}
        for line, w in windows:
            for report, acc in w.reports:
                key = (report.shift.name, report.shift.start)
                by_shift.setdefault(key, []).append((line, report, acc))
        out = []
        for group in by_shift.values():
            total, calendar_ms, target = Acc(), 0, 0.0
            for line, report, acc in group:
                timed = line.state is not None
                total = total.plus(acc, times=timed)
                calendar_ms += round(report.time.calendar_s * 1000) if timed else 0
                target += report.target
            subject = ReportSubject(
                line=None, product=None, lines=[line.id for line, _, _ in group],
                ideal_cycle_s=None, time_measured=any(ln.state is not None for ln, _, _ in group),
                quality_measured=all(ln.second_counter is not None for ln, _, _ in group),
                quality_counted=any(ln.second_counter is not None for ln, _, _ in group))
            since = [r.counted_since for _, r, _ in group if r.counted_since is not None]
            out.append(shift_report(subject, site=self.cfg.site, epoch=epoch,
                                    ref=group[0][1].shift, acc=total, calendar_ms=calendar_ms,
                                    target=target, categories=self._categories,
                                    counted_since=min(since, default=None)))
        return out

    def plant_output(self, outputs: Sequence[LinePayload | LineOutput], start: datetime, end: datetime,
                     totals: PlantTotals, *, epoch: int = 0, historical: bool = False,
                     covered: bool = True) -> tuple[PlantOutput, PlantTotals]:
        """The ``R/plant/output`` payload and the plant's new totals; ``covered``: some line
        observed the window (the agent was counting)."""
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
        year_covered = ((0.0 if new_year else totals.year_covered_s)
                        + (self._calendar_of(start, end).planned if covered else 0.0))
        opening = self.openings.get(day.year)
        opening_units = opening.units if opening is not None else 0
        through = opening.through if opening is not None else None

        utilization, projected = year_figures(cal, plant, ytd, since, end, day.year,
                                              opening_units=opening_units, through=through)
        elapsed = min(cal.year_planned_elapsed(end, year=day.year),
                      cal.year_planned_seconds(day.year))
        quality = min((o.quality for o in outputs), key=_QUALITY_RANK.__getitem__, default="bad")

        out = PlantOutput(
            site=self.cfg.site, epoch=epoch, seq=totals.seq + 1, window_start=start, window_end=end,
            units=units, units_today=today, units_year_to_date=ytd + opening_units,
            target_today=part.rnd(sum(part.day_target(o) for o in outputs)),
            capacity_per_year=plant.capacity_per_year,
            planned_utilization=plant.planned_utilization,
            utilization=part.rnd(utilization, 4), projected_year=part.rnd(projected),
            year_counted_since=since, year_covered_s=part.rnd(year_covered),
            year_coverage=part.rnd4(min(1.0, year_covered / elapsed)) if elapsed > 0 else 1.0,
            year_opening_units=opening_units, year_opening_through=through,
            lines={o.line: o.units for o in outputs}, quality=quality, historical=historical,
        )
        new = replace(totals, seq=totals.seq + 1, day=day, day_units=today, year=day.year,
                      year_units=ytd, last_window_end=end, counted_since=since,
                      year_covered_s=year_covered)
        return out, new
