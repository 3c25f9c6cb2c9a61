"""Coverage beside every ratio: availability over observed time, projections and utilisation
from one rate, and a line's own calendar (start, ramp-up, days not planned)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Config
from agent.contract.payloads import LineOutput, ShiftReport
from agent.core.calendar import ShiftCalendar
from agent.core.report import LineTotals, PlantTotals, Reporter
from agent.core.timesplit import TimeSplit
from agent.core.totals import YearOpening
from agent.core.tracker import WindowResult

TOKYO = ZoneInfo("Asia/Tokyo")
# the day shift 06:30-15:15 less a 45 min lunch: 8 planned hours, 480 one-minute windows
SHIFT_START = datetime(2026, 12, 3, 6, 30, tzinfo=TOKYO)
SHIFT_WINDOWS = 525


def config(**line: Any) -> Config:
    return Config.model_validate({
        "site": "kyushu", "timezone": "Asia/Tokyo",
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "day", "start": "06:30", "end": "15:15",
                    "breaks": [{"start": "11:45", "end": "12:30"}]}],
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 5020}],
        "lines": [{"id": "kei-ev", "product": "Sakura", "target_per_hour": 60,
                   "counter": {"source": "plc", "address": 100},
                   "state": {"source": "plc", "address": 110}, **line}],
    })


def window(rep: Reporter, start: datetime, units: int, run_share: float, *,
           covered: bool = True) -> WindowResult:
    """A window of the line: ``run_share`` of its planned time running, the rest stopped,
    or, not covered, an outage's window (all its planned time unknown)."""
    planned_ms, _ = rep.window_split(start, start + timedelta(minutes=1))
    if not covered:
        return WindowResult(line="kei-ev", units=0, events=("agent_offline",), quality="bad",
                            state_seconds={"unknown": 60.0}, counter=None, state="unknown",
                            time=TimeSplit.unknown(planned_ms), covered=False)
    run = round(planned_ms * run_share)
    down = {"stopped": planned_ms - run} if planned_ms - run else {}
    return WindowResult(line="kei-ev", units=units, events=(), quality="good",
                        state_seconds={"running": 60.0 * run_share,
                                       "stopped": 60.0 * (1 - run_share)},
                        counter=0, state="running", reason="running",
                        time=TimeSplit(planned_ms=planned_ms, run_ms=run, down_ms=down))


def shift(rep: Reporter, *, first: int = 0, outage: range = range(0), units: int = 1,
          run_share: float = 1.0, until: int = SHIFT_WINDOWS) -> tuple[list[LineOutput], list[ShiftReport]]:
    """The day shift's windows from window ``first`` to ``until``, those in ``outage`` not
    observed (the agent was stopped; the units built meanwhile come with the next window)."""
    line = rep.cfg.lines[0]
    totals = LineTotals()
    outs: list[LineOutput] = []
    reports: list[ShiftReport] = []
    owed = 0
    for i in range(first, until):
        t = SHIFT_START + timedelta(minutes=i)
        planned = rep.calendar.planned_seconds(t, t + timedelta(minutes=1)) > 0
        built = units if planned else 0
        if i in outage:
            owed += built
            result = window(rep, t, 0, run_share, covered=False)
        else:
            result = window(rep, t, built + owed, run_share)
            owed = 0
        w = rep.line_window(line, result, t, t + timedelta(minutes=1), totals)
        totals = w.totals
        outs.append(w.output.model())
        reports += [r for r, _ in w.reports]
    return outs, reports


@settings(max_examples=12, deadline=None)
@given(outage_start=st.integers(0, 500), outage_len=st.integers(1, 200),
       run_share=st.sampled_from([1.0, 0.9, 0.75, 0.5]))
