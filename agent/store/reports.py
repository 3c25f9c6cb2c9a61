"""The stored shift reports, read without writing to the state file (a running agent is
fine): what ``plantfloor report`` renders."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

from agent.contract.errors import StoreError
from agent.contract.payloads import ShiftReport
from agent.store.file import open_readonly

__all__ = ["read_reports"]


def read_reports(path: Path, day: date, shift: str | None = None) -> list[ShiftReport]:
    """The stored reports of production date ``day`` (of one shift name), by start, lines
    first and the plant last."""
    conn = open_readonly(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "shift_report" not in tables:
            return []
        query = "SELECT payload FROM shift_report WHERE date = ?"
        args: list[object] = [day.isoformat()]
        if shift is not None:
            query += " AND shift = ?"
            args.append(shift)
        rows = conn.execute(query + " ORDER BY start, line = '', line", args).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the state database {path}: {exc}") from exc
    finally:
        conn.close()
    return [ShiftReport.model_validate_json(r[0]) for r in rows]
