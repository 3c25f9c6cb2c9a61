"""The scale scenario: a PLC farm, a private broker, then the agent and each baseline in turn.

Everything runs on the same simulated PLCs and the same broker, one measured process at
a time, so each sees the same load from the farm and Mosquitto (which share the machine's
cores with it: their CPU is reported alongside as context).

A scenario has a window length (``Settings.window_s``, or ``run_scale(..., window_s=)``):
1 s by default; with longer windows (the production 60 s) the agent is measured over at
least two window boundaries and the floor is the only baseline, publishing once per window.
"""

from __future__ import annotations

import importlib.util
import json
import math
import signal
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import node_red
from bench.agentcfg import TOPIC_ROOT, agent_config, write_config
from bench.broker import Arrival, Broker, Subscriber
from bench.measure import cpu_percent, cpu_sample, rss_mb, summary
from bench.procs import Child, wait_for, wait_json
from bench.profiling import summarise

__all__ = ["Farm", "Settings", "measure_agent", "measured_s", "run_scale", "start_farm", "window_boundaries",
           "window_latencies"]

#: the Python baselines (bench/baselines.py), in the order they run
PY_BASELINES = ("floor", "floor-uvloop", "naive")


@dataclass(frozen=True)
class Settings:
    """How long to measure and what to compare; ``workdir`` holds every file of the run.

    ``window_s`` is the scenario's window length (``publish.interval_s``); ``long_window_s``
    and ``long_window_plcs``: the long-window scenarios of the run (``--long-windows``).
    """

    workdir: Path
    duration_s: float = 60.0
    baseline_s: float = 30.0
    warmup_s: float = 5.0
    baselines: tuple[str, ...] = ("floor", "naive", "nodered")
    nodered_plcs: tuple[int, ...] = (10, 100)
    nodered_dir: Path | None = None
    profile_plcs: tuple[int, ...] = ()
    profile_s: float = 30.0
    window_s: int = 1
    long_window_s: int = 60
    long_window_plcs: tuple[int, ...] = ()
    nodered: dict[str, Any] = field(default_factory=dict)  # the install's outcome, filled once


@dataclass
class Farm:
    """The PLC farm process and what it serves."""

    child: Child
    info: dict[str, Any]
    dir: Path

    def reads(self, timeout: float = 5.0) -> int:
        """Read requests the Modbus servers have answered so far (asks the farm by SIGUSR1)."""
        return self.reads_at(timeout)[1]

    def reads_at(self, timeout: float = 5.0) -> tuple[float, int]:
        """(wall-clock time of the count, read requests answered so far)."""
        path = self.dir / "reads.json"
        path.unlink(missing_ok=True)
        self.child.proc.send_signal(signal.SIGUSR1)
        data = wait_json(path, timeout, child=self.child)
        return float(data["t"]), int(data["reads"])


def start_farm(workdir: Path, modbus: int, opcua_lines: int) -> Farm:
    """Start the farm process and wait until every server listens."""
    d = workdir / f"farm-{modbus}-{opcua_lines}"
    d.mkdir(parents=True, exist_ok=True)
    spec = d / "spec.json"
    spec.write_text(json.dumps({"modbus": modbus, "opcua_lines": opcua_lines}))
    ready = d / "ready.json"
    ready.unlink(missing_ok=True)
    child = Child.python("farm", "bench.plcs", [str(spec), str(ready)], d)
    info = wait_json(ready, 180, child=child)
    return Farm(child, info, d)


def _parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def window_boundaries(t0: float, t1: float, window_s: float) -> int:
    """Window ends in (t0, t1]: the multiples of ``window_s`` since the Unix epoch.

    The agent aligns windows to local midnight; in the benchmark's UTC that is the epoch's
    grid whenever ``window_s`` divides 86,400 (the config requires it to divide 3,600).
    """
    return math.floor(t1 / window_s) - math.floor(t0 / window_s)


def measured_s(base_s: float, window_s: float) -> float:
    """How long to measure with ``window_s`` windows: ``base_s``, or longer for windows above 1 s
    so the interval spans at least two window boundaries."""
    return base_s if window_s <= 1 else max(base_s, 2 * window_s + 10)


