"""The chaos soak's agent process and faults (:mod:`bench.soak` draws them from its seed).

Each fault is a coroutine taking the :class:`Rig` and returning what it did (for the
record); every fault restores what it broke before it returns, so faults never overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.broker import Broker
from simulators.modbus_plc import ModbusPlc
from simulators.runner import SimulatorSet

__all__ = ["FAKETIME_LIB", "AgentProc", "Fault", "Rig", "faults", "rss_kb"]

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


class AgentProc:
    """The agent (``plantfloor run``), restartable, under libfaketime when it is installed."""

    def __init__(self, config: Path, workdir: Path, offset_file: Path | None) -> None:
        self.config = config
        self.workdir = workdir
        self.offset_file = offset_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exits: list[tuple[str, int]] = []

    def start(self) -> None:
        env = dict(os.environ)
        if self.offset_file is not None:
            env.update(LD_PRELOAD=str(FAKETIME_LIB), FAKETIME_DONT_FAKE_MONOTONIC="1",
                       FAKETIME_TIMESTAMP_FILE=str(self.offset_file), FAKETIME_CACHE_DURATION="1")
        self.starts += 1
        log = (self.workdir / "agent.log").open("ab")
        exe = Path(sys.executable).with_name("plantfloor")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from agent.cli import main; main()"]
        self.proc = subprocess.Popen([*cmd, "run", str(self.config)], stdout=log,
                                     stderr=subprocess.STDOUT, env=env)
        log.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    async def kill(self, how: str) -> None:
        """SIGKILL, or SIGTERM and wait for the exit (its code is kept)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is not None:
            self.exits.append(("exited by itself", proc.returncode))
            return
        proc.send_signal(signal.SIGKILL if how == "kill9" else signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = await asyncio.to_thread(proc.wait)
            self.exits.append((how + " (hung, killed)", code))
            return
        if how != "kill9":
            self.exits.append((how, code))

    async def handles_sigterm(self) -> None:
        """Wait (up to 10 s) until the process catches SIGTERM (``SigCgt`` in /proc)."""
        for _ in range(1000):
            pid = self.pid
            if pid is None:
                return
            if _catches_sigterm(pid):
                return
            await asyncio.sleep(0.01)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Rig:
    rng: random.Random
    sims: SimulatorSet
    broker: Broker
    agent: AgentProc
    disk: Path
    offset_file: Path | None
    faults: list[dict[str, Any]] = field(default_factory=list)
    clock_offset: int = 0
    #: fault durations are scaled down for short runs (a 2-minute run: a fifth)
    scale: float = 1.0


def _catches_sigterm(pid: int) -> bool:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except OSError:
        pass
    return False


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


async def _plc_outage(rig: Rig) -> dict[str, Any]:
    plc_id = rig.rng.choice(sorted(rig.sims.plcs))
    secs = rig.rng.uniform(5, 40) * rig.scale
    plc = rig.sims.plcs[plc_id]
    await plc.stop()
    await asyncio.sleep(secs)
    await plc.start()
    return {"plc": plc_id, "s": round(secs, 1)}


async def _counter_reset(rig: Rig) -> dict[str, Any]:
    """Held production, read by the agent at least twice, then the counter reset to 0: a
    reset after the agent's last read loses nothing."""
    line_id = rig.rng.choice(sorted(rig.sims.lines))
    line = rig.sims.lines[line_id]
    plc = rig.sims.plcs[line.plc]
    assert isinstance(plc, ModbusPlc)
    line.set_state("stopped")
    try:
        before = plc.reads
        for _ in range(100):
            if plc.reads >= before + 3 and rig.agent.alive():
                line.reset_counter(0)
                return {"line": line_id}
            await asyncio.sleep(0.1)
        return {"line": line_id, "skipped": "the agent was not reading"}
    finally:
        line.set_state("running")


async def _broker_restart(rig: Rig) -> dict[str, Any]:
    secs = rig.rng.uniform(2, 20) * rig.scale
    await asyncio.to_thread(rig.broker.stop)
    await asyncio.sleep(secs)
    await asyncio.to_thread(rig.broker.start)
    return {"s": round(secs, 1)}


async def _broker_freeze(rig: Rig) -> dict[str, Any]:
    secs = rig.rng.uniform(5, 30) * rig.scale
    pid = rig.broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(secs)
    finally:
        os.kill(pid, signal.SIGCONT)
    return {"s": round(secs, 1)}


async def _agent_kill9(rig: Rig) -> dict[str, Any]:
    away = rig.rng.uniform(1, 60) * rig.scale
    await rig.agent.kill("kill9")
    await asyncio.sleep(away)
    rig.agent.start()
    return {"away_s": round(away, 1)}


async def _agent_kill9_after_restart(rig: Rig) -> dict[str, Any]:
    """Away long enough for windows to be filled, then killed seconds after the restart."""
    away = rig.rng.uniform(30, 110) * rig.scale
    after = rig.rng.uniform(0.5, 6)
    await rig.agent.kill("kill9")
    await asyncio.sleep(away)
    rig.agent.start()
    await asyncio.sleep(after)
    await rig.agent.kill("kill9")
    await asyncio.sleep(1)
    rig.agent.start()
    return {"away_s": round(away, 1), "killed_after_s": round(after, 1)}


async def _agent_sigterm(rig: Rig) -> dict[str, Any]:
    away = rig.rng.uniform(1, 30) * rig.scale
    await rig.agent.kill("sigterm")
    await asyncio.sleep(away)
    rig.agent.start()
    return {"away_s": round(away, 1)}


async def _agent_sigterm_starting(rig: Rig) -> dict[str, Any]:
    """SIGTERM once the process handles it (before that, no process can) and before it is
    up: the agent must stop cleanly, exit 0."""
    after = rig.rng.uniform(0.0, 1.0)
    await rig.agent.kill("sigterm")
    rig.agent.start()
    await rig.agent.handles_sigterm()
    await asyncio.sleep(after)
    await rig.agent.kill("sigterm while starting")
    rig.agent.start()
    return {"after_s": round(after, 2)}


async def _clock_step(rig: Rig) -> dict[str, Any]:
    assert rig.offset_file is not None
    step = rig.rng.choice([1, -1]) * rig.rng.randint(20, 300)
    # never further back than where the clock started: the store's windows stay ahead of it
    step = max(step, -rig.clock_offset - 300) if step < 0 else step
    rig.clock_offset += step
    rig.offset_file.write_text(f"{rig.clock_offset:+d}\n")
    await asyncio.sleep(rig.rng.uniform(10, 30) * rig.scale)
    return {"step_s": step, "offset_s": rig.clock_offset}


async def _disk_full(rig: Rig) -> dict[str, Any]:
    filler = rig.disk / "filler"
    secs = rig.rng.uniform(10, 30) * rig.scale
    try:
        await asyncio.to_thread(_fill, filler)
        await asyncio.sleep(secs)
    finally:
        await asyncio.to_thread(filler.unlink, missing_ok=True)
    return {"s": round(secs, 1)}


def _fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    with contextlib.suppress(OSError), path.open("wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


Fault = Callable[[Rig], Awaitable[dict[str, Any]]]


def faults(clock: bool, disk: bool) -> list[tuple[str, Fault, int]]:
    """Each fault with its weight."""
    faults: list[tuple[str, Fault, int]] = [
        ("plc_outage", _plc_outage, 3), ("counter_reset", _counter_reset, 2),
        ("broker_restart", _broker_restart, 2), ("broker_freeze", _broker_freeze, 2),
        ("agent_kill9", _agent_kill9, 2), ("agent_kill9_after_restart", _agent_kill9_after_restart, 2),
        ("agent_sigterm", _agent_sigterm, 1), ("agent_sigterm_starting", _agent_sigterm_starting, 1),
    ]
    if clock:
        faults.append(("clock_step", _clock_step, 2))
    if disk:
        faults.append(("disk_full", _disk_full, 1))
    return faults
