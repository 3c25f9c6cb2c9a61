"""OEE accounting you can check by hand: the time and count identities, pure (tracker + reporter).

Random state sequences are driven through two lines' trackers and the reporter window by
window, as the agent's window clock does, across shift and break boundaries, midnight and
both DST changes of Europe/Berlin, with agent restarts (windows the agent did not see):

* every window: planned = run + minor stops + downtime by reason + unknown (milliseconds);
* every shift report and every production day: planned busy time = run + downtime of
  unplanned and idle reasons + minor stops + unknown, and planned = busy + planned stops;
* total = good + rejects, and each report's figures are the sums of its windows;
* the plant's report is the sum of the lines' times and counts.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Config, LineConfig
from agent.contract.payloads import ShiftReport
from agent.contract.readings import Quality, Reading
from agent.core.calendar import ShiftCalendar
from agent.core.oee import Acc
from agent.core.report import LineTotals, LineWindow, Reporter
from agent.core.tracker import LineTracker

BERLIN = ZoneInfo("Europe/Berlin")
ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
MAP = {0: "stopped", 1: "running", 2: "fault", 3: "changeover", 4: "blocked", 5: "no_orders"}


def config(*, minor_stop_s: float = 60, interval_s: int = 900, timezone: str = "Europe/Berlin",
           shifts: list[dict[str, Any]] | None = None) -> Config:
    return Config.model_validate({
        "site": "test", "timezone": timezone,
        "publish": {"interval_s": interval_s},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        # the night shift crosses midnight and has its break across 02:00, the hour that
        # does not exist in spring and happens twice in autumn; 21:30-22:00 is off shift
        "shifts": shifts or [
            {"name": "night", "start": "22:00", "end": "06:00", "days": ALL_DAYS,
             "breaks": [{"start": "01:45", "end": "02:15"}]},
            {"name": "early", "start": "06:00", "end": "14:00", "days": ALL_DAYS,
             "breaks": [{"start": "10:00", "end": "10:30"}]},
            {"name": "late", "start": "14:00", "end": "21:30", "days": ALL_DAYS}],
        "downtime": {"minor_stop_s": minor_stop_s, "reasons": {
            "changeover": {"category": "planned"},
            "fault": {"category": "unplanned", "state": "faulted"},
            "blocked": {"category": "unplanned"}, "no_orders": {"category": "idle"}}},
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 5020}],
        "lines": [
            {"id": "kei", "product": "Sakura", "target_per_hour": 40, "ideal_cycle_s": 80,
             "max_rate_per_hour": 1e9,
             "counter": {"source": "plc", "address": 100},
             "reject_counter": {"source": "plc", "address": 102},
             "state": {"source": "plc", "address": 110, "type": "uint16", "map": MAP}},
            {"id": "rogue", "product": "Rogue", "takt_s": 60, "max_rate_per_hour": 1e9,
             "counter": {"source": "plc", "address": 200},
             "total_counter": {"source": "plc", "address": 202},
             "state": {"source": "plc", "address": 210, "type": "uint16", "map": MAP}},
        ],
    })


def tracker(cfg: Config, line: LineConfig, mono: float, old: LineTracker | None = None) -> LineTracker:
    second = line.second_counter
    return LineTracker(
        line_id=line.id, configured_modulus=None, max_rate_per_hour=line.rate_bound,
        state_map=line.state_map, has_state_tag=line.state is not None, start_mono=mono,
        memory=old.engine.memory() if old else None,
        reasons={n: r.state for n, r in cfg.downtime.all_reasons().items()},
        minor_stop_s=cfg.downtime.minor_stop_s, second_role=second[0] if second else None,
        second_memory=old.second_engine.memory() if old and old.second_engine else None)


@dataclass
class Period:
    """What the test itself sums over the windows of one shift instance (or day)."""

    planned: int = 0
    covered: int = 0
    run: int = 0
    minor: int = 0
    unknown: int = 0
    down: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stops: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    units: int = 0
    rejects: int = 0


class Plant:
    """Two lines driven like the agent's window clock does (pure: mono = seconds since t0)."""

    def __init__(self, cfg: Config, t0: datetime) -> None:
        self.cfg = cfg
        self.t0 = t0
        self.calendar = ShiftCalendar.from_config(cfg)
        self.reporter = Reporter(cfg, self.calendar)
        self.trackers = {ln.id: tracker(cfg, ln, 0.0) for ln in cfg.lines}
        self.totals = {ln.id: LineTotals() for ln in cfg.lines}
        self.reports: list[ShiftReport] = []
        self.plant_reports: list[ShiftReport] = []
        self.sums: dict[tuple[str, str], Period] = defaultdict(Period)
        self.days: dict[tuple[str, date], Period] = defaultdict(Period)
        self.raw_total = 0
        self.published_total = 0

    def mono(self, t: datetime) -> float:
        return (t - self.t0).total_seconds()

    def read(self, role: str, value: int | None, t: datetime, line: str | None = None,
             quality: Quality = Quality.GOOD) -> None:
        for line_id, tr in self.trackers.items():
            if line is None or line == line_id:
                tr.on_reading(Reading(line_id, role, value, quality, self.mono(t),  # type: ignore[arg-type]
                                      modulus=None if role == "state" else 2**32))

    def source_down(self, t: datetime) -> None:
        for tr in self.trackers.values():
            tr.on_source_down(self.mono(t), "timeout")

    def restart(self, t: datetime) -> None:
        self.trackers = {ln.id: tracker(self.cfg, ln, self.mono(t), self.trackers[ln.id])
                         for ln in self.cfg.lines}

    def window(self, start: datetime, end: datetime, *, offline: bool = False) -> None:
        planned_ms, key = self.reporter.window_split(start, end)
        ended = []
        for line in self.cfg.lines:
            tr = self.trackers[line.id]
            if offline:
                result = tr.offline_window("agent_offline", (end - start).total_seconds(), planned_ms)
            else:
                result = tr.close_window(self.mono(end), planned_ms=planned_ms, period=key)
            w = self.reporter.line_window(line, result, start, end, self.totals[line.id])
            self.totals[line.id] = w.totals
            self.check_window(line, w, result.time.planned_ms, planned_ms, key, offline)
            if w.reports:
                ended.append((line, w))
                self.reports += [r for r, _ in w.reports]
        self.plant_reports += self.reporter.plant_reports(ended)

    def check_window(self, line: LineConfig, w: LineWindow, planned: int, want_planned: int,
                     key: str, offline: bool) -> None:
        out = w.output.model()
        t = out.time
        assert t is not None
        ms = {k: round(v * 1000) for k, v in t.down_s.items()}
        run, minor, unknown = (round(x * 1000) for x in (t.run_s, t.minor_stop_s, t.unknown_s))
        # the window identity, to the millisecond
        assert planned == want_planned == round(t.planned_s * 1000)
        assert planned == run + minor + sum(ms.values()) + unknown
        # the count identity
        assert out.total == out.units + (out.rejects or 0)
        if line.id == "rogue":
            self.published_total += out.total or 0
            self.raw_total += out.second_counter.units if out.second_counter else 0
        for acc in (w.totals.shift_acc, w.totals.day_acc):
            assert acc.planned_ms == acc.run_ms + acc.minor_ms + sum(acc.down_ms.values()) + acc.unknown_ms
            assert min(acc.run_ms, acc.minor_ms, acc.unknown_ms, *acc.down_ms.values(), 0) == 0
        for sums in (self.sums[(line.id, key)], self.days[(line.id, out.day.date)]):
            sums.planned += planned
            sums.covered += 0 if offline else planned
            sums.run += run
            sums.minor += minor - sum(round(v * 1000) for v in t.reclassified_s.values())
            sums.unknown += unknown
            for r, v in ms.items():
                sums.down[r] += v
            for r, v in t.reclassified_s.items():
                sums.down[r] += round(v * 1000)
            for r, n in t.stops.items():
                sums.stops[r] += n
            sums.units += out.units
            sums.rejects += out.rejects or 0
        for f in (out.shift.availability, out.shift.quality, out.day.availability, out.day.quality):
            assert f is None or 0 <= f <= 1
        assert out.shift.quality_measured


