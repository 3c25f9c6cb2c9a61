"""One gateway's figures: the agent's state file, read-only, and a watch on its commits.

The board opens the file with ``mode=ro`` (:func:`agent.store.file.open_readonly`): in WAL
mode a reader never blocks the agent's commits, and the agent never waits for the board.
A commit by another connection changes ``PRAGMA data_version``, a read of the open
connection's own header that costs no I/O worth the name, so the watch polls it every
``board.poll_s`` and reads the rows only after a commit. Every read runs on one worker
thread that owns the connection, and the rows of one state are read in one transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeVar

from agent.board.figures import (
    BoardSite,
    BoardState,
    HistoryPoint,
    build_state,
    history_points,
    shift_summary,
)
from agent.config import Config
from agent.contract.errors import StoreError
from agent.contract.payloads import ShiftReport
from agent.core.calendar import ShiftCalendar
from agent.core.hourly import hour_start
from agent.store.board import read_down, read_hours, read_latest
from agent.store.file import open_readonly

__all__ = ["StoreGateway"]

T = TypeVar("T")
#: the plant's finished shifts listed under the current one
PREVIOUS_SHIFTS = 6


class StoreGateway:
    """Reads the board's figures from one agent's state file (never writes to it)."""

    def __init__(self, cfg: Config, *, now: Callable[[], datetime] | None = None) -> None:
        self.site = BoardSite.of_agent(cfg)
        self.tz = cfg.tz
        self.path: Path = cfg.storage.path
        self.calendar = ShiftCalendar.from_config(cfg)
        self.now = now or (lambda: datetime.now(UTC))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="board-store")
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._conn is None:
                self._conn = open_readonly(self.path)
            try:
                return fn(self._conn)
            except sqlite3.Error as exc:
                # the next call opens the file again (the agent may have replaced it)
                conn, self._conn = self._conn, None
                conn.close()
                raise StoreError(f"cannot read the state database {self.path}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def changed(self) -> bool:
        """True when another connection committed since the last call (and on the first)."""

        def version(conn: sqlite3.Connection) -> bool:
            v = int(conn.execute("PRAGMA data_version").fetchone()[0])
            moved, self._version = v != self._version, v
            return moved

        return await self._run(version)

    async def state(self, state_id: str) -> BoardState:
        """Everything the board shows, read in one transaction."""
        now = self.now()
        period = self.calendar.period_at(now)

        def read(conn: sqlite3.Connection) -> BoardState:
            conn.execute("BEGIN")
            try:
                if not _has_board_tables(conn):
                    latest, hours, down, reports = [], [], {}, []
                else:
                    latest = read_latest(conn)
                    first = hour_start(period.start, self.tz)
                    hours = read_hours(conn, first, period.end)
                    down = read_down(conn, first, period.end)
                    reports = [shift_summary(ShiftReport.model_validate_json(r[0])) for r in conn.execute(
                        "SELECT payload FROM shift_report WHERE line = '' ORDER BY start DESC"
                        " LIMIT ?", (PREVIOUS_SHIFTS,))]
            finally:
                conn.execute("COMMIT")
            return build_state(self.site, self.calendar, latest, hours, down, reports, now, state_id)

        return await self._run(read)

    async def history(self, bucket: Literal["hour", "day", "week"], days: int,
                      line: str | None) -> list[HistoryPoint]:
        """Units and target by hour, day or week over the last ``days`` days."""
        now = self.now()
        until = hour_start(now, self.tz) + timedelta(hours=1)
        since = until - timedelta(days=days)

        def read(conn: sqlite3.Connection) -> list[HistoryPoint]:
            if not _has_board_tables(conn):
                return []
            return history_points(self.site, read_hours(conn, since, until, line), bucket)

        return await self._run(read)

    async def reports(self, day: date) -> list[ShiftReport]:
        """The stored shift reports of production date ``day`` (lines, then the plant)."""

        def read(conn: sqlite3.Connection) -> list[ShiftReport]:
            return [ShiftReport.model_validate_json(r[0]) for r in conn.execute(
                "SELECT payload FROM shift_report WHERE date = ? ORDER BY start, line = '', line",
                (day.isoformat(),))]

        return await self._run(read)

    async def close(self) -> None:
        """Close the connection and the worker thread."""

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)


def _has_board_tables(conn: sqlite3.Connection) -> bool:
    """An agent older than the board has not created them yet: the board shows nothing."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'board_latest'").fetchone() \
        is not None
