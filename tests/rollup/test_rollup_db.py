"""PostgreSQL: migrations, inserts that keep each window once, the leader's figure against the agent's."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import Config
from agent.contract.errors import StoreError
from agent.contract.payloads import LineOutput
from agent.core.calendar import ShiftCalendar
from agent.core.report import PlantTotals, Reporter
from agent.rollup.config import RollupConfig
from agent.rollup.consumer import Delivery
from agent.rollup.database import Database
from agent.rollup.ingest import Ingest
from agent.rollup.leader import Leader
from agent.rollup.migrate import apply_migrations, migrations
from agent.rollup.rows import RowBuilder, ShiftRow, WindowRow
from agent.rollup.session import ReplicaSession
from tests.fixtures.postgres import PostgresDatabase
from tests.rollup.rig import query, rollup_config
from tests.rollup.synth import shift_report, window

SHIFTS = [{"name": "day", "start": "06:30", "end": "15:15", "breaks": [{"start": "11:45", "end": "12:30"}]},
          {"name": "night", "start": "16:30", "end": "01:15"}]
PLANT = {"capacity_per_year": 500_000, "planned_utilization": 0.8, "holidays": ["2028-01-03"]}


def rollup_cfg(url: str, interval_s: int = 3600) -> RollupConfig:
    return RollupConfig.model_validate(rollup_config(
        "mqtt://127.0.0.1:1", url, {"gw1": ["kei-ev"], "gw2": ["rogue"]}, interval_s=interval_s,
        shifts=SHIFTS, plant=PLANT))


async def opened(url: str) -> Database:
    db = Database(rollup_cfg(url).database, application_name="test")
    assert await db.open()
    return db


async def test_migrations_apply_once_even_when_replicas_start_together(postgres_db: PostgresDatabase) -> None:
    dbs = [await opened(postgres_db.url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(db.migrate() for db in dbs))
        assert sorted(results) == [[], [], [m.version for m in migrations()]]
        assert await dbs[0].migrate() == []
        rows = await query(postgres_db.url, "SELECT version, name FROM plantfloor.schema_migration ORDER BY 1")
        assert rows == [(1, "initial"), (2, "shift_reports"), (3, "site_input"), (4, "board_notify")]
        # a database written by a newer plantfloor is refused, not written to
        await query(postgres_db.url, "INSERT INTO plantfloor.schema_migration (version, name) VALUES (99, 'future')")
        async with dbs[0].connection() as conn:
            with pytest.raises(StoreError, match="version 99, newer than this plantfloor"):
                await apply_migrations(conn)
    finally:
        for db in dbs:
            await db.close()


def _rows(cfg: RollupConfig, start: datetime, n: int, *, epoch: int = 1) -> list[WindowRow]:
    b = RowBuilder(cfg, ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays))
    out = []
    for seq in range(1, n + 1):
        w = b.build("test/site/gw1/lines/kei-ev/output",
                    window("kei-ev", seq, start + timedelta(hours=seq - 1), units=seq, epoch=epoch, interval_s=3600))
        assert isinstance(w, WindowRow)
        out.append(w)
    return out


async def test_a_window_is_stored_once_however_often_it_comes(postgres_db: PostgresDatabase) -> None:
    db = await opened(postgres_db.url)
    try:
        await db.migrate()
        rows = _rows(rollup_cfg(postgres_db.url), datetime(2028, 4, 3, 0, tzinfo=UTC), 6)
        assert await db.insert(rows[:4] + rows[:2], []) == 4          # duplicates inside a batch
        assert await db.insert(rows, []) == 2                          # a replay with 2 new ones
        assert await db.insert(rows[::-1], []) == 0                    # the replay again, any order
        got = await query(postgres_db.url, "SELECT seq, units FROM plantfloor.line_window ORDER BY seq")
        assert got == [(s, s) for s in range(1, 7)]
        # a change is queued for the leader only for windows that were new
        changes = await query(postgres_db.url, "SELECT count(*) FROM plantfloor.period_change")
        assert changes == [(6,)]
        # the same (line, seq) in another epoch is another window
        assert await db.insert(_rows(rollup_cfg(postgres_db.url), datetime(2028, 4, 3, 0, tzinfo=UTC), 1,
                                     epoch=2), []) == 1
        day = await query(postgres_db.url, "SELECT production_date, units, windows FROM plantfloor.line_day_totals")
        assert day == [(date(2028, 4, 3), 1 + 21, 7)]
    finally:
        await db.close()


def _agent_config() -> Config:
    return Config.model_validate({
        "site": "test", "timezone": "Asia/Tokyo", "plant": PLANT, "shifts": SHIFTS,
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 5020}],
        "lines": [{"id": "kei-ev", "product": "P", "target_per_hour": 30, "counter": {"source": "plc", "address": 1}},
                  {"id": "rogue", "product": "P", "target_per_hour": 45, "counter": {"source": "plc", "address": 9}}],
    })


async def test_the_leaders_figure_from_rows_equals_the_agents_own_plant_output(
        postgres_db: PostgresDatabase) -> None:
    """Two days of hourly windows across a new year, rows inserted shuffled and twice."""
    cfg = rollup_cfg(postgres_db.url)
    agent_cfg = _agent_config()
    calendar = ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)
    reporter = Reporter(agent_cfg, ShiftCalendar(agent_cfg.shifts, agent_cfg.tz, agent_cfg.plant.holidays))
    rng = random.Random(5)
    first = datetime(2027, 12, 30, 15, tzinfo=UTC)                    # 2027-12-31 00:00 in Tokyo
    builder = RowBuilder(cfg, calendar)
    expected: list[Any] = []
    rows: list[WindowRow] = []
    totals = PlantTotals()
    for k in range(48):
        start = first + timedelta(hours=k)
        outputs = []
        for gw, line, target in (("gw1", "kei-ev", 240.0), ("gw2", "rogue", 360.0)):
            raw = window(line, k + 1, start, units=rng.randint(0, 60), interval_s=3600,
                         day_target=target + calendar.production_date(start).day)
            outputs.append(LineOutput.model_validate_json(raw))
            row = builder.build(f"test/site/{gw}/lines/{line}/output", raw)
            assert isinstance(row, WindowRow)
            rows.append(row)
        out, totals = reporter.plant_output(outputs, start, start + timedelta(hours=1), totals)
        expected.append(out)
    db = await opened(postgres_db.url)
    session = ReplicaSession(db)
    try:
        await db.migrate()
        shuffled = rows[:]
        rng.shuffle(shuffled)
        for i in range(0, len(shuffled), 7):
            await db.insert(shuffled[i:i + 7] + shuffled[i:i + 2], [])
        site = await db.site("test", interval_s=3600, origin=first)
        await session.open()
        leader = Leader(cfg, calendar, session, site, publisher=None,  # type: ignore[arg-type]
                        wall=lambda: first + timedelta(hours=48, seconds=1))
        assert await leader.tick() == 48
        assert await leader.tick() == 0
    finally:
        await session.close()
        await db.close()
    got = await query(postgres_db.url, "SELECT seq, revision, message FROM plantfloor.plant_window ORDER BY seq")
    assert [(s, r) for s, r, _ in got] == [(k, 0) for k in range(1, 49)]
    for (_, _, message), want in zip(got, expected, strict=True):
        fig = json.loads(message)
        agent = json.loads(want.model_dump_json(by_alias=True))
        for field in ("window_start", "window_end", "units", "units_today", "units_year_to_date", "target_today",
                      "utilization", "projected_year", "year_counted_since", "lines", "quality",
                      "capacity_per_year", "planned_utilization", "schema", "site"):
            assert fig[field] == agent[field], (field, fig["window_start"])
        assert fig["epoch"] == site.epoch
        assert fig["gateways"]["gw1"]["missing"] == []
    # recorded a day and more after their end, all but the last are historical
    assert [json.loads(m)["historical"] for _, _, m in got] == [True] * 47 + [False]


class _Acks:
    """Stands in for the consumer a delivery came from: records what was acknowledged."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, delivery: Delivery) -> None:
        self.acked.append(delivery.mid)