def check_report(plant: Plant, r: ShiftReport) -> None:
    t = r.time
    ms = {k: round(getattr(t, k) * 1000) for k in type(t).model_fields}
    down = {k: round(v.seconds * 1000) for k, v in r.downtime.items()}
    cats = {k: v.category for k, v in r.downtime.items()}
    # ISO 22400's time model, exactly
    assert ms["planned_s"] == ms["planned_busy_s"] + ms["planned_stop_s"]
    assert ms["planned_busy_s"] == ms["run_s"] + ms["down_s"] + ms["minor_stop_s"] + ms["unknown_s"]
    assert ms["planned_stop_s"] == sum(v for k, v in down.items() if cats[k] == "planned")
    assert ms["down_s"] == sum(v for k, v in down.items() if cats[k] != "planned")
    assert ms["covered_s"] <= ms["planned_s"]
    # the count identity
    assert r.total == r.units + (r.rejects or 0)
    if r.line is None:
        return
    # the shift's planned time is its calendar's; the report is the sum of its windows
    period = plant.calendar.period_at(r.shift.start)
    assert (period.name, period.start) == (r.shift.name, r.shift.start)
    assert ms["calendar_s"] == round(period.planned_seconds * 1000)
    sums = plant.sums[(r.line, period.key)]
    assert ms["planned_s"] == sums.planned <= ms["calendar_s"]
    assert ms["run_s"] == sums.run
    assert ms["minor_stop_s"] == sums.minor
    assert ms["unknown_s"] == sums.unknown
    assert ms["covered_s"] == sums.covered
    assert down == {k: v for k, v in sums.down.items() if v}
    assert {k: v.stops for k, v in r.downtime.items() if v.stops} == {
        k: v for k, v in sums.stops.items() if v}
    assert (r.units, r.rejects) == (sums.units, sums.rejects)


