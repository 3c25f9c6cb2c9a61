"""Store and forward in Sparkplug: replays, the count, seq wrapping, kill -9."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.contract.payloads import (
    DayTotals,
    LineOutput,
    LinePayload,
    PlantOutput,
    ShiftTotals,
    StateSeconds,
)
from agent.outputs.base import WindowOutputs
from agent.outputs.forwarder import Forwarder
from agent.outputs.sparkplug.format import SparkplugFormat
from agent.outputs.sparkplug.node import EdgeNode
from agent.store import Store
from tests.agentrig import Run, two_plcs, wait_until, write_yaml
from tests.sparkplug_rig import HOST, Host, births, node, sessions, sparkplug_config, wait_node


def _historical(m: Any) -> bool:
    return all(metric.get("is_historical") for metric in m.payload["metrics"])


async def test_every_window_arrives_through_a_broker_outage_and_a_restart(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(two_plcs(), auto=False)
    a = sims.lines["line-a"]
    sub = mqtt_subscriber(mosquitto, "spBv1.0/#")
    host = Host(mosquitto)
    cfg = sparkplug_config(tmp_path, mosquitto.url, sims, host=HOST)
    try:
        host.state(True)
        async with Run(cfg) as run:
            await wait_node(sub, lambda n: len(n.windows("kei")) >= 2, 20, "first windows")
            store = run.agent.store
            assert store is not None
            a.produce(3)
            await wait_node(sub, lambda n: n.units("kei") == 3, 20, "3 units")
            mosquitto.stop()
            a.produce(4)
            await wait_until(lambda: store.backlog >= 6, 20, "windows held in the outbox")
            mosquitto.start()
            await sub.wait_subscribed(15)
            await host.wait_connected()
            host.state(True)
            await wait_node(sub, lambda n: n.units("kei") == 7, 30, "the outage's units")
            await wait_until(lambda: store.backlog == 0, 20, "the outbox drained")
        a.produce(2)   # built while the agent is stopped
        async with Run(cfg):
            await wait_node(sub, lambda n: n.units("kei") == 9, 30, "the units built while stopped")
    finally:
        host.close()
    n = node(sub)
    assert n.units("kei") == a.expected_units == 9
    windows = n.windows("kei")
    (epoch,) = {e for e, _ in windows}
    assert sorted(s for _, s in windows) == list(range(1, len(windows) + 1))
    replayed = [m for m in n.of("DDATA") if _historical(m)]
    assert len(replayed) >= 2
    # replays go out in order, each with the window's own timestamp
    seqs = [m.value("seq") for m in replayed]
    assert seqs == sorted(seqs)
    assert all(m.metrics["units"]["timestamp"] == m.value("window_end") for m in replayed)
    # data only inside a session: after its births, never after a death
    for session in sessions(n):
        assert [m.verb for m in session[:2]] == ["NBIRTH", "DBIRTH"]
        assert [m.seq for m in session] == [i % 256 for i in range(len(session))]
    first_birth = births(n)[0]
    assert all(n.messages.index(m) > first_birth for m in n.of("DDATA"))
    plant = {m.value("plant/seq"): m for m in n.of("NDATA") if "plant/seq" in m.metrics}
    assert sum(m.value("plant/units") for m in plant.values()) == 9
    assert {m.value("plant/epoch") for m in plant.values()} == {epoch}


def _window(i: int, start: datetime, epoch: int, line_id: str = "kei") -> WindowOutputs:
    begin, end = start + timedelta(seconds=i), start + timedelta(seconds=i + 1)
    line = LineOutput(
        site="test", line=line_id, product="Sakura", epoch=epoch, seq=i + 1, window_start=begin,
        window_end=end, units=1, rate_per_hour=3600.0, target_per_hour=1800.0, attainment=2.0,
        shift=ShiftTotals(name="a", units=i + 1, target=100.0, projected=100.0, downtime_s=0.0),
        day=DayTotals(date=date(2028, 4, 3), units=i + 1, target=100.0),
        state_seconds=StateSeconds(running=1.0), quality="good", events=[], counter=i)
    plant = PlantOutput(
        site="test", epoch=epoch, seq=i + 1, window_start=begin, window_end=end, units=1,
        units_today=i + 1, units_year_to_date=i + 1, target_today=100.0, capacity_per_year=500_000,
        planned_utilization=0.8, utilization=0.5, projected_year=1000.0, lines={line_id: 1},
        quality="good")
    return WindowOutputs(begin, end, [LinePayload.of(line)], plant)


async def test_seq_wraps_from_255_to_0_without_a_gap(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(two_plcs(), auto=False)
    sub = mqtt_subscriber(mosquitto, "spBv1.0/#")
    cfg = sparkplug_config(tmp_path, mosquitto.url, sims)
    fmt = SparkplugFormat(cfg)
    store = await Store.open(cfg.storage.path, max_bytes=16_000_000)
    try:
        epoch = (await store.load()).epoch
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        records = [r for i in range(200) for r in fmt.records(_window(i, start, epoch))]
        await store.commit_window(records, [], None)   # 400 messages waiting: seq wraps once
        alarms: list[tuple[str, str]] = []
        edge = EdgeNode(cfg, fmt, store, status=lambda: {"agent/backlog": store.backlog})
        forwarder = Forwarder(store, edge, interval_s=1, on_alarm=lambda k, m: alarms.append((k, m)),
                              formats={"sparkplug": fmt}, only=("sparkplug",))
        await edge.publisher.start()
        tasks = [asyncio.create_task(edge.run(5.0)), asyncio.create_task(forwarder.run())]
        try:
            await wait_until(lambda: store.backlog == 0, 30, "the outbox drained")
            await wait_node(sub, lambda n: len(n.of("DDATA", "NDATA")) >= 400, 20, "400 messages")
        finally:
            for t in tasks:
                t.cancel()
            await edge.stop()
    finally:
        await store.close()
    n = node(sub)
    seqs = n.seqs()
    assert len(seqs) >= 402
    assert seqs == [i % 256 for i in range(len(seqs))]
    windows = [m for m in n.of("DDATA", "NDATA") if m.verb == "DDATA" or "plant/seq" in m.metrics]
    assert len(windows) == 400
    assert all(_historical(m) for m in windows)
    assert [m.value("seq") for m in n.of("DDATA")] == list(range(1, 201))
    assert alarms == []


def _spawn(config: Path, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", str(config)],
                            stdout=log, stderr=log, env=dict(os.environ))


async def test_bdseq_survives_kill_9(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(two_plcs(), auto=False)
    sub = mqtt_subscriber(mosquitto, "spBv1.0/#")
    cfg = sparkplug_config(tmp_path, mosquitto.url, sims)
    config = write_yaml(tmp_path / "agent.yaml", cfg.model_dump(mode="json", exclude_none=True))
    log = open(tmp_path / "agent.log", "ab")  # noqa: SIM115, ASYNC230 - handed to the children
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for round_ in itertools.count(1):
            procs.append(_spawn(config, log))
            await wait_node(sub, lambda n, r=round_: len(births(n)) == r and len(n.of("DDATA")) >= r,
                            30, f"birth and data of run {round_}")
            procs[-1].send_signal(signal.SIGKILL)
            procs[-1].wait()
            await wait_node(sub, lambda n, r=round_: len(n.of("NDEATH")) == r, 20,
                            f"the will of run {round_}")
            if round_ == 3:
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        log.close()
    n = node(sub)
    born = [n.messages[i].value("bdSeq") for i in births(n)]
    died = [d.value("bdSeq") for d in n.of("NDEATH")]
    assert born == [0, 1, 2]
    assert died == born, "each will (NDEATH) carries the bdSeq of its session's NBIRTH"


async def test_the_demo_runs_with_both_outputs_and_watch_shows_the_sparkplug_node(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any]) -> None:
    from tests.test_demo import _demo_configs

    agent_cfg, sim_cfg = _demo_configs(tmp_path)
    json_sub = mqtt_subscriber(mosquitto, "plantfloor/#")
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "demo", "--plain", "--duration", "12", "--output", "both",
        "--broker", mosquitto.url, "--config", str(agent_cfg), "--sim-config", str(sim_cfg),
        "--state-dir", str(tmp_path / "state"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watch = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "watch", "--plain", "--broker", mosquitto.url,
        "--sparkplug", "kyushu/kyushu-demo", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(demo.communicate(), timeout=60)
        assert demo.returncode == 0, err.decode()[-2000:]
    finally:
        watch.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(watch.communicate(), timeout=20)
    text = out.decode()
    for line in ("kei-ev", "rogue"):
        totals = [int(t) for t in re.findall(rf"^line={line} .*?total=(\d+)", text, re.M)]
        assert totals, text[-1500:]
        assert totals[-1] > 0
    assert "status state=offline agent=kyushu-demo" in text   # the NDEATH at the end
    # the JSON contract went on beside it
    assert any(m.topic.endswith("/lines/kei-ev/output") for m in json_sub.messages)
