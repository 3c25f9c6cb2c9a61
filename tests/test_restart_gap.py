"""A restart after a gap, interrupted at every commit: the units read meanwhile are never lost.

While the agent fills the windows it missed, polling goes on: the units of a reading taken
then are in the open window. Every commit of the fill, and the first close, is followed
by a simulated power cut (the store's commit returns, then the process is gone); the next
start must still publish every unit the line built, exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config
from agent.contract.readings import Quality, Reading
from agent.core.calendar import ShiftCalendar
from agent.core.report import LineTotals, PlantTotals, Reporter
from agent.runtime import windows
from agent.runtime.lines import LineBoard, boot_id
from agent.runtime.status import Alarms
from agent.runtime.windows import WindowCloser
from agent.store import LineState, Store

ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
GAP = timedelta(minutes=10)


class PowerCut(BaseException):
    """The process is gone right after a commit (nothing after it runs)."""


def config(tmp_path: Path) -> Config:
    return Config.model_validate({
        "site": "test", "timezone": "Asia/Tokyo",
        "publish": {"interval_s": 1},
        "storage": {"path": str(tmp_path / "state.db"), "max_mb": 64},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "00:00", "end": "12:00", "days": ALL_DAYS},
                   {"name": "b", "start": "12:00", "end": "00:00", "days": ALL_DAYS}],
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 1}],
        "lines": [{"id": "kei", "product": "Sakura", "target_per_hour": 60,
                   "max_rate_per_hour": 3600,
                   "counter": {"source": "plc", "address": 0, "type": "uint32"}}],
    })


async def seed(cfg: Config, baseline: int) -> None:
    """A store whose last window ended ten minutes ago with the counter at ``baseline``."""
    last = datetime.now(UTC).replace(microsecond=0) - GAP
    ago = time.monotonic() - GAP.total_seconds()
    store = await Store.open(cfg.storage.path, max_bytes=64_000_000)
    try:
        line = cfg.lines[0]
        await store.commit_window([], [LineState(
            line.id, LineTotals(seq=5, last_window_end=last).to_json(),
            identity=cfg.point_identity(line.counter), baseline=baseline, modulus=2**32,
            anchor_wall=last, anchor_mono=ago, last_wall=last, last_mono=ago, boot_id=boot_id())],
            PlantTotals(seq=5, last_window_end=last).to_json())
    finally:
        await store.close()


async def start(cfg: Config, counter: int, *, cut_after: int | None = None,
                stop_first: bool = False) -> bool:
    """One agent start: the PLC shows ``counter`` while the gap is filled; runs until the
    first window closed after the restart (True), or the power cut after commit
    ``cut_after`` (False)."""
    store = await Store.open(cfg.storage.path, max_bytes=64_000_000)
    commits = 0
    real_commit = store.commit_window

    async def commit(*args: Any, **kwargs: Any) -> int:
        nonlocal commits
        dropped = await real_commit(*args, **kwargs)
        commits += 1
        if commits == cut_after:
            raise PowerCut
        return dropped

    store.commit_window = commit  # type: ignore[method-assign]
    try:
        stored = await store.load()
        calendar = ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)

        def wall() -> datetime:
            return datetime.now(UTC)

        board = LineBoard(cfg, None, stored, mono=time.monotonic, wall=wall)  # type: ignore[arg-type]
        closer = WindowCloser(cfg, calendar, Reporter(cfg, calendar), board, store, stored,
                              wall=wall, mono=time.monotonic, alarms=Alarms(wall),
                              on_committed=lambda: None)
        # a poll answered while the gap is being filled
        board.on_readings("plc", [Reading(line="kei", role="counter", value=counter,
                                          quality=Quality.GOOD, mono=time.monotonic())])
        restarted = wall()
        if stop_first:
            closer.stop()
        task = asyncio.create_task(closer.run())
        try:
            await asyncio.wait_for(_until(lambda: task.done() or (
                (closer.resume_point() or restarted) > restarted)), timeout=30)
        finally:
            closer.stop()
            try:
                await task
            except PowerCut:
                return False
        return True
    finally:
        await store.close()


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():  # noqa: ASYNC110 - the closer exposes no event; bounded by wait_for
        await asyncio.sleep(0.01)


async def outbox(cfg: Config) -> list[dict[str, Any]]:
    store = await Store.open(cfg.storage.path, max_bytes=64_000_000)
    try:
        rows = await store.pending(1_000_000)
    finally:
        await store.close()
    return [json.loads(r.payload) for r in rows if r.line == "kei"]


@pytest.mark.parametrize("cut_after", [1, 2, 3, 4, 5])
async def test_a_power_cut_at_any_commit_of_a_restart_with_a_gap_loses_nothing(
        tmp_path: Path, cut_after: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Baseline 1000 stored ten minutes ago; the restart reads 1020 while filling 600
    windows (committed in four chunks), and the power goes after commit ``cut_after``.
    The next start reads 1023: 23 units in the outbox, once each."""
    monkeypatch.setattr(windows, "COMMIT_RECORDS", 400)
    cfg = config(tmp_path)
    await seed(cfg, 1000)
    assert not await start(cfg, 1020, cut_after=cut_after), "the power cut happened"
    assert await start(cfg, 1023)
    payloads = await outbox(cfg)
    assert sum(p["units"] for p in payloads) == 23
    keys = [(p["epoch"], p["seq"]) for p in payloads]
    assert len(keys) == len(set(keys))
    ordered = sorted(payloads, key=lambda p: p["seq"])
    assert all(a["window_end"] == b["window_start"] for a, b in itertools.pairwise(ordered))