_START = st.sampled_from([
    datetime(2025, 3, 29, 20, 0, tzinfo=BERLIN),   # spring forward in the night shift
    datetime(2025, 10, 25, 20, 0, tzinfo=BERLIN),  # fall back in the night shift
    datetime(2025, 6, 14, 13, 0, tzinfo=BERLIN),
    datetime(2025, 12, 31, 17, 45, tzinfo=BERLIN),  # midnight into a new year
])
_ACTION = st.tuples(st.floats(1.0, 2400.0),
                    st.sampled_from(["state", "state", "state", "good", "second", "down",
                                     "bad_state", "offline"]),
                    st.integers(0, 6))


@settings(max_examples=150, deadline=None)
@given(start=_START, hours=st.integers(10, 30), actions=st.lists(_ACTION, max_size=200),
       minor_stop_s=st.sampled_from([0, 60, 600]))
def test_time_and_count_identities_hold_for_every_window_shift_and_day(
        start: datetime, hours: int, actions: list[tuple[float, str, int]],
        minor_stop_s: float) -> None:
    cfg = config(minor_stop_s=minor_stop_s)
    t0 = start.astimezone(UTC)
    plant = Plant(cfg, t0)
    good = rejects = 0
    cal = plant.calendar
    end_of_run = t0 + timedelta(hours=hours)
    t = t0
    at = t0
    queue = list(actions)
    offline = 0
    while t < end_of_run:
        ws, we = cal.window_bounds(t, cfg.publish.interval_s)
        while queue and at + timedelta(seconds=queue[0][0]) < we:
            dt, kind, value = queue.pop(0)
            at += timedelta(seconds=dt)
            if offline:
                continue                      # the agent is not running
            if kind == "state":
                plant.read("state", value, at)  # 6 is a value the map does not name
            elif kind == "bad_state":
                plant.read("state", None, at, quality=Quality.BAD)
            elif kind == "good":
                good += value
                plant.read("counter", good, at)
            elif kind == "second":
                rejects += value
                plant.read("rejects", rejects, at, line="kei")
                plant.read("total", good + rejects, at, line="rogue")
            elif kind == "down":
                plant.source_down(at)
            elif kind == "offline":
                offline = 1 + value % 4
        plant.window(ws, we, offline=offline > 0)
        if offline:
            offline -= 1
            if not offline:
                plant.restart(we)
        t = we

    ended = [p for d in range(-2, 2) for p in cal.shifts_on(start.date() + timedelta(days=d))
             if t0 < p.end <= t]
    assert sorted((r.line, r.shift.start) for r in plant.reports) == sorted(
        (ln, p.start) for p in ended for ln in ("kei", "rogue"))
    for r in plant.reports:
        check_report(plant, r)
    assert len(plant.plant_reports) == len(ended)
    for p in plant.plant_reports:
        check_report(plant, p)
        lines = [r for r in plant.reports if r.shift.start == p.shift.start]
        assert p.units == sum(r.units for r in lines)
        assert p.total == sum(r.total for r in lines)
        for k in ("calendar_s", "planned_s", "planned_busy_s", "run_s", "minor_stop_s", "down_s",
                  "unknown_s"):
            assert round(getattr(p.time, k) * 1000) == sum(round(getattr(r.time, k) * 1000)
                                                           for r in lines)
        observed = p.time.planned_busy_s - p.time.unknown_s
        if observed > 0.001:  # unobserved time is neither run time nor downtime
            assert p.availability == pytest.approx(p.time.run_s / observed, abs=1e-4)
        elif observed <= 0:
            assert p.availability is None
    # every production day: the identity, and the sum of its windows
    for line in cfg.lines:
        acc = plant.totals[line.id].day_acc
        sums = plant.days[(line.id, plant.totals[line.id].day)]
        assert (acc.planned_ms, acc.run_ms, acc.minor_ms, acc.unknown_ms) == (
            sums.planned, sums.run, sums.minor, sums.unknown)
        assert {k: v for k, v in acc.down_ms.items() if v} == {k: v for k, v in sums.down.items() if v}
        assert acc.good == sums.units
    # a total counter's units are never lost: the good units it has not shown yet are owed
    assert plant.raw_total == plant.published_total - plant.totals["rogue"].count_carry


