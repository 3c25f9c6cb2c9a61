"""A chaos soak: ``python -m bench.soak --minutes N --seed S [--lines L] [--json FILE]``.

One agent process, its simulated PLCs (in this process) and its own Mosquitto, all on free
loopback ports, under random faults drawn from the seed, one after another: PLC outages,
PLC counter resets, broker restarts and freezes (SIGSTOP/SIGCONT), ``kill -9`` of the
agent (also a few seconds after a restart, while it fills the windows it missed),
SIGTERM of the agent (also while it is starting), wall-clock steps forward and back
(libfaketime, when installed) and a full disk (the state database lives on a small
tmpfs, mounted for the run and unmounted after it, when the soak may mount one).

At the end production is held, the agent drains and is stopped, and per line the sum of
``units`` over distinct (``epoch``, ``seq``) must equal the simulator's ledger (units
built while the counter was visible), windows must tile time within each epoch with
``seq`` contiguous, every stop must exit 0 and the agent's RSS must stay flat. Any
mismatch exits 1. The subscriber keeps a persistent session and the broker persists it,
so a broker restart loses nothing on the subscriber's side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bench.agentcfg import ALL_DAYS, write_config
from bench.broker import Broker
from bench.plcs import farm_config
from bench.soak_faults import FAKETIME_LIB, AgentProc, Fault, Rig, faults, rss_kb
from simulators.modbus_plc import ModbusPlc
from simulators.runner import SimulatorSet

__all__ = ["main", "soak"]

ROOT = "soak/agent"
INTERVAL_S = 5
SETTLE_S = 150.0            # how long the end may take to drain
DISK_MB = 24                # the tmpfs the state database lives on


@dataclass
class Windows:
    """Every line window received, by (line, epoch, seq); a second copy must be identical."""

    by_key: dict[tuple[str, int, int], dict[str, Any]] = field(default_factory=dict)
    conflicts: list[tuple[str, int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, p: dict[str, Any]) -> None:
        key = (p["line"], p["epoch"], p["seq"])
        with self.lock:
            old = self.by_key.setdefault(key, p)
            if old is not p and (old["units"], old["window_start"]) != (p["units"], p["window_start"]):
                self.conflicts.append(key)

    def units(self, line: str) -> int:
        with self.lock:
            return sum(p["units"] for (ln, _, _), p in self.by_key.items() if ln == line)

    def check_tiling(self, line: str) -> list[str]:
        """Problems of the line's windows: a hole or overlap in time or in ``seq``."""
        with self.lock:
            mine = sorted((e, s, p) for (ln, e, s), p in self.by_key.items() if ln == line)
        problems = []
        for (e1, s1, p1), (e2, s2, p2) in itertools.pairwise(mine):
            if e1 != e2:
                continue
            if s2 != s1 + 1:
                problems.append(f"{line}: epoch {e1} seq {s1} then {s2}")
            elif p1["window_end"] != p2["window_start"]:
                problems.append(f"{line}: seq {s1} ends {p1['window_end']}, {s2} starts {p2['window_start']}")
        return problems


