"""Report payloads: targets, attainment, shift/day/plant totals, DST, resets of totals."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.config import Config
from agent.contract.payloads import LineOutput
from agent.core.calendar import ShiftCalendar
from agent.core.report import LineTotals, PlantTotals, Reporter
from agent.core.tracker import WindowResult

TOKYO = ZoneInfo("Asia/Tokyo")
H = 3600.0


def config(timezone: str = "Asia/Tokyo", shifts: list[dict[str, Any]] | None = None,
           holidays: tuple[str, ...] = ()) -> Config:
    return Config.model_validate({
        "site": "kyushu",
        "timezone": timezone,
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8,
                  "holidays": list(holidays)},
        "shifts": shifts or [
            {"name": "day", "start": "06:30", "end": "15:15",
             "breaks": [{"start": "11:45", "end": "12:30"}]},
            {"name": "night", "start": "16:30", "end": "01:15"},
        ],
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 5020}],
        "lines": [
            {"id": "kei-ev", "product": "Sakura", "target_per_hour": 30,
             "counter": {"source": "plc", "address": 100}},
            {"id": "rogue", "product": "Rogue", "takt_s": 80,
             "counter": {"source": "plc", "address": 200}},
        ],
    })


def reporter(cfg: Config) -> Reporter:
    return Reporter(cfg, ShiftCalendar.from_config(cfg))


def result(units: int, *, line: str = "kei-ev", quality: str = "good", stopped: float = 0.0,
           faulted: float = 0.0, running: float = 0.0, events: tuple[str, ...] = ()) -> WindowResult:
    return WindowResult(line=line, units=units, events=events, quality=quality,
                        state_seconds={"running": running, "stopped": stopped,
                                       "faulted": faulted, "unknown": 0.0},
                        counter=1234, state="running")


def tokyo(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=TOKYO)


def run(rep: Reporter, start: datetime, minutes: int, units: int, totals: LineTotals,
        interval: int = 60, **kw: Any) -> tuple[list[LineOutput], LineTotals]:
    """Feed ``minutes`` consecutive windows of ``units`` each for line kei-ev."""
    line = rep.cfg.lines[0]
    outs = []
    t = start
    for _ in range(minutes * 60 // interval):
        end = t + timedelta(seconds=interval)
        out, totals = rep.line_output(line, result(units, **kw), t, end, totals)
        outs.append(out)
        t = end
    return outs, totals


# --- one window ---------------------------------------------------------------------------

def test_window_in_planned_time() -> None:
    cfg = config()
    rep = reporter(cfg)
    totals = LineTotals()
    out, new = rep.line_output(cfg.lines[0], result(1, events=("rollover",)),
                               tokyo(2025, 6, 9, 7, 0), tokyo(2025, 6, 9, 7, 1), totals,
                               epoch=1_234_567)
    assert (out.site, out.line, out.product, out.epoch, out.seq) == (
        "kyushu", "kei-ev", "Sakura", 1_234_567, 1)
    assert out.units == 1
    assert out.rate_per_hour == 60.0
    assert out.target_per_hour == 30.0
    assert out.attainment == 2.0
    # the first window of an epoch says so, and cannot vouch for what came before it
    assert out.events == ["rollover", "new_epoch"]
    assert out.quality == "uncertain"
    second, _ = rep.line_output(cfg.lines[0], result(1, events=("rollover",)),
                                tokyo(2025, 6, 9, 7, 1), tokyo(2025, 6, 9, 7, 2), new, epoch=1_234_567)
    assert (second.seq, second.events, second.quality) == (2, ["rollover"], "good")
    assert out.counter == 1234
    assert out.historical is False
    assert out.shift.name == "day"
    assert out.shift.target == 240.0
    assert out.day.date == date(2025, 6, 9)
    assert out.day.target == pytest.approx(30 * 16.75)
    assert totals == LineTotals()                      # the argument is not mutated
    assert new.seq == 1
    assert new.last_window_end == tokyo(2025, 6, 9, 7, 1)
    assert b'"schema":"plantfloor.output/1"' in out.model_dump_json(by_alias=True).encode()


def test_takt_time_gives_the_rate_target() -> None:
    cfg = config()
    out, _ = reporter(cfg).line_output(cfg.lines[1], result(1, line="rogue"),
                                       tokyo(2025, 6, 9, 7, 0), tokyo(2025, 6, 9, 7, 1), LineTotals())
    assert out.target_per_hour == 45.0


def test_break_and_off_shift_have_no_target() -> None:
    cfg = config()
    rep = reporter(cfg)
    for start in (tokyo(2025, 6, 9, 12, 0), tokyo(2025, 6, 9, 16, 0)):
        out, _ = rep.line_output(cfg.lines[0], result(2), start, start + timedelta(minutes=1),
                                 LineTotals())
        assert out.target_per_hour == 0.0
        assert out.attainment is None
        assert out.rate_per_hour == 120.0
    off, _ = rep.line_output(cfg.lines[0], result(0), tokyo(2025, 6, 9, 16, 0),
                             tokyo(2025, 6, 9, 16, 1), LineTotals())
    assert off.shift.name is None
    assert (off.shift.target, off.shift.projected) == (0.0, 0.0)


def test_edge_window_has_a_fractional_target() -> None:
    cfg = config()
    # 06:00-07:00: the day shift starts 06:30, so half the hour is planned
    out, _ = reporter(cfg).line_output(cfg.lines[0], result(30), tokyo(2025, 6, 9, 6, 0),
                                       tokyo(2025, 6, 9, 7, 0), LineTotals())
    assert out.target_per_hour == 15.0
    assert out.attainment == 2.0


def test_empty_window_is_refused() -> None:
    cfg = config()
    t = tokyo(2025, 6, 9, 7, 0)
    with pytest.raises(ValueError, match="empty window"):
        reporter(cfg).line_output(cfg.lines[0], result(0), t, t, LineTotals())


# --- shift and day totals -------------------------------------------------------------------

def test_shift_totals_accumulate_and_reset_at_the_shift_boundary() -> None:
    cfg = config()
    rep = reporter(cfg)
    outs, totals = run(rep, tokyo(2025, 6, 9, 15, 10), 5, 1, LineTotals(), stopped=20.0, faulted=10.0)
    assert [o.shift.units for o in outs] == [1, 2, 3, 4, 5]
    assert outs[-1].shift.downtime_s == 150.0
    assert [o.seq for o in outs] == [1, 2, 3, 4, 5]
    after, totals = run(rep, tokyo(2025, 6, 9, 15, 15), 1, 2, totals)
    assert after[0].shift.name is None
    assert after[0].shift.units == 2
    assert after[0].shift.downtime_s == 0.0
    assert after[0].day.units == 7
    assert totals.seq == 6


def test_projection_extrapolates_the_shift_pace() -> None:
    cfg = config()
    rep = reporter(cfg)
    outs, _ = run(rep, tokyo(2025, 6, 9, 6, 30), 60, 1, LineTotals())
    # 60 units in the first planned hour; 7 planned hours remain
    assert outs[-1].shift.units == 60
    assert outs[-1].shift.projected == pytest.approx(60 + 60 * 7)
    assert outs[0].shift.projected == pytest.approx(1 + 1 / 60 * (8 * H - 60))


def test_projection_uses_the_window_rate_before_planned_time_elapses() -> None:
    cfg = config()
    rep = reporter(cfg)
    # a 3600 s window 06:00-07:00 starts off shift: the period is the gap before the shift
    out, _ = rep.line_output(cfg.lines[0], result(4), tokyo(2025, 6, 9, 6, 0),
                             tokyo(2025, 6, 9, 7, 0), LineTotals())
    assert out.shift.name is None
    assert out.shift.projected == 4.0


def test_projection_in_a_break_with_no_units_yet() -> None:
    cfg = config(shifts=[{"name": "day", "start": "06:30", "end": "15:15",
                          "breaks": [{"start": "06:30", "end": "07:00"}]}])
    rep = reporter(cfg)
    out, _ = rep.line_output(cfg.lines[0], result(1), tokyo(2025, 6, 9, 6, 30),
                             tokyo(2025, 6, 9, 6, 31), LineTotals())
    # nothing planned has elapsed: the window's rate (1 unit/min) over the 8.25 h to come
    assert out.shift.projected == pytest.approx(1 + 8.25 * 60)


def test_night_shift_crossing_midnight_keeps_its_production_day() -> None:
    cfg = config()
    rep = reporter(cfg)
    outs, totals = run(rep, tokyo(2025, 6, 9, 23, 58), 4, 1, LineTotals(), interval=60)
    assert [o.day.date for o in outs] == [date(2025, 6, 9)] * 4
    assert [o.day.units for o in outs] == [1, 2, 3, 4]
    assert {o.shift.name for o in outs} == {"night"}
    assert outs[-1].shift.target == pytest.approx(30 * 8.75)
    outs2, _ = run(rep, tokyo(2025, 6, 10, 1, 14), 2, 1, totals)
    assert [o.shift.name for o in outs2] == ["night", None]
    assert [o.day.date for o in outs2] == [date(2025, 6, 9), date(2025, 6, 10)]
    assert [o.day.units for o in outs2] == [5, 1]
    assert outs2[1].day.target == pytest.approx(30 * 16.75)


def test_totals_survive_a_json_round_trip() -> None:
    cfg = config()
    _, totals = run(reporter(cfg), tokyo(2025, 6, 9, 7, 0), 3, 2, LineTotals(), stopped=1.5)
    assert LineTotals.from_json(totals.to_json()) == totals
    assert LineTotals.from_json(LineTotals().to_json()) == LineTotals()
    plant = PlantTotals(seq=3, day=date(2025, 6, 9), day_units=5, year=2025, year_units=9,
                        last_window_end=datetime(2025, 6, 9, 1, tzinfo=UTC))
    assert PlantTotals.from_json(plant.to_json()) == plant


def test_historical_flag_is_carried() -> None:
    cfg = config()
    out, _ = reporter(cfg).line_output(cfg.lines[0], result(0, quality="bad"),
                                       tokyo(2025, 6, 9, 7, 0), tokyo(2025, 6, 9, 7, 1),
                                       LineTotals(seq=41), historical=True)
    assert (out.seq, out.historical, out.quality) == (42, True, "bad")


# --- DST (Europe/Berlin) ----------------------------------------------------------------------

BERLIN_NIGHT = [{"name": "night", "start": "22:00", "end": "06:00",
                 "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}]


@pytest.mark.parametrize(("night", "hours"), [(date(2025, 3, 29), 7), (date(2025, 10, 25), 9),
                                               (date(2025, 6, 14), 8)])
def test_berlin_night_shift_target_follows_real_time(night: date, hours: int) -> None:
    cfg = config("Europe/Berlin", BERLIN_NIGHT)
    rep = reporter(cfg)
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime.combine(night, datetime.min.time(), berlin) + timedelta(hours=22)
    cal = rep.calendar
    totals = LineTotals()
    t = cal.window_bounds(start, 900)[0]
    outs = []
    while cal.period_at(t).name == "night":
        a, b = cal.window_bounds(t, 900)
        out, totals = rep.line_output(cfg.lines[0], result(5), a, b, totals)
        outs.append(out)
        t = b
    assert len(outs) == hours * 4
    assert outs[0].shift.target == 30 * hours
    assert outs[-1].shift.units == 5 * hours * 4
    assert outs[-1].shift.projected == pytest.approx(outs[-1].shift.units)
    assert all(o.target_per_hour == 30.0 for o in outs)
    assert {o.day.date for o in outs} == {night}
    assert outs[0].day.target == 30 * hours


# --- plant ------------------------------------------------------------------------------------

def test_plant_output_sums_lines_and_keeps_totals() -> None:
    cfg = config()
    rep = reporter(cfg)
    start, end = tokyo(2025, 6, 9, 7, 0), tokyo(2025, 6, 9, 7, 1)
    a, _ = rep.line_output(cfg.lines[0], result(2), start, end, LineTotals())
    b, _ = rep.line_output(cfg.lines[1], result(3, line="rogue", quality="uncertain"), start, end,
                           LineTotals())
    before = PlantTotals(seq=9, day=date(2025, 6, 9), day_units=100, year=2025, year_units=1000,
                         counted_since=tokyo(2025, 1, 1, 0, 0))
    out, new = rep.plant_output([a, b], start, end, before)
    assert (out.seq, out.units, out.units_today, out.units_year_to_date) == (10, 5, 105, 1005)
    assert out.lines == {"kei-ev": 2, "rogue": 3}
    assert out.quality == "uncertain"
    assert out.target_today == pytest.approx((30 + 45) * 16.75)
    assert (out.capacity_per_year, out.planned_utilization) == (500_000, 0.8)
    cal = rep.calendar
    year_s, elapsed = cal.year_planned_seconds(2025), cal.year_planned_elapsed(end)
    assert out.utilization == pytest.approx(1005 / (500_000 * elapsed / year_s), abs=1e-4)
    assert out.projected_year == pytest.approx(1005 + 1005 / elapsed * (year_s - elapsed), abs=1e-3)
    assert before.seq == 9
    assert (new.seq, new.day_units, new.year_units, new.year) == (10, 105, 1005, 2025)
    assert b'"schema":"plantfloor.plant/1"' in out.model_dump_json(by_alias=True).encode()


def test_plant_totals_reset_on_a_new_production_day_and_year() -> None:
    # the night shift ends at midnight, so the off-shift period after it starts on the
    # new production date; Saturday 1 January 2028 has nothing planned yet
    cfg = config(shifts=[{"name": "day", "start": "06:30", "end": "15:15"},
                         {"name": "night", "start": "16:30", "end": "00:00"}])
    rep = reporter(cfg)
    t = tokyo(2028, 1, 1, 0, 0)
    line, _ = rep.line_output(cfg.lines[0], result(4), t, t + timedelta(minutes=1), LineTotals())
    before = PlantTotals(seq=1, day=date(2027, 12, 30), day_units=300, year=2027, year_units=9000)
    out, new = rep.plant_output([line], t, t + timedelta(minutes=1), before)
    assert (out.units_today, out.units_year_to_date) == (4, 4)
    assert out.utilization == 0.0
    assert out.projected_year == 500_000 * 0.8
    assert (new.day, new.year) == (date(2028, 1, 1), 2028)
    # a window before midnight still belongs to 2027
    t0 = t - timedelta(minutes=1)
    eve = PlantTotals(seq=1, day=date(2027, 12, 31), day_units=300, year=2027, year_units=9000)
    old_year, _ = rep.plant_output([line], t0, t, eve)
    assert (old_year.units_today, old_year.units_year_to_date) == (304, 9004)
    assert old_year.utilization > 0


def test_off_shift_period_keeps_the_date_it_started() -> None:
    cfg = config(holidays=("2027-12-31",))
    rep = reporter(cfg)
    # Thursday's night shift ends 01:15 on the holiday; the off-shift period from then to
    # Monday's day shift is production date 31 December, so the year has not turned yet
    t = tokyo(2028, 1, 1, 12, 0)
    line, _ = rep.line_output(cfg.lines[0], result(4), t, t + timedelta(minutes=1), LineTotals())
    assert line.day.date == date(2027, 12, 31)
    before = PlantTotals(seq=1, day=date(2027, 12, 31), day_units=3, year=2027, year_units=9000,
                         counted_since=tokyo(2027, 1, 1, 0, 0))
    out, _ = rep.plant_output([line], t, t + timedelta(minutes=1), before)
    assert (out.units_today, out.units_year_to_date) == (7, 9004)
    assert out.projected_year == pytest.approx(9004)


def test_plant_quality_is_the_worst_line_quality() -> None:
    cfg = config()
    rep = reporter(cfg)
    start, end = tokyo(2025, 6, 9, 7, 0), tokyo(2025, 6, 9, 7, 1)
    outs = [rep.line_output(cfg.lines[i], result(1, line=ln.id, quality=q), start, end,
                            LineTotals(seq=5))[0]
            for i, (ln, q) in enumerate(zip(cfg.lines, ("good", "bad"), strict=True))]
    assert rep.plant_output(outs, start, end, PlantTotals())[0].quality == "bad"
    assert rep.plant_output(outs[:1], start, end, PlantTotals())[0].quality == "good"


def test_plant_rates_count_only_the_planned_time_since_counting_began() -> None:
    """An agent started mid-year projects from its own year-to-date rate, not from 1 January."""
    cfg = config()
    rep = reporter(cfg)
    start = tokyo(2025, 6, 9, 7, 0)
    totals = PlantTotals()
    first = None
    for i in range(60):  # an hour of the day shift at exactly the planned rate
        s = start + timedelta(minutes=i)
        line, _ = rep.line_output(cfg.lines[0], result(0), s, s + timedelta(minutes=1), LineTotals())
        out, totals = rep.plant_output([line.model_copy(update={"units": 1})], s,
                                       s + timedelta(minutes=1), totals)
        first = first or out
    assert first is not None
    assert first.year_counted_since == start
    assert totals.counted_since == start
    cal = rep.calendar
    end = start + timedelta(hours=1)
    counted = cal.year_planned_elapsed(end) - cal.year_planned_elapsed(start)
    year_s = cal.year_planned_seconds(2025)
    assert out.utilization == pytest.approx(60 / (500_000 * counted / year_s), abs=1e-4)
    assert out.projected_year == pytest.approx(
        60 + 60 / counted * (year_s - cal.year_planned_elapsed(end)), rel=1e-6)


def test_totals_never_go_back_with_the_date() -> None:
    """A window dated before the last one (a clock behind) keeps adding to the later day."""
    cfg = config()
    rep = reporter(cfg)
    line = cfg.lines[0]
    start = tokyo(2025, 6, 10, 7, 0)
    out, totals = rep.line_output(line, result(3), start, start + timedelta(minutes=1), LineTotals(seq=1))
    _, ptotals = rep.plant_output([out], start, start + timedelta(minutes=1), PlantTotals(seq=1))
    early = tokyo(2025, 6, 9, 7, 0)
    out2, totals2 = rep.line_output(line, result(2), early, early + timedelta(minutes=1), totals)
    plant2, _ = rep.plant_output([out2], early, early + timedelta(minutes=1), ptotals)
    assert (out2.day.date, out2.day.units) == (date(2025, 6, 10), 5)
    assert (plant2.units_today, plant2.units_year_to_date) == (5, 5)
    assert totals2.day == date(2025, 6, 10)
