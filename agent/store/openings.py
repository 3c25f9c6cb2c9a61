"""The year-to-date opening balance: units an operator records as built earlier in a
production year, before the agent counted them (``plantfloor state opening``).

Entries are audited: never changed or removed (the table's triggers refuse it), a
correction is a new entry. What a year's balance is (the latest entry per line, and for
the plant itself, summed) is :func:`agent.core.totals.year_openings`.
"""

from __future__ import annotations

import getpass
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from agent.contract.errors import StoreError
from agent.store.file import offline_transaction, open_readonly

__all__ = ["OpeningEntry", "entries_of", "read_openings", "record_opening"]


@dataclass(frozen=True, slots=True)
class OpeningEntry:
    """One recorded entry (``line`` None: the plant's own)."""

    id: int
    year: int
    line: str | None
    units: int
    through: date
    note: str
    recorded_at: datetime
    recorded_by: str


def _rows(conn: sqlite3.Connection) -> list[OpeningEntry]:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "opening_balance" not in tables:
        return []
    return [OpeningEntry(id=r[0], year=r[1], line=r[2] or None, units=r[3],
                         through=date.fromisoformat(r[4]), note=r[5],
                         recorded_at=datetime.fromisoformat(r[6]), recorded_by=r[7])
            for r in conn.execute("SELECT id, year, line, units, through, note, recorded_at,"
                                  " recorded_by FROM opening_balance ORDER BY id")]


def entries_of(conn: sqlite3.Connection) -> list[OpeningEntry]:
    """Every entry of an open state database, in the order recorded."""
    return _rows(conn)


def read_openings(path: Path) -> list[OpeningEntry]:
    """Every entry, in the order recorded, without writing (a running agent is fine)."""
    conn = open_readonly(path)
    try:
        return _rows(conn)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the state database {path}: {exc}") from exc
    finally:
        conn.close()


def record_opening(path: Path, *, year: int, line: str | None, units: int, through: date,
                   note: str, lines: Sequence[str], now: datetime | None = None) -> OpeningEntry:
    """Append an entry; refused while an agent runs on the file (it reads the balance when
    it starts)."""
    if units < 0:
        raise StoreError(f"an opening balance of {units} units: give a count of 0 or more")
    if through.year != year:
        raise StoreError(f"--through {through} is not in production year {year}")
    if line is not None and line not in lines:
        raise StoreError(f"line {line!r} is not in the config ({', '.join(lines)})")
    if not note.strip():
        raise StoreError("an opening balance needs a note: where the figure comes from")
    at = (now or datetime.now(UTC)).astimezone(UTC)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    path.parent.mkdir(parents=True, exist_ok=True)
    with offline_transaction(path) as conn:
        cur = conn.execute(
            "INSERT INTO opening_balance (year, line, units, through, note, recorded_at,"
            " recorded_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (year, line or "", units, through.isoformat(), note, at.isoformat(), user))
        entry_id = int(cur.lastrowid or 0)
    return OpeningEntry(id=entry_id, year=year, line=line, units=units, through=through,
                        note=note, recorded_at=at, recorded_by=user)
