"""A broker restart with every gateway connected and publishing loses no window at the site.

Three real agents (configured with ``site_ack``) on simulated PLCs, two roll-up replicas,
an ordinary persistent subscriber on the gateways' topics (so the broker answers 0x00 while
the shared group has no member), and a Mosquitto restart in the middle of production, after
which the gateways publish for a few windows before the replicas have subscribed again. The
windows that reached nobody are published again by their agents until the site
acknowledges them: the database equals the ledgers exactly, every line's seq is contiguous,
and nothing stays held.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config
from tests.agentrig import Run, Windows
from tests.fixtures.postgres import PostgresDatabase
from tests.rollup.proxy import LinkProxy
from tests.rollup.rig import InProcessReplica, query, rollup_config
from tests.rollup.test_rollup_e2e import GATEWAYS, agent_config, line_rows, sims_of
from tests.waiting import wait_until


def with_site_ack(cfg: Config, gw: str) -> Config:
    return Config.model_validate({**cfg.model_dump(mode="json", exclude_unset=True),
                                  "site_ack": {"topic": f"test/site/rollup/ack/{gw}", "timeout_s": 2,
                                               "backoff_max_s": 4}})


@pytest.mark.timeout(180)
async def test_a_broker_restart_while_every_gateway_publishes_loses_no_window(
        tmp_path: Path, mosquitto_factory: Callable[..., Any], postgres_db: PostgresDatabase,
        mqtt_subscriber: Callable[..., Any], simulator_set: Callable[..., Any]) -> None:
    broker = mosquitto_factory(persistence=True)
    # an ordinary subscriber on the gateways' topics: its subscription survives the restart,
    # so the broker acknowledges windows with 0x00 while no replica has subscribed again
    lines_sub = mqtt_subscriber(broker, "test/site/+/lines/+/output", persistent=True, client_id="historian")
    status_sub = mqtt_subscriber(broker, "test/site/+/status", persistent=True, client_id="operator")
    # the replicas reach the broker through a link the test holds down after the restart, as
    # replicas slower to subscribe again than the gateways are to publish
    link = await LinkProxy(broker.host, broker.port).start()
    cfg = rollup_config(link.url, postgres_db.url, GATEWAYS, grace_s=1)
    sims = {gw: await simulator_set(sims_of(gw), auto=False) for gw in GATEWAYS}
    ledger = {line: s.lines[line] for s in sims.values() for line in s.lines}
    rng = random.Random(3)
    producing = True

    async def production() -> None:
        while producing:
            for sim_line in ledger.values():
                sim_line.produce(rng.randint(0, 2))
            await asyncio.sleep(0.2)   # the lines' pace, not synchronisation

    async def rows_at_least(n: int) -> bool:
        got = await line_rows(postgres_db.url)
        return all(got.get(x, (0, 0))[0] >= n for x in ledger)

    async def settled() -> bool:
        got = await line_rows(postgres_db.url)
        return (all(got.get(x, (0, 0))[1] == v.expected_units for x, v in ledger.items())
                and all(run.agent.site_acks is not None and run.agent.site_acks.backlog == 0 for run in runs))

    runs = [Run(with_site_ack(agent_config(gw, sims[gw], broker.url, tmp_path), gw)) for gw in GATEWAYS]
    async with InProcessReplica(cfg, "r1") as r1, InProcessReplica(cfg, "r2") as r2:
        await wait_until(lambda: r1.service.ready.is_set() and r2.service.ready.is_set(), 30, "replicas ready")
        try:
            for run in runs:
                await run.__aenter__()
            await wait_until(lambda: all(Windows(lines_sub.messages).seqs(x) for x in ledger), 30, "first windows")
            line_task = asyncio.create_task(production())
            try:
                await wait_until(lambda: rows_at_least(3), 30, "three windows of every line in the database")
                link.cut()
                broker.stop()
                broker.start()           # the agents stay up and reconnect by themselves
                published_before = len(lines_sub.messages)
                await wait_until(lambda: len(lines_sub.messages) >= published_before + 3 * len(ledger), 30,
                                 "the gateways publishing again, to no replica")
                link.restore()
                await wait_until(lambda: rows_at_least(8), 60, "windows after the broker restart")
            finally:
                producing = False
                await line_task
            try:
                await wait_until(settled, 60, "the database equals the ledgers and nothing is held")
            except AssertionError:
                raise AssertionError(f"rows {await line_rows(postgres_db.url)}, ledger "
                                     f"{ {x: v.expected_units for x, v in ledger.items()} }, held "
                                     f"{[r.agent.site_acks.backlog for r in runs if r.agent.site_acks]}") from None
            republished = sum(run.agent.site_acks.republished for run in runs if run.agent.site_acks)
        finally:
            for run in runs:
                if run.task is not None:
                    await run.__aexit__(None, None, None)
    await link.close()

    rows = await query(postgres_db.url, "SELECT line, epoch, seq, units FROM plantfloor.line_window")
    published = Windows(lines_sub.messages)
    for line, sim_line in ledger.items():
        seqs = sorted(seq for ln, _, seq, _ in rows if ln == line)
        assert seqs == list(range(1, len(seqs) + 1)), f"{line}: a window is missing: {seqs}"
        assert sum(u for ln, _, _, u in rows if ln == line) == sim_line.expected_units
        assert {(e, s) for ln, e, s, _ in rows if ln == line} == set(published.by_line[line])
    # windows published while no replica was subscribed reached nobody at the site (the
    # broker answered 0x00 for the historian): their agents published them again
    assert republished > 0
    # what an operator saw meanwhile on R/status: the windows held, the oldest, the alarm
    statuses = [m.json() for m in status_sub.messages if m.payload]
    behind = [p for p in statuses if p.get("site_backlog")]
    assert behind, "no R/status said the site was behind"
    assert all(p["site_oldest_unacknowledged"] is not None for p in behind)
    assert any(a["kind"] == "site_unacknowledged" for p in behind for a in p["alarms"])
    last = {m.topic: m.json() for m in status_sub.messages if m.payload}
    assert all(p["site_backlog"] == 0 and p["site_oldest_unacknowledged"] is None for p in last.values())
