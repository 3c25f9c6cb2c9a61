"""The board's figures in the core and the store: hours, running sums, the year's plan."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Config
from agent.core.calendar import ShiftCalendar
from agent.core.hourly import HourDelta, attainment, coverage, hour_start
from agent.core.plan import year_plan
from agent.store.board import BoardRows, read_down, read_hours, read_latest
from agent.store.file import _TABLES

ZONES = ["Asia/Tokyo", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                    timezones=st.just(UTC)), st.sampled_from(ZONES))
def test_an_hour_starts_on_the_plant_clock_and_contains_the_moment(t: datetime, zone: str) -> None:
    tz = ZoneInfo(zone)
    h = hour_start(t, tz)
    local = h.astimezone(tz)
    assert (local.minute, local.second, local.microsecond) == (0, 0, 0)
    assert h <= t < h + timedelta(hours=1)
    assert h.tzinfo == UTC


def test_ratios_follow_the_payload_rules() -> None:
    assert attainment(50, 0) is None
    assert attainment(1, 3) == 0.3333
    assert coverage(0, 0) == 1.0
    assert coverage(30, 60) == 0.5


@dataclass(frozen=True)
class _Latest:
    line: str
    window_end: datetime
    reason: str | None
    shift_key: str
    day_key: str
    target: float
    planned_s: float
    covered_s: float
    payload: bytes = b"{}"


window = st.tuples(st.sampled_from(["l0", "l1"]), st.integers(0, 5),
                   st.sampled_from(["running", "fault", "starved", None]),
                   st.sampled_from(["d1/a", "d1/b", "d2/a"]), st.booleans())


@settings(max_examples=60, deadline=None)
@given(st.lists(window, min_size=1, max_size=40), st.integers(1, 20))
def test_the_store_adds_every_window_once_and_restarts_sums_with_a_new_shift(
        windows: list[tuple[str, int, str | None, str, bool]], batch: int) -> None:
    conn = sqlite3.connect(":memory:")
    for statement in _TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)
    t0 = datetime(2026, 12, 3, tzinfo=UTC)
    hours: list[HourDelta] = []
    latest: list[_Latest] = []
    for i, (line, units, reason, shift, down) in enumerate(windows):
        start = t0 + timedelta(minutes=17 * i)
        end = start + timedelta(minutes=17)
        hours.append(HourDelta(line, hour_start(start, ZoneInfo("Asia/Tokyo")), units, 1.5, 60,
                               0 if down else 60, 0, 0, 60, {"fault": 60.0} if down else {}))
        latest.append(_Latest(line, end, reason, shift, shift[:2], 1.5, 60, 60 if units else 0))
    for k in range(0, len(windows), batch):
        BoardRows(hours[k:k + batch], latest[k:k + batch], 35).write(conn)
    rows = read_hours(conn, t0 - timedelta(days=1), t0 + timedelta(days=2))
    for line in ("l0", "l1"):
        mine = [h for h in hours if h.line == line]
        assert sum(r.units for r in rows if r.line == line) == sum(h.units for h in mine)
        assert sum(r.windows for r in rows if r.line == line) == len(mine)
        assert read_down(conn, t0 - timedelta(days=1), t0 + timedelta(days=2)).get(
            line, {}).get("fault", 0.0) == sum(h.down_s.get("fault", 0.0) for h in mine)
    for row in read_latest(conn):
        mine2 = [x for x in latest if x.line == row.line]
        last = mine2[-1]
        assert row.window_end == last.window_end
        run = 0
        while run < len(mine2) and mine2[-1 - run].reason == last.reason:
            run += 1
        assert row.reason_since == mine2[-run].window_end      # the run of the same reason
        same_shift = 0
        while same_shift < len(mine2) and mine2[-1 - same_shift].shift_key == last.shift_key:
            same_shift += 1
        assert row.shift_target == 1.5 * same_shift
        assert row.shift_covered == sum(x.covered_s for x in mine2[-same_shift:])


def test_hours_past_the_horizon_are_forgotten() -> None:
    conn = sqlite3.connect(":memory:")
    for statement in _TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)
    old = datetime(2026, 1, 1, tzinfo=UTC)
    BoardRows([HourDelta("l0", old, 3, 1, 1, 1, 0, 0, 1, {"fault": 1.0})], [], 35).write(conn)
    new = old + timedelta(days=36)
    BoardRows([HourDelta("l0", new, 4, 1, 1, 1, 0, 0, 1)], [], 35).write(conn)
    assert [(r.hour, r.units) for r in read_hours(conn, old, new + timedelta(hours=1))] == [(new, 4)]
    assert read_down(conn, old, new) == {}


def test_the_daily_rate_needed_counts_the_production_days_left() -> None:
    cfg = Config.model_validate({
        "site": "s", "timezone": "Asia/Tokyo",
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8,
                  "holidays": ["2026-12-29", "2026-12-30", "2026-12-31"]},
        "shifts": [{"name": "a", "start": "06:00", "end": "14:00"}],   # Monday to Friday
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 1}],
        "lines": [{"id": "l0", "product": "p", "target_per_hour": 60,
                   "counter": {"source": "plc", "address": 0}}],
    })
    cal = ShiftCalendar.from_config(cfg)
    # Thursday 3 December 2026, 10:00 in Tokyo: today, 4 and 7..11, 14..18, 21..25, 28 left
    now = datetime(2026, 12, 3, 1, 0, tzinfo=UTC)
    plan = year_plan(500_000, 0.8, 380_000, cal, now)
    assert plan.plan == 400_000
    assert plan.gap == 20_000
    assert plan.production_days_left == 2 + 5 + 5 + 5 + 1
    assert plan.rate_needed_per_day == round(20_000 / 18, 1)
    # after today's shift: today no longer counts
    assert year_plan(500_000, 0.8, 380_000, cal, now + timedelta(hours=6)).production_days_left == 17
    done = year_plan(500_000, 0.8, 410_000, cal, datetime(2026, 12, 31, 5, tzinfo=UTC))
    assert (done.gap, done.production_days_left, done.rate_needed_per_day) == (0, 0, None)
    assert date(2026, 12, 3).weekday() == 3


def test_a_recorded_opening_balance_is_kept_apart_from_what_was_measured() -> None:
    cfg = Config.model_validate({
        "site": "s", "timezone": "Asia/Tokyo",
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "06:00", "end": "14:00"}],
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 1}],
        "lines": [{"id": "l0", "product": "p", "target_per_hour": 60,
                   "counter": {"source": "plc", "address": 0}}],
    })
    cal = ShiftCalendar.from_config(cfg)
    now = datetime(2026, 12, 3, 1, 0, tzinfo=UTC)
    plan = year_plan(500_000, 0.8, 1_000, cal, now, recorded=300_000)
    assert (plan.measured, plan.recorded, plan.year_to_date) == (1_000, 300_000, 301_000)
    assert plan.gap == 99_000
    assert plan.rate_needed_per_day == round(99_000 / plan.production_days_left, 1)
