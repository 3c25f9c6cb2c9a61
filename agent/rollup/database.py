"""The replica's database: one object owns the connection pool from open to close.

``Database.open()`` waits for the server (a replica may start before PostgreSQL, or during
a fail-over) with capped backoff, logging the transition once; ``close()`` returns every
connection. Writers borrow pool connections; a replica's *session* (its locks) is a
dedicated connection outside the pool (:mod:`agent.rollup.session`), since an advisory
lock belongs to the connection that took it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from agent.contract.errors import StoreError
from agent.rollup import sql
from agent.rollup.config import DatabaseConfig
from agent.rollup.migrate import apply_migrations
from agent.rollup.rows import Rejected, ShiftRow, WindowRow

__all__ = ["BatchRefused", "Database", "DatabaseUnavailable", "SiteIdentity", "new_epoch", "refuses_data"]

log = logging.getLogger("plantfloor.rollup.db")

_BACKOFF_BASE_S = 0.5
_BACKOFF_MAX_S = 10.0


class DatabaseUnavailable(StoreError):
    """PostgreSQL cannot be reached, or a connection was lost (retried)."""


class BatchRefused(StoreError):
    """PostgreSQL refused the data of a batch (a value it cannot store): retried row by row."""


@dataclass(frozen=True)
class SiteIdentity:
    """The site figure's identity: its epoch, the start of seq 1, and the site's grid."""

    site: str
    epoch: int
    origin: datetime
    interval_s: int


#: SQLSTATE classes about the data of a statement, not the database: 22 data exception
#: (numeric out of range, invalid text), 23 integrity, 54 program limit (an index row too big)
_DATA_CLASSES = ("22", "23", "54")


def refuses_data(exc: BaseException) -> bool:
    """True when PostgreSQL (or psycopg, before sending) refused the *values* of a statement:
    retrying cannot help, the message is rejected. psycopg raises SQLSTATE 54000 as an
    ``OperationalError``, like a lost connection: the class tells them apart."""
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
        return True
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and state[:2] in _DATA_CLASSES


def new_epoch() -> int:
    """Like an agent's: milliseconds since 1970 times 1000 plus three random digits."""
    return int(time.time() * 1000) * 1000 + random.randrange(1000)


_WINDOW_COLUMNS = ("site", "line", "epoch", "seq", "gateway", "window_start", "window_end", "period_start",
                   "production_date", "shift_name", "shift_start", "units", "day_target", "quality",
                   "historical", "payload")
_REPORT_COLUMNS = ("site", "line", "epoch", "shift_start", "shift_end", "shift_name", "production_date",
                   "gateway", "units", "payload")


def _columns(rows: Sequence[WindowRow] | Sequence[ShiftRow], names: tuple[str, ...]) -> dict[str, list[Any]]:
    """Rows as one array per column (an unnest() insert sends one parameter per column)."""
    return {n: [getattr(r, n) for r in rows] for n in names}


