"""A backup copied back without telling the agent: the broker's retained status is ahead of
it, so the agent starts a new epoch instead of numbering windows again."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.runtime.restore import restored_copy
from tests.agentrig import ROOT_TOPIC, Run, Windows, one_line_config, two_plcs, windows_after


def _copy_state(src: Path, dst: Path) -> None:
    dst.mkdir(exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        f = src.with_name(src.name + suffix)
        if f.exists():
            shutil.copy2(f, dst / f.name)


def _put_back(backup: Path, state: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        state.with_name(state.name + suffix).unlink(missing_ok=True)
        f = backup / (state.name + suffix)
        if f.exists():
            shutil.copy2(f, state.with_name(f.name))


async def test_a_silently_restored_backup_starts_a_new_epoch(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(two_plcs(), auto=False)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    cfg = one_line_config(tmp_path, mosquitto.url, sims, max_rate=3_600_000)
    state = cfg.storage.path
    async with Run(cfg):
        await windows_after(sub, 2)
    _copy_state(state, tmp_path / "backup")
    async with Run(cfg):
        await windows_after(sub, 3)
    old = Windows(sub.messages)
    (first_epoch,) = old.epochs("kei")
    published = max(old.seqs("kei"))
    _put_back(tmp_path / "backup", state)
    a = sims.lines["line-a"]
    async with Run(cfg) as run:
        await windows_after(sub, 1, where=lambda p: p["epoch"] != first_epoch)
        a.produce(2)
        await windows_after(sub, 2, where=lambda p: p["epoch"] != first_epoch)
        alarms = [al.kind for al in run.agent.alarms.active()]
    w = Windows(sub.messages)
    assert w.conflicts == []
    new = [p for p in w.windows("kei") if p["epoch"] != first_epoch]
    assert new[0]["seq"] == 1
    assert {"new_epoch", "rebaselined"} <= set(new[0]["events"])
    # nothing of the old epoch was numbered again after the restore
    assert max(p["seq"] for p in w.windows("kei") if p["epoch"] == first_epoch) == published
    assert "store_restored" in alarms


def test_only_a_status_of_the_same_epoch_and_ahead_means_a_restored_copy() -> None:
    assert restored_copy(b'{"epoch": 5, "seq": 9}', 5, 7) is not None
    assert restored_copy(b'{"epoch": 5, "seq": 7}', 5, 7) is None
    assert restored_copy(b'{"epoch": 4, "seq": 9}', 5, 7) is None
    assert restored_copy(b'{"epoch": 5, "seq": null}', 5, 7) is None
    assert restored_copy(b"not json", 5, 7) is None
    assert restored_copy(None, 5, 7) is None


async def test_the_status_counts_only_committed_windows(tmp_path: Path) -> None:
    """While the store cannot commit (a full disk), windows wait in memory: the seq that
    R/status reports stays at the last committed one, so a power cut then is never taken
    for a restored backup at the next start."""
    import time
    from datetime import UTC, datetime, timedelta

    from agent.core.calendar import ShiftCalendar
    from agent.core.report import Reporter
    from agent.runtime.lines import LineBoard
    from agent.runtime.status import Alarms
    from agent.runtime.windows import WindowCloser
    from agent.store import Store
    from tests.test_restart_gap import config

    cfg = config(tmp_path)
    store = await Store.open(cfg.storage.path, max_bytes=10_000_000)
    stored = await store.load()
    calendar = ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)

    def wall() -> datetime:
        return datetime.now(UTC)

    board = LineBoard(cfg, None, stored, mono=time.monotonic, wall=wall)  # type: ignore[arg-type]
    alarms = Alarms(wall)
    closer = WindowCloser(cfg, calendar, Reporter(cfg, calendar), board, store, stored, wall=wall,
                          mono=time.monotonic, alarms=alarms, on_committed=lambda: None)
    t0 = datetime(2026, 6, 1, 8, tzinfo=UTC)
    await closer.close(t0, t0 + timedelta(seconds=1))
    assert (closer.plant.seq, closer.committed_seq) == (1, 1)
    await store.close()                 # from now on every commit fails
    await closer.close(t0 + timedelta(seconds=1), t0 + timedelta(seconds=2))
    assert (closer.plant.seq, closer.committed_seq) == (2, 1)
    assert "store_error" in [a.kind for a in alarms.active()]
