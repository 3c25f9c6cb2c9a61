"""The pure parts: a message becomes a row (or is rejected), rows become the site figure."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest

from agent.core.calendar import ShiftCalendar
from agent.rollup.config import RollupConfig
from agent.rollup.plant import LineAggregate, PeriodTotals, site_figure
from agent.rollup.rows import Rejected, RowBuilder, ShiftRow, WindowRow
from tests.rollup.rig import rollup_config
from tests.rollup.synth import shift_report, window

T0 = datetime(2028, 4, 3, 1, 31, tzinfo=UTC)       # 10:31 in Tokyo: shift "a", production day 04-03


def cfg(interval_s: int = 60) -> RollupConfig:
    return RollupConfig.model_validate(rollup_config(
        "mqtt://h:1", "postgresql://u@h/d", {"gw1": ["l1", "l2"], "gw2": ["l3"]}, interval_s=interval_s))


def builder(interval_s: int = 60) -> RowBuilder:
    c = cfg(interval_s)
    return RowBuilder(c, ShiftCalendar(c.shifts, c.tz, c.plant.holidays))


def test_a_window_is_attributed_to_the_site_window_its_start_is_in() -> None:
    b = builder()
    whole = b.build("test/site/gw1/lines/l1/output", window("l1", 7, T0, units=3, interval_s=60))
    assert isinstance(whole, WindowRow)
    assert (whole.site, whole.line, whole.epoch, whole.seq, whole.gateway) == ("test", "l1", 1000, 7, "gw1")
    assert whole.period_start == T0
    assert whole.production_date == date(2028, 4, 3)
    assert whole.shift_name == "a"
    assert whole.shift_start == datetime(2028, 4, 2, 15, 0, tzinfo=UTC)   # 00:00 Tokyo
    assert json.loads(whole.payload)["units"] == 3
    # an agent stopped half-way: the two halves of its window share the site window
    first = b.build("test/site/gw1/lines/l2/output",
                    window("l2", 1, T0, end=T0 + timedelta(seconds=20), units=1))
    second = b.build("test/site/gw1/lines/l2/output",
                     window("l2", 2, T0 + timedelta(seconds=20), end=T0 + timedelta(seconds=60), units=2))
    assert isinstance(first, WindowRow)
    assert isinstance(second, WindowRow)
    assert first.period_start == second.period_start == T0


def test_the_site_calendar_decides_the_production_day_of_a_night_window() -> None:
    c = RollupConfig.model_validate(rollup_config(
        "mqtt://h:1", "postgresql://u@h/d", {"gw1": ["l1"]}, interval_s=60,
        shifts=[{"name": "night", "start": "22:00", "end": "06:00"}]))
    b = RowBuilder(c, ShiftCalendar(c.shifts, c.tz, c.plant.holidays))
    # Tuesday 2028-04-04 02:00 in Tokyo belongs to Monday's night shift
    row = b.build("test/site/gw1/lines/l1/output",
                  window("l1", 1, datetime(2028, 4, 3, 17, 0, tzinfo=UTC), interval_s=60))
    assert isinstance(row, WindowRow)
    assert row.production_date == date(2028, 4, 3)
    assert row.shift_name == "night"


@pytest.mark.parametrize(("topic", "payload", "error"), [
    ("test/site/gw9/lines/l1/output", window("l1", 1, T0), "not a configured gateway"),
    ("test/site/gw1/lines/l1/state", window("l1", 1, T0), "not a configured gateway"),
    ("test/site/gw1/lines/l2/output", window("l1", 1, T0), "is not the topic's 'l2'"),
    ("test/site/gw1/lines/l1/output", b"{not json", "json"),
    ("test/site/gw1/lines/l1/output", window("l1", 1, T0).replace(b"plantfloor.output/1", b"plantfloor.output/2"),
     "schema"),
    ("test/site/gw1/lines/l1/output", window("l1", 1, T0, end=T0), "window_end is not after"),
])
def test_what_is_not_a_window_of_this_site_is_rejected_with_a_reason(topic: str, payload: bytes, error: str) -> None:
    got = builder().build(topic, payload)
    assert isinstance(got, Rejected)
    assert error.lower() in got.error.lower()
    assert got.payload == payload


def test_fields_and_events_a_newer_agent_adds_are_tolerated() -> None:
    raw = json.loads(window("l1", 1, T0, events=("rollover",)))
    raw["events"].append("a_future_event")
    raw["oee"] = {"availability": 0.9}
    raw["shift"]["a_future_field"] = 1
    got = builder().build("test/site/gw1/lines/l1/output", json.dumps(raw).encode())
    assert isinstance(got, WindowRow)
    assert json.loads(got.payload)["oee"] == {"availability": 0.9}   # stored as published


def _figure(lines: list[LineAggregate], *, revision: int = 0, first: dict[str, int] | None = None) -> dict[str, object]:
    c = cfg()
    fig = site_figure(c, ShiftCalendar(c.shifts, c.tz, c.plant.holidays), epoch=5, seq=9, revision=revision,
                      start=T0, end=T0 + timedelta(seconds=60), lines=lines,
                      totals=PeriodTotals(units_today=40, units_year_to_date=900,
                                          counted_since=T0 - timedelta(days=3), target_today=250.0),
                      first_windows=first)
    return json.loads(fig.model_dump_json(by_alias=True))


def test_a_line_that_has_not_reported_is_missing_and_makes_the_figure_bad() -> None:
    fig = _figure([LineAggregate("l1", "gw1", 2, 1, 2, 100.0), LineAggregate("l3", "gw2", 3, 1, 2, 50.0)])
    assert fig["schema"] == "plantfloor.plant/1"
    assert fig["units"] == 5
    assert fig["lines"] == {"l1": 2, "l3": 3}
    assert fig["gateways"] == {"gw1": {"lines": {"l1": 2}, "missing": ["l2"], "late": []},
                               "gw2": {"lines": {"l3": 3}, "missing": [], "late": []}}
    assert fig["quality"] == "bad"
    assert fig["revision"] == 0
    assert fig["units_today"] == 40
    assert fig["units_year_to_date"] == 900
    assert fig["target_today"] == 250.0


def test_every_line_reported_gives_the_worst_line_quality() -> None:
    fig = _figure([LineAggregate("l1", "gw1", 2, 1, 2, 0), LineAggregate("l2", "gw1", 0, 1, 1, 0),
                   LineAggregate("l3", "gw2", 1, 1, 2, 0)])
    assert fig["quality"] == "uncertain"
    assert all(not g["missing"] for g in fig["gateways"].values())  # type: ignore[attr-defined]


def test_a_revision_names_the_lines_whose_windows_came_late() -> None:
    now = [LineAggregate("l1", "gw1", 2, 1, 2, 0), LineAggregate("l2", "gw1", 4, 2, 2, 0),
           LineAggregate("l3", "gw2", 1, 1, 2, 0)]
    fig = _figure(now, revision=2, first={"l1": 1, "l2": 1})
    assert fig["revision"] == 2
    assert fig["gateways"]["gw1"]["late"] == ["l2"]            # type: ignore[index]
    assert fig["gateways"]["gw2"]["late"] == ["l3"]            # type: ignore[index]
    assert fig["units"] == 7


def test_utilization_and_projection_follow_the_agents_formulas() -> None:
    c = cfg()
    cal = ShiftCalendar(c.shifts, c.tz, c.plant.holidays)
    fig = _figure([LineAggregate("l1", "gw1", 1, 1, 2, 0)])
    end = T0 + timedelta(seconds=60)
    year_s = cal.year_planned_seconds(2028)
    elapsed = cal.year_planned_elapsed(end, year=2028)
    counted = elapsed - cal.year_planned_elapsed(T0 - timedelta(days=3), year=2028)
    assert fig["utilization"] == round(900 / (500_000 * counted / year_s), 4)
    assert fig["projected_year"] == round(900 + 900 / counted * (year_s - elapsed), 3)
    assert fig["year_counted_since"] == "2028-03-31T01:31:00.000Z"


def test_a_lines_shift_report_becomes_a_shift_row() -> None:
    start, end = datetime(2028, 4, 2, 15, tzinfo=UTC), datetime(2028, 4, 3, 3, tzinfo=UTC)
    raw = shift_report("l3", "a", start, end, units=40)
    row = builder().build("test/site/gw2/lines/l3/shift", raw)
    assert isinstance(row, ShiftRow)
    assert (row.site, row.line, row.gateway, row.shift_name, row.units) == ("test", "l3", "gw2", "a", 40)
    assert (row.shift_start, row.shift_end, row.production_date) == (start, end, date(2028, 4, 3))
    wrong = builder().build("test/site/gw2/lines/l1/shift", raw)
    assert isinstance(wrong, Rejected)
    assert "is not the topic's 'l1'" in wrong.error
