"""The outbox's accounting inside the state file: each row's cost in bytes, the totals, and
trimming the oldest rows when a commit takes the outbox above its bound."""

from __future__ import annotations

import sqlite3

__all__ = ["DELETE_CHUNK", "ROW_OVERHEAD", "outbox_totals", "row_cost", "trim"]

#: bytes counted per outbox row on top of its payload and topic (see :mod:`agent.store.store`)
ROW_OVERHEAD = 64
#: ids per DELETE statement (well below SQLite's bound on host parameters)
DELETE_CHUNK = 500


def row_cost(topic: str, payload: bytes) -> int:
    return len(payload) + len(topic.encode()) + ROW_OVERHEAD


def outbox_totals(conn: sqlite3.Connection) -> tuple[int, int]:
    count, total = conn.execute("SELECT COUNT(*), COALESCE(SUM(cost), 0) FROM outbox").fetchone()
    return int(count), int(total)


def trim(conn: sqlite3.Connection, excess: int) -> tuple[int, int]:
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


