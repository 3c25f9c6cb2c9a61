"""One message never stops the site service: bounds before SQL, refusals stored, sums that cannot overflow."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.core.calendar import ShiftCalendar
from agent.rollup.config import RollupConfig
from agent.rollup.consumer import Delivery
from agent.rollup.database import BatchRefused, Database
from agent.rollup.ingest import Ingest
from agent.rollup.leader import Leader
from agent.rollup.rows import Rejected, RowBuilder, WindowRow
from agent.rollup.session import ReplicaSession
from tests.fixtures.postgres import PostgresDatabase
from tests.rollup.rig import InProcessReplica, WindowPublisher, prepare_site, query, rollup_config
from tests.rollup.synth import window
from tests.waiting import wait_until

START = datetime(2028, 4, 3, 0, tzinfo=UTC)
KEI = "test/site/gw1/lines/kei-ev/output"


def cfg_of(url: str = "postgresql://127.0.0.1:1/x", broker: str = "mqtt://127.0.0.1:1", **sections: Any) -> RollupConfig:
    return RollupConfig.model_validate(rollup_config(broker, url, {"gw1": ["kei-ev"], "gw2": ["rogue"]},
                                                     interval_s=3600, **sections))


def builder(cfg: RollupConfig | None = None) -> RowBuilder:
    cfg = cfg or cfg_of()
    return RowBuilder(cfg, ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays))


def edited(raw: bytes, **changes: Any) -> bytes:
    """A window's JSON with top-level fields replaced (a dict value is merged one level deep)."""
    doc = json.loads(raw)
    for key, value in changes.items():
        doc[key] = {**doc[key], **value} if isinstance(value, dict) else value
    return json.dumps(doc).encode()


def noise(n: int) -> str:
    """n characters that do not compress (an index entry is compressed before its size counts)."""
    rng = random.Random(n)
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))


class _Acks:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, delivery: Delivery) -> None:
        self.acked.append(delivery.mid)


# --- bounds before SQL (pure) ---------------------------------------------------------------------

@pytest.mark.parametrize("start", ["0001-01-01T00:00:00.000Z", "9999-12-31T00:00:00.000Z",
                                   "1999-12-31T23:00:00.000Z", "2100-01-01T00:00:00.000Z"])
def test_a_window_outside_the_sane_time_range_is_rejected_not_raised(start: str) -> None:
    t = datetime.fromisoformat(start)
    raw = edited(window("kei-ev", 1, START, interval_s=3600), window_start=start,
                 window_end=(t + timedelta(hours=1) if t.year < 9999 else t + timedelta(minutes=1)).isoformat())
    got = builder().build(KEI, raw)
    assert isinstance(got, Rejected)
    assert "window_start" in got.error
    assert "outside 2000..2099" in got.error


def test_a_window_with_more_units_than_its_line_could_build_is_rejected() -> None:
    b = builder()
    # 3,600 an hour (the default bound) over one hour plus a day of catching up
    assert isinstance(b.build(KEI, window("kei-ev", 1, START, units=90_000, interval_s=3600)), WindowRow)
    got = b.build(KEI, window("kei-ev", 1, START, units=90_001, interval_s=3600))
    assert isinstance(got, Rejected)
    assert got.error == "units 90001 exceed the 90000 that line 'kei-ev' could build in the window " \
                        "(gateways.*.max_rate_per_hour)"
    for units in (2**62, 2**63 - 1, 2**64):
        assert isinstance(b.build(KEI, window("kei-ev", 1, START, units=units, interval_s=3600)), Rejected)
    # a gateway with a faster line says so in the config
    raw = rollup_config("mqtt://127.0.0.1:1", "postgresql://127.0.0.1:1/x", {"gw1": ["kei-ev"]}, interval_s=3600)
    raw["gateways"][0]["max_rate_per_hour"] = 36_000
    fast = builder(RollupConfig.model_validate(raw))
    assert isinstance(fast.build(KEI, window("kei-ev", 1, START, units=900_000, interval_s=3600)), WindowRow)


@pytest.mark.parametrize("raw", [
    window("kei-ev", 1, START, interval_s=3600, day_target=100.0).replace(b'"target":100.0', b'"target":1e400'),
    window("kei-ev", 1, START, interval_s=3600).replace(b'"rate_per_hour":1.0', b'"rate_per_hour":NaN'),
    window("kei-ev", 1, START, interval_s=3600).replace(b'"rate_per_hour":1.0', b'"rate_per_hour":Infinity'),
])
def test_no_infinity_or_nan_is_accepted_anywhere(raw: bytes) -> None:
    assert b"1e400" in raw or b"NaN" in raw or b"Infinity" in raw
    got = builder().build(KEI, raw)
    assert isinstance(got, Rejected)


