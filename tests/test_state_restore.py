"""`plantfloor state restore`: a backup copied back starts a new epoch (nothing renumbered)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from agent.core.report import LineTotals, PlantTotals
from agent.store import LineState, Store
from agent.store.file import StoreLock


def write_config(tmp_path: Path) -> Path:
    cfg = {
        "site": "test", "timezone": "UTC",
        "storage": {"path": str(tmp_path / "state.db")},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "00:00", "end": "12:00"}],
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 1}],
        "lines": [{"id": "kei", "product": "Sakura", "target_per_hour": 60,
                   "counter": {"source": "plc", "address": 0, "type": "uint32"}}],
    }
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(cfg))
    return path


async def backup(tmp_path: Path) -> int:
    """A state file as a backup holds it: seq 42, a baseline, a window end; its epoch."""
    end = datetime(2026, 6, 1, 8, tzinfo=UTC)
    store = await Store.open(tmp_path / "state.db", max_bytes=10_000_000)
    try:
        await store.commit_window([], [LineState(
            "kei", LineTotals(seq=42, last_window_end=end, day_units=7).to_json(),
            identity="x", baseline=1000, modulus=2**32, anchor_wall=end, anchor_mono=1.0,
            last_wall=end, last_mono=1.0, boot_id="b")],
            PlantTotals(seq=42, last_window_end=end).to_json())
        return (await store.load()).epoch
    finally:
        await store.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=60, check=False)


async def test_a_restored_backup_starts_a_new_epoch(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    old = await backup(tmp_path)
    done = cli("state", "restore", str(config))
    assert done.returncode == 0, done.stderr
    assert "new epoch" in done.stdout
    store = await Store.open(tmp_path / "state.db", max_bytes=10_000_000)
    try:
        stored = await store.load()
    finally:
        await store.close()
    assert stored.epoch != old
    row = stored.lines["kei"]
    totals = LineTotals.from_json(row.totals_json)
    assert (totals.seq, totals.last_window_end, totals.day_units) == (0, None, 7)
    assert row.baseline is None
    assert row.rebaseline == "the state database was restored from a backup"
    assert stored.plant_json is not None
    assert PlantTotals.from_json(stored.plant_json).seq == 0


async def test_restore_is_refused_while_an_agent_runs(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    old = await backup(tmp_path)
    lock = StoreLock(tmp_path / "state.db")
    lock.acquire()
    try:
        done = cli("state", "restore", str(config))
    finally:
        lock.release()
    assert done.returncode == 1
    assert "running" in done.stderr
    store = await Store.open(tmp_path / "state.db", max_bytes=10_000_000)
    try:
        assert (await store.load()).epoch == old
    finally:
        await store.close()
