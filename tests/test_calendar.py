"""Shift calendar: instances, breaks, holidays, off-shift periods, windows and DST."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Shift
from agent.core.calendar import ShiftCalendar

TOKYO = ZoneInfo("Asia/Tokyo")
BERLIN = ZoneInfo("Europe/Berlin")
ALL_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
H = 3600.0


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def tokyo(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=TOKYO)


def kyushu(holidays: tuple[date, ...] = ()) -> ShiftCalendar:
    shifts = [
        Shift.model_validate({"name": "day", "start": "06:30", "end": "15:15",
                              "breaks": [{"start": "11:45", "end": "12:30"}]}),
        Shift.model_validate({"name": "night", "start": "16:30", "end": "01:15"}),
    ]
    return ShiftCalendar(shifts, TOKYO, holidays)


def berlin_night(**extra: object) -> ShiftCalendar:
    shift = Shift.model_validate({"name": "night", "start": "22:00", "end": "06:00",
                                  "days": ALL_DAYS, **extra})
    return ShiftCalendar([shift], BERLIN)


# --- shift instances, breaks, midnight, holidays -----------------------------------------

def test_day_shift_instance_with_break() -> None:
    cal = kyushu()
    p = cal.period_at(tokyo(2025, 6, 9, 7, 0))        # a Monday
    assert p.name == "day"
    assert p.start == tokyo(2025, 6, 9, 6, 30)
    assert p.end == tokyo(2025, 6, 9, 15, 15)
    assert p.production_date == date(2025, 6, 9)
    assert p.planned == ((tokyo(2025, 6, 9, 6, 30), tokyo(2025, 6, 9, 11, 45)),
                         (tokyo(2025, 6, 9, 12, 30), tokyo(2025, 6, 9, 15, 15)))
    assert p.planned_seconds == 8 * H
    assert p.key == "day@2025-06-08T21:30:00+00:00"
    assert p.start.tzinfo is UTC


def test_break_has_no_planned_time() -> None:
    cal = kyushu()
    assert cal.planned_seconds(tokyo(2025, 6, 9, 11, 45), tokyo(2025, 6, 9, 12, 30)) == 0
    assert cal.planned_seconds(tokyo(2025, 6, 9, 11, 30), tokyo(2025, 6, 9, 12, 45)) == 1800
    assert cal.period_at(tokyo(2025, 6, 9, 12, 0)).name == "day"   # a break is inside the shift


def test_night_shift_crosses_midnight_on_its_start_date() -> None:
    cal = kyushu()
    p = cal.period_at(tokyo(2025, 6, 10, 0, 30))
    assert (p.name, p.production_date) == ("night", date(2025, 6, 9))
    assert p.end == tokyo(2025, 6, 10, 1, 15)
    assert p.planned_seconds == 8.75 * H
    assert cal.production_date(tokyo(2025, 6, 10, 1, 14)) == date(2025, 6, 9)
    assert cal.production_date(tokyo(2025, 6, 10, 1, 15)) == date(2025, 6, 10)
    assert cal.planned_seconds(tokyo(2025, 6, 9, 23, 0), tokyo(2025, 6, 10, 2, 0)) == 2.25 * H


def test_off_shift_periods_between_instances() -> None:
    cal = kyushu()
    gap = cal.period_at(tokyo(2025, 6, 9, 16, 0))
    assert gap.name is None
    assert gap.planned == ()
    assert (gap.start, gap.end) == (tokyo(2025, 6, 9, 15, 15), tokyo(2025, 6, 9, 16, 30))
    assert gap.key.startswith("off@")
    early = cal.period_at(tokyo(2025, 6, 10, 3, 0))
    assert (early.start, early.end) == (tokyo(2025, 6, 10, 1, 15), tokyo(2025, 6, 10, 6, 30))
    assert early.production_date == date(2025, 6, 10)


def test_weekend_is_one_off_shift_period() -> None:
    cal = kyushu()
    p = cal.period_at(tokyo(2025, 6, 15, 12, 0))      # Sunday
    assert p.name is None
    assert p.start == tokyo(2025, 6, 14, 1, 15)       # Friday's night shift ended Saturday
    assert p.end == tokyo(2025, 6, 16, 6, 30)
    assert p.production_date == date(2025, 6, 14)
    assert cal.day_planned_seconds(date(2025, 6, 14)) == 0
    assert cal.day_planned_seconds(date(2025, 6, 13)) == 16.75 * H


def test_holiday_has_no_shift_instances() -> None:
    cal = kyushu(holidays=(date(2025, 6, 10),))
    assert cal.day_planned_seconds(date(2025, 6, 10)) == 0
    # the night shift of the day before still runs into the holiday
    assert cal.period_at(tokyo(2025, 6, 10, 0, 30)).name == "night"
    p = cal.period_at(tokyo(2025, 6, 10, 12, 0))
    assert p.name is None
    assert (p.start, p.end) == (tokyo(2025, 6, 10, 1, 15), tokyo(2025, 6, 11, 6, 30))


def test_no_shift_in_reach_gives_day_long_off_periods() -> None:
    shift = Shift.model_validate({"name": "day", "start": "08:00", "end": "16:00", "days": []})
    cal = ShiftCalendar([shift], TOKYO)
    p = cal.period_at(tokyo(2025, 6, 9, 12, 0))
    assert (p.start, p.end) == (tokyo(2025, 6, 9), tokyo(2025, 6, 10))
    assert cal.year_planned_seconds(2025) == 0


def test_year_planned_seconds_and_elapsed() -> None:
    cal = kyushu()
    weekdays = sum(1 for i in range(365) if (date(2025, 1, 1) + timedelta(i)).weekday() < 5)
    assert cal.year_planned_seconds(2025) == weekdays * 16.75 * H
    # Thursday 2 January, 07:00: Wednesday 1 January's two shifts plus 30 minutes
    assert cal.year_planned_elapsed(tokyo(2025, 1, 2, 7, 0)) == 16.75 * H + 1800
    # New Year's midnight falls in Tuesday 31 December 2024's night shift: still 2024
    assert cal.year_planned_elapsed(tokyo(2025, 1, 1, 0, 0)) == cal.year_planned_seconds(2024) - 4500
    assert cal.year_planned_elapsed(tokyo(2025, 1, 1, 0, 0), year=2025) == 0
    # Wednesday 31 December's night shift belongs to 2025 even after midnight
    assert cal.year_planned_elapsed(tokyo(2026, 1, 1, 1, 0)) == cal.year_planned_seconds(2025) - 900
    assert cal.year_planned_elapsed(tokyo(2026, 1, 1, 1, 0), year=2026) == 0
    assert cal.year_planned_elapsed(tokyo(2026, 3, 1), year=2025) == cal.year_planned_seconds(2025)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        kyushu().period_at(datetime(2025, 6, 9, 7, 0))


# --- windows ------------------------------------------------------------------------------

def test_windows_align_to_local_midnight() -> None:
    cal = kyushu()
    assert cal.window_bounds(tokyo(2025, 6, 9, 7, 0, 59), 60) == (
        tokyo(2025, 6, 9, 7, 0), tokyo(2025, 6, 9, 7, 1))
    assert cal.window_bounds(tokyo(2025, 6, 9, 23, 59, 30), 60) == (
        tokyo(2025, 6, 9, 23, 59), tokyo(2025, 6, 10, 0, 0))
    assert cal.window_bounds(tokyo(2025, 6, 10, 0, 0), 900) == (
        tokyo(2025, 6, 10, 0, 0), tokyo(2025, 6, 10, 0, 15))


def test_windows_refuse_an_interval_not_dividing_an_hour() -> None:
    with pytest.raises(ValueError, match="divide"):
        kyushu().window_bounds(tokyo(2025, 6, 9), 7)


def test_windows_on_the_berlin_spring_forward_day() -> None:
    cal = berlin_night()
    # local midnight 2025-03-30 is 23:00Z the day before; the day has 23 hours
    assert cal.window_bounds(utc(2025, 3, 29, 23, 0), 3600) == (utc(2025, 3, 29, 23), utc(2025, 3, 30, 0))
    # 03:30 CEST is the third window of the day, starting 03:00 local
    assert cal.window_bounds(utc(2025, 3, 30, 1, 30), 3600) == (utc(2025, 3, 30, 1), utc(2025, 3, 30, 2))
    assert cal.window_bounds(utc(2025, 3, 30, 21, 59), 3600) == (utc(2025, 3, 30, 21), utc(2025, 3, 30, 22))
    assert cal.window_bounds(utc(2025, 3, 30, 22, 5), 900) == (
        utc(2025, 3, 30, 22, 0), utc(2025, 3, 30, 22, 15))


def test_windows_on_the_berlin_fall_back_day() -> None:
    cal = berlin_night()
    # the day has 25 hours: both 02:xx hours get their own windows
    first = cal.window_bounds(utc(2025, 10, 26, 0, 30), 3600)    # 02:30 CEST
    second = cal.window_bounds(utc(2025, 10, 26, 1, 30), 3600)   # 02:30 CET
    assert first == (utc(2025, 10, 26, 0), utc(2025, 10, 26, 1))
    assert second == (utc(2025, 10, 26, 1), utc(2025, 10, 26, 2))
    assert cal.window_bounds(utc(2025, 10, 26, 22, 59), 3600)[1] == utc(2025, 10, 26, 23)


@settings(max_examples=200, deadline=None)
@given(t=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31),
                      timezones=st.just(UTC)),
       interval=st.sampled_from([1, 60, 300, 900, 3600]),
       zone=st.sampled_from(["Europe/Berlin", "Asia/Tokyo", "America/New_York",
                             "Australia/Lord_Howe"]))
def test_a_window_contains_t_and_never_crosses_local_midnight(
        t: datetime, interval: int, zone: str) -> None:
    cal = ShiftCalendar([], ZoneInfo(zone))
    start, end = cal.window_bounds(t, interval)
    assert start <= t < end
    assert 0 < (end - start).total_seconds() <= interval
    assert cal.local_date(start) == cal.local_date(end - timedelta(microseconds=1))


# --- DST ----------------------------------------------------------------------------------

def test_night_shift_across_spring_forward_is_an_hour_shorter() -> None:
    cal = berlin_night()
    p = cal.period_at(utc(2025, 3, 30, 0, 30))
    assert p.production_date == date(2025, 3, 29)
    assert (p.start, p.end) == (utc(2025, 3, 29, 21), utc(2025, 3, 30, 4))
    assert p.planned_seconds == 7 * H
    assert cal.day_planned_seconds(date(2025, 3, 29)) == 7 * H
    assert cal.day_planned_seconds(date(2025, 3, 30)) == 8 * H


def test_night_shift_across_fall_back_is_an_hour_longer() -> None:
    cal = berlin_night()
    p = cal.period_at(utc(2025, 10, 26, 1, 30))
    assert (p.start, p.end) == (utc(2025, 10, 25, 20), utc(2025, 10, 26, 5))
    assert p.planned_seconds == 9 * H


def test_breaks_in_the_missing_and_repeated_hours() -> None:
    cal = berlin_night(breaks=[{"start": "02:15", "end": "02:45"}])
    # 02:15-02:45 does not exist on the spring night: no break, nothing negative
    spring = cal.period_at(utc(2025, 3, 30, 0, 30))
    assert spring.planned_seconds == 7 * H
    assert all(b > a for a, b in spring.planned)
    # on the fall night the break is taken at its first occurrence
    fall = cal.period_at(utc(2025, 10, 26, 1, 30))
    assert fall.planned_seconds == 8.5 * H
    assert (utc(2025, 10, 26, 0, 15), utc(2025, 10, 26, 0, 45)) not in fall.planned
    assert fall.planned[0][1] == utc(2025, 10, 26, 0, 15)


def test_shift_starting_in_the_missing_hour_starts_when_it_ends() -> None:
    shift = Shift.model_validate({"name": "early", "start": "02:30", "end": "03:15", "days": ALL_DAYS})
    cal = ShiftCalendar([shift], BERLIN)
    assert cal.resolve(date(2025, 3, 30), 150) == utc(2025, 3, 30, 1)   # 03:00 CEST
    spring = cal.shifts_on(date(2025, 3, 30))
    assert [(p.start, p.end) for p in spring] == [(utc(2025, 3, 30, 1), utc(2025, 3, 30, 1, 15))]
    fall = cal.shifts_on(date(2025, 10, 26))
    assert [(p.start, p.end) for p in fall] == [(utc(2025, 10, 26, 0, 30), utc(2025, 10, 26, 2, 15))]


def test_shift_wholly_inside_the_missing_hour_is_dropped() -> None:
    shift = Shift.model_validate({"name": "ghost", "start": "02:10", "end": "02:50", "days": ALL_DAYS})
    cal = ShiftCalendar([shift], BERLIN)
    assert cal.shifts_on(date(2025, 3, 30)) == ()
    assert cal.period_at(utc(2025, 3, 30, 1, 0)).name is None
    assert len(cal.shifts_on(date(2025, 3, 31))) == 1


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 1439), span=st.integers(1, 1439),
       day=st.dates(min_value=date(2025, 3, 28), max_value=date(2025, 4, 1))
       | st.dates(min_value=date(2025, 10, 24), max_value=date(2025, 10, 28)))
def test_any_shift_across_dst_has_sane_intervals(start: int, span: int, day: date) -> None:
    end = (start + span) % 1440
    shift = Shift.model_validate({"name": "s", "start": f"{start // 60:02d}:{start % 60:02d}",
                                  "end": f"{end // 60:02d}:{end % 60:02d}", "days": ALL_DAYS})
    cal = ShiftCalendar([shift], BERLIN)
    for p in cal.shifts_on(day):
        assert p.end > p.start
        assert abs(p.planned_seconds - span * 60) <= H
        assert all(b > a for a, b in p.planned)
    t = cal.midnight(day) + timedelta(hours=12)
    q = cal.period_at(t)
    assert q.start <= t < q.end