@pytest.mark.parametrize("field", ["site", "product"])
def test_strings_are_length_limited(field: str) -> None:
    got = builder().build(KEI, edited(window("kei-ev", 1, START, interval_s=3600), **{field: "x" * 3000}))
    assert isinstance(got, Rejected)
    assert got.error == f"{field}: longer than 256 characters"


def test_a_window_for_another_gateways_line_is_refused() -> None:
    """gw1's root may not write gw2's line 'rogue': it would be counted, and its key would
    pre-empt the genuine window of the same epoch and seq."""
    got = builder().build("test/site/gw1/lines/rogue/output", window("rogue", 1, START, interval_s=3600))
    assert isinstance(got, Rejected)
    assert got.gateway == "gw1"
    assert "not a line of gateway 'gw1'" in got.error
    assert isinstance(builder().build("test/site/gw2/lines/rogue/output",
                                      window("rogue", 1, START, interval_s=3600)), WindowRow)


def test_the_builder_never_raises_for_any_bytes() -> None:
    b = builder()
    for raw in (b"", b"\xff\xfe", b"[]", b"null", b'{"schema":"plantfloor.output/1"}', b"1" * 5000,
                b'{"window_start":"9999-12-31T23:59:59.999Z"}'):
        assert isinstance(b.build(KEI, raw), Rejected)


# --- a bounded ingest queue ----------------------------------------------------------------------

def test_qos0_messages_beyond_the_bounded_queue_are_dropped_and_counted() -> None:
    ingest = Ingest(None, builder(), batch_size=10, batch_delay_s=0.01, max_queued=5)  # type: ignore[arg-type]
    acks = _Acks()
    for mid in range(8):
        ingest.deliver(Delivery(acks, None, mid, 0, KEI, b"{}"))  # type: ignore[arg-type]
    ingest.deliver(Delivery(acks, None, 99, 1, KEI, b"{}"))  # type: ignore[arg-type]
    assert (ingest.queued, ingest.dropped) == (6, 3)   # QoS 1 is bounded by the receive maximum instead


# --- PostgreSQL: refusals are about one message --------------------------------------------------

async def test_an_index_row_too_big_is_refused_data_not_an_unavailable_database(
        postgres_db: PostgresDatabase) -> None:
    cfg = cfg_of(postgres_db.url)
    db = Database(cfg.database, application_name="test")
    assert await db.open()
    try:
        await db.migrate()
        row = builder(cfg).build(KEI, window("kei-ev", 1, START, interval_s=3600))
        assert isinstance(row, WindowRow)
        # rows as an earlier version built them: no length limit before SQL (SQLSTATE 54000)
        with pytest.raises(BatchRefused, match="index row"):
            await db.insert([dataclasses.replace(row, site=noise(3000))], [])
        assert await db.insert([row], []) == 1
    finally:
        await db.close()


async def test_a_3kb_site_or_line_is_rejected_and_acknowledged_and_never_wedges_the_writer(
        postgres_db: PostgresDatabase) -> None:
    cfg = cfg_of(postgres_db.url)
    db = Database(cfg.database, application_name="test")
    assert await db.open()
    acks = _Acks()
    ingest = Ingest(db, builder(cfg), batch_size=10, batch_delay_s=0.05)
    long_line = noise(3000)
    messages = [(KEI, window("kei-ev", 1, START, interval_s=3600)),
                (KEI, edited(window("kei-ev", 2, START + timedelta(hours=1), interval_s=3600), site=noise(3000))),
                (f"test/site/gw1/lines/{long_line}/output", window(long_line, 1, START, interval_s=3600)),
                (KEI, window("kei-ev", 3, START + timedelta(hours=2), interval_s=3600))]
    task = asyncio.create_task(ingest.run())
    try:
        await db.migrate()
        for mid, (topic, payload) in enumerate(messages, 1):
            ingest.deliver(Delivery(acks, None, mid, 1, topic, payload))  # type: ignore[arg-type]
        assert await ingest.flush(10), "the writer is wedged"
    finally:
        task.cancel()
        await asyncio.wait([task])
        await db.close()
    assert sorted(acks.acked) == [1, 2, 3, 4]
    assert await query(postgres_db.url, "SELECT seq FROM plantfloor.line_window ORDER BY seq") == [(1,), (3,)]
    assert (ingest.windows, ingest.rejected) == (2, 2)
    assert len(await query(postgres_db.url, "SELECT id FROM plantfloor.rejected_message")) == 2


