"""The site's figures: the roll-up's PostgreSQL (the historian's tables), read-only, and
its commits heard by ``LISTEN plantfloor_board``.

Every line window of every gateway is a row of ``plantfloor.line_window`` with the payload
the agent published; the board reads the same figures from them as a gateway's board reads
from its state file (the latest payload per line, the sums per plant-local hour, the
running shift and day targets, the time in the current reason), and the site's plant
figure from ``plantfloor.plant_window_latest``. Migration 4 (``0004_board_notify.sql``)
notifies ``plantfloor_board`` with every insert; the board listens on a connection of its
own (psycopg's ``notifies()`` holds its connection, psycopg issue 340) and queries on
another. While it cannot listen it reads every :data:`FALLBACK_S` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from agent.board.figures import (
    BoardSite,
    BoardState,
    HistoryPoint,
    ShiftSummary,
    build_state,
    history_points,
)
from agent.contract.errors import StoreError
from agent.contract.payloads import ShiftReport
from agent.core.calendar import ShiftCalendar
from agent.core.hourly import attainment, coverage, hour_start
from agent.rollup.config import RollupConfig
from agent.rollup.database import Database
from agent.store.board import HourRow, LatestRow

__all__ = ["CHANNEL", "SiteGateway"]

log = logging.getLogger("plantfloor.board")

CHANNEL = "plantfloor_board"
FALLBACK_S = 5.0
PREVIOUS_SHIFTS = 6
#: how far back a line's latest window is looked for
LOOKBACK = timedelta(days=2)

_TARGET = ("(w.payload->>'target_per_hour')::float8"
           " * extract(epoch FROM w.window_end - w.window_start) / 3600")
_PLANNED = "coalesce((w.payload->'time'->>'planned_s')::float8, 0)"
_COVERED = f"CASE WHEN w.payload->'events' ? 'agent_offline' THEN 0 ELSE {_PLANNED} END"

LATEST = f"""
WITH latest AS (
    SELECT DISTINCT ON (line) line, window_end, shift_start, production_date, payload
      FROM plantfloor.line_window
     WHERE site = %(site)s AND period_start >= %(since)s
     ORDER BY line, window_end DESC)
SELECT l.line, l.window_end, l.payload->>'reason',
       (SELECT min(w.window_end) FROM plantfloor.line_window w
         WHERE w.site = %(site)s AND w.line = l.line AND w.period_start >= %(since)s
           AND w.window_end > coalesce((
               SELECT max(x.window_end) FROM plantfloor.line_window x
                WHERE x.site = %(site)s AND x.line = l.line AND x.period_start >= %(since)s
                  AND (x.payload->>'reason') IS DISTINCT FROM (l.payload->>'reason')),
               '-infinity')),
       l.shift_start::text, s.target, s.planned, s.covered,
       l.production_date::text, d.target, l.payload::text
  FROM latest l
  LEFT JOIN LATERAL (
      SELECT coalesce(sum({_TARGET}), 0) AS target, coalesce(sum({_PLANNED}), 0) AS planned,
             coalesce(sum({_COVERED}), 0) AS covered
        FROM plantfloor.line_window w
       WHERE w.site = %(site)s AND w.line = l.line AND w.shift_start = l.shift_start
         AND w.period_start >= %(since)s) s ON true
  LEFT JOIN LATERAL (
      SELECT coalesce(sum({_TARGET}), 0) AS target
        FROM plantfloor.line_window w
       WHERE w.site = %(site)s AND w.line = l.line AND w.production_date = l.production_date
         AND w.period_start >= %(since)s) d ON true
"""

PLANT = """
SELECT period_end, payload::text FROM plantfloor.plant_window_latest
 WHERE site = %(site)s ORDER BY period_start DESC LIMIT 1
