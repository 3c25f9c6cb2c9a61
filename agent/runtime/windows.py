"""Closing windows on wall-clock boundaries and committing them to the outbox.

Windows tile time: each starts where the previous one ended, through restarts, crashes
and a change of ``publish.interval_s``. At start the agent resumes from the end of the
last committed window: windows that closed while it was not counting are filled
(``agent_offline``), a window interrupted by a stop is continued from where it stopped,
and a wall clock behind the last window (no RTC at boot) never sends the windows back:
they go on from the last one at the monotonic clock's pace until the wall clock catches
up. Every window ends on the grid (a multiple of the interval from local midnight) or at
the moment of a stop.

A window's outbox records, the counter memory, the ``seq`` advance, the reports of the
shift instances it ended and the board's hour and latest rows go to the store in one
transaction. If the store fails (disk full), windows wait in memory in order, up to
:data:`MAX_PENDING_RECORDS` records (the oldest are dropped beyond, and counted), and
are committed when it recovers; counting goes on from the cumulative PLC counter.
Filling a long gap is done a window at a time, committed in chunks, yielding to the
event loop between windows and resting briefly every :data:`FILL_SLICE_S`, so polling
(whose requests have short timeouts) and publishing go on meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from agent.config import Config, LineConfig
from agent.contract.errors import StoreError
from agent.contract.payloads import LinePayload, ShiftReport, encode
from agent.core.calendar import ShiftCalendar
from agent.core.hourly import HourDelta, Latest, window_rows
from agent.core.report import LineTotals, LineWindow, PlantTotals, Reporter
from agent.core.tracker import WindowResult
from agent.outputs import OutputFormat, WindowOutputs, make_formats
from agent.runtime.lines import LineBoard
from agent.runtime.status import Alarms
from agent.store import LineState, NewRecord, Store, StoredReport, StoredState
from agent.store.board import BoardRows

__all__ = ["WindowCloser"]

log = logging.getLogger("plantfloor.windows")

MAX_GAP_WINDOWS = 100_000       # windows filled after the agent was down; one spans the rest
MAX_PENDING_RECORDS = 50_000    # records held in memory while the store cannot commit
COMMIT_RECORDS = 5_000          # records per commit while filling a gap
TICK_S = 5.0                    # the heartbeat of the window task while it waits
FILL_SLICE_S = 0.02             # a gap fill works this long at most before it rests ...
FILL_REST_S = 0.005             # ... this long, so the loop waits on sockets (PLC answers) too


def _real_time(seconds: float) -> float:
    """The machine's clock: a plant second is a real second."""
    return seconds


@dataclass
class _Pending:
    records: list[NewRecord]
    lines: list[LineState]
    plant_json: str
    reports: list[StoredReport]
    hours: list[HourDelta]
    latest: list[Latest]
    plant_seq: int


