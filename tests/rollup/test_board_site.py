"""The site's board against a real PostgreSQL: the roll-up's own rows (built by its
RowBuilder from the messages an agent published, inserted by its Database) show the same
figures on the site's board as on the gateway's; a commit reaches an open stream through
LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from agent.board.site import SiteGateway
from agent.config import Config
from agent.core.calendar import ShiftCalendar
from agent.rollup.config import RollupConfig
from agent.rollup.database import Database
from agent.rollup.rows import Rejected, RowBuilder, ShiftRow, WindowRow
from tests.board_rig import FAULT, RUNNING, STARVED, Production, aligned, board_config
from tests.fixtures.postgres import PostgresDatabase
from tests.rollup.rig import InProcessReplica, prepare_site, query, rollup_config
from tests.test_board_api import next_state, served
from tests.waiting import wait_until


async def state_after(url: str, seen: str | None) -> tuple[str, dict[str, Any]]:
    """The first state a new stream sends when it last saw ``seen``."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return await next_state(client, seen)

START = datetime(2026, 12, 3, 1, 0, tzinfo=UTC)


def site_config(agent: Config, db_url: str) -> RollupConfig:
    raw = rollup_config("mqtt://127.0.0.1:1", db_url, {"gw1": [ln.id for ln in agent.lines]},
                        interval_s=agent.publish.interval_s)
    raw["site"] = agent.site
    raw["gateways"][0]["topic_root"] = agent.topic_root
    raw["shifts"] = [s.model_dump(mode="json") for s in agent.shifts]
    raw["board"] = {"red_after_s": 300, "poll_s": 0.05}
    return RollupConfig.model_validate(raw)


class Shipper:
    """Carries what the agent committed to the roll-up's tables, as its ingest would."""

    def __init__(self, agent: Config, site: RollupConfig) -> None:
        self.agent = agent
        self.builder = RowBuilder(site, ShiftCalendar(site.shifts, site.tz, site.plant.holidays))
        self.db = Database(site.database, application_name="test")
        self.after = 0

    async def ship(self) -> int:
        conn = sqlite3.connect(self.agent.storage.path)
        try:
            records = conn.execute("SELECT id, topic, payload FROM outbox WHERE id > ? AND"
                                   " format = 'json' AND topic LIKE '%/lines/%' ORDER BY id",
                                   (self.after,)).fetchall()
        finally:
            conn.close()
        rows: list[WindowRow] = []
        reports: list[ShiftRow] = []
        for rid, topic, payload in records:
            self.after = rid
            built = self.builder.build(topic, bytes(payload))
            assert not isinstance(built, Rejected), built
            (reports if isinstance(built, ShiftRow) else rows).append(built)  # type: ignore[arg-type]
        return await self.db.insert(rows, [], reports)


async def test_the_sites_board_shows_what_the_gateways_shows(tmp_path: Path,
                                                             postgres_db: PostgresDatabase) -> None:
    agent = board_config(tmp_path, red_after_s=300, poll_s=0.05)
    site = site_config(agent, postgres_db.url)
    prod = await Production.open(agent, START)

    def plan(i: int, line: str) -> tuple[int, int]:
        if line == "l0":
            return (1 + i % 2, RUNNING) if i < 50 else (0, FAULT)
        return (0, STARVED) if 20 <= i < 25 else (2 if i % 3 else 1, RUNNING)

    await prod.run(60, plan)
    shipper = Shipper(agent, site)
    assert await shipper.db.open()
    try:
        await shipper.db.migrate()
        assert await shipper.ship() == 120
        now = [prod.now - timedelta(milliseconds=1)]
        sources: list[Any] = []
        async with served(agent, now=lambda: now[0]) as gw_url, \
                served(site, now=lambda: now[0], sources=sources) as site_url, \
                httpx.AsyncClient(timeout=10) as client:
            gw = (await client.get(gw_url + "/api/v1/state")).json()
            st = (await client.get(site_url + "/api/v1/state")).json()
            assert st["site"] == "kyushu"
            assert len(st["lines"]) == 2
            for mine, theirs in zip(gw["lines"], st["lines"], strict=True):
                for key in ("line", "hour", "shift", "day", "oee", "state", "reason", "since",
                            "red", "window_end", "shift_name"):
                    assert theirs[key] == mine[key], key
            assert st["pareto"] == gw["pareto"]
            assert [h["figure"] for h in st["shift"]["hours"]] == [
                h["figure"] for h in gw["shift"]["hours"]]
            hist = (await client.get(site_url + "/api/v1/history", params={"bucket": "day"})).json()
            assert hist == (await client.get(gw_url + "/api/v1/history",
                                             params={"bucket": "day"})).json()
            # a commit at the site reaches an open page: while the board listens it reads
            # only after a notification (no polling), so the update is NOTIFY's doing
            source: SiteGateway = sources[0]
            await wait_until(source.listening.is_set, what="the board listens")
            seen, _ = await state_after(site_url, None)
            await prod.window({"l0": (2, RUNNING), "l1": (2, RUNNING)})
            now[0] = prod.now
            assert await shipper.ship() == 2
            want = {ln: prod.built[ln] for ln in ("l0", "l1")}

            async def updated() -> dict[str, Any]:
                nonlocal seen
                while True:
                    seen, latest = await state_after(site_url, seen)
                    if {ln["line"]: ln["shift"]["units"] for ln in latest["lines"]} == want:
                        return latest

            latest = await asyncio.wait_for(updated(), 10)
            assert source.listening.is_set()
            assert {ln["line"]: ln["reason"] for ln in latest["lines"]}["l0"] == "running"
    finally:
        await shipper.db.close()
        await prod.close()


async def test_the_sites_plant_is_the_roll_ups_site_figure(
        tmp_path: Path, mosquitto: Any, postgres_db: PostgresDatabase) -> None:
    """The roll-up's leader sums the windows into the site figure; the site's board shows it
    (today and the year against the plan) from plantfloor.plant_window_latest."""
    agent = board_config(tmp_path, poll_s=0.05)
    end = aligned(datetime.now(UTC), 60)
    raw = site_config(agent, postgres_db.url).model_dump(mode="json", exclude_none=True)
    raw["mqtt"] = {**raw["mqtt"], "url": mosquitto.url}
    raw["publish"] = {**raw["publish"], "grace_s": 0.5}
    origin = await prepare_site(raw, back_s=11 * 60)
    site = RollupConfig.model_validate(raw)
    prod = await Production.open(agent, max(origin, end - timedelta(minutes=10)))
    await prod.run(int((end - prod.now).total_seconds() // 60), lambda i, line: (1, RUNNING))
    shipper = Shipper(agent, site)
    assert await shipper.db.open()
    try:
        shipped = await shipper.ship()
        assert shipped > 0
        async with InProcessReplica(site, "a"):
            async def figured() -> bool:
                rows = await query(postgres_db.url, "SELECT (payload->>'units_today')::int FROM"
                                   " plantfloor.plant_window_latest ORDER BY period_start DESC LIMIT 1")
                return bool(rows) and rows[0][0] == sum(prod.built.values())

            await wait_until(figured, within=30, what="the site figure counts every window")
        async with served(site) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            plant = (await client.get("/api/v1/plant")).json()
    finally:
        await shipper.db.close()
        await prod.close()
    built = sum(prod.built.values())
    assert plant["today"]["units"] == built
    assert plant["year"]["year_to_date"] == built
    assert plant["year"]["plan"] == 400_000
    assert plant["year"]["gap"] == 400_000 - built
