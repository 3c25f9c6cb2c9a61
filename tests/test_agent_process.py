"""`plantfloor run` as a process: SIGTERM, kill -9 at random moments, a full outbox, sd_notify."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.agentrig import (
    ROOT_TOPIC,
    Windows,
    agent_config_dict,
    sim_config,
    wait_until,
    write_yaml,
)


def _spawn(config: Path, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = open(tmp_path / "agent.log", "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", str(config)],
                            stdout=log, stderr=log, env={**os.environ, **(env or {})})


async def _wait_exit(proc: subprocess.Popen[bytes], within: float) -> int:
    deadline = time.monotonic() + within
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the agent did not exit within {within} s")
        await asyncio.sleep(0.05)
    return proc.returncode


async def test_sigterm_flushes_publishes_offline_and_exits_0(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(sim_config(), auto=False)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    config = write_yaml(tmp_path / "agent.yaml", agent_config_dict(tmp_path, mosquitto.url, sims))
    proc = _spawn(config, tmp_path)
    try:
        await wait_until(lambda: len(Windows(sub.messages).seqs("kei")) >= 2, 20, "first windows")
        sims.lines["kei"].produce(3)
        plc = sims.plcs["plc-m"]
        reads = plc.reads
        await wait_until(lambda: plc.reads >= reads + 2, 5, "the agent has read the new count")
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = await _wait_exit(proc, 10)
        assert code == 0, (tmp_path / "agent.log").read_text()
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    # the window in progress was finished: every unit read before SIGTERM is published (the
    # broker acknowledged it before the exit; the subscriber may get it a moment later)
    expected = sims.lines["kei"].expected_units
    await wait_until(lambda: Windows(sub.messages).units("kei") >= expected, 5, "the last window")
    w = Windows(sub.messages)
    assert w.units("kei") == sims.lines["kei"].expected_units
    assert w.contiguous("kei")
    late = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/status")
    await wait_until(lambda: bool(late.messages), 5, "retained status")
    status = late.messages[0].json()
    assert late.messages[0].retain
    assert status["state"] == "offline"
    assert status["backlog"] == 0


async def test_kill_9_twenty_times_loses_and_duplicates_nothing(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(sim_config(kei_type="uint32", kei_start=2**32 - 40), auto=False)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    config = write_yaml(tmp_path / "agent.yaml", agent_config_dict(tmp_path, mosquitto.url, sims,
                                                                   kei_type="uint32"))
    rng = random.Random(7)
    producing = True

    async def production() -> None:
        while producing:
            sims.lines["kei"].produce(rng.randint(0, 2))
            sims.lines["rogue"].produce(rng.randint(0, 3))
            await asyncio.sleep(0.1)  # the line's pace, not synchronisation

    # the first baseline is read before the lines start building
    proc = _spawn(config, tmp_path)
    await wait_until(lambda: all(Windows(sub.messages).seqs(k) for k in ("kei", "rogue")), 20,
                     "first windows")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    line_task = asyncio.create_task(production())
    try:
        for _ in range(20):
            proc = _spawn(config, tmp_path)
            before = len(sub.messages)
            # let it start and publish something, then kill it at a random moment
            await wait_until(lambda p=proc, n=before: len(sub.messages) > n or p.poll() is not None,
                             20, "the agent publishes")
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()[-2000:]
            target = time.monotonic() + rng.uniform(0.0, 2.5)
            await wait_until(lambda t=target: time.monotonic() >= t, 5, "a random moment")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    finally:
        producing = False
        await line_task
    proc = _spawn(config, tmp_path)
    try:
        def exact() -> bool:
            w = Windows(sub.messages)
            return all(w.units(k) == v.expected_units for k, v in sims.lines.items())
        try:
            await wait_until(exact, 30, "sums equal to the ledger after the last restart")
        except AssertionError:
            w = Windows(sub.messages)
            got = {k: (w.units(k), v.expected_units, w.seqs(k)[-1:], len(w.seqs(k)))
                   for k, v in sims.lines.items()}
            raise AssertionError(f"(sum, ledger, last seq, windows) per line: {got}; "
                                 f"conflicts {w.conflicts[:5]}") from None
        proc.send_signal(signal.SIGTERM)
        assert await _wait_exit(proc, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    w = Windows(sub.messages)
    assert w.conflicts == [], "a seq was published twice with different contents"
    for line in ("kei", "rogue"):
        assert w.contiguous(line), f"seq gap for {line}: {w.seqs(line)}"
        assert w.units(line) == sims.lines[line].expected_units
    assert "agent_offline" in w.events("kei") or "gap_recovered" in w.events("kei")


async def test_full_outbox_drops_oldest_and_reports_it(
        tmp_path: Path, mosquitto_factory: Callable[..., Any], mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    broker = mosquitto_factory()
    broker.stop()  # the agent starts with the broker away
    sims = await simulator_set(sim_config(), auto=False)
    cfg = agent_config_dict(tmp_path, broker.url, sims, max_mb=0.01)
    config = write_yaml(tmp_path / "agent.yaml", cfg)
    proc = _spawn(config, tmp_path)
    try:
        log = tmp_path / "agent.log"
        await wait_until(lambda: "outbox full" in log.read_text(), 40, "outbox full logged")
        broker.start()
        sub = mqtt_subscriber(broker, f"{ROOT_TOPIC}/#")

        def dropped_reported() -> bool:
            return any(m.topic.endswith("/status") and m.json()["dropped"] > 0 for m in sub.messages)
        await wait_until(dropped_reported, 30, "dropped count on R/status")
        await wait_until(lambda: len(Windows(sub.messages).seqs("kei")) > 0, 30, "windows after the outage")
        seqs = Windows(sub.messages).seqs("kei")
        assert seqs[0] > 1, "the oldest windows were dropped first"
        status = [m.json() for m in sub.messages if m.topic.endswith("/status")][-1]
        assert any(a["kind"] == "outbox_full" for a in status["alarms"])
        proc.send_signal(signal.SIGTERM)
        assert await _wait_exit(proc, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_sd_notify_ready_status_stopping(
        tmp_path: Path, mosquitto: Any, simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(sim_config(), auto=False)
    config = write_yaml(tmp_path / "agent.yaml", agent_config_dict(tmp_path, mosquitto.url, sims))
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    got: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                got.append(sock.recv(4096).decode())
            except BlockingIOError:
                return got

    proc = _spawn(config, tmp_path, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"})
    try:
        await wait_until(lambda: any("READY=1" in m for m in drain()), 20, "READY=1")
        ready = next(m for m in got if "READY=1" in m)
        assert "STATUS=" in ready
        assert "sources 2/2 up" in ready
        assert "broker up" in ready
        await wait_until(lambda: sum("WATCHDOG=1" in m for m in drain()) >= 2, 10, "watchdog pings")
        # STATUS follows health: a PLC lost shows at once in the summary line
        await sims.plcs["plc-m"].stop()
        await wait_until(lambda: any("STATUS=sources 1/2 up" in m for m in drain()), 15,
                         "STATUS with one source down")
        await sims.plcs["plc-m"].start()
        got.clear()
        await wait_until(lambda: any("STATUS=sources 2/2 up" in m for m in drain()), 15,
                         "STATUS with both sources back")
        proc.send_signal(signal.SIGTERM)
        assert await _wait_exit(proc, 10) == 0
        drain()
        assert any("STOPPING=1" in m for m in got)
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
