"""The outbox bound is applied to the outbox's size at the moment of the write."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from agent.store import NewRecord, Store
from agent.store.outbox import row_cost

WHEN = datetime(2026, 6, 1, tzinfo=UTC)


def records(n: int, tag: str) -> list[NewRecord]:
    return [NewRecord(topic=f"t/{tag}", payload=b"x" * 1000, qos=1, retain=False, line="kei",
                      seq=i, window_end=WHEN) for i in range(n)]


async def test_records_sent_just_before_a_commit_make_room_for_it(tmp_path: Path) -> None:
    """The outbox holds 10 records, its bound 15: they are acknowledged while 10 more are
    committed. The deletion was asked for first, so the commit fits and drops nothing."""
    cost = row_cost("t/a", b"x" * 1000)
    store = await Store.open(tmp_path / "state.db", max_bytes=15 * cost)
    try:
        assert await store.commit_window(records(10, "a"), [], None) == 0
        sent = [r.id for r in await store.pending(100)]
        acked = asyncio.create_task(store.mark_sent(sent))
        await asyncio.sleep(0)          # the deletion is queued on the store's thread
        dropped = await store.commit_window(records(10, "b"), [], None)
        await acked
        assert dropped == 0
        left = await store.pending(100)
        assert [r.topic for r in left] == ["t/b"] * 10
        assert store.backlog == 10
        assert store.dropped == 0
    finally:
        await store.close()
