"""Closing windows on wall-clock boundaries and committing them to the outbox.

A window's outbox records, the counter baselines and the ``seq`` advance go to the store
in one transaction. If the store fails (disk full), windows wait in memory in order and
are committed when it recovers; counting goes on from the cumulative PLC counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from agent.config import Config
from agent.core.calendar import ShiftCalendar
from agent.core.report import LineTotals, PlantTotals, Reporter
from agent.core.tracker import WindowResult
from agent.errors import StoreError
from agent.lines import LineBoard
from agent.payloads import LineOutput, encode
from agent.status import Alarms
from agent.store import LineState, NewRecord, Store, StoredState

__all__ = ["WindowCloser"]

log = logging.getLogger("plantfloor.windows")

MAX_GAP_WINDOWS = 10_000    # windows filled in one go after the agent was down
MAX_PENDING = 10_000        # windows held in memory while the store cannot commit
TICK_S = 5.0                # the heartbeat of the window task while it waits


@dataclass
class _Pending:
    records: list[NewRecord]
    lines: list[LineState]
    plant_json: str


class WindowCloser:
    """Owns the per-line and plant totals; turns each closed window into outbox records."""

    def __init__(self, cfg: Config, calendar: ShiftCalendar, reporter: Reporter, board: LineBoard,
                 store: Store, stored: StoredState, *, wall: Callable[[], datetime],
                 mono: Callable[[], float], alarms: Alarms, on_committed: Callable[[], None]) -> None:
        self.cfg = cfg
        self.calendar = calendar
        self.reporter = reporter
        self.board = board
        self.store = store
        self.wall = wall
        self.mono = mono
        self.alarms = alarms
        self.on_committed = on_committed
        self.interval = cfg.publish.interval_s
        self._line_cfg = {line.id: line for line in cfg.lines}
        self.root = cfg.topic_root
        self.totals: dict[str, LineTotals] = {}
        for line in cfg.lines:
            row = stored.lines.get(line.id)
            self.totals[line.id] = (LineTotals.from_json(row.totals_json)
                                    if row and row.totals_json else LineTotals())
        self.plant = PlantTotals.from_json(stored.plant_json) if stored.plant_json else PlantTotals()
        self._pending: list[_Pending] = []
        self.dropped_in_memory = 0
        self._stop = asyncio.Event()
        self.windows_closed = 0
        self.last_tick_mono = mono()

    def stop(self) -> None:
        """Ask ``run`` to finish the current window early and return (SIGTERM)."""
        self._stop.set()

    async def run(self) -> None:
        """Close every window on its boundary until :meth:`stop`; then close the open one early."""
        start, end = self.calendar.window_bounds(self.wall(), self.interval)
        await self.fill_gap(start)
        while True:
            if not await self._sleep_until(end):
                now = self.wall()
                if now > start:
                    # the window in progress ends now: its units are published before exit
                    await self.close(start, min(now, end))
                return
            await self.close(start, end)
            start, end = self.calendar.window_bounds(end, self.interval)
            behind = self.calendar.window_bounds(self.wall(), self.interval)[0]
            if behind > start:
                # the loop or the wall clock jumped: the units so far went to the last window
                await self.fill_gap(behind, event="clock_step")
                start, end = self.calendar.window_bounds(behind, self.interval)

    async def _sleep_until(self, end: datetime) -> bool:
        """Wait for the window's end; False when asked to stop first.

        The wait is also bounded by the monotonic clock: a wall clock stepped back never
        holds a window open longer than its length.
        """
        deadline = self.mono() + max(0.0, (end - self.wall()).total_seconds())
        while True:
            self.last_tick_mono = now = self.mono()
            delay = min((end - self.wall()).total_seconds(), deadline - now)
            if delay <= 0:
                return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, TICK_S)):
                    await self._stop.wait()
            if self._stop.is_set():
                return False

    def _line_record(self, line_id: str, result: WindowResult, start: datetime, end: datetime,
                     out_list: list[NewRecord], lines: list[LineState], outputs: list[LineOutput]) -> None:
        line = self._line_cfg[line_id]
        out, totals = self.reporter.line_output(line, result, start, end, self.totals[line_id])
        self.totals[line_id] = totals
        outputs.append(out)
        out_list.append(NewRecord(topic=f"{self.root}/lines/{line_id}/output", payload=encode(out),
                                  qos=self.cfg.mqtt.qos, retain=False, line=line_id, seq=out.seq,
                                  window_end=end))
        lines.append(LineState(line=line_id, counter=result.counter, totals_json=totals.to_json()))

    def _window(self, results: dict[str, WindowResult], start: datetime, end: datetime) -> _Pending:
        records: list[NewRecord] = []
        lines: list[LineState] = []
        outputs: list[LineOutput] = []
        for line in self.cfg.lines:
            self._line_record(line.id, results[line.id], start, end, records, lines, outputs)
        plant_out, self.plant = self.reporter.plant_output(outputs, start, end, self.plant)
        records.append(NewRecord(topic=f"{self.root}/plant/output", payload=encode(plant_out),
                                 qos=self.cfg.mqtt.qos, retain=False, line=None, seq=plant_out.seq,
                                 window_end=end))
        self.windows_closed += 1
        return _Pending(records, lines, self.plant.to_json())

    async def close(self, start: datetime, end: datetime) -> None:
        """Close the window [start, end) for every line and commit it."""
        results = self.board.close_windows(self.mono())
        self._pending.append(self._window(results, start, end))
        await self._commit()

    async def fill_gap(self, until: datetime, *, event: str = "agent_offline") -> None:
        """Windows that closed while nothing was counting: units 0, quality bad, never skipped."""
        last = max((t.last_window_end for t in self.totals.values() if t.last_window_end), default=None)
        if last is None or last >= until:
            return
        start = last
        count = 0
        while start < until:
            _, end = self.calendar.window_bounds(start, self.interval)
            if count == MAX_GAP_WINDOWS - 1:
                end = until  # one last window spans the rest rather than thousands more
            end = min(end, until)
            results = {}
            for line_id, tracker in self.board.trackers.items():
                secs = (end - start).total_seconds()
                results[line_id] = WindowResult(
                    line=line_id, units=0, events=(event,), quality="bad",
                    state_seconds={"running": 0.0, "stopped": 0.0, "faulted": 0.0, "unknown": secs},
                    counter=tracker.engine.baseline, state="unknown")
            self._pending.append(self._window(results, start, end))
            start = end
            count += 1
        log.warning("%d window(s) from %s to %s closed while the agent was not counting; "
                    "published with quality bad", count, last.isoformat(), until.isoformat())
        await self._commit()

    async def _commit(self) -> None:
        if len(self._pending) > MAX_PENDING:
            lost = len(self._pending) - MAX_PENDING
            del self._pending[:lost]
            self.dropped_in_memory += lost * (len(self.cfg.lines) + 1)
            log.error("store unavailable: %d window(s) dropped from memory, oldest first", lost)
        while self._pending:
            batch = self._pending[:200]
            records = [r for p in batch for r in p.records]
            latest: dict[str, LineState] = {}
            for p in batch:
                latest.update({ls.line: ls for ls in p.lines})
            try:
                dropped = await self.store.commit_window(records, list(latest.values()), batch[-1].plant_json)
            except StoreError as exc:
                kind = "disk_full" if "full" in str(exc).lower() else "store_error"
                self.alarms.raise_(kind, f"cannot write the state database: {exc}; "
                                   f"{len(self._pending)} window(s) held in memory, counting goes on")
                return
            self.alarms.clear("disk_full")
            self.alarms.clear("store_error")
            del self._pending[:len(batch)]
            if dropped:
                self.alarms.raise_("outbox_full", f"outbox over {self.cfg.storage.max_mb:g} MB: "
                                   f"{self.store.dropped} window record(s) dropped, oldest first")
                log.error("outbox full: %d record(s) dropped (oldest first)", dropped)
            self.on_committed()