"""

HOURS = f"""
SELECT w.line, date_trunc('hour', w.window_start, %(tz)s), sum(w.units), sum({_TARGET}),
       sum({_PLANNED}), sum(coalesce((w.payload->'time'->>'run_s')::float8, 0)),
       sum(coalesce((w.payload->'time'->>'minor_stop_s')::float8, 0)),
       sum(coalesce((w.payload->'time'->>'unknown_s')::float8, 0)), sum({_COVERED}), count(*)
  FROM plantfloor.line_window w
 WHERE w.site = %(site)s AND w.window_start >= %(since)s AND w.window_start < %(until)s
   AND w.period_start >= %(since)s - interval '1 hour' AND (%(line)s::text IS NULL OR w.line = %(line)s)
 GROUP BY 1, 2 ORDER BY 1, 2
"""

DOWN = """
SELECT w.line, d.key, sum(d.value::float8)
  FROM plantfloor.line_window w, jsonb_each_text(w.payload->'time'->'down_s') d
 WHERE w.site = %(site)s AND w.window_start >= %(since)s AND w.window_start < %(until)s
   AND w.period_start >= %(since)s - interval '1 hour'
 GROUP BY 1, 2
"""

PREVIOUS = """
SELECT p.production_date::text, p.shift_name, p.shift_start, p.units, p.target,
       p.availability, p.performance, p.quality, p.oee,
       (SELECT coalesce(sum((r.payload->'time'->>'covered_s')::float8), 0)
          FROM plantfloor.shift_report r
         WHERE r.site = p.site AND r.shift_start = p.shift_start),
       (SELECT coalesce(sum((r.payload->'time'->>'calendar_s')::float8), 0)
          FROM plantfloor.shift_report r
         WHERE r.site = p.site AND r.shift_start = p.shift_start)
  FROM plantfloor.plant_shift_report p
 WHERE p.site = %(site)s ORDER BY p.shift_start DESC LIMIT %(limit)s
"""

REPORTS = """
SELECT payload::text FROM plantfloor.shift_report
 WHERE site = %(site)s AND production_date = %(day)s ORDER BY shift_start, line
