"""Replicas on a real Mosquitto and PostgreSQL, fed with synthetic windows: exactly once, revisions, hand-over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from agent.rollup.service import HEARTBEAT_S
from tests.fixtures.postgres import PostgresDatabase
from tests.rollup.rig import InProcessReplica, WindowPublisher, prepare_site, query, rollup_config
from tests.rollup.synth import grid_start, window
from tests.waiting import wait_until

GATEWAYS = {"gw1": ["l1", "l2"], "gw2": ["l3"]}
LINES = [("gw1", "l1"), ("gw1", "l2"), ("gw2", "l3")]
PLANT_TOPIC = "test/site/plant/output"


def topic(gw: str, line: str) -> str:
    return f"test/site/{gw}/lines/{line}/output"


def latest_figures(messages: list[Any]) -> dict[tuple[int, int], dict[str, Any]]:
    """The highest revision of every site window received."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for m in messages:
        if m.topic == PLANT_TOPIC:
            p = m.json()
            key = (p["epoch"], p["seq"])
            if key not in out or p["revision"] > out[key]["revision"]:
                out[key] = p
    return out


async def row_count(url: str) -> int:
    return int((await query(url, "SELECT count(*) FROM plantfloor.line_window"))[0][0])


async def units_by_period(url: str) -> dict[datetime, int]:
    rows = await query(url, "SELECT period_start, sum(units) FROM plantfloor.line_window GROUP BY period_start")
    return {p: int(u) for p, u in rows}


