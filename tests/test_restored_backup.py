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