class WindowCloser:
    """Owns the per-line and plant totals; turns each closed window into outbox records."""

    def __init__(self, cfg: Config, calendar: ShiftCalendar, reporter: Reporter, board: LineBoard,
                 store: Store, stored: StoredState, *, wall: Callable[[], datetime],
                 mono: Callable[[], float], alarms: Alarms, on_committed: Callable[[], None],
                 formats: Mapping[str, OutputFormat] | None = None,
                 real_s: Callable[[float], float] = _real_time) -> None:
        self.cfg = cfg
        self.formats = formats if formats is not None else make_formats(cfg)
        self.calendar = calendar
        self.reporter = reporter
        self.board = board
        self.store = store
        self.wall = wall
        self.mono = mono
        # plant seconds to real ones, for waiting on the plant clock (a demo's runs faster)
        self.real_s = real_s
        self.alarms = alarms
        self.on_committed = on_committed
        self.interval = cfg.publish.interval_s
        self._line_cfg = {line.id: line for line in cfg.lines}
        self.epoch = stored.epoch
        self.totals: dict[str, LineTotals] = {}
        for line in cfg.lines:
            row = stored.lines.get(line.id)
            self.totals[line.id] = (LineTotals.from_json(row.totals_json)
                                    if row and row.totals_json else LineTotals())
        self.plant = PlantTotals.from_json(stored.plant_json) if stored.plant_json else PlantTotals()
        #: the plant seq of the last window in the store (``plant.seq`` runs ahead while the
        #: store cannot commit): what ``R/status`` reports as published
        self.committed_seq = self.plant.seq
        self._pending: list[_Pending] = []
        self._pending_records = 0
        self.dropped_in_memory = 0
        self._stop = asyncio.Event()
        self.windows_closed = 0
        self.last_tick_mono = mono()

    def stop(self) -> None:
        """Ask ``run`` to finish the current window early and return (SIGTERM)."""
        self._stop.set()

    def resume_point(self) -> datetime | None:
        """The end of the last committed window (None on a new store)."""
        ends = [t.last_window_end for t in self.totals.values() if t.last_window_end]
        if self.plant.last_window_end is not None:
            ends.append(self.plant.last_window_end)
        return max(ends, default=None)

    async def run(self) -> None:
        """Close every window on its boundary until :meth:`stop`; then close the open one early."""
        start = self.calendar.window_bounds(self.wall(), self.interval)[0]
        last = self.resume_point()
        if last is not None:
            if start > last:
                if not await self.fill_gap(last, start):
                    return
            else:
                # a window cut short by a stop, or a wall clock behind the last window
                start = last
        while True:
            end = self.calendar.window_bounds(start, self.interval)[1]
            if not await self._sleep_until(start, end):
                stop_at = min(self.wall(), end)
                if stop_at > start:
                    # the window in progress ends now: its units are published before exit
                    await self.close(start, stop_at)
                return
            await self.close(start, end)
            start = end
            behind = self.calendar.window_bounds(self.wall(), self.interval)[0]
            if behind > start:
                # the loop or the wall clock jumped: the units so far went to the last window
                if not await self.fill_gap(start, behind, event="clock_step"):
                    return
                start = behind

    async def _sleep_until(self, start: datetime, end: datetime) -> bool:
        """Wait for the window's end; False when asked to stop first.

        The wait is also bounded by the monotonic clock: a wall clock stepped back (or
        behind the window at boot) never holds a window open longer than its length.
        """
        now_wall = self.wall()
        deadline = self.mono() + max(0.0, (end - max(start, now_wall)).total_seconds())
        while True:
            self.last_tick_mono = now = self.mono()
            delay = min((end - self.wall()).total_seconds(), deadline - now)
            if delay <= 0:
                return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.real_s(delay), TICK_S)):
                    await self._stop.wait()
            if self._stop.is_set():
                return False

    def _window(self, results: dict[str, WindowResult], start: datetime, end: datetime) -> _Pending:
        """Build the window's payloads once, then every output format's records."""
        lines: list[LineState] = []
        outputs: list[LinePayload] = []
        ended: list[tuple[LineConfig, LineWindow]] = []
        reports: list[ShiftReport] = []
        wall, mono = self.wall(), self.mono()
        for line in self.cfg.lines:
            result = results[line.id]
            w = self.reporter.line_window(line, result, start, end, self.totals[line.id],
                                          epoch=self.epoch)
            self.totals[line.id] = w.totals
            outputs.append(w.output)
            if w.reports:
                ended.append((line, w))
                reports += [report for report, _ in w.reports]
            lines.append(self.board.line_state(
                line.id, result.memory, w.totals.to_json(), wall, mono,
                second_memory=result.second.memory if result.second is not None else None))
        plant_out, self.plant = self.reporter.plant_output(
            outputs, start, end, self.plant, epoch=self.epoch,
            covered=any(r.covered for r in results.values()))
        if ended:
            reports += self.reporter.plant_reports(ended, epoch=self.epoch)
        window = WindowOutputs(start, end, outputs, plant_out, reports)
        records = [r for fmt in self.formats.values() for r in fmt.records(window)]
        self.windows_closed += 1
        hours, latest = window_rows(outputs, plant_out, start, end, self.cfg.tz)
        return _Pending(records, lines, self.plant.to_json(), [_stored(r) for r in reports],
                        hours, latest, self.plant.seq)

    def _hold(self, pending: _Pending) -> None:
        self._pending.append(pending)
        self._pending_records += len(pending.records)
        while self._pending_records > MAX_PENDING_RECORDS and len(self._pending) > 1:
            lost = self._pending.pop(0)
            self._pending_records -= len(lost.records)
            self.dropped_in_memory += len(lost.records)
            log.error("store unavailable: a window of %s dropped from memory (oldest first)",
                      lost.records[0].window_end.isoformat())

    async def close(self, start: datetime, end: datetime) -> None:
        """Close the window [start, end) for every line and commit it."""
        planned_ms, period = self.reporter.window_split(start, end)
        results = self.board.close_windows(self.mono(), planned_ms=planned_ms, period=period)
        self._hold(self._window(results, start, end))
        await self._commit()

    async def fill_gap(self, start: datetime, until: datetime, *,
                       event: str = "agent_offline") -> bool:
        """Windows [start, until) that closed while nothing was counting: units 0, quality bad.

        Never skipped: one window per grid interval (past :data:`MAX_GAP_WINDOWS`, one last
        window spans the rest). Built one at a time and committed in chunks, yielding to
        the event loop between windows, so memory stays bounded and polling goes on. A stop
        asked for meanwhile fills the rest of the gap in one window and closes the open
        window at the stop (False).
        """
        first, count = start, 0
        loop = asyncio.get_running_loop()
        worked_since = loop.time()
        while start < until:
            if self._stop.is_set():
                await self._stop_filling(start, until, event, count)
                return False
            end = min(self.calendar.window_bounds(start, self.interval)[1], until)
            if count == MAX_GAP_WINDOWS - 1:
                end = until
            secs = (end - start).total_seconds()
            planned_ms, _ = self.reporter.window_split(start, end)
            results: dict[str, WindowResult] = {
                line_id: tracker.offline_window(event, secs, planned_ms)
                for line_id, tracker in self.board.trackers.items()}
            self._hold(self._window(results, start, end))
            start = end
            count += 1
            self.last_tick_mono = self.mono()
            if self._pending_records >= COMMIT_RECORDS:
                await self._commit()
            if loop.time() - worked_since >= FILL_SLICE_S:
                # a real rest, not only a turn: a poll's request and answer each need the
                # loop to wait on its socket, and a turn per window is no deadline for them
                await asyncio.sleep(FILL_REST_S)
                worked_since = loop.time()
            else:
                await asyncio.sleep(0)
        log.warning("%d window(s) from %s to %s closed while the agent was not counting; "
                    "published with quality bad", count, first.isoformat(), until.isoformat())
        await self._commit()
        return True

    async def _stop_filling(self, start: datetime, until: datetime, event: str,
                            count: int) -> None:
        """A stop during a fill: the rest of the gap in one window, then the open window.

        The open window holds what was read while filling; it is closed now (ending at the
        stop), so its units reach the outbox before the agent exits and the next start
        resumes after it.
        """
        secs = (until - start).total_seconds()
        planned_ms, _ = self.reporter.window_split(start, until)
        self._hold(self._window({line_id: tracker.offline_window(event, secs, planned_ms)
                                 for line_id, tracker in self.board.trackers.items()},
                                start, until))
        log.warning("stopped while filling windows closed while the agent was not counting: "
                    "%d filled, the rest of the gap in one window", count)
        stop_at = max(self.wall(), until)
        if stop_at > until:
            await self.close(until, stop_at)
        else:
            await self._commit()

    async def _commit(self) -> None:
        while self._pending:
            batch = self._pending[:200]
            records = [r for p in batch for r in p.records]
            latest: dict[str, LineState] = {}
            for p in batch:
                latest.update({ls.line: ls for ls in p.lines})
            reports = [r for p in batch for r in p.reports]
            board = BoardRows([h for p in batch for h in p.hours],
                              [x for p in batch for x in p.latest], self.cfg.storage.history_days)
            try:
                dropped = await self.store.commit_window(records, list(latest.values()),
                                                         batch[-1].plant_json, reports, board)
            except StoreError as exc:
                kind = "disk_full" if "full" in str(exc).lower() else "store_error"
                self.alarms.raise_(kind, f"cannot write the state database: {exc}; "
                                   f"{len(self._pending)} window(s) held in memory, counting goes on")
                return
            self.alarms.clear("disk_full")
            self.alarms.clear("store_error")
            del self._pending[:len(batch)]
            self._pending_records -= len(records)
            self.committed_seq = batch[-1].plant_seq
            if dropped:
                self.alarms.raise_("outbox_full", f"outbox over {self.cfg.storage.max_mb:g} MB: "
                                   f"{self.store.dropped} window record(s) dropped, oldest first")
                log.error("outbox full: %d record(s) dropped (oldest first)", dropped)
            self.on_committed()


def _stored(report: ShiftReport) -> StoredReport:
    """A report as the store keeps it (the plant's under line '')."""
    ref = report.shift
    return StoredReport(line=report.line or "", key=f"{ref.name}@{ref.start.isoformat()}",
                        date=ref.date, shift=ref.name, start=ref.start, payload=encode(report))
