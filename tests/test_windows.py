"""The window clock against a real store: resuming, tiling and catching up after a long stop."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.core.calendar import ShiftCalendar
from agent.core.report import LineTotals, PlantTotals, Reporter
from agent.runtime.lines import LineBoard
from agent.runtime.status import Alarms
from agent.runtime.windows import COMMIT_RECORDS, WindowCloser
from agent.store import LineState, OutboxRecord, Store

ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def config(tmp_path: Path, lines: int) -> Config:
    return Config.model_validate({
        "site": "test", "timezone": "Asia/Tokyo",
        "publish": {"interval_s": 1},
        "storage": {"path": str(tmp_path / "state.db"), "max_mb": 4096},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "00:00", "end": "12:00", "days": ALL_DAYS},
                   {"name": "b", "start": "12:00", "end": "00:00", "days": ALL_DAYS}],
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 1}],
        "lines": [{"id": f"l{i:03d}", "product": "Sakura", "target_per_hour": 60,
                   "counter": {"source": "plc", "address": 2 * i, "type": "uint32"}}
                  for i in range(lines)],
    })


async def resume(cfg: Config, *, last: datetime, seq: int, windows: int, within: float,
                 watch: Callable[[WindowCloser], Coroutine[Any, Any, None]] | None = None,
                 ) -> list[OutboxRecord]:
    """A store whose last window ended at ``last`` (``seq``); run the window clock until it
    has closed ``windows`` windows (with ``watch`` running beside it), then stop it."""
    store = await Store.open(cfg.storage.path, max_bytes=4_000_000_000)
    try:
        await store.commit_window([], [LineState(ln.id, LineTotals(seq=seq, last_window_end=last).to_json())
                                       for ln in cfg.lines],
                                  PlantTotals(seq=seq, last_window_end=last).to_json())
        stored = await store.load()
        calendar = ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)

        def wall() -> datetime:
            return datetime.now(UTC)

        board = LineBoard(cfg, None, stored, mono=time.monotonic, wall=wall)  # type: ignore[arg-type]
        closer = WindowCloser(cfg, calendar, Reporter(cfg, calendar), board, store, stored,
                              wall=wall, mono=time.monotonic, alarms=Alarms(wall),
                              on_committed=lambda: None)
        watcher = asyncio.create_task(watch(closer)) if watch else None
        task = asyncio.create_task(closer.run())
        try:
            await asyncio.wait_for(_until(lambda: closer.windows_closed >= windows), timeout=within)
        finally:
            closer.stop()
            await task
            if watcher is not None:
                watcher.cancel()
        return await store.pending(1_000_000)
    finally:
        await store.close()


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():  # noqa: ASYNC110 - the closer exposes no event; bounded by wait_for
        await asyncio.sleep(0.01)


async def test_catching_up_a_long_stop_is_bounded_and_yields(tmp_path: Path) -> None:
    """50 lines stopped for 40 minutes with 1 s windows: 2,400 windows of 51 records each
    are filled and committed in chunks while the event loop keeps running."""
    cfg = config(tmp_path, 50)
    last = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=40)
    ticks = 0
    most_pending = 0

    async def poller(closer: WindowCloser) -> None:
        nonlocal ticks, most_pending
        while True:
            ticks += 1
            most_pending = max(most_pending, closer._pending_records)
            await asyncio.sleep(0)

    rows = await resume(cfg, last=last, seq=7, windows=2400, within=240, watch=poller)
    line_rows = [r for r in rows if r.line == "l000"]
    ends = [r.window_end for r in line_rows]
    assert ends[0] == last + timedelta(seconds=1)
    # every window a second long, but the last two: a stop during the fill puts the rest
    # of the gap in one window and closes the open window at the stop
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ends[:-2]))
    assert [r.seq for r in line_rows] == list(range(8, 8 + len(line_rows)))
    assert len(line_rows) >= 2400
    # memory: never more than one commit's worth of records (plus one window) held at once
    assert most_pending <= COMMIT_RECORDS + len(cfg.lines) + 1
    # the loop kept running between windows: at least once per window filled
    assert ticks >= 2400


async def test_a_wall_clock_behind_the_last_window_never_sends_windows_back(tmp_path: Path) -> None:
    """No RTC at boot: the wall clock says an hour before the last stored window. The
    windows go on from the last one at the monotonic clock's pace, never overlapping."""
    last = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    rows = [r for r in await resume(config(tmp_path, 2), last=last, seq=3, windows=3, within=20)
            if r.line == "l000"]
    assert [r.seq for r in rows][:3] == [4, 5, 6]
    assert rows[0].window_end == last + timedelta(seconds=1)
    assert rows[1].window_end == last + timedelta(seconds=2)
    assert all(r.window_end > last for r in rows)


async def test_a_new_window_length_continues_from_the_last_window(tmp_path: Path) -> None:
    """publish.interval_s changed from 60 to 300 s: the first window runs from the end of
    the last 60 s window to the next boundary of the 300 s grid; nothing overlaps."""
    base = config(tmp_path, 2)
    cfg = base.model_copy(update={"publish": base.publish.model_copy(update={"interval_s": 300})})
    grid = ShiftCalendar(cfg.shifts, cfg.tz).window_bounds(datetime.now(UTC), 300)[0]
    last = grid - timedelta(seconds=240)          # on the old 60 s grid, off the new one
    rows = [r for r in await resume(cfg, last=last, seq=9, windows=1, within=20) if r.line == "l000"]
    first, second = json.loads(rows[0].payload), json.loads(rows[1].payload)
    assert rows[0].window_end == grid
    assert first["window_start"] == last.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert second["window_start"] == first["window_end"]
    assert [r.seq for r in rows] == [10, 11]