async def ingest_three(url: str, messages: list[bytes], *, before: str | None = None,
                       ) -> tuple[list[int], Ingest]:
    """Three windows of kei-ev delivered to a running ``Ingest`` as one batch (after the SQL
    ``before``, if any, on the migrated database): what was acknowledged, and the ingest."""
    cfg = rollup_cfg(url)
    db = await opened(url)
    acks = _Acks()
    ingest = Ingest(db, RowBuilder(cfg, ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)),
                    batch_size=10, batch_delay_s=0.5)
    task = asyncio.create_task(ingest.run())
    try:
        await db.migrate()
        if before is not None:
            await query(url, before)
        for mid, payload in enumerate(messages, 1):
            ingest.deliver(Delivery(acks, None, mid, 1, "test/site/gw1/lines/kei-ev/output", payload))  # type: ignore[arg-type]
        assert await ingest.flush(10)
    finally:
        task.cancel()
        await asyncio.wait([task])
        await db.close()
    return sorted(acks.acked), ingest


START = datetime(2028, 4, 3, 0, tzinfo=UTC)


def hourly(seq: int) -> bytes:
    """kei-ev's window ``seq`` of hourly windows from START."""
    return window("kei-ev", seq, START + timedelta(hours=seq - 1), interval_s=3600)


