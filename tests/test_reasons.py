"""Reason codes and the second counter: config, tracker, persisted identity, state topic, watch."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.cli.watch_view import WatchModel, plain_lines
from agent.config import Config
from agent.contract.payloads import (
    DayTotals,
    LineOutput,
    ShiftRef,
    ShiftReport,
    ShiftTime,
    ShiftTotals,
    StateSeconds,
    encode,
)
from agent.contract.readings import Quality, Reading
from agent.core.tracker import LineTracker
from agent.runtime.lines import CounterClock, LineBoard, restore_counter, second_row
from agent.store import StoredState

REASONS = {"stopped": "stopped", "faulted": "faulted", "fault": "faulted", "blocked": "stopped",
           "starved": "stopped", "changeover": "stopped"}
MAP = {0: "stopped", 1: "running", 2: "fault", 3: "changeover", 4: "blocked", 5: "starved"}


def base(**line: Any) -> dict[str, Any]:
    return {
        "site": "test", "timezone": "Asia/Tokyo",
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "day", "start": "06:00", "end": "14:00"}],
        "downtime": {"minor_stop_s": 30, "reasons": {
            "changeover": {"category": "planned"}, "fault": {"category": "unplanned", "state": "faulted"},
            "blocked": {"category": "unplanned"}, "starved": {"category": "unplanned"}}},
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 5020},
                    {"id": "plc2", "kind": "modbus", "host": "127.0.0.2", "port": 5020}],
        "lines": [{"id": "kei", "product": "Sakura", "takt_s": 90,
                   "counter": {"source": "plc", "address": 100},
                   "state": {"source": "plc", "address": 110, "type": "uint16", "map": MAP},
                   **line}],
    }


def tracker(second: str | None = "rejects") -> LineTracker:
    return LineTracker(line_id="kei", configured_modulus=None, max_rate_per_hour=3.6e9,
                       state_map=MAP, has_state_tag=True, start_mono=0.0, reasons=REASONS,
                       minor_stop_s=30, second_role=second)


def reading(role: str, value: int | None, mono: float, quality: Quality = Quality.GOOD) -> Reading:
    return Reading("kei", role, value, quality, mono,  # type: ignore[arg-type]
                   modulus=None if role == "state" else 2**32)


# --- config -----------------------------------------------------------------------------------

def test_reasons_second_counters_and_the_ideal_cycle_are_configured() -> None:
    cfg = Config.model_validate(base(reject_counter={"source": "plc2", "address": 102}))
    line = cfg.lines[0]
    assert line.ideal_cycle == 90.0                        # the takt, by default
    assert line.second_counter is not None
    assert line.second_counter[0] == "rejects"
    assert [role for role, _, _ in line.points()] == ["counter", "rejects", "state"]
    assert set(cfg.downtime.all_reasons()) == {"stopped", "faulted", "changeover", "fault",
                                                "blocked", "starved"}
    assert cfg.downtime.all_reasons()["fault"].state == "faulted"
    assert Config.model_validate(base(ideal_cycle_s=80)).lines[0].ideal_cycle == 80
    assert Config.model_validate(base()).downtime.minor_stop_s == 30


@pytest.mark.parametrize(("change", "message"), [
    ({"lines": [{"map": {7: "coffee"}}]}, r"lines\.0\.state\.map\.7: 'coffee' is not running"),
    ({"downtime": {"reasons": {"running": {"category": "idle"}}}}, "'running' is a line state"),
    ({"lines": [{"reject_counter": {"source": "plc", "address": 101}}]},
     r"lines\.0\.reject_counter\.address: register holding 101 .* used by lines\[kei\]\.counter"),
    ({"lines": [{"total_counter": {"source": "plc", "address": 120, "type": "float32"}}]},
     r"lines\.0\.total_counter\.type: a counter must be an integer type"),
    ({"publish": {"interval_s": 900}, "shifts": [{"name": "day", "start": "06:00", "end": "14:10"}]},
     r"shifts\.0\.end: 14:10 is not on the grid of the 900 s windows"),
])
def test_bad_reasons_counters_and_grids_are_refused_naming_the_key(change: dict[str, Any],
                                                                   message: str) -> None:
    data = base()
    for key, value in change.items():
        if key == "lines":
            line = data["lines"][0]
            if "map" in value[0]:
                line["state"] = {**line["state"], "map": value[0]["map"]}
            else:
                line.update(value[0])
        else:
            data[key] = value
    with pytest.raises(ValidationError, match=message):
        Config.model_validate(data)


# --- tracker ----------------------------------------------------------------------------------

def test_reasons_keep_the_coarse_state_and_unknown_values_keep_their_raw_value() -> None:
    t = tracker()
    assert t.on_reading(reading("state", 4, 1.0)) is True          # blocked
    assert (t.state, t.reason) == ("stopped", "blocked")
    assert t.on_reading(reading("state", 5, 2.0)) is True          # starved: same state, new reason
    assert (t.state, t.reason) == ("stopped", "starved")
    assert t.on_reading(reading("state", 2, 3.0)) is True
    assert (t.state, t.reason) == ("faulted", "fault")
    assert t.on_reading(reading("state", 9, 4.0)) is True
    assert (t.state, t.reason, t.raw) == ("unknown", "unknown", 9)
    assert t.on_reading(reading("state", 8, 5.0)) is True          # another unknown value
    t.on_reading(reading("state", 1, 7.0))
    r = t.close_window(10.0, planned_ms=10_000, period="p")
    assert r.state_seconds == {"running": 3.0, "stopped": 2.0, "faulted": 1.0, "unknown": 4.0}
    assert r.time.unknown_values == {9: 1_000, 8: 2_000}
    assert r.time.unknown_ms == 3_000 + 1_000                      # and 1 s before the first reading
    assert r.time.holds()
    assert (r.reason, r.raw) == ("running", 1)


def test_the_second_counter_counts_with_its_own_events_and_quality() -> None:
    t = tracker()
    for mono, good, rej in ((1.0, 100, 7), (2.0, 103, 8), (3.0, 105, 2)):  # the reject counter resets
        t.on_reading(reading("counter", good, mono))
        t.on_reading(reading("rejects", rej, mono))
    r = t.close_window(4.0)
    assert (r.units, r.events, r.quality) == (5, (), "good")
    assert r.second is not None
    assert (r.second.role, r.second.units, r.second.events, r.second.quality) == (
        "rejects", 1 + 2, ("counter_reset",), "uncertain")
    assert r.second.counter == 2
    # the reject counter's PLC is lost while the good counter's is not
    assert t.on_source_down(5.0, "timeout", counter=False, second=True) is False
    r = t.close_window(6.0)
    assert r.events == ()
    assert r.second is not None
    assert (r.second.events, r.second.quality) == (("source_unreachable",), "bad")
    t.on_reading(reading("rejects", 4, 7.0))
    r = t.close_window(8.0)
    assert r.second is not None
    assert (r.second.units, r.second.events) == (2, ("source_unreachable", "gap_recovered"))


def test_the_second_counters_memory_is_persisted_with_its_own_identity(tmp_path: Path) -> None:
    cfg = Config.model_validate(base(reject_counter={"source": "plc2", "address": 102}))
    wall = datetime(2028, 4, 3, tzinfo=UTC)
    board = LineBoard(cfg, None, StoredState({}, None, None), mono=lambda: 50.0,  # type: ignore[arg-type]
                      wall=lambda: wall)
    board.on_readings("plc2", [reading("rejects", 40, 10.0), reading("rejects", 42, 20.0)])
    state = board.line_state("kei", None, "{}", wall, 50.0)
    assert state.second_json is not None
    stored = json.loads(state.second_json)
    assert (stored["role"], stored["baseline"]) == ("rejects", "42")
    assert stored["identity"] == cfg.point_identity(cfg.lines[0].reject_counter)  # type: ignore[arg-type]
    clock = CounterClock(wall, 50.0, board.boot)
    memory = restore_counter("kei", second_row(state), stored["identity"], clock)
    assert memory is not None
    assert memory.baseline == 42
    # the reject counter moved to another register: its first reading re-baselines
    moved = restore_counter("kei", second_row(state), stored["identity"] + "x", clock)
    assert moved is not None
    assert moved.baseline is None
    assert moved.rebaseline
    again = LineBoard(cfg, None, StoredState({"kei": state}, None, None), mono=lambda: 60.0,  # type: ignore[arg-type]
                      wall=lambda: wall + timedelta(seconds=10))
    again.on_readings("plc2", [reading("rejects", 43, 61.0)])  # within the bound of 80/h
    second = again.trackers["kei"].close_window(62.0).second
    assert second is not None
    assert (second.units, second.events) == (1, ())


def test_the_state_topic_names_the_reason_and_its_category() -> None:
    cfg = Config.model_validate(base())
    board = LineBoard(cfg, None, StoredState({}, None, None), mono=lambda: 0.0,  # type: ignore[arg-type]
                      wall=lambda: datetime(2028, 4, 3, tzinfo=UTC))
    board.on_readings("plc", [reading("state", 3, 1.0)])
    p = board.state_payload("kei")
    assert (p.state, p.reason, p.category, p.raw) == ("stopped", "changeover", "planned", 3)
    board.on_readings("plc", [reading("state", 77, 2.0)])
    p = board.state_payload("kei")
    assert (p.state, p.reason, p.category, p.raw) == ("unknown", "unknown", None, 77)


# --- watch ------------------------------------------------------------------------------------

T0 = datetime(2028, 4, 3, 6, 0, tzinfo=UTC)


def _window(oee: float | None, reason: str | None) -> bytes:
    return encode(LineOutput(
        site="s", line="kei", product="Sakura", epoch=1, seq=1, window_start=T0,
        window_end=T0 + timedelta(minutes=1), units=1, rate_per_hour=60.0, target_per_hour=40.0,
        attainment=1.5, shift=ShiftTotals(name="day", units=10, target=320.0, projected=300.0,
                                          downtime_s=0.0, availability=0.9, performance=0.95,
                                          quality=0.99, oee=oee, quality_measured=True),
        day=DayTotals(date=date(2028, 4, 3), units=10, target=640.0),
        state_seconds=StateSeconds(running=60.0), quality="good", events=[], reason=reason))


def _report(start: datetime, oee: float) -> bytes:
    t = ShiftTime(calendar_s=100, planned_s=100, planned_stop_s=0, planned_busy_s=100, run_s=90, minor_stop_s=0,
                  down_s=10, unknown_s=0, covered_s=100, ideal_run_s=80, fully_productive_s=79)
    return encode(ShiftReport(
        site="s", line="kei", product="Sakura", epoch=1,
        shift=ShiftRef(name="day", start=start, end=start + timedelta(hours=8), date=start.date()),
        units=10, rejects=1, total=11, target=12.0, attainment=0.8333, time=t, minor_stops=0,
        downtime={}, availability=0.9, performance=0.889, quality=0.909, oee=oee,
        quality_measured=True, top_losses=[], coverage=1.0))


def test_watch_shows_the_oee_and_the_current_stop_reason() -> None:
    model = WatchModel()
    assert model.apply("lines/kei/output", _window(0.8465, "running"))
    row = plain_lines(model)[0]
    assert "oee=84.7%" in row
    assert "reason=running" in row
    state = {"schema": "plantfloor.state/1", "line": "kei", "state": "stopped", "reason": "changeover",
             "category": "planned", "raw": 3, "ts": "2028-04-03T06:01:00.000Z",
             "source": {"id": "plc", "connected": True, "last_ok": None, "error": None}}
    assert model.apply("lines/kei/state", json.dumps(state).encode())
    assert "state=stopped reason=changeover" in plain_lines(model)[0]
    # shift reports: the newest one is kept, a late older one does not replace it
    assert model.apply("lines/kei/shift", _report(T0, 0.7))
    assert model.apply("lines/kei/shift", _report(T0 - timedelta(days=1), 0.5))
    last = model.lines["kei"].last_shift
    assert last is not None
    assert last.oee == 0.7


async def test_state_show_and_rebaseline_cover_the_second_counter(tmp_path: Path) -> None:
    from agent.cli import state as statecmd
    from agent.store import Store

    data = base(reject_counter={"source": "plc2", "address": 102})
    data["storage"] = {"path": str(tmp_path / "state.db")}
    cfg = Config.model_validate(data)
    wall = datetime(2028, 4, 3, tzinfo=UTC)
    board = LineBoard(cfg, None, StoredState({}, None, None), mono=lambda: 50.0,  # type: ignore[arg-type]
                      wall=lambda: wall)
    board.on_readings("plc", [reading("counter", 7, 10.0)])
    board.on_readings("plc2", [reading("rejects", 3, 10.0)])
    store = await Store.open(cfg.storage.path, max_bytes=1_000_000)
    try:
        await store.commit_window([], [board.line_state("kei", None, "{}", wall, 50.0)], None)
    finally:
        await store.close()
    shown = json.loads(statecmd.show(cfg, fmt="json"))["lines"][0]["second_counter"]
    assert (shown["role"], shown["baseline"], shown["identity_matches_config"]) == ("rejects", 3, True)
    assert "rejects counter baseline 3" in statecmd.show(cfg)
    assert "becomes the baseline" in statecmd.rebaseline(cfg, "kei", "new PLC")
    shown = json.loads(statecmd.show(cfg, fmt="json"))["lines"][0]
    assert shown["second_counter"]["baseline"] is None
    assert shown["second_counter"]["rebaseline_pending"] == "operator: new PLC"
    assert shown["rebaseline_pending"] == "operator: new PLC"
