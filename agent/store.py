"""The durable outbox and the pipeline's persisted state (SQLite, stdlib ``sqlite3``).

One database file holds three tables:

- ``outbox``: MQTT messages waiting for the broker's acknowledgement, in insertion order
  (``AUTOINCREMENT`` ids are never reused, so id order is commit order and, per line,
  ``seq`` order);
- ``line_state``: per line the counter baseline and the pipeline's opaque totals JSON;
- ``plant_state``: the plant's opaque totals JSON.

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
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from agent.errors import StoreError

__all__ = ["ROW_OVERHEAD", "LineState", "NewRecord", "OutboxRecord", "Store", "StoredState"]

log = logging.getLogger(__name__)

#: bytes counted per outbox row on top of its payload and topic (see the module docstring)
ROW_OVERHEAD = 64
_SCHEMA_VERSION = 1
#: ids per DELETE statement (well below SQLite's bound on host parameters)
_DELETE_CHUNK = 500
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    qos        INTEGER NOT NULL,
    retain     INTEGER NOT NULL,
    line       TEXT,
    seq        INTEGER,
    window_end TEXT    NOT NULL,
    cost       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS line_state (
    line        TEXT PRIMARY KEY,
    counter     INTEGER,
    totals_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plant_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    plant_json TEXT NOT NULL
);
"""

T = TypeVar("T")