async def test_a_value_the_database_cannot_hold_is_kept_as_rejected_and_the_rest_is_stored(
        postgres_db: PostgresDatabase) -> None:
    poisoned = hourly(2).replace(b'"product":"P"', b'"product":"P\\u0000"')  # valid JSON, which jsonb cannot hold
    acked, ingest = await ingest_three(postgres_db.url, [hourly(1), poisoned, hourly(3)])
    assert acked == [1, 2, 3]
    assert await query(postgres_db.url, "SELECT seq FROM plantfloor.line_window ORDER BY seq") == [(1,), (3,)]
    (topic, error, payload), = await query(postgres_db.url,
                                           "SELECT topic, error, payload FROM plantfloor.rejected_message")
    assert topic == "test/site/gw1/lines/kei-ev/output"
    assert "product: contains a NUL character" in error       # refused before it reaches SQL
    assert bytes(payload) == poisoned
    assert (ingest.windows, ingest.rejected) == (2, 1)


async def test_a_batch_the_database_refuses_is_split_so_only_the_poison_is_rejected(
        postgres_db: PostgresDatabase) -> None:
    """A window that passes every bound but that the database itself refuses (here a
    trigger, as a constraint a DBA added would): the batch of three fails, is split, the
    other two are stored, the refused one is kept as rejected with the database's reason,
    and all three are acknowledged."""
    messages = [hourly(seq) for seq in (1, 2, 3)]
    acked, ingest = await ingest_three(postgres_db.url, messages, before="""
        CREATE FUNCTION plantfloor.refuse_seq_2() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN IF NEW.seq = 2 THEN RAISE EXCEPTION 'seq 2 refused by the database'
           USING ERRCODE = '22023'; END IF; RETURN NEW; END $$;
        CREATE TRIGGER refuse_seq_2 BEFORE INSERT ON plantfloor.line_window
        FOR EACH ROW EXECUTE FUNCTION plantfloor.refuse_seq_2()""")
    assert acked == [1, 2, 3]
    assert await query(postgres_db.url, "SELECT seq FROM plantfloor.line_window ORDER BY seq") == [(1,), (3,)]
    (error, payload), = await query(postgres_db.url, "SELECT error, payload FROM plantfloor.rejected_message")
    assert "seq 2 refused by the database" in error
    assert bytes(payload) == messages[1]
    assert (ingest.windows, ingest.rejected) == (2, 1)


