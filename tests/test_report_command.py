"""Shift reports from the store: built from persisted books across a restart and an outage
across the shift's end, kept with the window in one transaction, retained in the outbox,
and printed by ``plantfloor report``."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.cli import main
from agent.config import Config
from agent.contract.readings import Quality, Reading
from agent.core.calendar import ShiftCalendar
from agent.core.report import Reporter
from agent.runtime.lines import LineBoard
from agent.runtime.status import Alarms
from agent.runtime.windows import WindowCloser
from agent.store import Store

TOKYO = ZoneInfo("Asia/Tokyo")
ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAY = datetime(2028, 4, 3, tzinfo=TOKYO)


def config(tmp_path: Path) -> Config:
    return Config.model_validate({
        "site": "test", "timezone": "Asia/Tokyo",
        "mqtt": {"topic_root": "t"},
        "publish": {"interval_s": 60},
        "storage": {"path": str(tmp_path / "state.db"), "max_mb": 64},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "06:00", "end": "12:00", "days": ALL_DAYS},
                   {"name": "b", "start": "12:00", "end": "18:00", "days": ALL_DAYS}],
        "downtime": {"reasons": {"changeover": {"category": "planned"}}},
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 1}],
        "lines": [
            {"id": "kei", "product": "Sakura", "target_per_hour": 60, "max_rate_per_hour": 1e6,
             "counter": {"source": "plc", "address": 0},
             "reject_counter": {"source": "plc", "address": 2},
             "state": {"source": "plc", "address": 4, "type": "uint16",
                       "map": {0: "stopped", 1: "running", 3: "changeover"}}},
            {"id": "rogue", "product": "Rogue", "target_per_hour": 30, "max_rate_per_hour": 1e6,
             "counter": {"source": "plc", "address": 10}},
        ],
    })


#: the agent's monotonic clock in these tests: a minute per window closed
CLOCK = [1000.0]


def mono() -> float:
    return CLOCK[0]


async def closer_of(cfg: Config) -> tuple[Store, WindowCloser]:
    store = await Store.open(cfg.storage.path, max_bytes=64_000_000)
    stored = await store.load()
    calendar = ShiftCalendar.from_config(cfg)

    def wall() -> datetime:
        return datetime.now(UTC)

    board = LineBoard(cfg, None, stored, mono=mono, wall=wall)  # type: ignore[arg-type]
    closer = WindowCloser(cfg, calendar, Reporter(cfg, calendar), board, store, stored, wall=wall,
                          mono=mono, alarms=Alarms(wall), on_committed=lambda: None)
    return store, closer


async def close(closer: WindowCloser, start: datetime) -> None:
    CLOCK[0] += 60.0
    await closer.close(start, start + timedelta(minutes=1))


def read(closer: WindowCloser, line: str, role: str, value: int) -> None:
    closer.board.on_readings("plc", [Reading(line, role, value, Quality.GOOD, mono(),  # type: ignore[arg-type]
                                             modulus=None if role == "state" else 2**32)])


async def test_a_report_is_built_from_the_store_across_a_restart_and_an_outage(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    t = DAY.replace(hour=11, minute=50).astimezone(UTC)
    store, closer = await closer_of(cfg)
    try:
        read(closer, "kei", "counter", 1000)
        read(closer, "kei", "rejects", 50)
        read(closer, "kei", "state", 1)
        read(closer, "rogue", "counter", 7)
        for i in range(5):
            read(closer, "kei", "counter", 1000 + 3 * (i + 1))
            read(closer, "kei", "rejects", 50 + (i + 1) // 2)
            read(closer, "rogue", "counter", 7 + i)
            await close(closer, t + timedelta(minutes=i))
    finally:
        await store.close()
    # the agent stops at 11:55 and starts again at 12:05: the windows in between are filled
    store, closer = await closer_of(cfg)
    try:
        assert closer.resume_point() == t + timedelta(minutes=5)
        assert await closer.fill_gap(t + timedelta(minutes=5), t + timedelta(minutes=15))
        records = await store.pending(10_000)
    finally:
        await store.close()
    shift = [r for r in records if r.topic.endswith("/shift")]
    assert [r.topic for r in shift] == ["t/lines/kei/shift", "t/lines/rogue/shift", "t/plant/shift"]
    assert all(r.retain and r.qos == 1 for r in shift)
    assert all(r.window_end == DAY.replace(hour=12) for r in shift)
    kei, rogue, plant = (json.loads(r.payload) for r in shift)
    assert kei["schema"] == "plantfloor.shift/1"
    assert kei["shift"]["name"] == "a"
    assert (kei["units"], kei["rejects"], kei["total"]) == (15, 2, 17)
    assert kei["time"]["calendar_s"] == 6 * 3600
    assert kei["time"]["planned_s"] == 10 * 60       # from its first window, at 11:50
    assert kei["time"]["covered_s"] == 5 * 60        # the agent saw 5 minutes of it
    assert kei["coverage"] == round(300 / (6 * 3600), 4)
    assert kei["time"]["unknown_s"] == 5 * 60        # the windows of the outage
    assert kei["time"]["run_s"] == 300
    # the outage is neither run time nor downtime: the line ran all the time it was seen
    assert kei["availability"] == 1.0
    assert kei["partial"] is True                    # 5 minutes of 6 hours observed
    assert kei["historical"] is False
    assert (rogue["units"], rogue["rejects"], rogue["quality_measured"]) == (4, None, False)
    assert rogue["availability"] is None                 # no state tag: not measured
    assert (plant["line"], plant["lines"], plant["units"]) == (None, ["kei", "rogue"], 19)
    # only kei counts rejects: the plant's quality counts rogue's units as good, and says so
    assert (plant["rejects"], plant["total"], plant["quality_measured"]) == (2, 21, False)
    assert plant["quality"] == round(19 / 21, 4)
    # its times are those of the lines with a state tag: kei's
    assert plant["time"]["run_s"] == kei["time"]["run_s"]
    assert plant["availability"] == kei["availability"]
    # the shift's windows and its report are kept together; the report command reads them
    out = tmp_path / "agent.yaml"
    out.write_text(json.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    return_code = main(["report", str(out), "--date", "2028-04-03", "--format", "json"])
    assert return_code == 0


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_plantfloor_report_prints_a_days_reports(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path)
    path = tmp_path / "agent.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    code, _, err = _run(capsys, "report", str(path), "--date", "2028-04-03")
    assert code == 1
    assert "there is no state database" in err

    store, closer = await closer_of(cfg)
    try:
        read(closer, "kei", "counter", 0)
        read(closer, "kei", "rejects", 0)
        read(closer, "kei", "state", 1)
        start = DAY.replace(hour=5, minute=58).astimezone(UTC)
        for i in range(4):                                     # 05:58 to 06:02
            if i == 3:
                read(closer, "kei", "counter", 4)
                read(closer, "kei", "state", 3)                 # a changeover
            await close(closer, start + timedelta(minutes=i))
        # the rest of shift a and b pass while the agent is not running
        assert await closer.fill_gap(start + timedelta(minutes=4), DAY.replace(hour=18, minute=1))
    finally:
        await store.close()

    code, out, err = _run(capsys, "report", str(path), "--date", "2028-04-03", "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["date"] == "2028-04-03"
    assert [(r["shift"]["name"], r["line"]) for r in doc["reports"]] == [
        ("a", "kei"), ("a", "rogue"), ("a", None), ("b", "kei"), ("b", "rogue"), ("b", None)]
    day = {d["line"]: d for d in doc["day"]}
    assert day["kei"]["planned_s"] == 12 * 3600
    assert day["kei"]["covered_s"] == 2 * 60
    # the day's figures come from summed times, never averaged percentages
    a, b = (r for r in doc["reports"] if r["line"] == "kei")
    runs = a["time"]["run_s"] + b["time"]["run_s"]
    busy = a["time"]["planned_busy_s"] + b["time"]["planned_busy_s"]
    unseen = a["time"]["unknown_s"] + b["time"]["unknown_s"]
    assert day["kei"]["availability"] == round(runs / (busy - unseen), 4)
    assert day[None]["units"] == a["units"] + b["units"]

    code, out, _ = _run(capsys, "report", str(path), "--date", "2028-04-03", "--shift", "b")
    assert code == 0
    assert "shift b 2028-04-03 12:00-18:00 JST (Asia/Tokyo)" in out
    assert "shift a" not in out
    assert "line kei:" in out
    assert "plant (kei, rogue):" in out
    assert "covered 0% of it (PARTIAL: below 90%" in out

    code, out, _ = _run(capsys, "report", str(path), "--date", "2028-04-03", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["shift"], r["line"]) for r in rows] == [
        ("a", "kei"), ("a", "rogue"), ("a", "plant"), ("b", "kei"), ("b", "rogue"), ("b", "plant")]
    assert float(rows[0]["planned_s"]) == 6 * 3600
    assert rows[0]["units"] == "4"

    code, out, _ = _run(capsys, "report", str(path), "--date", "2028-04-04")
    assert code == 0
    assert "no shift report stored for this day" in out
    code, _, err = _run(capsys, "report", str(path), "--date", "April 3rd")
    assert code == 2
    assert "--date" in err
    code, _, err = _run(capsys, "report", str(path), "--shift", "night")
    assert code == 2
    assert "shift 'night' is not in the config" in err
