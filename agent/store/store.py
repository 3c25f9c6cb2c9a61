"""The durable outbox and the pipeline's persisted state (SQLite, stdlib ``sqlite3``).

One database file (schema, migrations, epoch and lock in :mod:`agent.store.file`) holds:

- ``meta``: the file's ``epoch`` and each Sparkplug edge node's last bdSeq;
- ``outbox``: MQTT messages waiting for the broker's acknowledgement, in insertion order
  (``AUTOINCREMENT`` ids are never reused, so id order is commit order and, per line,
  ``seq`` order);
- ``line_state``: per line the pipeline's opaque totals JSON and the counter's memory:
  the baseline with the identity of the counter it belongs to, the times the next delta
  is bounded from, and an operator's pending re-baseline;
- ``plant_state``: the plant's opaque totals JSON;
- ``shift_report``: the report of every shift instance that ended, per line and for the
  plant, as published (``plantfloor report`` reads them);
- ``line_hour``, ``line_hour_down``, ``board_latest``: what ``plantfloor board`` shows
  (:mod:`agent.store.board`).

A window's outbox rows and the state they advance are written in one transaction
(:meth:`Store.commit_window`), so a crash resumes with neither loss nor double count.
The file runs in WAL mode with ``synchronous=FULL``: in WAL mode ``NORMAL`` may lose the
last commits on power loss.

Every database call runs on one dedicated worker thread owning the only connection
(sqlite objects belong to the thread that made them); the event loop never waits on disk.

The outbox is bounded by ``max_bytes``: each row is counted as its payload and topic size
plus :data:`ROW_OVERHEAD` bytes (row header, the other columns, index entry). When a commit
takes the total above the bound, the oldest rows are deleted in the same transaction and
counted in :attr:`Store.dropped`. The bound concerns the outbox only; the file itself is
larger by the state tables, free pages and the WAL.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from agent.contract.errors import StoreError
from agent.store.board import BoardRows
from agent.store.file import StoreLock, connect, transaction
from agent.store.openings import OpeningEntry, entries_of
from agent.store.outbox import DELETE_CHUNK, ROW_OVERHEAD, outbox_totals, row_cost, trim
from agent.store.records import (
    LineState,
    NewRecord,
    OutboxRecord,
    StoredReport,
    StoredState,
    iso,
)

__all__ = ["ROW_OVERHEAD", "LineState", "NewRecord", "OutboxRecord", "Store", "StoredReport",
           "StoredState"]

log = logging.getLogger(__name__)

_LINE_COLUMNS = ("line, totals_json, identity, state_identity, baseline, modulus, anchor_wall,"
                 " anchor_mono, last_wall, last_mono, boot_id, rebaseline, second_json")

T = TypeVar("T")


class Store:
    """The SQLite outbox and state. Create with :meth:`open`; all methods are coroutines."""

    def __init__(self, path: Path, *, max_bytes: int, executor: ThreadPoolExecutor,
                 conn: sqlite3.Connection, recovered_from: Path | None, created: bool,
                 lock: StoreLock | None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.recovered_from = recovered_from
        self.created = created
        self._lock = lock
        self.backlog = 0
        self.dropped = 0
        self._outbox_bytes = 0
        self._executor = executor
        self._conn: sqlite3.Connection | None = conn

    # --- opening ------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, max_bytes: int, lock: bool = True) -> Store:
        """Open (or create) the database; a corrupt or unreadable file is moved aside.

        The moved file is ``<path>.corrupt-<UTC timestamp>`` (with its ``-wal``/``-shm``);
        a fresh database (a new epoch) is started and ``recovered_from`` names the moved
        file. With ``lock`` (the agent) the file's lock is held until :meth:`close`, and a
        second agent on the same file is refused. Raises :class:`StoreError` when no
        database can be opened at all.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plantfloor-store")
        loop = asyncio.get_running_loop()
        try:
            conn, recovered, created, held = await loop.run_in_executor(
                executor, cls._open_sync, path, lock)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        store = cls(path, max_bytes=max_bytes, executor=executor, conn=conn,
                    recovered_from=recovered, created=created, lock=held)
        store.backlog, store._outbox_bytes = await store._run(outbox_totals)
        return store

    @staticmethod
    def _open_sync(path: Path, lock: bool) -> tuple[sqlite3.Connection, Path | None, bool,
                                                     StoreLock | None]:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of {path}: {exc}") from exc
        held = StoreLock(path) if lock else None
        if held is not None:
            held.acquire()
        try:
            conn, created = _open_or_recover(path)
        except BaseException:
            if held is not None:
                held.release()
            raise
        if isinstance(created, Path):
            return conn, created, True, held
        return conn, None, created, held

    # --- worker thread ------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the store's thread; sqlite errors become StoreError."""
        conn = self._conn
        if conn is None:
            raise StoreError(f"state database {self.path} is closed")

        def call() -> T:
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"state database {self.path}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the store's thread: for the file's other tables
        (:mod:`agent.store.hold`); sqlite errors become StoreError."""
        return await self._run(fn)

    # --- public API -----------------------------------------------------------------------

    async def in_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in one transaction on the store's thread (a maintenance
        step such as starting a new epoch; nothing else writes meanwhile)."""
        def run(conn: sqlite3.Connection) -> T:
            with transaction(conn):
                return fn(conn)

        return await self._run(run)

    async def load(self) -> StoredState:
        """The persisted line and plant state."""

        def read(conn: sqlite3.Connection) -> tuple[dict[str, LineState], str | None, int]:
            lines = {row[0]: LineState.from_row(row) for row in conn.execute(
                f"SELECT {_LINE_COLUMNS} FROM line_state")}
            row = conn.execute("SELECT plant_json FROM plant_state WHERE id = 1").fetchone()
            epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
            return lines, (row[0] if row else None), int(epoch)

        lines, plant, epoch = await self._run(read)
        return StoredState(lines=lines, plant_json=plant, recovered_from=self.recovered_from,
                           epoch=epoch, created=self.created)

    async def openings(self) -> list[OpeningEntry]:
        """The year-to-date opening balance's entries, in the order recorded."""
        return await self._run(entries_of)

    async def commit_window(self, records: Sequence[NewRecord], lines: Sequence[LineState],
                            plant_json: str | None, reports: Sequence[StoredReport] = (),
                            board: BoardRows | None = None) -> int:
        """Insert ``records``, upsert the state, keep ``reports`` and add ``board`` (the
        board's hours and latest rows), in one transaction; enforce the bound.

        Returns how many of the oldest records this call dropped to stay within
        ``max_bytes``. On failure (disk full, I/O error) raises :class:`StoreError` and
        the database is left exactly as before the call.
        """
        rows = [
            (r.topic, r.payload, r.qos, int(r.retain), r.line, r.seq, iso(r.window_end),
             row_cost(r.topic, r.payload), r.format)
            for r in records
        ]
        states = [s.row() for s in lines]
        kept = [r.row() for r in reports]
        added = sum(row[7] for row in rows)
        limit = self.max_bytes

        def write(conn: sqlite3.Connection) -> tuple[int, int]:
            # the outbox's size is read here, on the store's one thread: a deletion of sent
            # records queued before this commit has been applied (and counted) by now
            current = self._outbox_bytes
            with transaction(conn):
                conn.executemany(
                    "INSERT INTO outbox (topic, payload, qos, retain, line, seq, window_end,"
                    " cost, format) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                conn.executemany(
                    f"INSERT OR REPLACE INTO line_state ({_LINE_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", states)
                conn.executemany(
                    "INSERT OR REPLACE INTO shift_report (line, shift_key, date, shift, start,"
                    " payload) VALUES (?, ?, ?, ?, ?, ?)", kept)
                if plant_json is not None:
                    conn.execute(
                        "INSERT INTO plant_state (id, plant_json) VALUES (1, ?)"
                        " ON CONFLICT(id) DO UPDATE SET plant_json = excluded.plant_json",
                        (plant_json,))
                if board is not None:
                    board.write(conn)
                dropped, freed = trim(conn, current + added - limit)
            self.backlog += len(rows) - dropped
            self._outbox_bytes += added - freed
            return dropped, freed

        dropped, _ = await self._run(write)
        self.dropped += dropped
        if dropped:
            log.warning("outbox full (%d bytes): dropped the %d oldest records", limit, dropped)
        return dropped

    async def pending(self, limit: int, *, newer_than_id: int | None = None,
                      oldest_first: bool = True, only: Sequence[str] | None = None,
                      exclude: Sequence[str] = (),
                      ending_since: datetime | None = None) -> list[OutboxRecord]:
        """Up to ``limit`` unsent records with id > ``newer_than_id``, by id.

        ``only``/``exclude`` select records by output format (each output channel drains
        its own formats). ``ending_since`` (newest first only): the records of windows
        ending at or after it among the newest ``limit`` ids, so that looking for live
        records during a long replay reads no backlog payloads.
        """
        order = "ASC" if oldest_first else "DESC"
        after = -1 if newer_than_id is None else newer_than_id
        where = "id > ?"
        params: list[object] = []
        newest = ending_since is not None and not oldest_first
        if ending_since is not None and newest:
            # ISO 8601 in UTC sorts as time does
            where += " AND window_end >= ?"
            params.append(iso(ending_since))
        if only is not None:
            where += f" AND format IN ({','.join('?' * len(only))})"
            params += list(only)
        if exclude:
            where += f" AND format NOT IN ({','.join('?' * len(exclude))})"
            params += list(exclude)

        def read(conn: sqlite3.Connection) -> list[OutboxRecord]:
            low = after
            if newest:
                # one range of the newest ids bounds the scan (a filter alone would walk the
                # whole backlog when fewer records than the limit are live)
                top = conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]
                low = max(after, top - limit)
            cur = conn.execute(
                "SELECT id, topic, payload, qos, retain, line, seq, window_end, format FROM outbox"
                f" WHERE {where} ORDER BY id {order} LIMIT ?", (low, *params, limit))
            return [
                OutboxRecord(id=i, topic=t, payload=bytes(p), qos=q, retain=bool(r), line=ln,
                             seq=s, window_end=datetime.fromisoformat(w), format=f)
                for i, t, p, q, r, ln, s, w, f in cur
            ]

        return await self._run(read)

    async def mark_sent(self, ids: Sequence[int]) -> None:
        """The broker acknowledged these records: remove them from the outbox."""
        if not ids:
            return
        unique = sorted(set(ids))

        def delete(conn: sqlite3.Connection) -> tuple[int, int]:
            freed = 0
            removed = 0
            with transaction(conn):
                for start in range(0, len(unique), DELETE_CHUNK):
                    chunk = unique[start:start + DELETE_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    count, cost = conn.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(cost), 0) FROM outbox WHERE id IN ({marks})",
                        chunk).fetchone()
                    conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
                    removed += int(count)
                    freed += int(cost)
            self.backlog -= removed
            self._outbox_bytes -= freed
            return removed, freed

        await self._run(delete)

    async def next_bdseq(self, node: str) -> int:
        """The Sparkplug bdSeq of ``node``'s next MQTT session, committed before it is returned.

        0 for a node the file has never seen, else one more than the last (255 wraps to 0).
        Kept in ``meta`` under ``sparkplug_bdseq <group>/<node>``: it belongs to that edge
        node, and because it is durable before the CONNECT carries it, no restart (even
        ``kill -9``) uses one twice in a row.
        """
        key = f"sparkplug_bdseq {node}"

        def advance(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                value = 0 if row is None else (int(row[0]) + 1) % 256
                conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key)"
                             " DO UPDATE SET value = excluded.value", (key, str(value)))
            return value

        return await self._run(advance)

    async def close(self) -> None:
        """Close the connection and stop the worker thread."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, conn.close)
        finally:
            self._executor.shutdown(wait=False)
            if self._lock is not None:
                self._lock.release()


# --- helpers run on the worker thread -----------------------------------------------------

def _open_or_recover(path: Path) -> tuple[sqlite3.Connection, bool | Path]:
    """The connection, and True (created now), False (opened) or where a corrupt file went."""
    try:
        return connect(path)
    except sqlite3.DatabaseError as exc:
        if not _is_corruption(exc):
            # locked, full, read-only, I/O: the file may be fine; never discard it
            raise StoreError(f"cannot open the state database {path}: {exc}") from exc
        moved = _move_aside(path)
        log.error("state database %s is unusable (%s); moved to %s, starting afresh",
                  path, exc, moved)
    try:
        return connect(path)[0], moved
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the state database {path}: {exc}") from exc


def _move_aside(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.rename(target.with_name(target.name + suffix))
        if path.exists():
            path.rename(target)
    except OSError as exc:
        raise StoreError(f"state database {path} is unusable and cannot be moved aside: {exc}") \
            from exc
    return target


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB (or a failed integrity check), not a passing condition."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    text = str(exc).lower()
    return any(w in text for w in ("malformed", "not a database", "quick_check", "integrity"))