class Database:
    """The pool of one replica. Constructing it does no I/O."""

    def __init__(self, cfg: DatabaseConfig, *, application_name: str) -> None:
        self.cfg = cfg
        self.application_name = application_name
        self._pool: AsyncConnectionPool[AsyncConnection[TupleRow]] | None = None

    def connect_kwargs(self) -> dict[str, Any]:
        """libpq parameters added to the URL: who we are, how long to try, the password."""
        kwargs: dict[str, Any] = {"application_name": self.application_name[:63],
                                  "connect_timeout": max(1, round(self.cfg.connect_timeout_s))}
        password = self.cfg.password()
        if password is not None:
            kwargs["password"] = password
        return kwargs

    async def open(self, stop: asyncio.Event | None = None,
                   on_wait: Callable[[], None] = lambda: None) -> bool:
        """Open the pool and wait for a first connection; False if ``stop`` was set first.
        ``on_wait`` is called at every attempt (the service feeds its watchdog)."""
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
            self.cfg.url, min_size=1, max_size=self.cfg.pool_size, kwargs=self.connect_kwargs(),
            open=False, name="plantfloor-rollup", timeout=self.cfg.connect_timeout_s * 3)
        await pool.open(wait=False)
        self._pool = pool
        attempt = 0
        while True:
            try:
                await pool.wait(timeout=self.cfg.connect_timeout_s)
                break
            except PoolTimeout:
                on_wait()
                attempt += 1
                if attempt == 1:
                    log.warning("PostgreSQL at %s does not answer yet: retrying", self.where)
            if stop is not None and stop.is_set():
                return False
            await asyncio.sleep(random.uniform(0, min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2 ** attempt)))
        if attempt:
            log.info("PostgreSQL at %s answers", self.where)
        return True

    @property
    def where(self) -> str:
        parts = urlsplit(self.cfg.url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[TupleRow]]:
        """A pool connection; its transaction commits when the block ends without error."""
        if self._pool is None:
            raise DatabaseUnavailable("the database pool is not open")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            if refuses_data(exc):
                raise BatchRefused(_one_line(exc)) from exc
            if isinstance(exc, psycopg.OperationalError):
                raise DatabaseUnavailable(f"PostgreSQL at {self.where}: {_one_line(exc)}") from exc
            raise
        except PoolTimeout as exc:
            raise DatabaseUnavailable(f"PostgreSQL at {self.where}: {_one_line(exc)}") from exc

    async def connect_session(self) -> AsyncConnection[TupleRow]:
        """A dedicated connection (autocommit) outside the pool, for a replica's locks."""
        try:
            return await AsyncConnection.connect(self.cfg.url, autocommit=True, **self.connect_kwargs())
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"PostgreSQL at {self.where}: {_one_line(exc)}") from exc

    async def migrate(self) -> list[int]:
        """Apply the packaged migrations the database does not have yet."""
        async with self.connection() as conn:
            return await apply_migrations(conn)

    async def site(self, site: str, *, interval_s: int, origin: datetime) -> SiteIdentity:
        """The site's identity, created on first use (epoch drawn, origin = the current window)."""
        async with self.connection() as conn:
            await conn.execute(sql.SITE_CREATE, {"site": site, "epoch": new_epoch(), "origin": origin,
                                                 "interval_s": interval_s})
            cur = await conn.execute(sql.SITE_GET, {"site": site})
            row = await cur.fetchone()
        assert row is not None
        return SiteIdentity(site, int(row[0]), row[1], int(row[2]))

    async def insert(self, rows: Sequence[WindowRow], rejected: Sequence[Rejected],
                     reports: Sequence[ShiftRow] = ()) -> int:
        """Insert a batch in one transaction; returns how many windows were new (the rest
        were already stored: redeliveries and replays)."""
        inserted = 0
        async with self.connection() as conn:
            if rows:
                cur = await conn.execute(sql.INSERT_WINDOWS, _columns(rows, _WINDOW_COLUMNS))
                got = await cur.fetchone()
                inserted = int(got[0]) if got is not None else 0
            if reports:
                await conn.execute(sql.INSERT_SHIFT_REPORTS, _columns(reports, _REPORT_COLUMNS))
            if rejected:
                await conn.execute(sql.INSERT_REJECTED, {
                    "gateway": [_text(r.gateway, 64) if r.gateway is not None else None for r in rejected],
                    "topic": [_text(r.topic, 1024) for r in rejected],
                    "payload": [r.payload for r in rejected], "error": [_text(r.error, 1000) for r in rejected]})
        return inserted

    async def advance(self, rows: Sequence[WindowRow]) -> set[str]:
        """Move each line's acknowledged progress (the run of its epoch's windows committed
        without a gap, up and down) over the committed ``rows``; returns the gateways whose
        progress moved."""
        keys = _progress_keys(rows)
        if not keys:
            return set()
        params = {name: [k[i] for k in keys] for i, name in enumerate(("site", "line", "epoch", "gateway"))}
        moved: set[str] = set()
        async with self.connection() as conn:
            for statement in (sql.PROGRESS_START, sql.PROGRESS_LOCK, sql.PROGRESS_ADVANCE,
                              sql.PROGRESS_EXTEND_DOWN):
                cur = await conn.execute(statement, params)
                if statement is not sql.PROGRESS_LOCK:
                    moved |= {str(r[0]) for r in await cur.fetchall()}
        return moved

    async def progress(self, site: str, gateway: str) -> dict[str, tuple[int, int, int]]:
        """Line -> (epoch, first, seq): the run of windows committed without a gap, of the
        epoch that moved last, for each of a gateway's lines."""
        async with self.connection() as conn:
            cur = await conn.execute(sql.GATEWAY_PROGRESS, {"site": site, "gateway": gateway})
            return {str(line): (int(epoch), int(first), int(seq))
                    for line, epoch, first, seq in await cur.fetchall()}


def _progress_keys(rows: Sequence[WindowRow]) -> list[tuple[str, str, int, str]]:
    return sorted({(r.site, r.line, r.epoch, r.gateway) for r in rows})


def _text(value: str, limit: int) -> str:
    """A rejection's text as PostgreSQL's text can hold it: bounded, without NUL."""
    return value.replace("\0", "\\0")[:limit]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
