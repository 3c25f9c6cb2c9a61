"""`plantfloor demo`: simulators, broker, agent and view together; the embedded brokers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.cli.demo import embedded_broker, packaged_config
from agent.config import MqttConfig
from agent.config.load import load_config
from agent.outputs.mqtt.publisher import Publisher
from simulators.config import load_sim_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo_configs(tmp_path: Path) -> tuple[Path, Path]:
    """The packaged demo configs, moved to free ports so the test never meets a running demo."""
    modbus_port, opcua_port = _free_port(), _free_port()
    sim = load_sim_config(packaged_config("simulators.yaml")).model_dump(mode="json")
    for plc in sim["plcs"]:
        plc["port"] = modbus_port if plc["kind"] == "modbus" else opcua_port
    agent = load_config(packaged_config("demo.yaml")).config.model_dump(mode="json", exclude_none=True)
    for src in agent["sources"]:
        if src["kind"] == "modbus":
            src["port"] = modbus_port
        else:
            src["endpoint"] = f"opc.tcp://127.0.0.1:{opcua_port}/plantfloor"
    sim_path, agent_path = tmp_path / "sim.yaml", tmp_path / "demo.yaml"
    sim_path.write_text(json.dumps(sim))
    agent_path.write_text(json.dumps(agent))
    return agent_path, sim_path


async def test_demo_shows_both_lines_and_the_plant_moving_within_15_s(tmp_path: Path, mosquitto: Any) -> None:
    agent_cfg, sim_cfg = _demo_configs(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "demo", "--plain", "--duration", "15",
        "--broker", mosquitto.url, "--config", str(agent_cfg), "--sim-config", str(sim_cfg),
        "--state-dir", str(tmp_path / "state"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = out.decode()
    assert proc.returncode == 0, err.decode()[-2000:]

    def last_total(prefix: str) -> int:
        totals = [int(m) for m in re.findall(rf"^{prefix} .*?total=(\d+)", text, re.M)]
        assert totals, f"no '{prefix}' line in the view:\n{text[-1500:]}"
        return totals[-1]

    assert last_total("line=kei-ev") > 0
    assert last_total("line=rogue") > 0
    assert last_total("plant") > 0
    assert "state=online" in text
    assert "plantfloor demo: simulated time x60, 2028-04-03 06:20 JST; state kept in" in text
    assert "plantfloor demo: board at http://127.0.0.1:" in text
    assert (tmp_path / "state" / "kyushu-demo.db").exists()
    assert (tmp_path / "state" / "simulators-state.json").exists()


async def test_the_demo_run_again_and_again_continues_its_plant_day_without_noise(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Any) -> None:
    """The second, third ``plantfloor demo`` on one state folder: the plant clock resumes
    where the last run's windows ended and the simulators' counters where they stood (their
    own state file), so the windows tile the plant day with no counter reset, no jump."""
    from tests.agentrig import Windows

    agent_cfg, sim_cfg = _demo_configs(tmp_path)
    sim = json.loads(sim_cfg.read_text())
    sim["plcs"][0]["lines"][0]["counter"]["start"] = 2**32 - 2   # kei-ev wraps in the first run
    sim["plcs"][1]["lines"][0]["counter"]["start"] = 2**31 - 2   # rogue too (PackML DINT)
    sim_cfg.write_text(json.dumps(sim))
    cfg = load_config(agent_cfg).config
    sub = mqtt_subscriber(mosquitto, f"{cfg.topic_root}/#")
    for _ in range(3):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "demo", "--plain", "--duration", "11",
            "--broker", mosquitto.url, "--config", str(agent_cfg), "--sim-config", str(sim_cfg),
            "--state-dir", str(tmp_path / "state"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
    w = Windows(sub.messages)
    for line in cfg.lines:
        windows = w.windows(line.id)
        assert len(windows) >= 3 * 2, f"{line.id}: windows from every run"
        # a window can hold what the line builds at its bound, plus the unit in progress
        for p in windows:
            length = (datetime.fromisoformat(p["window_end"]) -
                      datetime.fromisoformat(p["window_start"])).total_seconds()
            assert p["units"] <= line.rate_bound * length / 3600 + 2, p
        assert w.tiles(line.id)
        assert w.contiguous(line.id)
        assert len(w.epochs(line.id)) == 1
        assert "rollover" in w.events(line.id)
        assert not {"implausible_jump", "counter_reset", "agent_offline"} & w.events(line.id)
        assert w.units(line.id) > 0
    ytd = max(p["units_year_to_date"] for p in w.plant.values())
    assert ytd == sum(w.units(line.id) for line in cfg.lines)


def _listening(port: int) -> list[str]:
    """Lines of /proc/net/tcp for sockets listening on ``port``."""
    return [line for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
            if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"]


MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
async def test_embedded_brokers_bind_loopback_and_acknowledge(tmp_path: Path, kind: str) -> None:
    binary = MOSQUITTO
    if kind == "mosquitto" and not os.path.exists(binary):  # noqa: ASYNC240 - a test's guard
        pytest.skip("no mosquitto binary")
    port = _free_port()
    async with embedded_broker(tmp_path, port=port, mosquitto=binary if kind == "mosquitto" else "") as version:
        assert version == ("5" if kind == "mosquitto" else "3.1.1")
        listening = await asyncio.to_thread(_listening, port)
        assert listening, "the broker listens"
        assert all(line.split()[1].startswith("0100007F:") for line in listening), "loopback only"
        pub = Publisher(MqttConfig(url=f"mqtt://127.0.0.1:{port}", version=version),  # type: ignore[arg-type]
                        client_id="demo-test", will_topic="t/status", will_payload=b"offline")
        await pub.start()
        try:
            await asyncio.wait_for(pub.connected.wait(), 10)
            assert await pub.publish("t/x", b"1", qos=1) in (0, 0x10)  # 0x10: no subscribers
        finally:
            await pub.stop()