async def test_shift_reports_of_every_gateway_are_stored_once_and_reported(
        postgres_db: PostgresDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = rollup_cfg(postgres_db.url)
    builder = RowBuilder(cfg, ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays))
    start, end = datetime(2028, 4, 2, 21, 30, tzinfo=UTC), datetime(2028, 4, 3, 6, 15, tzinfo=UTC)  # 06:30-15:15
    reports = [builder.build("test/site/gw1/lines/kei-ev/shift", shift_report("kei-ev", "day", start, end,
                                                                              units=50, run_s=20_000)),
               builder.build("test/site/gw2/lines/rogue/shift", shift_report("rogue", "day", start, end,
                                                                             units=70, run_s=28_000))]
    assert all(isinstance(r, ShiftRow) for r in reports)
    db = await opened(postgres_db.url)
    try:
        await db.migrate()
        await db.insert([], [], reports)                                   # type: ignore[arg-type]
        await db.insert([], [], reports[:1])                               # type: ignore[arg-type]
    finally:
        await db.close()
    plant = await query(postgres_db.url, "SELECT lines, units, run_s, planned_busy_s, availability "
                                         "FROM plantfloor.plant_shift_report")
    busy = (end - start).total_seconds() * 2
    assert plant == [(2, 120, 48_000.0, busy, pytest.approx(48_000 / busy))]
    config = tmp_path / "agent.yaml"
    config.write_text(_agent_config().model_dump_json())
    assert main(["report", str(config), "--date", "2028-04-03", "--format", "json",
                 "--database", postgres_db.url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["line"] for r in out["reports"]] == ["kei-ev", "rogue"]
    assert {d["line"]: d["units"] for d in out["day"]} == {"kei-ev": 50, "rogue": 70}
    assert main(["report", str(config), "--date", "2028-04-03", "--database", postgres_db.url]) == 0
    text = capsys.readouterr().out
    assert "line kei-ev: 50 units" in text
    assert "line rogue: 70 units" in text


async def test_a_backlog_of_late_windows_revises_each_site_window_once_over_several_ticks(
        postgres_db: PostgresDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.rollup.leader as leader_module

    monkeypatch.setattr(leader_module, "MAX_CHANGES_PER_TICK", 3)
    cfg = rollup_cfg(postgres_db.url)
    calendar = ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)
    builder = RowBuilder(cfg, calendar)
    first = datetime(2028, 4, 3, 0, tzinfo=UTC)

    def rows(gw: str, line: str) -> list[WindowRow]:
        out = [builder.build(f"test/site/{gw}/lines/{line}/output",
                             window(line, k + 1, first + timedelta(hours=k), units=k, interval_s=3600))
               for k in range(10)]
        assert all(isinstance(r, WindowRow) for r in out)
        return out  # type: ignore[return-value]

    db = await opened(postgres_db.url)
    session = ReplicaSession(db)
    try:
        await db.migrate()
        site = await db.site("test", interval_s=3600, origin=first)
        await session.open()
        leader = Leader(cfg, calendar, session, site, publisher=None,  # type: ignore[arg-type]
                        wall=lambda: first + timedelta(hours=11))
        await db.insert(rows("gw1", "kei-ev"), [])
        assert await leader.tick() == 10                  # rogue missing after the grace
        for row in rows("gw2", "rogue"):                  # its backlog: one transaction per window
            await db.insert([row], [])
        made = [await leader.tick() for _ in range(8)]    # 17 queue entries left, 3 a tick
    finally:
        await session.close()
        await db.close()
    assert max(made) <= 3
    assert sum(made) == 10, made                      # one revision per site window, none spurious
    assert made[-2:] == [0, 0]
    got = await query(postgres_db.url, "SELECT seq, revision, units FROM plantfloor.plant_window_latest ORDER BY seq")
    assert got == [(k + 1, 1, 2 * k) for k in range(10)]
    assert await query(postgres_db.url, "SELECT count(*) FROM plantfloor.period_change") == [(0,)]
