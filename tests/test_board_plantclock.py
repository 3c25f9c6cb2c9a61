"""The demo's plant time as its board's process reads it (agent/board/plantclock.py)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.board.plantclock import PlantClockFile, write_plant_clock
from agent.contract.errors import ConfigError
from agent.core.clock import SimulatedClock

START = datetime(2028, 4, 3, 6, 20, tzinfo=UTC)


def test_a_held_clock_stands_and_a_released_one_runs_at_its_speed(tmp_path: Path) -> None:
    path = tmp_path / "plant-clock.json"
    clock = SimulatedClock(60, START, running=False)
    write_plant_clock(path, clock)
    board = PlantClockFile(path)
    assert board.wall() == START
    assert board.wall() == START  # held: plant time does not move
    # released ten real seconds ago at plant START: ten plant minutes on at least
    path.write_text(json.dumps({"speed": 60, "plant": START.timestamp(), "real": time.time() - 10}))
    later = board.wall()
    assert (later - START).total_seconds() >= 600
    assert (later - START).total_seconds() < 600 + 3600  # and never a day: it follows the file


def test_an_unreadable_plant_clock_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the plant clock"):
        PlantClockFile(tmp_path / "missing.json")