# --- OEE by hand --------------------------------------------------------------------------------

TOKYO = ZoneInfo("Asia/Tokyo")


def test_oee_of_a_shift_by_hand() -> None:
    """An 8-hour shift with a 30-minute break: 450 planned minutes (27,000 s). A changeover
    takes 30 minutes (planned: busy time 25,200 s), a fault 20 minutes, three blocked stops
    of 40 s, 30 s and 30 s are minor stops (100 s), 9 min 20 s without orders is idle: the
    line runs 25,200 - 1,200 - 560 - 100 = 23,340 s. Ideal cycle 60 s; every 60th unit is
    a reject."""
    cfg = config(timezone="Asia/Tokyo", interval_s=60, shifts=[
        {"name": "day", "start": "06:00", "end": "14:00", "days": ALL_DAYS,
         "breaks": [{"start": "10:00", "end": "10:30"}]}])
    line = cfg.lines[0].model_copy(update={"ideal_cycle_s": 60.0})
    cal = ShiftCalendar.from_config(cfg)
    rep = Reporter(cfg, cal)
    t0 = datetime(2028, 4, 3, 6, 0, tzinfo=TOKYO).astimezone(UTC)
    tr = tracker(cfg, line, 0.0)
    # (minutes from 06:00, state value); the break is 240-270
    schedule = [(0, 1), (100, 3), (130, 1), (200, 2), (220, 1), (300, 4), (300 + 40 / 60, 1),
                (310, 4), (310.5, 1), (320, 4), (320.5, 1), (400, 5), (409 + 20 / 60, 1)]
    events = [(t0 + timedelta(minutes=m), v) for m, v in schedule]
    tr.on_reading(Reading("kei", "counter", 0, Quality.GOOD, 0.0, modulus=2**32))
    tr.on_reading(Reading("kei", "rejects", 0, Quality.GOOD, 0.0, modulus=2**32))
    built = rejects = 0
    totals = LineTotals()
    report = None
    t = t0
    while report is None:
        end = t + timedelta(minutes=1)
        for when, value in [e for e in events if t <= e[0] < end]:
            tr.on_reading(Reading("kei", "state", value, Quality.GOOD, (when - t0).total_seconds()))
        planned_ms, key = rep.window_split(t, end)
        if planned_ms and tr.reason == "running":
            built += 1
            rejects += built % 60 == 0
        mono = (end - t0).total_seconds()
        tr.on_reading(Reading("kei", "counter", built - rejects, Quality.GOOD, mono, modulus=2**32))
        tr.on_reading(Reading("kei", "rejects", rejects, Quality.GOOD, mono, modulus=2**32))
        w = rep.line_window(line, tr.close_window(mono, planned_ms=planned_ms, period=key),
                            t, end, totals)
        totals = w.totals
        report = w.reports[0][0] if w.reports else None
        t = end
    assert report.shift.name == "day"
    assert t == datetime(2028, 4, 3, 14, 0, tzinfo=TOKYO)
    tm = report.time
    assert (tm.planned_s, tm.planned_stop_s, tm.planned_busy_s) == (27_000, 1_800, 25_200)
    assert (tm.run_s, tm.down_s, tm.minor_stop_s, tm.unknown_s) == (23_340, 1_200 + 560, 100, 0)
    assert (report.downtime["fault"].seconds, report.downtime["fault"].stops) == (1_200, 1)
    assert (report.downtime["changeover"].category, report.downtime["no_orders"].category) == (
        "planned", "idle")
    assert "blocked" not in report.downtime
    assert report.minor_stops == 3
    assert (report.units, report.rejects, report.total) == (built - rejects, rejects, built)
    assert rejects > 0
    assert report.availability == round(23_340 / 25_200, 4)
    assert report.performance == round(60 * built / 23_340, 4)
    assert report.quality == round((built - rejects) / built, 4)
    assert report.oee == round(23_340 / 25_200 * (60 * built / 23_340) * (built - rejects) / built, 4)
    assert (report.quality_measured, report.coverage, report.ideal_cycle_s) == (True, 1.0, 60.0)
    assert report.top_losses[0].cause == "fault"
    # the losses add up to busy time less the fully productive time (ideal cycle x good)
    assert tm.fully_productive_s == 60 * (built - rejects)
    losses = 1_200 + 560 + 100 + (23_340 - 60 * built) + 60 * rejects
    assert tm.planned_busy_s - tm.fully_productive_s == pytest.approx(losses)