class DurableSubscriber:
    """A paho subscriber with a persistent session (QoS 1): it misses nothing across a
    broker restart, a freeze or its own reconnects."""

    def __init__(self, broker: Broker, windows: Windows) -> None:
        self.windows = windows
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-subscriber",
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.broker = broker
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: self.subscribed.set()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(f"{ROOT}/lines/+/output", SubscribeOptions(qos=1))])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.windows.add(json.loads(msg.payload))

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 24 * 3600
        self.client.connect(self.broker.host, self.broker.port, keepalive=10, clean_start=False,
                            properties=props)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("the soak's subscriber got no SUBACK")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def _small_disk(path: Path) -> Iterator[bool]:
    """A tmpfs of :data:`DISK_MB` at ``path`` for the run (True), or a plain folder (False)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700",
                                  "tmpfs", str(path)], capture_output=True, check=False).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _agent_config(ports: dict[str, int], broker_url: str, db: Path) -> dict[str, Any]:
    sources = []
    lines = []
    for line, port in sorted(ports.items()):
        src = f"plc-{line}"
        sources.append({"id": src, "kind": "modbus", "host": "127.0.0.1", "port": port,
                        "poll_interval_s": 1, "timeout_s": 0.5, "backoff_max_s": 2})
        lines.append({"id": line, "product": "Sakura", "target_per_hour": 1800,
                      "max_rate_per_hour": 7200,
                      "counter": {"source": src, "address": 0, "type": "uint32"},
                      "state": {"source": src, "address": 2, "type": "uint16"}})
    return {
        "site": "soak", "timezone": "UTC",
        "mqtt": {"url": broker_url, "topic_root": ROOT, "client_id": "soak-agent", "qos": 1},
        "publish": {"interval_s": INTERVAL_S, "status_interval_s": 30},
        "storage": {"path": str(db), "max_mb": DISK_MB / 2},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "00:00", "end": "12:00", "days": ALL_DAYS},
                   {"name": "b", "start": "12:00", "end": "00:00", "days": ALL_DAYS}],
        "sources": sources, "lines": lines,
    }


async def soak(minutes: float, seed: int, lines: int, workdir: Path, *,
               clock: bool) -> dict[str, Any]:
    """Run the soak; the result's ``ok`` says whether every check held. ``clock``: the
    agent runs under libfaketime and its wall clock is stepped."""
    rng = random.Random(seed)
    windows = Windows()
    offset_file = workdir / "clock-offset" if clock else None
    if offset_file is not None:
        offset_file.write_text("+0\n")
    broker = Broker(workdir / "broker", persistence=True)
    await asyncio.to_thread(broker.start)
    subscriber = DurableSubscriber(broker, windows)
    subscriber.start()
    rss: list[tuple[float, int, int]] = []
    started = time.monotonic()
    try:
        with _small_disk(workdir / "disk") as mounted:
            async with SimulatorSet(farm_config(lines, 0), auto=True, tick_s=0.1) as sims:
                ports = {plc.cfg.lines[0].id: plc.port for plc in sims.plcs.values()
                         if isinstance(plc, ModbusPlc)}
                cfg = write_config(workdir / "agent.json",
                                   _agent_config(ports, broker.url, workdir / "disk" / "state.db"))
                agent = AgentProc(cfg, workdir, offset_file)
                rig = Rig(rng, sims, broker, agent, workdir / "disk", offset_file,
                          scale=min(1.0, minutes / 10))
                # production starts once the agent has read every counter: its first
                # readings become the baselines, so nothing built before them is in the ledger
                for line in sims.lines.values():
                    line.set_state("stopped")
                agent.start()
                await _read_by_agent(sims, times=3)
                for line in sims.lines.values():
                    line.set_state("running")
                sampler = asyncio.create_task(_sample_rss(agent, rss, started))
                try:
                    await _inject(rig, faults(clock, mounted), started, started + minutes * 60 - 45)
                    # the end: nothing more is built; the agent drains; then it stops
                    for line in sims.lines.values():
                        line.set_state("stopped")
                    ledger = {ln: line.expected_units for ln, line in sims.lines.items()}
                    if not agent.alive():
                        agent.start()
                    await _settle(windows, ledger)
                    await agent.kill("final sigterm")
                finally:
                    sampler.cancel()
                    if agent.alive():
                        await agent.kill("kill9")
                # what the final stop published
                await asyncio.sleep(2)
                return _verdict(seed, minutes, lines, windows, ledger, rig, rss, clock, mounted)
    finally:
        subscriber.stop()
        await asyncio.to_thread(broker.stop)


async def _read_by_agent(sims: SimulatorSet, *, times: int) -> None:
    """Wait until every PLC has answered ``times`` more requests (at most 60 s)."""
    plcs = [plc for plc in sims.plcs.values() if isinstance(plc, ModbusPlc)]
    target = {id(plc): plc.reads + times for plc in plcs}
    for _ in range(600):
        if all(plc.reads >= target[id(plc)] for plc in plcs):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the agent does not read its PLCs; see agent.log")


async def _inject(rig: Rig, faults: list[tuple[str, Fault, int]], started: float,
                  until: float) -> None:
    names = [f[0] for f in faults]
    weights = [f[2] for f in faults]
    await asyncio.sleep(10)           # the first windows, undisturbed
    while time.monotonic() < until:
        name = rig.rng.choices(names, weights)[0]
        fn = next(f[1] for f in faults if f[0] == name)
        t = time.monotonic()
        detail = await fn(rig)
        if not rig.agent.alive():     # died by itself: noted, and started again
            rig.faults.append({"fault": "agent_died", "code": rig.agent.proc.returncode
                               if rig.agent.proc else None})
            rig.agent.start()
        rig.faults.append({"fault": name, "at_s": round(t - started, 1), **detail})
        await asyncio.sleep(rig.rng.uniform(2, 8))


async def _settle(windows: Windows, ledger: dict[str, int]) -> None:
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        if all(windows.units(ln) == n for ln, n in ledger.items()):
            # one more window: anything late would show as a surplus
            await asyncio.sleep(INTERVAL_S * 2)
            return
        await asyncio.sleep(1)


async def _sample_rss(agent: AgentProc, rss: list[tuple[float, int, int]], started: float) -> None:
    while True:
        pid = agent.pid
        if pid is not None:
            kb = rss_kb(pid)
            if kb is not None:
                rss.append((time.monotonic() - started, agent.starts, kb))
        await asyncio.sleep(2)


def _verdict(seed: int, minutes: float, lines: int, windows: Windows, ledger: dict[str, int],
             rig: Rig, rss: list[tuple[float, int, int]], clock: bool, disk: bool) -> dict[str, Any]:
    per_line = {ln: {"ledger": n, "published": windows.units(ln)} for ln, n in sorted(ledger.items())}
    mismatches = [f"{ln}: published {v['published']}, built {v['ledger']}"
                  for ln, v in per_line.items() if v["published"] != v["ledger"]]
    tiling = [p for ln in ledger for p in windows.check_tiling(ln)]
    unclean = [f"{how}: exit {code}" for how, code in rig.agent.exits if code != 0]
    # RSS: the largest of the last third of the run against the first third's (after start-up)
    t_end = max((t for t, _, _ in rss), default=0.0)
    early = [kb for t, _, kb in rss if 20 <= t <= t_end / 3]
    late = [kb for t, _, kb in rss if t >= 2 * t_end / 3]
    rss_ok = not early or not late or max(late) <= max(early) * 1.25 + 10_240
    problems = (mismatches + tiling + unclean
                + [f"conflicting copies of {k}" for k in windows.conflicts]
                + ([] if rss_ok else [f"RSS grew: {max(early)} kB -> {max(late)} kB"]))
    counts: dict[str, int] = {}
    for f in rig.faults:
        counts[f["fault"]] = counts.get(f["fault"], 0) + 1
    return {
        "ok": not problems, "problems": problems, "seed": seed, "minutes": minutes, "lines": lines,
        "clock_steps": clock, "disk_full": disk, "faults": rig.faults, "fault_counts": counts,
        "units": sum(v["published"] for v in per_line.values()),
        "built": sum(ledger.values()), "per_line": per_line,
        "windows": len(windows.by_key), "agent_starts": rig.agent.starts,
        "epochs": sorted({e for _, e, _ in windows.by_key}),
        "rss_kb": {"first_third_max": max(early, default=None), "last_third_max": max(late, default=None),
                   "max": max((kb for _, _, kb in rss), default=None)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="length of the run (at least 2)")
    p.add_argument("--seed", type=int, default=1, help="seed of the faults")
    p.add_argument("--lines", type=int, default=10, help="simulated lines, one Modbus PLC each")
    p.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    p.add_argument("--workdir", type=Path, help="keep the run's files here (default: removed)")
    args = p.parse_args(argv)
    if args.minutes < 2:
        p.error("--minutes must be at least 2")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="plantfloor-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = asyncio.run(soak(args.minutes, args.seed, args.lines, work,
                                  clock=FAKETIME_LIB.exists()))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    print(f"soak seed {result['seed']}, {result['minutes']:g} min, {result['lines']} lines: "
          f"{result['units']} units published, {result['built']} built; "
          f"{len(result['faults'])} faults {result['fault_counts']}; "
          f"{result['windows']} windows, epochs {result['epochs']}, "
          f"{result['agent_starts']} agent starts; RSS {result['rss_kb']}")
    for problem in result["problems"]:
        print("MISMATCH", problem)
    print("OK" if result["ok"] else "FAILED")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
