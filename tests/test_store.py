"""The SQLite outbox: atomic commits, the bound, corruption, disk full, persistence."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.contract.errors import StoreError
from agent.store import ROW_OVERHEAD, LineState, NewRecord, Store

T0 = datetime(2028, 4, 3, 6, 31, tzinfo=UTC)


def rec(seq: int, *, line: str = "kei-ev", size: int = 100) -> NewRecord:
    payload = (b'{"seq":%d,' % seq).ljust(size - len(b'"historical":false}'), b" ")
    payload += b'"historical":false}'
    return NewRecord(topic=f"p/lines/{line}/output", payload=payload, qos=1, retain=False,
                     line=line, seq=seq, window_end=T0 + timedelta(minutes=seq))


def state(line: str, seq: int) -> LineState:
    # a uint64 counter near its top: beyond SQLite's signed 64-bit integers
    return LineState(line=line, totals_json=f'{{"seq":{seq}}}',
                     identity=f"modbus://10.0.0.1:502 unit 1 holding 100 uint64 big modulus {2**64}",
                     state_identity="modbus://10.0.0.1:502 unit 1 holding 110 uint16 big",
                     baseline=2**64 - 1000 + seq, modulus=2**64, anchor_wall=T0,
                     anchor_mono=12.5, last_wall=T0 + timedelta(seconds=1), last_mono=13.5,
                     boot_id="b00t", rebaseline=None)


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = await Store.open(tmp_path / "db" / "state.db", max_bytes=100_000_000)
    yield s
    await s.close()


async def test_commit_then_reopen_persists_everything(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = await Store.open(path, max_bytes=10_000_000)
    assert await s.commit_window([rec(1), rec(2)], [state("kei-ev", 2)], '{"plant":1}') == 0
    await s.commit_window([rec(3)], [state("kei-ev", 3), state("rogue", 1)], None)
    assert s.backlog == 3
    await s.close()

    s = await Store.open(path, max_bytes=10_000_000)
    try:
        assert s.backlog == 3
        loaded = await s.load()
        assert loaded.recovered_from is None
        assert loaded.plant_json == '{"plant":1}'
        assert loaded.lines == {"kei-ev": state("kei-ev", 3), "rogue": state("rogue", 1)}
        rows = await s.pending(10)
        assert [r.seq for r in rows] == [1, 2, 3]
        assert rows[0].payload == rec(1).payload
        assert rows[0].window_end == rec(1).window_end
        assert rows[0].topic == "p/lines/kei-ev/output"
        assert rows[0].qos == 1
        assert rows[0].retain is False
        assert rows[0].id < rows[1].id < rows[2].id
    finally:
        await s.close()


async def test_pending_paging_and_mark_sent(store: Store) -> None:
    await store.commit_window([rec(i) for i in range(1, 11)], [], None)
    first = await store.pending(4)
    assert [r.seq for r in first] == [1, 2, 3, 4]
    after = await store.pending(4, newer_than_id=first[-1].id)
    assert [r.seq for r in after] == [5, 6, 7, 8]
    newest = await store.pending(3, oldest_first=False)
    assert [r.seq for r in newest] == [10, 9, 8]

    await store.mark_sent([r.id for r in first] + [first[0].id])  # a repeat is harmless
    assert store.backlog == 6
    assert [r.seq for r in await store.pending(100)] == [5, 6, 7, 8, 9, 10]


async def test_live_records_are_read_without_the_backlog(store: Store) -> None:
    """The newest records of windows ending since a moment, within the newest ids only."""
    await store.commit_window([rec(i) for i in range(1, 21)], [], None)
    since = T0 + timedelta(minutes=17)
    live = await store.pending(10, oldest_first=False, ending_since=since)
    assert [r.seq for r in live] == [20, 19, 18, 17]
    # a window just after a second's start sorts after that second (ISO 8601 in UTC)
    await store.commit_window([NewRecord(topic="p/plant/output", payload=b"{}", qos=1, retain=False,
                                         line=None, seq=21, window_end=since + timedelta(microseconds=500))],
                              [], None)
    assert [r.seq for r in await store.pending(10, oldest_first=False, ending_since=since)][:2] == [21, 20]
    # only the newest ids are looked at: an old window among them is not read
    assert [r.seq for r in await store.pending(3, oldest_first=False, ending_since=T0)] == [21, 20, 19]
    # sent records leave the range
    await store.mark_sent([r.id for r in live])
    assert [r.seq for r in await store.pending(10, oldest_first=False, ending_since=since)] == [21]


async def test_failing_commit_changes_nothing(store: Store) -> None:
    await store.commit_window([rec(1)], [state("kei-ev", 1)], '{"p":1}')
    bad = LineState(line="kei-ev", totals_json=None)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        await store.commit_window([rec(2), rec(3)], [state("rogue", 1), bad], '{"p":2}')
    assert store.backlog == 1
    assert [r.seq for r in await store.pending(10)] == [1]
    loaded = await store.load()
    assert loaded.lines == {"kei-ev": state("kei-ev", 1)}
    assert loaded.plant_json == '{"p":1}'
    # and the store still works
    await store.commit_window([rec(2)], [state("kei-ev", 2)], None)
    assert [r.seq for r in await store.pending(10)] == [1, 2]


async def test_bound_drops_oldest_first_and_counts(tmp_path: Path) -> None:
    one = rec(1)
    cost = len(one.payload) + len(one.topic) + ROW_OVERHEAD
    s = await Store.open(tmp_path / "state.db", max_bytes=cost * 5)
    try:
        assert await s.commit_window([rec(i) for i in range(1, 5)], [], None) == 0
        assert await s.commit_window([rec(5), rec(6), rec(7)], [], None) == 2
        assert s.dropped == 2
        assert s.backlog == 5
        assert [r.seq for r in await s.pending(100)] == [3, 4, 5, 6, 7]
        # sending makes room again
        await s.mark_sent([r.id for r in await s.pending(2)])
        assert await s.commit_window([rec(8), rec(9)], [], None) == 0
        assert await s.commit_window([rec(10)], [], None) == 1
        assert s.dropped == 3
        assert [r.seq for r in await s.pending(100)] == [6, 7, 8, 9, 10]
    finally:
        await s.close()
    # the byte count is rebuilt on open: the bound still holds after a restart
    s = await Store.open(tmp_path / "state.db", max_bytes=cost * 5)
    try:
        assert s.dropped == 0
        assert await s.commit_window([rec(11)], [], None) == 1
        assert [r.seq for r in await s.pending(100)] == [7, 8, 9, 10, 11]
    finally:
        await s.close()


async def test_corrupt_file_is_moved_aside_and_a_fresh_db_started(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not an sqlite database\n" * 200)
    s = await Store.open(path, max_bytes=1_000_000)
    try:
        loaded = await s.load()
        assert loaded.recovered_from is not None
        assert loaded.recovered_from.name.startswith("state.db.corrupt-")
        assert loaded.recovered_from.read_bytes().startswith(b"this is not an sqlite")
        assert loaded.lines == {}
        assert loaded.plant_json is None
        assert s.backlog == 0
        await s.commit_window([rec(1)], [state("kei-ev", 1)], None)
        assert [r.seq for r in await s.pending(10)] == [1]
    finally:
        await s.close()


async def test_damaged_pages_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = await Store.open(path, max_bytes=10_000_000)
    await s.commit_window([rec(i, size=2000) for i in range(1, 50)], [state("kei-ev", 1)], None)
    await s.close()
    raw = bytearray(path.read_bytes())
    assert len(raw) > 8192
    raw[4096:8192] = b"\xa5" * 4096  # overwrite the second page
    path.write_bytes(bytes(raw))
    s = await Store.open(path, max_bytes=10_000_000)
    try:
        assert s.recovered_from is not None
        assert (await s.load()).lines == {}
    finally:
        await s.close()


async def test_disk_full_raises_store_error_and_recovers(store: Store) -> None:
    await store.commit_window([rec(1)], [state("kei-ev", 1)], None)
    pages = await store._run(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    # SQLite reports "database or disk is full" once the file may not grow any more
    await store._run(lambda c: c.execute(f"PRAGMA max_page_count={pages + 2}").fetchone())
    committed = 1
    error: StoreError | None = None
    for seq in range(2, 200):
        try:
            await store.commit_window([rec(seq, size=3000)], [state("kei-ev", seq)], None)
        except StoreError as exc:
            error = exc
            break
        committed += 1
    assert error is not None, "the page limit was never reached"
    assert "full" in str(error)
    assert store.backlog == committed
    assert [r.seq for r in await store.pending(1000)] == list(range(1, committed + 1))
    assert (await store.load()).lines["kei-ev"] == state("kei-ev", committed)

    await store._run(lambda c: c.execute("PRAGMA max_page_count=1073741823").fetchone())
    nxt = committed + 1
    await store.commit_window([rec(nxt, size=3000)], [state("kei-ev", nxt)], None)
    assert [r.seq for r in await store.pending(1000)][-1] == nxt
    assert (await store.load()).lines["kei-ev"] == state("kei-ev", nxt)


async def test_event_loop_keeps_ticking_during_a_large_commit(store: Store) -> None:
    records = [rec(i, size=1000) for i in range(1, 30_001)]
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        await store.commit_window(records, [], None)
        elapsed = time.monotonic() - started
    finally:
        done.set()
        await task
    assert store.backlog == 30_000
    assert len(gaps) >= 3, f"the loop ticked only {len(gaps)} times in {elapsed:.2f} s"
    assert max(gaps) < max(0.25, elapsed / 2), f"loop stalled {max(gaps):.3f} s of {elapsed:.3f} s"


async def test_naive_window_end_is_refused(store: Store) -> None:
    bad = NewRecord(topic="t", payload=b"x", qos=1, retain=False, line=None, seq=None,
                    window_end=datetime(2028, 1, 1))
    with pytest.raises(ValueError, match="timezone"):
        await store.commit_window([bad], [], None)
    assert store.backlog == 0


async def test_a_locked_database_is_an_error_not_a_corruption(tmp_path: Path) -> None:
    """Only real corruption moves the file aside; a lock (or a full disk) keeps it."""
    import sqlite3

    from agent.contract.errors import StoreError

    path = tmp_path / "state.db"
    store = await Store.open(path, max_bytes=1_000_000)
    await store.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA busy_timeout = 0")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="cannot open the state database"):
            await Store.open(path, max_bytes=1_000_000)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert path.exists()
    assert not list(tmp_path.glob("state.db.corrupt-*"))  # noqa: ASYNC240 - the test's own check


async def test_epoch_is_drawn_once_per_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = await Store.open(path, max_bytes=1_000_000)
    first = await s.load()
    await s.commit_window([rec(1)], [state("kei-ev", 1)], None)
    await s.close()
    assert first.created
    assert first.epoch > 0
    s = await Store.open(path, max_bytes=1_000_000)
    again = await s.load()
    await s.close()
    assert (again.epoch, again.created) == (first.epoch, False)
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    s = await Store.open(path, max_bytes=1_000_000)
    lost = await s.load()
    await s.close()
    assert lost.created
    assert lost.epoch != first.epoch
    assert lost.lines == {}


async def test_a_second_agent_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = await Store.open(path, max_bytes=1_000_000)
    try:
        with pytest.raises(StoreError, match=r"agent is running on .*state\.db \(pid \d+\)"):
            await Store.open(path, max_bytes=1_000_000)
        reader = await Store.open(path, max_bytes=1_000_000, lock=False)
        await reader.close()
    finally:
        await s.close()
    s = await Store.open(path, max_bytes=1_000_000)   # released on close
    await s.close()


async def test_a_version_1_file_is_migrated_keeping_outbox_and_totals(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
            payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, line TEXT,
            seq INTEGER, window_end TEXT NOT NULL, cost INTEGER NOT NULL);
        CREATE TABLE line_state (line TEXT PRIMARY KEY, counter INTEGER, totals_json TEXT NOT NULL);
        CREATE TABLE plant_state (id INTEGER PRIMARY KEY CHECK (id = 1), plant_json TEXT NOT NULL);
        INSERT INTO outbox VALUES (1, 'p/lines/kei-ev/output', x'7b7d', 1, 0, 'kei-ev', 7,
                                   '2028-04-03T06:31:00+00:00', 100);
        INSERT INTO line_state VALUES ('kei-ev', 4294967000, '{"seq":7}');
        INSERT INTO plant_state VALUES (1, '{"seq":7}');
        PRAGMA user_version = 1;
    """)
    conn.close()
    s = await Store.open(path, max_bytes=1_000_000)
    try:
        loaded = await s.load()
        assert s.backlog == 1
        assert loaded.epoch > 0
        assert not loaded.created
        row = loaded.lines["kei-ev"]
        assert (row.totals_json, row.baseline, row.identity) == ('{"seq":7}', None, None)
        assert row.rebaseline is not None
        assert "0.1" in row.rebaseline
        assert loaded.plant_json == '{"seq":7}'
    finally:
        await s.close()


async def test_a_foreign_database_is_not_taken_over(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(StoreError, match="not a plantfloor state database"):
        await Store.open(path, max_bytes=1_000_000)
    assert path.exists()


def test_sqlite_older_than_the_floor_is_refused_in_one_sentence() -> None:
    from agent.store.file import check_sqlite_version

    check_sqlite_version("3.24.0")
    check_sqlite_version("3.46.1")
    with pytest.raises(StoreError, match=r"SQLite library is 3\.22\.0; .* needs SQLite 3\.24\.0"):
        check_sqlite_version("3.22.0")
