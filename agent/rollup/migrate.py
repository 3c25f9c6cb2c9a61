"""Versioned schema migrations, shipped inside the package and applied at start.

Each file ``migrations/NNNN_name.sql`` is one version. At start every replica applies, in
one transaction and under a transaction-scoped advisory lock (so two replicas starting
together never race), the versions ``plantfloor.schema_migration`` does not list yet. A
database newer than this plantfloor is refused rather than written to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from agent.contract.errors import StoreError
from agent.rollup import sql

__all__ = ["Migration", "apply_migrations", "migrations"]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str


def migrations() -> list[Migration]:
    """Every migration shipped with this package, by version."""
    found: list[Migration] = []
    for entry in (resources.files("agent.rollup") / "migrations").iterdir():
        m = _NAME.match(entry.name)
        if m is not None:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if versions != list(range(1, len(found) + 1)):
        raise StoreError(f"the packaged migrations are not numbered 1..n: {versions}")
    return found


async def apply_migrations(conn: AsyncConnection[TupleRow]) -> list[int]:
    """Bring the schema up to date; returns the versions applied now (empty when current)."""
    known = migrations()
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute(sql.MIGRATION_LOCK, {"cls": sql.ADVISORY_LOCK_CLASS})
        await conn.execute(sql.CREATE_MIGRATION_TABLE)
        cur = await conn.execute(sql.MIGRATION_APPLIED)
        done = {int(row[0]) for row in await cur.fetchall()}
        newest = known[-1].version if known else 0
        if done and max(done) > newest:
            raise StoreError(f"the database's schema is version {max(done)}, newer than this plantfloor "
                             f"understands ({newest}): run the newer version")
        for mig in known:
            if mig.version in done:
                continue
            await conn.execute(mig.text.encode())
            await conn.execute(sql.MIGRATION_RECORD, {"version": mig.version, "name": mig.name})
            applied_now.append(mig.version)
    return applied_now
