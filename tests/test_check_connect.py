"""`plantfloor check --connect` reaches every PLC and the broker once; secrets stay out of logs."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.cli.check import check_command
from tests.agentrig import (
    ROOT_TOPIC,
    Windows,
    agent_config_dict,
    sim_config,
    wait_until,
    write_yaml,
)


async def test_check_connect_reports_each_endpoint(
        tmp_path: Path, mosquitto: Any, simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(sim_config(), auto=False)
    config = write_yaml(tmp_path / "agent.yaml", agent_config_dict(tmp_path, mosquitto.url, sims))
    out = io.StringIO()
    code = await asyncio.to_thread(check_command, config, connect=True, out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "ok   source plc-m: kei.counter=" in text
    assert "ok   source plc-u: rogue.counter=" in text
    assert f"ok   broker {mosquitto.url}" in text

    await sims.plcs["plc-m"].stop()
    mosquitto.stop()
    out = io.StringIO()
    code = await asyncio.to_thread(check_command, config, connect=True, out=out)
    text = out.getvalue()
    assert code == 1
    assert "FAIL source plc-m:" in text
    assert f"FAIL broker {mosquitto.url}:" in text
    assert "ok   source plc-u" in text


async def test_a_credential_name_outside_systemd_is_a_fail_line(
        tmp_path: Path, mosquitto: Any, simulator_set: Callable[..., Any],
        monkeypatch: Any) -> None:
    """``password_file: mqtt-password`` names a systemd credential; run by hand without
    CREDENTIALS_DIRECTORY it is not found: one FAIL line naming the key, not a traceback."""
    sims = await simulator_set(sim_config(), auto=False)
    data = agent_config_dict(tmp_path, mosquitto.url, sims)
    data["mqtt"].update(username="plantfloor", password_file="mqtt-password")
    config = write_yaml(tmp_path / "agent.yaml", data)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    code = await asyncio.to_thread(check_command, config, connect=True, out=out)
    text = out.getvalue()
    assert code == 1
    assert f"FAIL broker {mosquitto.url}: cannot read the password file mqtt-password (mqtt.password_file)" in text
    assert "CREDENTIALS_DIRECTORY" in text
    assert "ok   source plc-m" in text
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("anything\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    out = io.StringIO()
    code = await asyncio.to_thread(check_command, config, connect=True, out=out)
    assert "cannot read the password file" not in out.getvalue()


async def test_the_broker_password_never_reaches_the_log(
        tmp_path: Path, mosquitto_factory: Callable[..., Any], mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    password = "s3cret-Kyushu-2028"
    broker = mosquitto_factory(users={"plantfloor": password}, allow_anonymous=False)
    sims = await simulator_set(sim_config(), auto=False)
    data = agent_config_dict(tmp_path, broker.url, sims)
    (tmp_path / "pw").write_text(password + "\n")
    data["mqtt"].update(username="plantfloor", password_file=str(tmp_path / "pw"))
    config = write_yaml(tmp_path / "agent.yaml", data)
    sub = mqtt_subscriber(broker, f"{ROOT_TOPIC}/#", username="plantfloor", password=password)
    log = tmp_path / "agent.log"
    with log.open("ab") as sink:
        proc = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-m", "agent.cli", "--debug", "run", str(config)],
            stdout=sink, stderr=sink, env=dict(os.environ))
    try:
        await wait_until(lambda: len(Windows(sub.messages).seqs("kei")) >= 2, 20,
                         "windows through an authenticated broker")
        # the agent logs the secret only if something prints it: make it try
        broker.stop()
        broker.start()
        await wait_until(lambda: "connected to" in log.read_text().split("lost", 1)[-1], 30,
                         "reconnected")
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "DEBUG" in text, "debug logging was on"
    assert password not in text
