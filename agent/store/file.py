"""The state database file: schema and migrations, epoch, the agent's lock, SQLite's floor.

The file says what it is and which lifetime wrote it: ``PRAGMA application_id`` marks it
as plantfloor's, ``PRAGMA user_version`` is its schema version, and the ``meta`` table
holds its ``epoch``, an integer drawn when the file is created (its creation time in
milliseconds times 1000, plus three random digits) and never changed afterwards. A lost,
corrupt or replaced file therefore starts a new epoch, and subscribers that key windows
by (line, epoch, seq) never mistake a new window for one they already have.

One agent at a time: the agent holds an exclusive ``flock`` on ``<file>.lock`` while the
store is open; ``plantfloor state rebaseline`` takes the same lock, so it is refused
while an agent runs on the file.

Version 3 adds the ``opening_balance`` table (units built earlier in a production year,
recorded by an operator; entries are immutable, a correction is a new entry). Migrations
run at open in one transaction. Version 1 (0.1.x) kept counter baselines
without their counter's identity: they are dropped on upgrade (the first reading of each
line re-baselines with ``rebaselined``), the outbox, ``seq`` and the totals are kept, and
the file gets its epoch.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from agent.contract.errors import StoreError

__all__ = [
    "APPLICATION_ID",
    "MIN_SQLITE",
    "SCHEMA_VERSION",
    "StoreLock",
    "check_sqlite_version",
    "connect",
    "new_epoch",
    "offline_transaction",
    "open_readonly",
    "transaction",
]

#: ``PRAGMA application_id`` of a plantfloor state file ("plfl")
APPLICATION_ID = 0x706C666C
SCHEMA_VERSION = 3
#: UPSERT (``INSERT ... ON CONFLICT DO UPDATE``) needs 3.24; nothing newer is used
MIN_SQLITE = (3, 24, 0)

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    qos        INTEGER NOT NULL,
    retain     INTEGER NOT NULL,
    line       TEXT,
    seq        INTEGER,
    window_end TEXT    NOT NULL,
    cost       INTEGER NOT NULL,
    format     TEXT    NOT NULL DEFAULT 'json'   -- the output format (agent/outputs) that encoded it
);
CREATE TABLE IF NOT EXISTS line_state (
    line           TEXT PRIMARY KEY,
    totals_json    TEXT NOT NULL,
    identity       TEXT,   -- the counter the baseline belongs to (endpoint, address, type, ...)
    state_identity TEXT,   -- the state point read for the line
    baseline       TEXT,   -- decimal: a uint64 counter exceeds SQLite's signed 64-bit integer
    modulus        TEXT,
    anchor_wall    TEXT,   -- since when the next delta is bounded (wall clock, UTC)
    anchor_mono    REAL,   -- the same on the monotonic clock of boot_id
    last_wall      TEXT,   -- the last good reading
    last_mono      REAL,
    boot_id        TEXT,
    rebaseline     TEXT,   -- reason of a pending re-baseline asked for by an operator
    second_json    TEXT    -- the total or reject counter's memory, with its own identity (JSON)
);
CREATE TABLE IF NOT EXISTS plant_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    plant_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shift_report (
    line      TEXT NOT NULL,   -- the line, or '' for the plant
    shift_key TEXT NOT NULL,   -- the shift instance: name@start
    date      TEXT NOT NULL,   -- its production date (ISO)
    shift     TEXT NOT NULL,   -- its name
    start     TEXT NOT NULL,   -- its start (UTC, ISO)
    payload   TEXT NOT NULL,   -- the report as published (plantfloor.shift/1 JSON)
    PRIMARY KEY (line, shift_key)
);
CREATE TABLE IF NOT EXISTS opening_balance (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,   -- entries in the order recorded
    year        INTEGER NOT NULL,   -- the production year
    line        TEXT    NOT NULL,   -- the line, or '' for units not attributed to a line
    units       INTEGER NOT NULL CHECK (units >= 0),   -- built in the year up to and including through
    through     TEXT    NOT NULL,   -- the last production day covered (ISO date)
    note        TEXT    NOT NULL,   -- where the figure comes from
    recorded_at TEXT    NOT NULL,   -- when it was recorded (UTC, ISO)
    recorded_by TEXT    NOT NULL    -- who recorded it (the operating system user)
);
CREATE TABLE IF NOT EXISTS site_hold (
    id         INTEGER PRIMARY KEY,   -- the record's outbox id (commit order)
    topic      TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    qos        INTEGER NOT NULL,
    retain     INTEGER NOT NULL,
    line       TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    window_end TEXT    NOT NULL,
    format     TEXT    NOT NULL,
    cost       INTEGER NOT NULL,
    sent_at    REAL    NOT NULL,      -- when the broker last took it (wall clock, epoch seconds)
    attempts   INTEGER NOT NULL DEFAULT 0   -- publications after the first (for the backoff)
);
CREATE INDEX IF NOT EXISTS site_hold_line ON site_hold (line, seq);
CREATE TABLE IF NOT EXISTS line_hour (
    line         TEXT NOT NULL,
    hour         TEXT NOT NULL,   -- start of the plant-local hour, UTC ISO (text order = time order)
    units        INTEGER NOT NULL,
    target       REAL NOT NULL,   -- target units of the hour's windows
    planned_s    REAL NOT NULL,
    run_s        REAL NOT NULL,
    minor_stop_s REAL NOT NULL,
    unknown_s    REAL NOT NULL,
    covered_s    REAL NOT NULL,   -- planned seconds of windows the agent was running for
    windows      INTEGER NOT NULL,
    PRIMARY KEY (line, hour)
);
CREATE INDEX IF NOT EXISTS line_hour_by_hour ON line_hour (hour);
CREATE TABLE IF NOT EXISTS line_hour_down (
    line    TEXT NOT NULL,
    hour    TEXT NOT NULL,
    reason  TEXT NOT NULL,
    seconds REAL NOT NULL,   -- downtime seconds of this reason in the hour (planned stops included)
    PRIMARY KEY (line, hour, reason)
);
CREATE INDEX IF NOT EXISTS line_hour_down_by_hour ON line_hour_down (hour);
CREATE TABLE IF NOT EXISTS board_latest (
    line          TEXT PRIMARY KEY,   -- the line, or '' for the plant
    window_end    TEXT NOT NULL,
    reason        TEXT,
    reason_since  TEXT NOT NULL,      -- the end of the first window that ended in this reason
    shift_key     TEXT NOT NULL,      -- production date/shift name of the window
    shift_target  REAL NOT NULL,      -- target units of the shift so far
    shift_planned REAL NOT NULL,
    shift_covered REAL NOT NULL,
    day_key       TEXT NOT NULL,
    day_target    REAL NOT NULL,      -- target units of the production day so far
    payload       TEXT NOT NULL       -- the window's payload as published
);
"""
#: an opening balance is audited: an entry is never changed or removed, a correction is a
#: new entry (the latest per year and line counts)
_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS opening_balance_no_update BEFORE UPDATE ON opening_balance"
    " BEGIN SELECT RAISE(ABORT, 'opening balance entries are never changed: record a"
    " correction as a new entry'); END",
    "CREATE TRIGGER IF NOT EXISTS opening_balance_no_delete BEFORE DELETE ON opening_balance"
    " BEGIN SELECT RAISE(ABORT, 'opening balance entries are never removed: record a"
    " correction as a new entry'); END",
)