def window_latencies(arrivals: list[Arrival], t0: float, t1: float) -> tuple[list[float], int]:
    """Window-to-subscriber latencies of windows ending in (t0, t1], and how many arrived."""
    out: list[float] = []
    for a in arrivals:
        end = _parse_ts(a.json()["window_end"])
        if t0 < end <= t1:
            out.append(a.t - end)
    return out, len(out)


def _context(farm: Farm, broker: Broker) -> tuple[Any, Any]:
    assert broker.pid is not None
    return cpu_sample(farm.child.pid), cpu_sample(broker.pid)


def measure_agent(farm: Farm, broker: Broker, sub: Subscriber, s: Settings, tag: str,
                  *, profile: Path | None = None) -> dict[str, Any]:
    """Run the agent on the farm; measure CPU, RSS, poll cycles and window latency."""
    d = s.workdir / tag
    d.mkdir(parents=True, exist_ok=True)
    modbus_ports = {k: int(v) for k, v in farm.info["modbus"].items()}
    opcua = farm.info.get("opcua")
    cfg = agent_config(modbus_ports=modbus_ports, opcua=opcua, broker_url=broker.url, state_db=d / "state.db",
                       interval_s=s.window_s)
    n_lines = len(cfg["lines"])
    cfg_path = write_config(d / "agent.yaml", cfg)
    stats_path = d / "agent-stats.json"
    args = [str(cfg_path), str(stats_path)] + (["--profile", str(profile)] if profile else [])
    sub.take()
    child = Child.python("agent", "bench.agentproc", args, d)
    try:
        # running: a full window (every line and the plant) has reached the subscriber
        wait_for(lambda: sub.count() >= n_lines + 1, 120 + 2 * s.window_s, "the agent's first window arrives",
                 child=child)
        time.sleep(s.warmup_s)
        sub.take()
        tr0, reads0 = farm.reads_at() if modbus_ports else (0.0, 0)
        if profile is not None:
            child.proc.send_signal(signal.SIGUSR2)  # profile the steady state only
        c0, (f0, b0) = cpu_sample(child.pid), _context(farm, broker)
        t0 = time.time()
        time.sleep(s.duration_s)
        c1, (f1, b1) = cpu_sample(child.pid), _context(farm, broker)
        t1 = time.time()
        if profile is not None:
            child.proc.send_signal(signal.SIGUSR2)
        tr1, reads1 = farm.reads_at() if modbus_ports else (0.0, 0)
        mem = rss_mb(child.pid)
        stats = _snapshot(child, stats_path)
        time.sleep(1.5)  # let the last measured window reach the subscriber
        arrivals = sub.take()
        if profile is not None:
            wait_for(profile.exists, 60, "the profile is written", child=child)
    finally:
        stopping = time.monotonic()
        code = child.stop(grace_s=30)
        stop_s = time.monotonic() - stopping
    lat, received = window_latencies(arrivals, t0, t1)
    windows = window_boundaries(t0, t1, s.window_s)
    polls: dict[str, list[list[float]]] = stats.get("polls", {})
    durations = [dur for src in polls.values() for (w, dur) in src if t0 <= w <= t1]
    per_source = {sid: sum(1 for (w, _) in src if t0 <= w <= t1) for sid, src in polls.items()}
    expected = math.floor(s.duration_s)
    return {
        "lines": n_lines,
        "window_s": s.window_s,
        "sources": len(polls),
        "exit_code": code,
        "sigterm_to_exit_s": round(stop_s, 1),
        "duration_s": round(t1 - t0, 2),
        "cpu_pct": round(cpu_percent(c0, c1), 2),
        "peak_rss_mb": round(mem.get("VmHWM", math.nan), 1),
        "rss_mb": round(mem.get("VmRSS", math.nan), 1),
        "poll_ms": summary(durations),
        "polls": len(durations),
        "polls_missed": sum(max(0, expected - n) for n in per_source.values()),
        "poll_overruns": sum(1 for dur in durations if dur > 1.0),
        # requests the PLCs answered per agent poll, both counted between the farm's two counts
        "modbus_requests_per_poll": (round((reads1 - reads0) / max(1, sum(
            1 for sid, src in polls.items() if sid != "plc-ua" for (w, _) in src if tr0 <= w <= tr1)), 2)
            if modbus_ports else None),
        "window_ms": summary(lat),
        "windows_expected": windows * (n_lines + 1),
        "windows_received": received,
        "context": {"farm_cpu_pct": round(cpu_percent(f0, f1), 1),
                    "broker_cpu_pct": round(cpu_percent(b0, b1), 1)},
    }


