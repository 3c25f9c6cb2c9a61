"""A line whose state tag is read from another PLC than its counter."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agent.config import Config
from agent.contract.readings import Quality, Reading, SourceHealth
from agent.runtime.lines import LineBoard
from agent.store import StoredState


def board(tmp_path: Path) -> LineBoard:
    cfg = Config.model_validate({
        "site": "test", "timezone": "UTC",
        "storage": {"path": str(tmp_path / "state.db")},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "00:00", "end": "12:00"}],
        "sources": [{"id": "plc-count", "kind": "modbus", "host": "127.0.0.1", "port": 1},
                    {"id": "plc-state", "kind": "modbus", "host": "127.0.0.1", "port": 2}],
        "lines": [{"id": "kei", "product": "Sakura", "target_per_hour": 60,
                   "counter": {"source": "plc-count", "address": 0, "type": "uint32"},
                   "state": {"source": "plc-state", "address": 0, "type": "uint16",
                             "map": {1: "running"}}}],
    })
    stored = StoredState(lines={}, plant_json=None, recovered_from=None, epoch=1)
    return LineBoard(cfg, None, stored, mono=lambda: 0.0,  # type: ignore[arg-type]
                     wall=lambda: datetime(2026, 6, 1, tzinfo=UTC), synced=lambda: True)


def reading(role: str, value: int, mono: float) -> Reading:
    return Reading(line="kei", role=role, value=value, quality=Quality.GOOD, mono=mono)  # type: ignore[arg-type]


def test_losing_the_state_source_leaves_the_counter_alone(tmp_path: Path) -> None:
    b = board(tmp_path)
    b.on_health(SourceHealth("plc-count", True, 0.0, None), 0.0)
    b.on_health(SourceHealth("plc-state", True, 0.0, None), 0.0)
    b.on_readings("plc-count", [reading("counter", 100, 1.0)])
    b.on_readings("plc-state", [reading("state", 1, 1.0)])
    assert b.trackers["kei"].state == "running"
    b.on_health(SourceHealth("plc-state", False, 1.0, "connection refused"), 2.0)
    tracker = b.trackers["kei"]
    assert tracker.state == "unknown"
    assert tracker.last_error is None
    b.on_readings("plc-count", [reading("counter", 103, 3.0)])
    r = tracker.close_window(4.0)
    assert r.units == 3
    assert "source_unreachable" not in r.events
    assert "gap_recovered" not in r.events
    assert r.quality == "good"
    assert b.state_payload("kei").source.connected is True


def test_losing_the_counter_source_flags_the_counter(tmp_path: Path) -> None:
    b = board(tmp_path)
    b.on_readings("plc-count", [reading("counter", 100, 1.0)])
    b.on_health(SourceHealth("plc-count", False, 1.0, "timeout"), 2.0)
    r = b.trackers["kei"].close_window(3.0)
    assert "source_unreachable" in r.events
    assert b.trackers["kei"].state == "unknown"