def check_sqlite_version(version: str = sqlite3.sqlite_version) -> None:
    """Refuse an SQLite library older than what the store uses, in one sentence."""
    try:
        have = tuple(int(p) for p in version.split(".")[:3])
    except ValueError:
        return
    if have < MIN_SQLITE:
        need = ".".join(map(str, MIN_SQLITE))
        raise StoreError(f"the SQLite library is {version}; plantfloor's state database needs "
                         f"SQLite {need} or newer (upgrade the system's libsqlite3)")


def open_readonly(path: Path) -> sqlite3.Connection:
    """The state file, read-only (a running agent may hold it); a missing file is an error."""
    if not path.exists():
        raise StoreError(f"there is no state database at {path} (storage.path): the agent has "
                         "not run with this config yet")
    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the state database {path}: {exc}") from exc


def new_epoch() -> int:
    """A new epoch: milliseconds since 1970 times 1000 plus three random digits (< 2**53)."""
    return int(time.time() * 1000) * 1000 + random.randrange(1000)


def connect(path: Path) -> tuple[sqlite3.Connection, bool]:
    """Open (creating or migrating) the state file; True when it was created now."""
    check_sqlite_version()
    conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app not in (0, APPLICATION_ID) or (app == 0 and tables and version == 0):
            raise sqlite3.DatabaseError("not a plantfloor state database")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path} has schema version {version}, newer than this plantfloor "
                             f"understands ({SCHEMA_VERSION}): run the newer version")
        created = not tables
        with transaction(conn):
            if version == 1:
                _migrate_v1(conn)
            for statement in _TABLES.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for trigger in _TRIGGERS:
                conn.execute(trigger)
            _add_columns(conn)
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)",
                         (str(new_epoch()),))
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn, created


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """0.1.x: baselines without identity are dropped; totals, seq and the outbox stay."""
    conn.execute("ALTER TABLE outbox ADD COLUMN format TEXT NOT NULL DEFAULT 'json'")
    conn.execute("ALTER TABLE line_state RENAME TO line_state_v1")
    conn.execute(_TABLES.split(";")[2])  # line_state
    conn.execute("INSERT INTO line_state (line, totals_json, rebaseline) SELECT line, totals_json,"
                 " 'the state file was written by plantfloor 0.1, which did not record the"
                 " counter''s identity' FROM line_state_v1")
    conn.execute("DROP TABLE line_state_v1")


def _add_columns(conn: sqlite3.Connection) -> None:
    """Columns added to version 2 before its release (files of development builds)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(line_state)")}
    if "second_json" not in have:
        conn.execute("ALTER TABLE line_state ADD COLUMN second_json TEXT")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def offline_transaction(path: Path) -> Iterator[sqlite3.Connection]:
    """One transaction on the state file by a command, never beside a running agent: the
    file's lock is taken (refused while an agent holds it), the file opened (created or
    migrated), and a SQLite error raised as :class:`StoreError` naming the file."""
    lock = StoreLock(path)
    lock.acquire()
    try:
        conn, _ = connect(path)
        try:
            with transaction(conn):
                yield conn
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot write the state database {path}: {exc}") from exc
    finally:
        lock.release()


class StoreLock:
    """An exclusive ``flock`` on ``<file>.lock``: one agent (or state command) per file."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StoreError` naming who holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(f"a plantfloor agent is running on {self.path.with_suffix('')} "
                             f"(pid {holder}); stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