def test_a_restart_never_changes_the_availability_of_a_line_that_kept_running(
        outage_start: int, outage_len: int, run_share: float) -> None:
    """Before, an outage's windows counted as lost busy time (A99 -> A68 after a restart)."""
    rep = Reporter(config(), ShiftCalendar.from_config(config()))
    _, [whole] = shift(rep, run_share=run_share)
    outs, [restarted] = shift(rep, run_share=run_share,
                              outage=range(outage_start, outage_start + outage_len))
    assert whole.availability == pytest.approx(run_share, abs=1e-4)
    assert restarted.availability == pytest.approx(whole.availability, abs=1e-3)
    unseen = sum(rep.calendar.planned_seconds(t, t + timedelta(minutes=1)) for t in (
        SHIFT_START + timedelta(minutes=i) for i in range(outage_start, outage_start + outage_len)))
    assert restarted.time.covered_s == whole.time.covered_s - unseen
    # the running figure during the shift, too, and it says how much it saw
    assert all(o.shift.availability is None
               or o.shift.availability == pytest.approx(run_share, abs=1e-3) for o in outs)
    assert restarted.coverage == pytest.approx(restarted.time.covered_s / whole.time.calendar_s,
                                               abs=1e-4)


@settings(max_examples=12, deadline=None)
@given(outage_start=st.integers(0, 300), outage_len=st.integers(1, 240),
       after=st.integers(1, 60), per_window=st.integers(1, 40))
def test_a_projection_from_a_half_observed_shift_equals_the_full_shift_one(
        outage_start: int, outage_len: int, after: int, per_window: int) -> None:
    """A shift the agent saw only part of (it was stopped; the counter, read again, brought
    what was built meanwhile) projects as the one it saw whole."""
    rep = Reporter(config(), ShiftCalendar.from_config(config()))
    until = min(outage_start + outage_len + after, SHIFT_WINDOWS)
    outage = range(outage_start, min(outage_start + outage_len, until - 1))
    full, _ = shift(rep, units=per_window, until=until)
    half, _ = shift(rep, units=per_window, until=until, outage=outage)
    assert half[-1].shift.units == full[-1].shift.units
    assert half[-1].shift.projected == pytest.approx(full[-1].shift.projected, abs=1)
    assert half[-1].shift.covered_s <= full[-1].shift.covered_s
    assert full[-1].shift.coverage == 1.0
    assert full[-1].shift.counted_since == half[-1].shift.counted_since == SHIFT_START


def test_an_agent_started_mid_shift_projects_units_plus_its_rate_times_the_time_left() -> None:
    """Before: 35 projected against 13,500, the units since the start spread over the
    planned time since the shift began."""
    rep = Reporter(config(), ShiftCalendar.from_config(config()))
    outs, _ = shift(rep, units=24, first=240, until=300)       # 10:30 to 11:30
    last = outs[-1].shift
    assert last.units == 24 * 60
    assert last.projected == pytest.approx(24 * 60 + 24 * 60 / 3600 * (480 - 300) * 60, abs=1e-3)
    assert last.counted_since == SHIFT_START + timedelta(minutes=240)
    assert last.coverage == pytest.approx(60 / 300, abs=1e-4)
    assert last.target == 60 * 8


def test_units_lost_in_an_outage_leave_the_rate_to_the_time_observed() -> None:
    """A counter reset across the outage (the line's PLC restarted): the outage's time is
    not in the rate, which is that of the windows observed."""
    rep = Reporter(config(), ShiftCalendar.from_config(config()))
    line = rep.cfg.lines[0]
    totals = LineTotals()
    for i in range(60):
        t = SHIFT_START + timedelta(minutes=i)
        covered = not 20 <= i < 40
        result = window(rep, t, 2 if covered else 0, 1.0, covered=covered)
        if i == 40:
            result = replace(result, events=("counter_reset",))
        w = rep.line_window(line, result, t, t + timedelta(minutes=1), totals)
        totals = w.totals
    out = w.output.model().shift
    assert out.units == 80
    assert out.projected == pytest.approx(80 + 80 / (40 * 60) * (480 - 60) * 60, abs=1e-3)


