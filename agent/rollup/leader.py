"""The leader: one replica at a time computes the site figure and publishes it.

Leadership is the session-level advisory lock ``leader:<site>`` on the replica's own
connection (:mod:`agent.rollup.session`); a follower tries to take it every
``leadership.lock_poll_s``, so when the leader dies (its session ends with the process,
``kill -9`` included) another replica leads within about that long.

Each tick, in one REPEATABLE READ transaction on that connection:

1. take the queue of site windows that received rows (``period_change``), and mark their
   production days' sums (``plant_day``) stale: they are summed again before they are used;
2. for each one already published, record revision + 1 (a late window changed it);
3. record the next site windows in order, from the last one (or the site's ``origin``),
   each once it has ended and either every configured line has reported it or
   ``publish.grace_s`` has passed since its end. ``seq`` rises by exactly one per window.

Records go to ``plant_window`` (the figure's outbox) with the exact message; after the
commit they are published in (seq, revision) order and marked, so a new leader re-sends
whatever its predecessor recorded but did not get acknowledged, byte for byte.

A tick that fails for any reason other than a lost database session is rolled back,
logged with its traceback, raised as the ``leader_failing`` alarm in the replica's status,
and tried again every second; the replica keeps committing windows meanwhile. Sums are
numeric, so no stored rows can overflow them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from agent.contract.errors import PublishError
from agent.contract.payloads import encode
from agent.core.calendar import ShiftCalendar
from agent.outputs.mqtt.publisher import Publisher
from agent.rollup import sql
from agent.rollup.config import RollupConfig
from agent.rollup.database import DatabaseUnavailable, SiteIdentity
from agent.rollup.plant import LineAggregate, PeriodTotals, line_windows, site_figure
from agent.rollup.session import ReplicaSession, leader_key

__all__ = ["Leader"]

log = logging.getLogger("plantfloor.rollup.leader")

#: site windows recorded per tick at most (a leader catching up commits in chunks)
MAX_PER_TICK = 500
#: entries of the change queue taken per tick at most (the rest wait for the next ticks)
MAX_CHANGES_PER_TICK = 1000
#: how often a leader whose tick fails (for a reason other than the database's absence) retries
_FAILING_TICK_S = 1.0


class Leader:
    """Tries to lead; while leading, records and publishes the site figure."""

    def __init__(self, cfg: RollupConfig, calendar: ShiftCalendar, session: ReplicaSession,
                 site: SiteIdentity, publisher: Publisher, *,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC),
                 on_change: Callable[[bool], None] = lambda _leader: None) -> None:
        self.cfg = cfg
        self.calendar = calendar
        self.session = session
        self.site = site
        self.publisher = publisher
        self.wall = wall
        self.on_change = on_change
        self.topic = f"{cfg.topic_root}/plant/output"
        self.is_leader = False
        self.recorded = 0
        self.published = 0
        self._publish_error: str | None = None
        self.failing: str | None = None      # why the last tick failed (alarm leader_failing)

    async def run(self) -> None:
        """Until cancelled: try for the lock; once held, tick (the lock goes with the session)."""
        lead = self.cfg.leadership
        while True:
            if not self.is_leader:
                if not await self.session.try_lock(leader_key(self.cfg.site)):
                    await asyncio.sleep(lead.lock_poll_s)
                    continue
                self.is_leader = True
                log.info("leading site %s: publishing %s", self.cfg.site, self.topic)
                self.on_change(True)
            try:
                await self.tick()
                await self.publish_pending()
            except DatabaseUnavailable:
                raise          # the session and its lock are gone: the replica starts again
            except Exception as exc:  # a figure that cannot be computed must not stop ingest
                self._failed(exc)
                await asyncio.sleep(max(lead.tick_s, _FAILING_TICK_S))
                continue
            if self.failing is not None:
                log.info("the site figure is computed again")
                self.failing = None
                self.on_change(True)
            await asyncio.sleep(lead.tick_s)

    def _failed(self, exc: Exception) -> None:
        """Log (once per distinct failure, with its traceback) and raise the alarm."""
        text = f"the site figure cannot be computed: {type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
        if text != self.failing:
            log.error("%s; windows are still committed, the leader tries again", text, exc_info=exc)
            self.failing = text
            self.on_change(True)

    async def tick(self) -> int:
        """Record what is due now; returns the number of records (new windows and revisions)."""
        now = self.wall()
        interval = self.site.interval_s
        made = 0
        async with self.session.transaction() as conn:
            await conn.execute(sql.REPEATABLE_READ)
            cur = await conn.execute(sql.TAKE_CHANGES, {"site": self.cfg.site, "limit": MAX_CHANGES_PER_TICK})
            taken = await cur.fetchall()
            changed = sorted({row[0] for row in taken})
            days = sorted({row[1] for row in taken})
            if days:
                await conn.execute(sql.MARK_DAYS_STALE, {"site": self.cfg.site, "days": days})
            cur = await conn.execute(sql.LAST_PLANT_WINDOW, {"site": self.cfg.site, "epoch": self.site.epoch})
            last = await cur.fetchone()
            last_seq, next_start = (int(last[0]), last[2]) if last is not None else (0, self.site.origin)
            for start in changed:
                if self.site.origin <= start < next_start:
                    made += await self._revise(conn, start, now)
            while made < MAX_PER_TICK:
                start, end = self.calendar.window_bounds(next_start, interval)
                if end > now:
                    break
                lines = await self._lines(conn, start)
                reported = {agg.line for agg in lines}
                if (not all(line in reported for line in self.cfg.line_gateway)
                        and (now - end).total_seconds() < self.cfg.publish.grace_s):
                    break
                last_seq += 1
                await self._record(conn, seq=last_seq, revision=0, start=start, end=end, lines=lines,
                                   first=None, now=now)
                next_start = end
                made += 1
        self.recorded += made
        return made

    async def publish_pending(self) -> int:
        """Publish recorded figures not yet acknowledged, in order; returns how many went out."""
        rows = await self.session.fetch(sql.UNPUBLISHED, {"site": self.cfg.site, "epoch": self.site.epoch,
                                                          "limit": MAX_PER_TICK})
        sent = 0
        for seq, revision, message in rows:
            try:
                await self.publisher.publish(self.topic, str(message).encode(), qos=1)
            except PublishError as exc:
                if str(exc) != self._publish_error:
                    log.warning("site figure seq %s revision %s not published yet: %s", seq, revision, exc)
                    self._publish_error = str(exc)
                break
            if self._publish_error is not None:
                log.info("publishing the site figure again")
                self._publish_error = None
            await self.session.fetch(sql.MARK_PUBLISHED, {"site": self.cfg.site, "epoch": self.site.epoch,
                                                          "seq": seq, "revision": revision})
            sent += 1
        self.published += sent
        return sent

    # --- one record -------------------------------------------------------------------------

    async def _revise(self, conn: AsyncConnection[TupleRow], start: datetime, now: datetime) -> int:
        cur = await conn.execute(sql.PERIOD_REVISIONS, {"site": self.cfg.site, "epoch": self.site.epoch,
                                                        "period_start": start})
        revisions = await cur.fetchall()
        if not revisions:
            return 0
        seq, first = int(revisions[0][0]), revisions[0][2]
        lines = await self._lines(conn, start)
        if line_windows(lines) == dict(revisions[-1][2]):
            return 0      # a change the last revision already counted (its queue entry was left for later)
        _, end = self.calendar.window_bounds(start, self.site.interval_s)
        await self._record(conn, seq=seq, revision=int(revisions[-1][1]) + 1, start=start, end=end,
                           lines=lines, first=dict(first), now=now)
        return 1

    async def _record(self, conn: AsyncConnection[TupleRow], *, seq: int, revision: int, start: datetime,
                      end: datetime, lines: Sequence[LineAggregate], first: dict[str, int] | None,
                      now: datetime) -> None:
        totals = await self._totals(conn, start, lines)
        late = (now - end).total_seconds() > self.site.interval_s
        figure = site_figure(self.cfg, self.calendar, epoch=self.site.epoch, seq=seq, revision=revision,
                             start=start, end=end, lines=lines, totals=totals, first_windows=first,
                             historical=late)
        await conn.execute(sql.ADD_REVISION, {
            "site": self.cfg.site, "epoch": self.site.epoch, "seq": seq, "revision": revision,
            "period_start": start, "period_end": end, "units": figure.units,
            "line_windows": Jsonb(line_windows(lines)), "message": encode(figure).decode()})

    async def _lines(self, conn: AsyncConnection[TupleRow], start: datetime) -> list[LineAggregate]:
        cur = await conn.execute(sql.PERIOD_LINES, {"site": self.cfg.site, "period_start": start})
        return [LineAggregate(line=r[0], gateway=r[1], units=int(r[2]), windows=int(r[3]), quality=int(r[4]),
                              day_target=float(r[5])) for r in await cur.fetchall()]

    async def _totals(self, conn: AsyncConnection[TupleRow], start: datetime,
                      lines: Sequence[LineAggregate]) -> PeriodTotals:
        day = self.calendar.production_date(start)
        # the sums of earlier days that got rows since they were last summed
        await conn.execute(sql.REFRESH_DAYS, {"site": self.cfg.site, "day": day})
        cur = await conn.execute(sql.PERIOD_TOTALS, {"site": self.cfg.site, "day": day,
                                                     "year_start": date(day.year, 1, 1), "period_start": start})
        row = await cur.fetchone()
        assert row is not None
        targets: dict[str, float] = {}
        for agg in lines:
            targets[agg.line] = max(targets.get(agg.line, 0.0), agg.day_target)
        missing = [line for line in self.cfg.line_gateway if line not in targets]
        if missing:
            cur = await conn.execute(sql.LATEST_DAY_TARGETS, {"site": self.cfg.site, "day": day, "lines": missing})
            targets.update({r[0]: float(r[1]) for r in await cur.fetchall()})
        return PeriodTotals(units_today=int(row[0]), units_year_to_date=int(row[1]), counted_since=row[2],
                            target_today=sum(targets.values()))