def _snapshot(child: Child, path: Path) -> dict[str, Any]:
    """Ask a child for its statistics so far (SIGUSR1) and read them."""
    path.unlink(missing_ok=True)
    child.proc.send_signal(signal.SIGUSR1)
    data: dict[str, Any] = wait_json(path, 30, child=child)
    return data


def measure_baseline(mode: str, farm: Farm, broker: Broker, s: Settings, tag: str) -> dict[str, Any]:
    """Run a Python baseline (floor, floor-uvloop, naive) on the farm; CPU, RSS and the cycles it
    achieved. It publishes once per ``s.window_s`` per line (every cycle with 1 s windows)."""
    d = s.workdir / tag
    d.mkdir(parents=True, exist_ok=True)
    ports = {k: int(v) for k, v in farm.info["modbus"].items()}
    spec = d / f"{mode}-spec.json"
    spec.write_text(json.dumps({"ports": ports, "broker": [broker.host, broker.port],
                                "topic_root": f"bench/{mode}", "publish_s": s.window_s}))
    stats_path = d / f"{mode}-stats.json"
    child = Child.python(mode, "bench.baselines", [mode, str(spec), str(stats_path)], d)
    try:
        time.sleep(s.warmup_s)  # import, connect, first cycles: not measured
        if not child.alive():
            raise RuntimeError(f"{mode} exited early:\n{child.log_tail()}")
        reads0 = farm.reads()
        c0, (f0, b0) = cpu_sample(child.pid), _context(farm, broker)
        t0 = time.time()
        time.sleep(s.baseline_s)
        c1, (f1, b1) = cpu_sample(child.pid), _context(farm, broker)
        t1 = time.time()
        reads1 = farm.reads()
        mem = rss_mb(child.pid)
        stats = _snapshot(child, stats_path)
    finally:
        child.stop()
    cycles = [dur for (w, dur) in stats["cycles"] if t0 <= w <= t1]
    return {
        "publish_s": s.window_s,
        "cpu_pct": round(cpu_percent(c0, c1), 2),
        "peak_rss_mb": round(mem.get("VmHWM", math.nan), 1),
        "rss_mb": round(mem.get("VmRSS", math.nan), 1),
        "cycle_ms": summary(cycles),
        "cycles_per_plc_per_s": round(len(cycles) / (len(ports) * (t1 - t0)), 3),
        "cycle_overruns": sum(1 for dur in cycles if dur > 1.0),
        "modbus_requests_per_s": round((reads1 - reads0) / (t1 - t0), 1),
        "errors": stats.get("errors", 0),
        "event_loop": stats.get("loop"),
        "context": {"farm_cpu_pct": round(cpu_percent(f0, f1), 1),
                    "broker_cpu_pct": round(cpu_percent(b0, b1), 1)},
    }


def measure_nodered(farm: Farm, broker: Broker, s: Settings, tag: str) -> dict[str, Any]:
    """Run Node-RED with node-red-contrib-modbus on the farm (installing it once per run)."""
    if not s.nodered:
        dest = s.nodered_dir or (s.workdir / "nodered")
        inst = node_red.install(dest)
        s.nodered.update({"ok": inst.ok, "install_s": round(inst.seconds, 1), "detail": inst.detail,
                          "versions": inst.versions, "dir": str(inst.dir)})
    if not s.nodered["ok"]:
        return {"skipped": f"Node-RED could not be installed: {s.nodered['detail']}"}
    dest = Path(s.nodered["dir"])
    ports = {k: int(v) for k, v in farm.info["modbus"].items()}
    node_red.write_flow(dest, ports, broker.port)
    sub = Subscriber(broker, ["bench/nodered/raw/#"], client_id="bench-nodered-sub").start()
    child = node_red.start(dest, s.workdir / tag)
    try:
        wait_for(lambda: sub.count() >= len(ports), 60, "Node-RED's first messages arrive", child=child)
        time.sleep(s.warmup_s)
        sub.take()
        reads0 = farm.reads()
        c0, (f0, b0) = cpu_sample(child.pid), _context(farm, broker)
        t0 = time.time()
        time.sleep(s.baseline_s)
        c1, (f1, b1) = cpu_sample(child.pid), _context(farm, broker)
        t1 = time.time()
        reads1 = farm.reads()
        mem = rss_mb(child.pid)
        got = sub.take()
    finally:
        child.stop()
        sub.stop()
    return {
        "cpu_pct": round(cpu_percent(c0, c1), 2),
        "peak_rss_mb": round(mem.get("VmHWM", math.nan), 1),
        "rss_mb": round(mem.get("VmRSS", math.nan), 1),
        "messages_per_plc_per_s": round(len(got) / (len(ports) * (t1 - t0)), 3),
        "modbus_requests_per_s": round((reads1 - reads0) / (t1 - t0), 1),
        "context": {"farm_cpu_pct": round(cpu_percent(f0, f1), 1),
                    "broker_cpu_pct": round(cpu_percent(b0, b1), 1)},
    }


