"""The board's tables of the state file: written with each window, read by ``plantfloor board``.

``line_hour`` and ``line_hour_down`` add up each window's :class:`~agent.core.hourly.HourDelta`
per line and plant-local hour (kept ``storage.history_days`` days); ``board_latest`` holds
each line's and the plant's latest payload with the running shift and day sums and how long
the line has been in its reason. :class:`BoardRows` is written inside
:meth:`agent.store.Store.commit_window`'s transaction; the readers below run on a
read-only connection (``open_readonly``) in WAL mode, so they never block the agent.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from agent.store.records import iso

__all__ = ["BoardRows", "HourRow", "LatestRow", "read_down", "read_hours", "read_latest"]

_HOUR_UPSERT = (
    "INSERT INTO line_hour (line, hour, units, target, planned_s, run_s, minor_stop_s, unknown_s,"
    " covered_s, windows) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
    " ON CONFLICT(line, hour) DO UPDATE SET units = units + excluded.units,"
    " target = target + excluded.target, planned_s = planned_s + excluded.planned_s,"
    " run_s = run_s + excluded.run_s, minor_stop_s = minor_stop_s + excluded.minor_stop_s,"
    " unknown_s = unknown_s + excluded.unknown_s, covered_s = covered_s + excluded.covered_s,"
    " windows = windows + 1")
_DOWN_UPSERT = (
    "INSERT INTO line_hour_down (line, hour, reason, seconds) VALUES (?, ?, ?, ?)"
    " ON CONFLICT(line, hour, reason) DO UPDATE SET seconds = seconds + excluded.seconds")
# the running sums go on while the shift (day) is the same, and start again with a new one;
# reason_since stays while the reason does
_LATEST_UPSERT = (
    "INSERT INTO board_latest (line, window_end, reason, reason_since, shift_key, shift_target,"
    " shift_planned, shift_covered, day_key, day_target, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(line) DO UPDATE SET window_end = excluded.window_end,"
    " reason_since = CASE WHEN reason IS excluded.reason THEN reason_since"
    "   ELSE excluded.reason_since END,"
    " reason = excluded.reason,"
    " shift_target = CASE WHEN shift_key = excluded.shift_key"
    "   THEN shift_target + excluded.shift_target ELSE excluded.shift_target END,"
    " shift_planned = CASE WHEN shift_key = excluded.shift_key"
    "   THEN shift_planned + excluded.shift_planned ELSE excluded.shift_planned END,"
    " shift_covered = CASE WHEN shift_key = excluded.shift_key"
    "   THEN shift_covered + excluded.shift_covered ELSE excluded.shift_covered END,"
    " shift_key = excluded.shift_key,"
    " day_target = CASE WHEN day_key = excluded.day_key"
    "   THEN day_target + excluded.day_target ELSE excluded.day_target END,"
    " day_key = excluded.day_key, payload = excluded.payload")


class HourDelta(Protocol):
    """One window's contribution to its line's hour (:class:`agent.core.hourly.HourDelta`)."""

    @property
    def line(self) -> str: ...
    @property
    def hour(self) -> datetime: ...
    @property
    def units(self) -> int: ...
    @property
    def target(self) -> float: ...
    @property
    def planned_s(self) -> float: ...
    @property
    def run_s(self) -> float: ...
    @property
    def minor_stop_s(self) -> float: ...
    @property
    def unknown_s(self) -> float: ...
    @property
    def covered_s(self) -> float: ...
    @property
    def down_s(self) -> dict[str, float]: ...


class Latest(Protocol):
    """A line's latest window (:class:`agent.core.hourly.Latest`)."""

    @property
    def line(self) -> str: ...
    @property
    def window_end(self) -> datetime: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def shift_key(self) -> str: ...
    @property
    def day_key(self) -> str: ...
    @property
    def target(self) -> float: ...
    @property
    def planned_s(self) -> float: ...
    @property
    def covered_s(self) -> float: ...
    @property
    def payload(self) -> bytes: ...