def test_a_restart_leaves_the_projection_at_units_plus_rate_times_remaining() -> None:
    rep = Reporter(config(), ShiftCalendar.from_config(config()))
    outs, _ = shift(rep, units=3, outage=range(100, 160), until=200)
    last = outs[-1]
    # the outage's units came with the first window after it: the rate is over all 200 min
    assert last.shift.units == 600
    assert last.shift.projected == pytest.approx(600 + 600 / 200 * (480 - 200), abs=1e-3)
    assert last.shift.covered_s == 140 * 60
    assert last.shift.coverage == pytest.approx(140 / 200, abs=1e-4)
    # the day's block says the same of the day (the shift is its only planned time so far)
    assert last.day.covered_s == 140 * 60
    assert last.day.coverage == pytest.approx(140 / 200, abs=1e-4)
    assert last.day.counted_since == SHIFT_START


def test_a_shift_report_below_the_coverage_threshold_is_marked_partial() -> None:
    rep = Reporter(config(), ShiftCalendar.from_config(config()))
    _, [seen] = shift(rep, outage=range(10, 40))
    _, [partly] = shift(rep, outage=range(10, 100))
    assert (seen.partial, partly.partial) == (False, True)
    assert seen.counted_since == partly.counted_since == SHIFT_START
    assert seen.coverage == pytest.approx(450 / 480, abs=1e-4)


# --- a line's own calendar -------------------------------------------------------------------

def test_days_before_the_start_and_not_planned_have_no_target_attainment_or_downtime() -> None:
    cfg = config(start="2026-12-03",
                 ramp_up=[{"from": "2026-12-03", "share": 0.5}, {"from": "2026-12-07", "share": 1}],
                 not_planned=[{"from": "2026-12-04", "to": "2026-12-04", "reason": "move"}])
    rep = Reporter(cfg, ShiftCalendar.from_config(cfg))
    line = cfg.lines[0]
    assert [line.plan_share(date(2026, 12, d)) for d in (2, 3, 4, 5, 7)] == [0, 0.5, 0, 0.5, 1]
    outs = {}
    for day in (2, 3, 4, 7):
        t = datetime(2026, 12, day, 8, 0, tzinfo=TOKYO)
        out, _ = rep.line_output(line, window(rep, t, 1, 0.5), t, t + timedelta(minutes=1),
                                 LineTotals())
        outs[day] = out
    for day in (2, 4):
        o = outs[day]
        assert (o.target_per_hour, o.attainment, o.shift.target, o.day.target) == (0, None, 0, 0)
        assert o.shift.downtime_s == 0
        assert o.shift.availability is None
        assert o.time is not None
    assert outs[3].shift.target == pytest.approx(30 * 8)           # half of 60/h, 8 planned h
    assert outs[3].attainment == pytest.approx(1 / 0.5)
    assert outs[3].shift.downtime_s == 30
    assert outs[7].shift.target == pytest.approx(60 * 8)


def test_the_year_counts_the_opening_balance_and_one_rate_for_utilisation_and_projection() -> None:
    cfg = config()
    cal = ShiftCalendar.from_config(cfg)
    rep = Reporter(cfg, cal)
    rep.openings = {2026: YearOpening(year=2026, units=200_000, through=date(2026, 11, 30))}
    start = datetime(2026, 12, 3, 8, 0, tzinfo=TOKYO)
    line, _ = rep.line_output(cfg.lines[0], window(rep, start, 60, 1.0), start,
                              start + timedelta(minutes=1), LineTotals())
    out, totals = rep.plant_output([line], start, start + timedelta(minutes=1), PlantTotals())
    assert out.units_year_to_date == 200_060
    assert totals.year_units == 60
    assert (out.year_opening_units, out.year_opening_through) == (200_000, date(2026, 11, 30))
    end = start + timedelta(minutes=1)
    year_s = cal.year_planned_seconds(2026)
    counted = (cal.year_planned_elapsed(cal.midnight(date(2026, 12, 1)))
               + cal.year_planned_elapsed(end) - cal.year_planned_elapsed(start))
    rate = 200_060 / counted
    assert out.utilization == pytest.approx(rate * year_s / 500_000, abs=1e-4)
    assert out.projected_year == pytest.approx(
        200_060 + rate * (year_s - cal.year_planned_elapsed(end)), abs=1e-2)
    assert out.year_covered_s == 60
    assert out.year_coverage == round(60 / cal.year_planned_elapsed(end), 4)