def _ratios(agent: dict[str, Any], base: dict[str, Any]) -> dict[str, float] | None:
    if "cpu_pct" not in base or not base["cpu_pct"]:
        return None
    return {"cpu": round(agent["cpu_pct"] / base["cpu_pct"], 2),
            "peak_rss": round(agent["peak_rss_mb"] / base["peak_rss_mb"], 2)}


def _measure_floor_uvloop(farm: Farm, broker: Broker, s: Settings, tag: str) -> dict[str, Any]:
    """The floor's code on uvloop's loop; skipped (not an error) where uvloop is not installed."""
    if importlib.util.find_spec("uvloop") is None:
        return {"skipped": "uvloop is not installed"}
    try:
        return measure_baseline("floor-uvloop", farm, broker, s, tag)
    except RuntimeError as exc:
        return {"skipped": f"floor-uvloop did not run: {str(exc)[:300]}"}


def run_scale(name: str, modbus: int, opcua_lines: int, s: Settings, *,
              window_s: int | None = None) -> dict[str, Any]:
    """One scale point: the agent, then each baseline that applies, on one farm and broker.

    ``window_s`` (default ``s.window_s``) is the window length. Above 1 s the agent and the
    floor are measured for at least two window boundaries (:func:`measured_s`), the floor
    (publishing once per window) is the only baseline and no profile is taken.
    """
    w = s.window_s if window_s is None else window_s
    long = w > 1
    s = replace(s, window_s=w, duration_s=measured_s(s.duration_s, w), baseline_s=measured_s(s.baseline_s, w))
    farm = start_farm(s.workdir, modbus, opcua_lines)
    broker = Broker(s.workdir / f"broker-{name}")
    sub: Subscriber | None = None
    result: dict[str, Any] = {"name": name, "plcs": modbus, "tags_per_plc": 30 if modbus else 0,
                              "opcua_items": 2 * opcua_lines, "window_s": w}
    try:
        broker.start()
        sub = Subscriber(broker, [f"{TOPIC_ROOT}/lines/+/output", f"{TOPIC_ROOT}/plant/output"]).start()
        result["agent"] = measure_agent(farm, broker, sub, s, f"{name}-agent")
        if modbus:
            for mode in PY_BASELINES:
                if mode not in s.baselines or (long and mode != "floor"):
                    continue
                if mode == "floor-uvloop":
                    result[mode] = _measure_floor_uvloop(farm, broker, s, f"{name}-{mode}")
                else:
                    result[mode] = measure_baseline(mode, farm, broker, s, f"{name}-{mode}")
            if "nodered" in s.baselines and modbus in s.nodered_plcs and not long:
                try:
                    result["nodered"] = measure_nodered(farm, broker, s, f"{name}-nodered")
                except RuntimeError as exc:
                    result["nodered"] = {"skipped": f"Node-RED did not run: {str(exc)[:300]}"}
        if modbus in s.profile_plcs and not long:
            prof = s.workdir / f"{name}-profile" / "agent.prof"
            prof.parent.mkdir(parents=True, exist_ok=True)
            quick = replace(s, duration_s=s.profile_s)
            measured = measure_agent(farm, broker, sub, quick, f"{name}-profile", profile=prof)
            result["profile"] = {"cpu_pct_under_profiler": measured["cpu_pct"], **summarise(prof)}
        result["ratios"] = {b: r for b in (*PY_BASELINES, "nodered") if b in result
                            and (r := _ratios(result["agent"], result[b])) is not None}
    finally:
        if sub is not None:
            sub.stop()
        broker.stop()
        farm.child.stop()
    return result