@dataclass(frozen=True)
class BoardRows:
    """What one or more windows add to the board's tables; ``keep_days`` of hours are kept."""

    hours: Sequence[HourDelta]
    latest: Sequence[Latest]
    keep_days: int

    def write(self, conn: sqlite3.Connection) -> None:
        """Add the rows up (inside the caller's transaction) and forget hours past the horizon."""
        conn.executemany(_HOUR_UPSERT, [
            (h.line, iso(h.hour), h.units, h.target, h.planned_s, h.run_s, h.minor_stop_s,
             h.unknown_s, h.covered_s) for h in self.hours])
        conn.executemany(_DOWN_UPSERT, [
            (h.line, iso(h.hour), reason, seconds)
            for h in self.hours for reason, seconds in h.down_s.items()])
        conn.executemany(_LATEST_UPSERT, [
            (x.line, iso(x.window_end), x.reason, iso(x.window_end), x.shift_key, x.target,
             x.planned_s, x.covered_s, x.day_key, x.target, x.payload.decode())
            for x in self.latest])
        if self.hours:
            horizon = iso(max(h.hour for h in self.hours) - timedelta(days=self.keep_days))
            conn.execute("DELETE FROM line_hour WHERE hour < ?", (horizon,))
            conn.execute("DELETE FROM line_hour_down WHERE hour < ?", (horizon,))


@dataclass(frozen=True)
class LatestRow:
    """A line's (or the plant's, line ``""``) row of ``board_latest``."""

    line: str
    window_end: datetime
    reason: str | None
    reason_since: datetime
    shift_key: str
    shift_target: float
    shift_planned: float
    shift_covered: float
    day_key: str
    day_target: float
    payload: str


@dataclass(frozen=True)
class HourRow:
    """A line's hour: sums of its windows."""

    line: str
    hour: datetime
    units: int
    target: float
    planned_s: float
    run_s: float
    minor_stop_s: float
    unknown_s: float
    covered_s: float
    windows: int


def read_latest(conn: sqlite3.Connection) -> list[LatestRow]:
    """Every line's and the plant's latest row."""
    return [LatestRow(line, datetime.fromisoformat(end), reason, datetime.fromisoformat(since),
                      sk, float(st), float(sp), float(sc), dk, float(dt), payload)
            for line, end, reason, since, sk, st, sp, sc, dk, dt, payload in conn.execute(
                "SELECT line, window_end, reason, reason_since, shift_key, shift_target,"
                " shift_planned, shift_covered, day_key, day_target, payload FROM board_latest"
                " ORDER BY line")]


def read_hours(conn: sqlite3.Connection, since: datetime, until: datetime,
               line: str | None = None) -> list[HourRow]:
    """The hours in [since, until), by line and hour."""
    where, params = "hour >= ? AND hour < ?", [iso(since), iso(until)]
    if line is not None:
        where += " AND line = ?"
        params.append(line)
    return [HourRow(ln, datetime.fromisoformat(h), int(u), float(t), float(p), float(r),
                    float(m), float(k), float(c), int(w))
            for ln, h, u, t, p, r, m, k, c, w in conn.execute(
                "SELECT line, hour, units, target, planned_s, run_s, minor_stop_s, unknown_s,"
                f" covered_s, windows FROM line_hour WHERE {where} ORDER BY line, hour", params)]


def read_down(conn: sqlite3.Connection, since: datetime, until: datetime) -> dict[str, dict[str, float]]:
    """Downtime seconds by line and reason over the hours in [since, until)."""
    out: dict[str, dict[str, float]] = {}
    for line, reason, seconds in conn.execute(
            "SELECT line, reason, SUM(seconds) FROM line_hour_down WHERE hour >= ? AND hour < ?"
            " GROUP BY line, reason", (iso(since), iso(until))):
        out.setdefault(line, {})[reason] = float(seconds)
    return out
