"""A replica's session: its own PostgreSQL connection and the advisory locks held on it.

Two kinds of session-level advisory lock live on this connection, and die with it (a
``kill -9`` of the replica, a lost network: the server ends the session and frees them):

* ``replica:<site>:<client id>``: the right to use that MQTT client id, i.e. its
  persistent session at the broker. A replica takes its own before it connects to the
  broker; a living replica that can take a *dead* one's drains that session
  (:mod:`agent.rollup.adopt`). So two processes never share a client id.
* ``leader:<site>``: the one replica that computes and publishes the site figure
  (:mod:`agent.rollup.leader`). The leader's work runs on this same connection, so it can
  only ever write while it still holds the lock.

Statements on the connection are serialised by an asyncio lock; a statement that fails
for want of a connection means the session (and every lock) is gone: :class:`SessionLost`.
One that PostgreSQL refuses for its data (SQLSTATE classes 22, 23, 54) raises as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, LiteralString

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from agent.rollup import sql
from agent.rollup.database import Database, DatabaseUnavailable, refuses_data

__all__ = ["ReplicaSession", "SessionLost", "identity_key", "leader_key"]


class SessionLost(DatabaseUnavailable):
    """The replica's own connection failed: its locks (identity, leadership) are gone."""


def identity_key(site: str, client_id: str) -> str:
    return f"replica:{site}:{client_id}"


def leader_key(site: str) -> str:
    return f"leader:{site}"


class ReplicaSession:
    """Open with :meth:`open`, give back with :meth:`close`; constructing it does no I/O."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: AsyncConnection[TupleRow] | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self._conn = await self._db.connect_session()

    async def close(self) -> None:
        """Close the connection: the server frees every advisory lock it held."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection[TupleRow]]:
        """One transaction on the session connection (other users wait their turn)."""
        async with self._lock:
            conn = self._connection()
            try:
                async with conn.transaction():
                    yield conn
            except psycopg.OperationalError as exc:
                if refuses_data(exc):
                    raise      # about the statement's data (SQLSTATE 54...), not the session
                raise SessionLost(f"the replica's database session was lost: {exc}") from exc

    async def fetch(self, query: LiteralString, params: Mapping[str, Any] | None = None) -> list[TupleRow]:
        """Run one statement (autocommit) and return its rows."""
        async with self._lock:
            conn = self._connection()
            try:
                cur = await conn.execute(query, params)
                return await cur.fetchall() if cur.description is not None else []
            except psycopg.OperationalError as exc:
                if refuses_data(exc):
                    raise      # about the statement's data (SQLSTATE 54...), not the session
                raise SessionLost(f"the replica's database session was lost: {exc}") from exc

    async def try_lock(self, key: str) -> bool:
        rows = await self.fetch(sql.TRY_LOCK, {"cls": sql.ADVISORY_LOCK_CLASS, "key": key})
        return bool(rows[0][0])

    async def unlock(self, key: str) -> None:
        await self.fetch(sql.UNLOCK, {"cls": sql.ADVISORY_LOCK_CLASS, "key": key})

    async def ping(self) -> None:
        await self.fetch(sql.PING)

    def _connection(self) -> AsyncConnection[TupleRow]:
        if self._conn is None or self._conn.closed:
            raise SessionLost("the replica's database session is closed")
        return self._conn