async def test_sums_beyond_a_bigint_do_not_overflow_the_leader(postgres_db: PostgresDatabase) -> None:
    """Two windows of 2^62 units on one day (stored before units were bounded) sum to 2^63."""
    cfg = cfg_of(postgres_db.url)
    calendar = ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)
    db = Database(cfg.database, application_name="test")
    assert await db.open()
    session = ReplicaSession(db)
    try:
        await db.migrate()
        rows = []
        for seq in (1, 2):
            row = builder(cfg).build(KEI, window("kei-ev", seq, START + timedelta(hours=seq - 1), interval_s=3600))
            assert isinstance(row, WindowRow)
            rows.append(dataclasses.replace(row, units=2**62))
        assert await db.insert(rows, []) == 2
        site = await db.site("test", interval_s=3600, origin=START)
        await session.open()
        leader = Leader(cfg, calendar, session, site, publisher=None,  # type: ignore[arg-type]
                        wall=lambda: START + timedelta(hours=2, seconds=10))
        assert await leader.tick() == 2
    finally:
        await session.close()
        await db.close()
    got = await query(postgres_db.url, "SELECT units, message FROM plantfloor.plant_window ORDER BY seq")
    assert [int(u) for u, _ in got] == [2**62, 2**62]
    assert json.loads(got[1][1])["units_today"] == 2**63


# --- a running replica ------------------------------------------------------------------------------

async def test_a_leader_tick_that_fails_is_alarmed_and_ingest_goes_on(
        mosquitto: Any, postgres_db: PostgresDatabase, mqtt_subscriber: Callable[..., Any]) -> None:
    cfg = rollup_config(mosquitto.url, postgres_db.url, {"gw1": ["l1"]}, grace_s=0.5)
    origin = await prepare_site(cfg, back_s=30)
    # the figure's table refuses every record, as a bug or a data error in the tick would
    await query(postgres_db.url, """
        CREATE FUNCTION plantfloor.refuse() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'refused for the test' USING ERRCODE = '22023'; END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON plantfloor.plant_window
        FOR EACH ROW EXECUTE FUNCTION plantfloor.refuse()""")
    status = mqtt_subscriber(mosquitto, "test/site/rollup/+/status")
    figures = mqtt_subscriber(mosquitto, "test/site/plant/output")
    pub = WindowPublisher(mosquitto.host, mosquitto.port)
    topic = "test/site/gw1/lines/l1/output"
    try:
        async with InProcessReplica(cfg, "a") as a:
            await wait_until(lambda: a.leading and a.service.ready.is_set(), 20, "replica a leads")
            pub.publish_many([(topic, window("l1", k + 1, origin + timedelta(seconds=k))) for k in range(3)])
            await wait_until(lambda: "leader_failing" in a.service.alarms(), 20, "the leader's alarm")
            await wait_until(lambda: any("leader_failing" in m.json()["alarms"] for m in status.messages
                                         if m.payload), 20, "the alarm in the retained status")
            # ingest goes on while the figure cannot be computed
            pub.publish_many([(topic, window("l1", k + 1, origin + timedelta(seconds=k))) for k in range(3, 6)])
            await wait_until(lambda: a.service.ingest is not None and a.service.ingest.windows == 6, 20,
                             "six windows committed")
            assert a.task is not None
            assert not a.task.done()
            # a refused message is counted where an operator looks: the replica's status
            pub.publish_many([("test/site/gw1/lines/l9/output", window("l9", 1, origin))])
            await wait_until(lambda: any(m.payload and m.json()["rejected"] == 1 for m in status.messages),
                             20, "the refusal counted in the published status")
            await query(postgres_db.url, "DROP TRIGGER refuse ON plantfloor.plant_window")
            await wait_until(lambda: not a.service.alarms() and len(figures.messages) >= 6, 20,
                             "the figure published once the tick succeeds")
    finally:
        pub.close()
    assert sum(m.json()["units"] for m in figures.messages[:6]) == 6


async def test_a_message_over_the_maximum_packet_size_never_reaches_the_replica(
        mosquitto: Any, postgres_db: PostgresDatabase) -> None:
    cfg = rollup_config(mosquitto.url, postgres_db.url, {"gw1": ["l1"]}, ingest={"max_packet_bytes": 65536})
    origin = await prepare_site(cfg, back_s=30)
    pub = WindowPublisher(mosquitto.host, mosquitto.port)
    topic = "test/site/gw1/lines/l1/output"
    try:
        async with InProcessReplica(cfg, "a") as a:
            await wait_until(lambda: a.service.ready.is_set(), 20, "replica a ready")
            # 5 MB: a valid window padded with a field a newer agent might add
            huge = edited(window("l1", 1, origin), padding="x" * 5_000_000)
            pub.publish_many([(topic, huge), (topic, window("l1", 2, origin + timedelta(seconds=1)))])
            await wait_until(lambda: a.service.ingest is not None and a.service.ingest.windows == 1, 20,
                             "the genuine window committed")
            assert a.service.consumer is not None
            assert a.service.consumer.received == 1
    finally:
        pub.close()
    assert await query(postgres_db.url, "SELECT seq FROM plantfloor.line_window") == [(2,)]
