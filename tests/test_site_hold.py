"""The site hold in the state file: windows kept until the site acknowledges them, re-published with backoff."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.runtime.metrics import Metrics
from agent.store import OutboxRecord, Store
from agent.store.file import SCHEMA_VERSION
from agent.store.hold import held_due, held_totals, hold, mark_republished, next_due, release
from tests.test_metrics import key, scrape

T0 = datetime(2028, 4, 3, 0, tzinfo=UTC)


def record(i: int, line: str = "l1", seq: int | None = None, size: int = 100) -> OutboxRecord:
    return OutboxRecord(id=i, topic=f"R/lines/{line}/output", payload=b"x" * size, qos=1, retain=False,
                        line=line, seq=seq if seq is not None else i, window_end=T0 + timedelta(minutes=i),
                        format="json")


async def test_held_windows_are_released_by_the_acknowledgement_and_re_published_with_backoff(
        tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "state.db", max_bytes=10_000_000)
    try:
        call = store.call
        assert await call(functools.partial(hold, records=[record(1), record(2), record(3),
                                                           record(4, "l2", seq=1)], now=1000.0,
                                            max_bytes=10_000_000)) == 0
        # held twice (a crash between the hold and the outbox's delete): kept once
        await call(functools.partial(hold, records=[record(1)], now=1000.0, max_bytes=10_000_000))
        assert await call(held_totals) == (4, T0 + timedelta(minutes=1))

        assert await call(functools.partial(held_due, now=1059.0, timeout_s=60, backoff_max_s=200, limit=10)) == []
        got = await call(functools.partial(held_due, now=1060.0, timeout_s=60, backoff_max_s=200, limit=10))
        assert [(r.id, a) for r, a in got] == [(1, 0), (2, 0), (3, 0), (4, 0)]      # in commit order
        await call(functools.partial(mark_republished, ids=[1, 2, 3, 4], now=1060.0))
        # twice as long after the first re-publication, then capped
        assert await call(functools.partial(next_due, timeout_s=60, backoff_max_s=200)) == 1060.0 + 120
        await call(functools.partial(mark_republished, ids=[1, 2, 3, 4], now=1180.0))
        assert await call(functools.partial(next_due, timeout_s=60, backoff_max_s=200)) == 1180.0 + 200

        # the site has l1 from seq 2 to 3 (seq 1 never reached it): 1 stays
        assert await call(functools.partial(release, acked={"l1": (2, 3)})) == 2
        assert await call(held_totals) == (2, T0 + timedelta(minutes=1))
        assert await call(functools.partial(release, acked={"l1": (1, 9), "l2": (1, 1)})) == 2
        assert await call(held_totals) == (0, None)
        assert await call(functools.partial(next_due, timeout_s=60, backoff_max_s=200)) is None
    finally:
        await store.close()


async def test_the_hold_is_bounded_oldest_dropped_first(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "state.db", max_bytes=10_000_000)
    try:
        records = [record(i, size=1000) for i in range(1, 11)]
        dropped = await store.call(functools.partial(hold, records=records, now=0.0, max_bytes=5_000))
        assert dropped == 6                      # each counts 1,000 bytes + topic + overhead
        count, oldest = await store.call(held_totals)
        assert (count, oldest) == (4, T0 + timedelta(minutes=7))
    finally:
        await store.close()


async def test_a_version_2_state_file_opens_and_gains_the_hold(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await Store.open(path, max_bytes=10_000_000)
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE site_hold")
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    store = await Store.open(path, max_bytes=10_000_000)
    try:
        assert await store.call(held_totals) == (0, None)
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    conn.close()


async def test_the_site_backlog_is_in_the_metrics() -> None:
    metrics = Metrics()
    port = metrics.serve("127.0.0.1", 0)
    try:
        metrics.site_backlog(3, 12.5)
        got = await scrape(port)
        assert got[key("plantfloor_site_backlog")] == 3
        assert got[key("plantfloor_site_oldest_unacknowledged_seconds")] == 12.5
    finally:
        await asyncio.to_thread(metrics.stop)
