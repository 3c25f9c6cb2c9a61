"""The site hold: line windows the broker took but the site service has not acknowledged.

With ``site_ack`` configured (:mod:`agent.outputs.siteack`), a line window that the broker
acknowledged moves from the outbox into ``site_hold`` (same id, same bytes) instead of
leaving the file; the site's acknowledgement (a line's epoch and the run of seqs it has
without a gap) deletes it; what stays unacknowledged beyond the timeout is published again
in id order. The hold is bounded like the outbox: by ``storage.max_mb``, oldest dropped
first and counted.

Functions here take the store's connection; they run on the store's thread
(:meth:`agent.store.Store.call`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

from agent.store.file import transaction
from agent.store.outbox import row_cost
from agent.store.records import OutboxRecord, iso

__all__ = ["held_due", "held_totals", "hold", "mark_republished", "next_due", "release"]


def hold(conn: sqlite3.Connection, records: Sequence[OutboxRecord], now: float, max_bytes: int) -> int:
    """Keep ``records`` (the broker took them at ``now``); returns how many of the oldest held
    rows were dropped to stay within ``max_bytes``."""
    rows = [(r.id, r.topic, r.payload, r.qos, int(r.retain), r.line, r.seq, iso(r.window_end), r.format,
             row_cost(r.topic, r.payload), now) for r in records if r.line is not None and r.seq is not None]
    with transaction(conn):
        conn.executemany(
            "INSERT INTO site_hold (id, topic, payload, qos, retain, line, seq, window_end, format, cost, sent_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET sent_at = excluded.sent_at",
            rows)
        total = int(conn.execute("SELECT coalesce(sum(cost), 0) FROM site_hold").fetchone()[0])
        dropped = _trim(conn, total - max_bytes)
    return dropped


def _trim(conn: sqlite3.Connection, excess: int) -> int:
    """Delete the oldest held rows until ``excess`` bytes are freed; the rows deleted."""
    if excess <= 0:
        return 0
    freed = count = 0
    last_id = None
    for row_id, cost in conn.execute("SELECT id, cost FROM site_hold ORDER BY id ASC"):
        freed += cost
        count += 1
        last_id = row_id
        if freed >= excess:
            break
    if last_id is not None:
        conn.execute("DELETE FROM site_hold WHERE id <= ?", (last_id,))
    return count


def release(conn: sqlite3.Connection, acked: dict[str, tuple[int, int]]) -> int:
    """The site has every window of these lines from ``first`` to ``seq``: forget them;
    returns how many."""
    removed = 0
    with transaction(conn):
        for line, (first, seq) in sorted(acked.items()):
            removed += conn.execute("DELETE FROM site_hold WHERE line = ? AND seq BETWEEN ? AND ?",
                                    (line, first, seq)).rowcount
    return removed


def held_totals(conn: sqlite3.Connection) -> tuple[int, datetime | None]:
    """(windows held, the oldest one's window_end)."""
    count, oldest = conn.execute("SELECT count(*), min(window_end) FROM site_hold").fetchone()
    return int(count), datetime.fromisoformat(oldest) if oldest is not None else None


def held_due(conn: sqlite3.Connection, now: float, timeout_s: float, backoff_max_s: float,
             limit: int) -> list[tuple[OutboxRecord, int]]:
    """Held records due for another publication (unacknowledged for ``timeout_s`` doubled per
    earlier attempt, capped at ``backoff_max_s``), in id order, with their attempts."""
    cur = conn.execute(
        "SELECT id, topic, payload, qos, retain, line, seq, window_end, format, attempts FROM site_hold"
        " WHERE sent_at + min(?, ? * (1 << min(attempts, 20))) <= ? ORDER BY id LIMIT ?",
        (backoff_max_s, timeout_s, now, limit))
    return [(OutboxRecord(id=i, topic=t, payload=bytes(p), qos=q, retain=bool(r), line=ln, seq=s,
                          window_end=datetime.fromisoformat(w), format=f), int(a))
            for i, t, p, q, r, ln, s, w, f, a in cur]


def mark_republished(conn: sqlite3.Connection, ids: Sequence[int], now: float) -> None:
    """The broker took these held records again at ``now``: the next wait is twice as long."""
    with transaction(conn):
        conn.executemany("UPDATE site_hold SET sent_at = ?, attempts = attempts + 1 WHERE id = ?",
                         [(now, i) for i in ids])


def next_due(conn: sqlite3.Connection, timeout_s: float, backoff_max_s: float) -> float | None:
    """When the next held record falls due (epoch seconds), or None when nothing is held."""
    row = conn.execute("SELECT min(sent_at + min(?, ? * (1 << min(attempts, 20)))) FROM site_hold",
                       (backoff_max_s, timeout_s)).fetchone()
    return float(row[0]) if row[0] is not None else None