@dataclass(frozen=True)
class NewRecord:
    """An MQTT message to be kept until the broker acknowledges it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    line: str | None
    seq: int | None
    window_end: datetime


@dataclass(frozen=True)
class OutboxRecord(NewRecord):
    """A record as stored, with its outbox id (ascending in commit order)."""

    id: int


@dataclass(frozen=True)
class LineState:
    """A line's persisted state: counter baseline and the pipeline's totals (opaque JSON)."""

    line: str
    counter: int | None
    totals_json: str


@dataclass(frozen=True)
class StoredState:
    """What :meth:`Store.load` found; ``recovered_from`` is where a corrupt file was moved."""

    lines: dict[str, LineState]
    plant_json: str | None
    recovered_from: Path | None


def _cost(topic: str, payload: bytes) -> int:
    return len(payload) + len(topic.encode()) + ROW_OVERHEAD


def _iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError("window_end must be timezone-aware")
    return ts.astimezone(UTC).isoformat()


class Store:
    """The SQLite outbox and state. Create with :meth:`open`; all methods are coroutines."""

    def __init__(self, path: Path, *, max_bytes: int, executor: ThreadPoolExecutor,
                 conn: sqlite3.Connection, recovered_from: Path | None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.recovered_from = recovered_from
        self.backlog = 0
        self.dropped = 0
        self._outbox_bytes = 0
        self._executor = executor
        self._conn: sqlite3.Connection | None = conn

    # --- opening ------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, max_bytes: int) -> Store:
        """Open (or create) the database; a corrupt or unreadable file is moved aside.

        The moved file is ``<path>.corrupt-<UTC timestamp>`` (with its ``-wal``/``-shm``);
        a fresh database is started and ``recovered_from`` names the moved file. Raises
        :class:`StoreError` only when no database can be opened at all.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plantfloor-store")
        loop = asyncio.get_running_loop()
        try:
            conn, recovered = await loop.run_in_executor(executor, cls._open_sync, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        store = cls(path, max_bytes=max_bytes, executor=executor, conn=conn,
                    recovered_from=recovered)
        store.backlog, store._outbox_bytes = await store._run(_outbox_totals)
        return store

    @staticmethod
    def _open_sync(path: Path) -> tuple[sqlite3.Connection, Path | None]:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of {path}: {exc}") from exc
        try:
            return _connect(path), None
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                # locked, full, read-only, I/O: the file may be fine; never discard it
                raise StoreError(f"cannot open the state database {path}: {exc}") from exc
            moved = _move_aside(path)
            log.error("state database %s is unusable (%s); moved to %s, starting afresh",
                      path, exc, moved)
        try:
            return _connect(path), moved
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the state database {path}: {exc}") from exc

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

    # --- public API -----------------------------------------------------------------------

    async def load(self) -> StoredState:
        """The persisted line and plant state."""

        def read(conn: sqlite3.Connection) -> tuple[dict[str, LineState], str | None]:
            lines = {
                line: LineState(line, counter, totals)
                for line, counter, totals in conn.execute(
                    "SELECT line, counter, totals_json FROM line_state")
            }
            row = conn.execute("SELECT plant_json FROM plant_state WHERE id = 1").fetchone()
            return lines, (row[0] if row else None)

        lines, plant = await self._run(read)
        return StoredState(lines=lines, plant_json=plant, recovered_from=self.recovered_from)

    async def commit_window(self, records: Sequence[NewRecord], lines: Sequence[LineState],
                            plant_json: str | None) -> int:
        """Insert ``records`` and upsert the state in one transaction; enforce the bound.

        Returns how many of the oldest records this call dropped to stay within
        ``max_bytes``. On failure (disk full, I/O error) raises :class:`StoreError` and
        the database is left exactly as before the call.
        """
        rows = [
            (r.topic, r.payload, r.qos, int(r.retain), r.line, r.seq, _iso(r.window_end),
             _cost(r.topic, r.payload))
            for r in records
        ]
        states = [(s.line, s.counter, s.totals_json) for s in lines]
        added = sum(row[7] for row in rows)
        limit = self.max_bytes
        current = self._outbox_bytes

        def write(conn: sqlite3.Connection) -> tuple[int, int]:
            with _transaction(conn):
                conn.executemany(
                    "INSERT INTO outbox (topic, payload, qos, retain, line, seq, window_end,"
                    " cost) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                conn.executemany(
                    "INSERT INTO line_state (line, counter, totals_json) VALUES (?, ?, ?)"
                    " ON CONFLICT(line) DO UPDATE SET counter = excluded.counter,"
                    " totals_json = excluded.totals_json", states)
                if plant_json is not None:
                    conn.execute(
                        "INSERT INTO plant_state (id, plant_json) VALUES (1, ?)"
                        " ON CONFLICT(id) DO UPDATE SET plant_json = excluded.plant_json",
                        (plant_json,))
                return _trim(conn, current + added - limit)

        dropped, freed = await self._run(write)
        self.backlog += len(rows) - dropped
        self._outbox_bytes += added - freed
        self.dropped += dropped
        if dropped:
            log.warning("outbox full (%d bytes): dropped the %d oldest records", limit, dropped)
        return dropped

    async def pending(self, limit: int, *, newer_than_id: int | None = None,
                      oldest_first: bool = True) -> list[OutboxRecord]:
        """Up to ``limit`` unsent records with id > ``newer_than_id``, by id."""
        order = "ASC" if oldest_first else "DESC"
        after = -1 if newer_than_id is None else newer_than_id

        def read(conn: sqlite3.Connection) -> list[OutboxRecord]:
            cur = conn.execute(
                "SELECT id, topic, payload, qos, retain, line, seq, window_end FROM outbox"
                f" WHERE id > ? ORDER BY id {order} LIMIT ?", (after, limit))
            return [
                OutboxRecord(id=i, topic=t, payload=bytes(p), qos=q, retain=bool(r), line=ln,
                             seq=s, window_end=datetime.fromisoformat(w))
                for i, t, p, q, r, ln, s, w in cur
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
            with _transaction(conn):
                for start in range(0, len(unique), _DELETE_CHUNK):
                    chunk = unique[start:start + _DELETE_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    costs = conn.execute(
                        f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING cost", chunk
                    ).fetchall()
                    removed += len(costs)
                    freed += sum(c for (c,) in costs)
            return removed, freed

        removed, freed = await self._run(delete)
        self.backlog -= removed
        self._outbox_bytes -= freed

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


# --- helpers run on the worker thread -----------------------------------------------------

def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"unknown schema version {version}")
        with _transaction(conn):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


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


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _outbox_totals(conn: sqlite3.Connection) -> tuple[int, int]:
    count, total = conn.execute("SELECT COUNT(*), COALESCE(SUM(cost), 0) FROM outbox").fetchone()
    return int(count), int(total)


def _trim(conn: sqlite3.Connection, excess: int) -> tuple[int, int]:
    """Delete the oldest rows until ``excess`` bytes are freed; (rows, bytes) deleted."""
    if excess <= 0:
        return 0, 0
    freed = 0
    last_id = None
    count = 0
    cur = conn.execute("SELECT id, cost FROM outbox ORDER BY id ASC")
    for row_id, cost in cur:
        freed += cost
        count += 1
        last_id = row_id
        if freed >= excess:
            break
    cur.close()
    if last_id is not None:
        conn.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
    return count, freed


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB (or a failed integrity check), not a passing condition."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    text = str(exc).lower()
    return any(w in text for w in ("malformed", "not a database", "quick_check", "integrity"))