def test_a_shift_the_agent_partly_saw_says_so_and_counts_its_outage_unknown() -> None:
    cfg = config(timezone="Asia/Tokyo", interval_s=60, shifts=[
        {"name": "day", "start": "06:00", "end": "14:00", "days": ALL_DAYS}])
    cal = ShiftCalendar.from_config(cfg)
    rep = Reporter(cfg, cal)
    line = cfg.lines[0]
    tr = tracker(cfg, line, 0.0)
    t0 = datetime(2028, 4, 3, 12, 0, tzinfo=TOKYO).astimezone(UTC)   # started at 12:00
    tr.on_reading(Reading("kei", "state", 1, Quality.GOOD, 0.0))
    totals = LineTotals()
    reports = []
    t = t0
    for i in range(150):                          # to 14:30; down from 13:00 to 13:30
        end = t + timedelta(minutes=1)
        planned_ms, key = rep.window_split(t, end)
        if 60 <= i < 90:
            result = tr.offline_window("agent_offline", 60.0, planned_ms)
        else:
            if i == 90:
                tr = tracker(cfg, line, (t - t0).total_seconds(), tr)
                tr.on_reading(Reading("kei", "state", 1, Quality.GOOD, (t - t0).total_seconds()))
            result = tr.close_window((end - t0).total_seconds(), planned_ms=planned_ms, period=key)
        w = rep.line_window(line, result, t, end, totals)
        totals = w.totals
        reports += [r for r, _ in w.reports]
        t = end
    [report] = reports
    assert report.time.calendar_s == 8 * 3600
    assert report.time.planned_s == 2 * 3600       # from the agent's first window
    assert report.time.covered_s == 90 * 60
    assert report.coverage == round(90 * 60 / (8 * 3600), 4)
    assert report.time.run_s == 90 * 60
    assert report.time.unknown_s == 30 * 60        # the windows of its outage
    # the outage is neither run time nor downtime: the line ran all it was observed
    assert report.availability == 1.0
    assert report.partial


def test_a_line_without_state_tag_or_quality_counter_says_what_is_not_measured() -> None:
    data = config(timezone="Asia/Tokyo", interval_s=60).model_dump(mode="json", exclude_none=True)
    for line in data["lines"]:
        line.pop("state")
        line.pop("reject_counter", None)
        line.pop("total_counter", None)
    cfg = Config.model_validate(data)
    rep = Reporter(cfg, ShiftCalendar.from_config(cfg))
    line = cfg.lines[0]
    tr = tracker(cfg, line, 0.0)
    t = datetime(2028, 4, 3, 8, 0, tzinfo=TOKYO)
    end = t + timedelta(minutes=1)
    planned_ms, key = rep.window_split(t, end)
    out, _ = rep.line_output(line, tr.close_window(60.0, planned_ms=planned_ms, period=key), t, end,
                             LineTotals())
    assert out.time is not None
    assert out.time.unknown_s == 60.0
    assert (out.shift.availability, out.shift.performance, out.shift.oee) == (None, None, None)
    assert (out.shift.quality, out.shift.quality_measured) == (1.0, False)
    assert (out.rejects, out.total, out.second_counter) == (None, None, None)


def test_totals_with_accumulators_survive_json_and_old_totals_load() -> None:
    acc = Acc(planned_ms=5, run_ms=3, minor_ms=1, unknown_ms=1, down_ms={"fault": 0},
              unknown_values={"7": 1}, good=4, rejects=1, ideal_s=2.5, ideal_good_s=2.0)
    totals = LineTotals(seq=3, shift_acc=acc, day_acc=acc, shift_name="day",
                        shift_start=datetime(2028, 4, 3, tzinfo=UTC), shift_date=date(2028, 4, 3))
    assert LineTotals.from_json(totals.to_json()) == totals
    old = '{"seq": 7, "shift_key": "day@x", "shift_units": 3, "day": "2028-04-03"}'
    assert LineTotals.from_json(old).shift_acc == Acc()