async def test_two_replicas_split_the_stream_and_store_every_window_once(
        mosquitto: Any, postgres_db: PostgresDatabase, mqtt_subscriber: Callable[..., Any]) -> None:
    cfg = rollup_config(mosquitto.url, postgres_db.url, GATEWAYS, grace_s=1)
    sub = mqtt_subscriber(mosquitto, PLANT_TOPIC)
    pub = WindowPublisher(mosquitto.host, mosquitto.port)
    origin = await prepare_site(cfg, back_s=30)     # every window below has ended already
    async with InProcessReplica(cfg, "a") as a, InProcessReplica(cfg, "b") as b:
        await wait_until(lambda: a.service.ready.is_set() and b.service.ready.is_set(), 20, "both replicas ready")
        n = 12
        first = [(topic(gw, line), window(line, k + 1, origin + timedelta(seconds=k), units=k % 4))
                 for k in range(n) for gw, line in LINES]
        pub.publish_many(first)
        # a redelivered copy, and an outbox replay of the first five windows of every line
        replay = [(t, p.replace(b'"historical":false', b'"historical":true')) for t, p in first[:15]]
        pub.publish_many(first[:3] + replay)
        await wait_until(lambda: (a.service.ingest and b.service.ingest
                                  and a.service.ingest.windows + a.service.ingest.duplicates
                                  + b.service.ingest.windows + b.service.ingest.duplicates >= len(first) + 18),
                         20, "every message committed")
        assert a.service.ingest is not None
        assert b.service.ingest is not None
        assert a.service.consumer is not None
        assert b.service.consumer is not None
        assert await row_count(postgres_db.url) == 3 * n
        assert a.service.ingest.windows + b.service.ingest.windows == 3 * n
        assert a.service.ingest.duplicates + b.service.ingest.duplicates == 18
        # the shared subscription gave each replica a share of the stream
        assert a.service.consumer.received > 0
        assert b.service.consumer.received > 0
        sums = await units_by_period(postgres_db.url)

        def figures_complete() -> bool:
            got = {datetime.fromisoformat(p["window_start"]): p for p in latest_figures(sub.messages).values()}
            return all(p in got and got[p]["units"] == u for p, u in sums.items())
        await wait_until(figures_complete, 20, "a figure for every site window, equal to its rows")
    figures = latest_figures(sub.messages)
    seqs = sorted(seq for _, seq in figures)
    assert seqs == list(range(1, len(seqs) + 1))
    by_start = {datetime.fromisoformat(p["window_start"]): p for p in figures.values()}
    for start, units in sums.items():
        fig = by_start[start]
        assert fig["units"] == units
        assert fig["gateways"]["gw1"]["missing"] == []
        assert fig["gateways"]["gw2"]["lines"] == {"l3": units // 3}
    pending = await query(postgres_db.url, "SELECT count(*) FROM plantfloor.plant_window WHERE published_at IS NULL")
    assert pending == [(0,)]
    pub.close()


async def test_a_late_window_republishes_its_site_window_with_a_revision(
        mosquitto: Any, postgres_db: PostgresDatabase, mqtt_subscriber: Callable[..., Any]) -> None:
    cfg = rollup_config(mosquitto.url, postgres_db.url, GATEWAYS, grace_s=0.5)
    sub = mqtt_subscriber(mosquitto, PLANT_TOPIC)
    pub = WindowPublisher(mosquitto.host, mosquitto.port)
    async with InProcessReplica(cfg, "a") as a:
        await wait_until(lambda: a.service.ready.is_set(), 20, "replica ready")
        # windows of site windows that have not even begun: all arrive before the leader may
        # record them, so revision 0 is decided by the rows alone (l3 misses the middle one)
        first_start = grid_start() + timedelta(seconds=3)
        late_start = first_start + timedelta(seconds=1)
        pub.publish_many([(topic(gw, line), window(line, k + 1, first_start + timedelta(seconds=k), units=2))
                          for k in range(3) for gw, line in LINES if not (k == 1 and line == "l3")])

        def figure(revision: int) -> dict[str, Any] | None:
            for m in sub.messages:
                p = m.json()
                if p["window_start"] == late_start.isoformat().replace("+00:00", ".000Z") \
                        and p["revision"] == revision:
                    return p
            return None
        await wait_until(lambda: figure(0) is not None, 20, "the window published without l3 after the grace")
        first = figure(0)
        assert first is not None
        assert first["gateways"]["gw2"] == {"lines": {}, "missing": ["l3"], "late": []}
        assert first["quality"] == "bad"
        assert first["units"] == 4
        pub.publish_many([(topic("gw2", "l3"), window("l3", 2, late_start, units=5, historical=True))])
        await wait_until(lambda: figure(1) is not None, 20, "revision 1")
    second = figure(1)
    assert second is not None
    assert (second["epoch"], second["seq"]) == (first["epoch"], first["seq"])
    assert second["units"] == 9
    assert second["lines"] == {"l1": 2, "l2": 2, "l3": 5}
    assert second["gateways"]["gw2"] == {"lines": {"l3": 5}, "missing": [], "late": ["l3"]}
    assert second["quality"] == "good"
    assert second["units_today"] >= first["units_today"] + 5
    assert figure(2) is None
    pub.close()


async def test_leadership_passes_on_when_the_leader_stops_and_seq_goes_on(
        mosquitto: Any, postgres_db: PostgresDatabase, mqtt_subscriber: Callable[..., Any]) -> None:
    cfg = rollup_config(mosquitto.url, postgres_db.url, GATEWAYS, grace_s=0.2)
    sub = mqtt_subscriber(mosquitto, PLANT_TOPIC)
    a = InProcessReplica(cfg, "a")
    async with a:
        await wait_until(lambda: a.leading, 20, "a leads")
        async with InProcessReplica(cfg, "b") as b:
            await wait_until(lambda: b.service.ready.is_set(), 20, "b ready")
            assert not b.leading
            await wait_until(lambda: len(latest_figures(sub.messages)) >= 3, 20, "figures from a")
            await a.close()
            await wait_until(lambda: b.leading, 10, "b leads after a stopped")
            before = len(latest_figures(sub.messages))
            await wait_until(lambda: len(latest_figures(sub.messages)) >= before + 3, 20, "figures from b")
    seqs = sorted(seq for _, seq in latest_figures(sub.messages))
    assert seqs == list(range(1, len(seqs) + 1)), "no seq skipped or doubled across the hand-over"
    rows = await query(postgres_db.url, "SELECT count(DISTINCT period_start), count(*) FROM plantfloor.plant_window")
    assert rows[0][0] == rows[0][1]


async def test_ready_as_soon_as_subscribed(mosquitto: Any, postgres_db: PostgresDatabase) -> None:
    """READY=1 (what `systemctl start` waits for) follows the subscription at once, not at the
    heartbeat's next beat."""
    cfg = rollup_config(mosquitto.url, postgres_db.url, GATEWAYS)
    async with InProcessReplica(cfg, "a") as a:
        await wait_until(lambda: a.service.consumer is not None, 20, "the consumer made")
        consumer = a.service.consumer
        assert consumer is not None
        async with asyncio.timeout(20):
            await consumer.connected.wait()
        subscribed = time.monotonic()
        async with asyncio.timeout(20):
            await a.service.ready.wait()
        assert time.monotonic() - subscribed < HEARTBEAT_S / 2