async def test_a_stop_during_a_gap_fill_closes_the_open_window(tmp_path: Path) -> None:
    """SIGTERM while the gap is being filled: the rest of the gap is one window and the
    open window (the 20 units read meanwhile) is closed and committed before the stop."""
    cfg = config(tmp_path)
    await seed(cfg, 1000)
    await start(cfg, 1020, stop_first=True)
    payloads = sorted(await outbox(cfg), key=lambda p: p["seq"])
    assert sum(p["units"] for p in payloads) == 20
    assert payloads[-1]["units"] == 20
    assert "agent_offline" in payloads[-2]["events"]
    assert payloads[-2]["window_end"] == payloads[-1]["window_start"]


async def test_a_long_fill_rests_within_every_poll_timeout_and_no_poll_fails(
        tmp_path: Path, simulator_set: Callable[..., Any]) -> None:
    """40 lines back after 40 minutes with 1 s windows: 2,400 windows are filled while a
    Modbus source with a 0.2 s timeout polls its (real) PLC every 0.2 s. No poll fails, and
    the fill rests: the loop waits in its selector (nothing else to run) at least once
    within every poll timeout. A turn per window alone (``asyncio.sleep(0)``) polls the
    sockets without waiting, so the loop would wait only while a chunk is committed."""
    from agent.sources.base import make_source
    from tests.agentrig import two_plcs

    sims = await simulator_set(two_plcs(), auto=False)
    port = sims.plcs["plc-a"].port
    base = config(tmp_path)
    line = base.lines[0]
    cfg = Config.model_validate({
        **base.model_dump(mode="json", exclude={"lines", "sources"}),
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": port,
                     "poll_interval_s": 0.2, "timeout_s": 0.2}],
        "lines": [{**line.model_dump(mode="json", exclude_none=True), "id": f"l{i:02d}",
                   "counter": {"source": "plc", "address": 100 + 2 * i, "type": "uint32"}}
                  for i in range(40)],
    })
    last = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=40)
    store = await Store.open(cfg.storage.path, max_bytes=400_000_000)
    await store.commit_window([], [LineState(ln.id, LineTotals(seq=1, last_window_end=last).to_json())
                                   for ln in cfg.lines],
                              PlantTotals(seq=1, last_window_end=last).to_json())
    stored = await store.load()
    calendar = ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)

    def wall() -> datetime:
        return datetime.now(UTC)

    board = LineBoard(cfg, None, stored, mono=time.monotonic, wall=wall)  # type: ignore[arg-type]
    closer = WindowCloser(cfg, calendar, Reporter(cfg, calendar), board, store, stored,
                          wall=wall, mono=time.monotonic, alarms=Alarms(wall),
                          on_committed=lambda: None)
    source = make_source(cfg, cfg.sources[0])  # type: ignore[arg-type]
    await source.connect()
    polls: list[str] = []

    async def poll() -> None:
        while True:
            readings = await source.read()
            polls.extend("good" if r.quality is Quality.GOOD else (r.error or "bad")
                         for r in readings if r.line == "l00")
            await asyncio.sleep(0.2)

    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)
    if selector is None:
        pytest.skip("needs asyncio's own loop (its selector)")
    waits: list[float] = []  # loop times at which the loop waited with nothing to run
    select = selector.select

    def counted(timeout: float | None = None) -> Any:
        if timeout is None or timeout > 0:
            waits.append(loop.time())
        return select(timeout)

    poller = asyncio.create_task(poll())
    task = asyncio.create_task(closer.run())
    selector.select = counted
    try:
        await asyncio.wait_for(_until(lambda: closer.windows_closed >= 2400), timeout=240)
    finally:
        selector.select = select
        closer.stop()
        await task
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
        await source.close()
        await store.close()
    assert len(polls) >= 5
    assert [p for p in polls if p != "good"] == []
    longest = max(b - a for a, b in itertools.pairwise(waits))
    assert longest < cfg.sources[0].timeout_s, f"the loop ran {longest:.3f} s without waiting"
