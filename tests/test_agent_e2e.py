"""End to end: simulated PLCs (Modbus + OPC UA) -> the agent -> a real Mosquitto -> a deduping subscriber.

The judge is always the simulators' ground truth: for every line, the sum of ``units``
over the deduplicated windows equals what the PLC built (less only what a reset hid).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config
from agent.contract.payloads import LineOutput, LineStatePayload, PlantOutput, StatusPayload
from agent.runtime.pipeline import Agent
from tests.agentrig import ROOT_TOPIC, Windows, agent_config_dict, sim_config, wait_until


async def _start_agent(cfg: Config) -> tuple[Agent, asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    agent = Agent(cfg, config_sha256="0" * 64)
    task = asyncio.create_task(agent.run(stop))
    return agent, stop, task


async def _stop_agent(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, timeout=10)


async def _next_windows(sub: Any, line: str, n: int = 1, within: float = 10.0) -> None:
    start = len(Windows(sub.messages).seqs(line))
    await wait_until(lambda: len(Windows(sub.messages).seqs(line)) >= start + n, within,
                     f"{n} more window(s) of {line}")


async def _counted(sub: Any, sims: Any, within: float = 15.0) -> None:
    """Wait until every line's deduplicated sum equals the simulators' ground truth."""
    def done() -> bool:
        w = Windows(sub.messages)
        return all(w.units(line_id) == line.expected_units for line_id, line in sims.lines.items())

    try:
        await wait_until(done, within, "window sums equal to the ledger")
    except AssertionError:
        w = Windows(sub.messages)
        got = {k: w.units(k) for k in sims.lines}
        want = {k: v.expected_units for k, v in sims.lines.items()}
        raise AssertionError(f"sums {got} != ledger {want}") from None


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_units_equal_the_ledger_through_plc_faults(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any], mode: str) -> None:
    sims = await simulator_set(sim_config(), auto=False)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    cfg = Config.model_validate(agent_config_dict(tmp_path, mosquitto.url, sims, mode=mode))
    _, stop, task = await _start_agent(cfg)
    kei, rogue = sims.lines["kei"], sims.lines["rogue"]
    plc_m, plc_u = sims.plcs["plc-m"], sims.plcs["plc-u"]
    try:
        await _next_windows(sub, "kei", 2)
        await _next_windows(sub, "rogue", 2)
        # production across both counters' rollovers (uint16 at 65,536; Int32 PackML at 2**31)
        for _ in range(4):
            kei.produce(3)
            rogue.produce(2)
            await _next_windows(sub, "kei")
        await _counted(sub, sims)

        # a PLC power cycle that resets its counter: units after the reset still count
        await plc_m.restart(reset_counters=True)
        kei.produce(4)
        await _counted(sub, sims)

        # network loss while the line keeps building: units land after reconnection
        await plc_m.stop()
        await _next_windows(sub, "kei", 2)
        kei.produce(7)
        await _next_windows(sub, "kei", 2)
        await plc_m.start()
        await _counted(sub, sims)

        # Modbus exception answers: flagged, nothing counted meanwhile, counted afterwards
        plc_m.set_exception(4)
        kei.produce(2)
        await _next_windows(sub, "kei", 2)
        plc_m.set_exception(None)
        await _counted(sub, sims)

        # OPC UA Bad and Uncertain values are never counted as production
        plc_u.set_status("rogue", "counter", "bad")
        rogue.produce(3)
        await _next_windows(sub, "rogue", 2)
        plc_u.set_status("rogue", "counter", "uncertain")
        await _next_windows(sub, "rogue", 2)
        plc_u.set_status("rogue", "counter", "good")
        await _counted(sub, sims)

        # an OPC UA server restart
        await plc_u.stop()
        rogue.produce(5)
        await _next_windows(sub, "rogue", 2)
        await plc_u.start()
        await _counted(sub, sims, within=20)
    finally:
        await _stop_agent(stop, task)

    assert plc_m.write_attempts == 0, "the agent never writes to a PLC"
    assert plc_u.write_attempts == 0, "the agent never writes to a PLC"
    w = Windows(sub.messages)
    assert w.conflicts == []
    for line in ("kei", "rogue"):
        assert w.contiguous(line), w.seqs(line)
        assert w.units(line) == sims.lines[line].expected_units
    assert {"rollover", "counter_reset", "source_unreachable", "gap_recovered"} <= w.events("kei")
    assert {"rollover", "bad_quality", "uncertain_quality", "source_unreachable"} <= w.events("rogue")
    assert any(p["tags"] == {"buffer": 0} for p in w.by_line["kei"].values()), "extra tags are reported"
    bad = [p for p in w.by_line["kei"].values() if "source_unreachable" in p["events"]]
    assert any(p["quality"] == "bad" and p["units"] == 0 for p in bad)
    # every message matches its payload model
    for m in sub.messages:
        model = {"status": StatusPayload, "output": LineOutput, "state": LineStatePayload}[m.topic.rsplit("/", 1)[1]]
        if m.topic.endswith("plant/output"):
            model = PlantOutput
        model.model_validate(m.json())
    statuses = [m.json() for m in sub.messages if m.topic == f"{ROOT_TOPIC}/status"]
    assert statuses[0]["state"] == "online"
    assert statuses[-1]["state"] == "offline"
    plant = w.plant
    assert sorted(seq for _, seq in plant) == list(range(1, len(plant) + 1))
    assert sum(p["units"] for p in plant.values()) == sum(w.units(line) for line in ("kei", "rogue"))


async def test_state_topic_is_retained_and_follows_the_line(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(sim_config(), auto=False)
    sims.lines["kei"].set_state("running")
    cfg = Config.model_validate(agent_config_dict(tmp_path, mosquitto.url, sims))
    _, stop, task = await _start_agent(cfg)
    try:
        sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/lines/kei/state")

        def states() -> list[dict[str, Any]]:
            return [m.json() for m in sub.messages]

        await wait_until(lambda: any(s["state"] == "running" for s in states()), 10, "running")
        sims.lines["kei"].set_state("faulted")
        await wait_until(lambda: states()[-1]["state"] == "faulted", 10, "faulted")
        # a Modbus exception answer is shown with its code on the line's state topic
        sims.plcs["plc-m"].set_exception(2)
        await wait_until(lambda: states()[-1]["source"]["code"] == 2, 10, "exception code 2")
        assert "illegal data address" in states()[-1]["source"]["error"]
        assert states()[-1]["source"]["connected"] is True
        sims.plcs["plc-m"].set_exception(None)
        await wait_until(lambda: states()[-1]["source"]["code"] is None, 10, "exception cleared")
        await sims.plcs["plc-m"].stop()
        await wait_until(lambda: states()[-1]["state"] == "unknown"
                         and not states()[-1]["source"]["connected"], 10, "source lost")
        assert states()[-1]["source"]["error"]
        # a late subscriber gets the retained state at once
        late = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/lines/kei/state")
        await wait_until(lambda: bool(late.messages), 5, "retained state")
        assert late.messages[0].retain
        assert late.messages[0].json()["state"] == "unknown"
    finally:
        await _stop_agent(stop, task)


async def test_broker_outage_and_freeze_lose_nothing(
        tmp_path: Path, mosquitto_factory: Callable[..., Any], mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    broker = mosquitto_factory(persistence=True)
    sims = await simulator_set(sim_config(), auto=False)
    sub = mqtt_subscriber(broker, f"{ROOT_TOPIC}/#", persistent=True)
    cfg = Config.model_validate(agent_config_dict(tmp_path, broker.url, sims))
    agent, stop, task = await _start_agent(cfg)
    kei, rogue = sims.lines["kei"], sims.lines["rogue"]

    async def produce_for(windows: int) -> None:
        for _ in range(windows):
            kei.produce(1)
            rogue.produce(2)
            await asyncio.wait_for(_tick(), timeout=5)

    async def _tick() -> None:
        # production keeps pace with the agent's windows, which continue while the broker is away
        closer = agent.closer
        assert closer is not None
        n = closer.windows_closed
        await wait_until(lambda: closer.windows_closed > n, 5, "a window closed")

    try:
        await _next_windows(sub, "kei", 2)
        broker.stop()
        await produce_for(30)          # 30 s of production with the broker down
        broker.start()
        await sub.wait_subscribed(20)
        await _counted(sub, sims, within=40)
        broker.freeze()
        await produce_for(10)          # 10 s frozen (SIGSTOP)
        broker.thaw()
        await _counted(sub, sims, within=40)
    finally:
        await _stop_agent(stop, task)
    w = Windows(sub.messages)
    assert w.conflicts == []
    for line in ("kei", "rogue"):
        assert w.contiguous(line)
        assert w.units(line) == sims.lines[line].expected_units
    assert any(p["historical"] for p in w.by_line["kei"].values()), "replayed windows say historical"


async def test_metrics_endpoint_reports_polls_windows_and_reads(
        tmp_path: Path, mosquitto: Any, simulator_set: Callable[..., Any]) -> None:
    import urllib.request

    sims = await simulator_set(sim_config(), auto=False)
    data = agent_config_dict(tmp_path, mosquitto.url, sims)
    data["metrics"] = {"port": 0}
    agent, stop, task = await _start_agent(Config.model_validate(data))
    try:
        await wait_until(lambda: agent.metrics_port is not None and agent.closer is not None
                         and agent.closer.windows_closed >= 3, 15, "three windows")
        sims.lines["kei"].produce(1)
        assert agent.metrics_port is not None

        def scrape() -> str:
            url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as rsp:
                return rsp.read().decode()

        text = ""

        async def published() -> bool:
            nonlocal text
            text = await asyncio.to_thread(scrape)
            return "plantfloor_windows_published_total 0.0" not in text

        deadline = asyncio.get_running_loop().time() + 10
        while not await published():
            assert asyncio.get_running_loop().time() < deadline, text
            await asyncio.sleep(0.2)
    finally:
        await _stop_agent(stop, task)
    assert 'plantfloor_poll_latency_seconds_count{source="plc-m"}' in text
    assert 'plantfloor_last_good_read_timestamp_seconds{line="kei"}' in text
    assert "plantfloor_outbox_backlog" in text


async def test_two_hour_history_time_compressed_matches_the_ledger(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    """Two simulated hours of takt-driven production (micro-stops, breakdowns) through both
    protocols, with rollovers, a PLC power cycle and two outages: the sums are exact."""
    sims = await simulator_set(sim_config(kei_start=65_200, rogue_start=2**31 - 1_500), auto=False)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    cfg = Config.model_validate(agent_config_dict(tmp_path, mosquitto.url, sims))
    _, stop, task = await _start_agent(cfg)
    kei, rogue = sims.lines["kei"], sims.lines["rogue"]
    plc_m, plc_u = sims.plcs["plc-m"], sims.plcs["plc-u"]
    step_s = 10.0  # simulated seconds per step: 720 steps are two hours
    try:
        await _next_windows(sub, "kei", 2)
        await _next_windows(sub, "rogue", 2)
        for step in range(720):
            if step == 240:
                # a power cycle: everything built so far has been read, then the counter resets
                reads = plc_m.reads
                await wait_until(lambda r=reads: plc_m.reads >= r + 2, 5, "a read before the reset")
                await plc_m.restart(reset_counters=True)
            if step == 400:
                await plc_m.stop()
            if step == 460:
                await plc_m.start()
            if step == 520:
                await plc_u.stop()
            if step == 580:
                await plc_u.start()
            kei.advance(step_s)
            rogue.advance(step_s)
            await asyncio.sleep(0.02)  # the pace of compressed time, not synchronisation
        await _counted(sub, sims, within=30)
    finally:
        await _stop_agent(stop, task)
    w = Windows(sub.messages)
    assert kei.produced > 1_500, "two hours of production"
    assert rogue.produced > 1_500, "two hours of production"
    assert kei.resets == 1
    for line in ("kei", "rogue"):
        assert w.contiguous(line)
        assert w.units(line) == sims.lines[line].expected_units
    assert {"rollover", "counter_reset", "gap_recovered"} <= w.events("kei")
    assert {"rollover", "gap_recovered"} <= w.events("rogue")