"""


class SiteGateway:
    """Reads the site's board figures from the roll-up's database (never writes)."""

    def __init__(self, cfg: RollupConfig, *, now: Callable[[], datetime] | None = None) -> None:
        self.cfg = cfg
        self.site = BoardSite(cfg.site, cfg.timezone, cfg.publish.interval_s,
                              cfg.board.red_after_s,
                              tuple(line for gw in cfg.gateways for line in gw.lines), 400)
        self.calendar = ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)
        self.now = now or (lambda: datetime.now(UTC))
        self.db = Database(cfg.database, application_name="plantfloor-board")
        self._conn: AsyncConnection[TupleRow] | None = None
        # one transaction at a time on the query connection (the hub and the API share it)
        self._lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._dirty = True
        self.listening = asyncio.Event()
        self._last_read = 0.0

    # --- live changes -----------------------------------------------------------------

    async def changed(self) -> bool:
        """True after a notification (or every :data:`FALLBACK_S` while not listening)."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="board-listen")
        if not self.listening.is_set() and time.monotonic() - self._last_read > FALLBACK_S:
            self._dirty = True
        moved, self._dirty = self._dirty, False
        if moved:
            self._last_read = time.monotonic()
        return moved

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                conn = await self.db.connect_session()
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._dirty = True       # what was committed while nobody listened
                    self.listening.set()
                    if failures:
                        log.info("listening to the roll-up's database again")
                    failures = 0
                    async for _note in conn.notifies():
                        self._dirty = True
            except (psycopg.Error, StoreError) as exc:
                if failures == 0:
                    log.warning("cannot listen to the roll-up's database (%s): reading every "
                                "%g s", " ".join(str(exc).split()), FALLBACK_S)
                failures += 1
            self.listening.clear()
            await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))

    # --- reading ----------------------------------------------------------------------

    async def _query(self, fn: Callable[[AsyncConnection[TupleRow]], Any]) -> Any:
        async with self._lock:
            return await self._query_locked(fn)

    async def _query_locked(self, fn: Callable[[AsyncConnection[TupleRow]], Any]) -> Any:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await self.db.connect_session()
            async with self._conn.transaction():
                await self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return await fn(self._conn)
        except psycopg.Error as exc:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
            raise StoreError(f"cannot read the roll-up's database: {' '.join(str(exc).split())}") \
                from exc

    async def state(self, state_id: str) -> BoardState:
        """Everything the board shows, read in one read-only transaction."""
        now = self.now()
        period = self.calendar.period_at(now)
        first = hour_start(period.start, self.site.tz)
        base = {"site": self.site.site, "since": now - LOOKBACK}

        async def read(conn: AsyncConnection[TupleRow]) -> BoardState:
            latest: list[LatestRow] = []
            for (line, end, reason, since, shift_key, s_target, s_planned, s_covered, day_key,
                 d_target, payload) in await (await conn.execute(LATEST, base)).fetchall():
                latest.append(LatestRow(line, end, reason, since or end, shift_key,
                                        float(s_target), float(s_planned), float(s_covered),
                                        day_key, float(d_target), payload))
            plant = await (await conn.execute(PLANT, base)).fetchone()
            if plant is not None and latest:
                latest.append(LatestRow("", plant[0], None, plant[0], "", sum(
                    r.shift_target for r in latest), 0.0, 0.0, "",
                    sum(r.day_target for r in latest), plant[1]))
            hours = await self._hours(conn, first, period.end, None)
            down: dict[str, dict[str, float]] = {}
            for line, reason, seconds in await (await conn.execute(DOWN, {
                    **base, "since": first, "until": period.end})).fetchall():
                down.setdefault(line, {})[reason] = float(seconds)
            previous = [ShiftSummary(
                line=None, date=d, shift=name, start=start, units=int(units),
                target=float(target), attainment=attainment(int(units), float(target)),
                availability=_opt(a), performance=_opt(p), quality=_opt(q), oee=_opt(o),
                coverage=coverage(float(cov), float(cal)))
                for d, name, start, units, target, a, p, q, o, cov, cal in await (
                    await conn.execute(PREVIOUS, {**base, "limit": PREVIOUS_SHIFTS})).fetchall()]
            return build_state(self.site, self.calendar, latest, hours, down, previous, now,
                               state_id)

        result: BoardState = await self._query(read)
        return result

    async def _hours(self, conn: AsyncConnection[TupleRow], since: datetime, until: datetime,
                     line: str | None) -> list[HourRow]:
        rows = await (await conn.execute(HOURS, {"site": self.site.site, "since": since,
                                                 "until": until, "tz": self.site.timezone,
                                                 "line": line})).fetchall()
        return [HourRow(ln, h.astimezone(UTC), int(u), float(t), float(p), float(r), float(m),
                        float(k), float(c), int(n)) for ln, h, u, t, p, r, m, k, c, n in rows]

    async def history(self, bucket: Literal["hour", "day", "week"], days: int,
                      line: str | None) -> list[HistoryPoint]:
        """Units and target by hour, day or week over the last ``days`` days."""
        until = hour_start(self.now(), self.site.tz) + timedelta(hours=1)
        since = until - timedelta(days=days)

        async def read(conn: AsyncConnection[TupleRow]) -> list[HistoryPoint]:
            return history_points(self.site, await self._hours(conn, since, until, line), bucket)

        result: list[HistoryPoint] = await self._query(read)
        return result

    async def reports(self, day: date) -> list[ShiftReport]:
        """The lines' stored shift reports of production date ``day``."""

        async def read(conn: AsyncConnection[TupleRow]) -> list[ShiftReport]:
            rows = await (await conn.execute(REPORTS, {"site": self.site.site, "day": day})).fetchall()
            return [ShiftReport.model_validate_json(r[0], extra="ignore") for r in rows]

        result: list[ShiftReport] = await self._query(read)
        return result

    async def close(self) -> None:
        """Stop listening and close the connections."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None


def _opt(x: Any) -> float | None:
    return None if x is None else round(float(x), 4)
