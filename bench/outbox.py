"""The outbox scenario: replay of a backlog after the broker returns, with live windows flowing.

The backlog is built by filling the agent's store directly through :class:`agent.store.Store`
(the agent's own module) with realistic payloads: one :class:`agent.contract.payloads.LineOutput`
per line per 1 s window (counter, 28 tag values, shift and day totals) and one plant
output per window, committed ten windows per transaction. The line state is set so the
live windows continue the ``seq`` of the backlog. Then the agent starts against a broker
that is down (the farm's PLCs polled, live windows joining the outbox); once it polls,
the broker starts ("returns") with a subscriber, and the replay is timed at the subscriber.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.contract.payloads import (
    DayTotals,
    LineOutput,
    PlantOutput,
    ShiftTotals,
    StateSeconds,
    encode,
)
from agent.core.report import LineTotals, PlantTotals
from agent.store import LineState, NewRecord, Store
from bench.agentcfg import OTHER_TAGS, TOPIC_ROOT, agent_config, write_config
from bench.broker import Broker, Subscriber, free_port
from bench.measure import cpu_percent, cpu_sample, rss_mb, summary
from bench.procs import Child, wait_for
from bench.scenarios import Settings, start_farm

__all__ = ["fill_backlog", "run_outbox"]

_BATCH_WINDOWS = 10


def _line_payload(line: str, seq: int, start: datetime, end: datetime, rng: random.Random) -> bytes:
    units = rng.choice((0, 0, 1, 1, 1, 2))
    return encode(LineOutput(
        site="bench", line=line, product="Sakura", epoch=1, seq=seq, window_start=start, window_end=end,
        units=units, rate_per_hour=units * 3600.0, target_per_hour=1800.0, attainment=units / 0.5,
        shift=ShiftTotals(name="a", units=400 + seq, target=21600.0, projected=21000.5, downtime_s=312.4),
        day=DayTotals(date=end.date(), units=800 + seq, target=43200.0),
        state_seconds=StateSeconds(running=1.0), quality="good", events=[],
        counter=1_000_000 + seq, tags={f"v{a:02d}": rng.randrange(65536) for a in OTHER_TAGS}))


def _plant_payload(lines: list[str], seq: int, start: datetime, end: datetime) -> bytes:
    per_line = dict.fromkeys(lines, 1)
    return encode(PlantOutput(
        site="bench", epoch=1, seq=seq, window_start=start, window_end=end, units=len(lines), units_today=10 * seq,
        units_year_to_date=100_000 + seq, target_today=500_000.0, capacity_per_year=500_000,
        planned_utilization=0.8, utilization=0.91, projected_year=455_000.0, lines=per_line, quality="good"))


async def fill_backlog(path: Path, lines: list[str], seconds: int, *, end: datetime) -> dict[str, Any]:
    """Fill a store with ``seconds`` 1 s windows of ``lines`` ending at ``end``; sizes and timing."""
    store = await Store.open(path, max_bytes=4_000_000_000)
    rng = random.Random(7)
    started = time.monotonic()
    try:
        for first in range(0, seconds, _BATCH_WINDOWS):
            records: list[NewRecord] = []
            for k in range(first, min(seconds, first + _BATCH_WINDOWS)):
                w_end = end - timedelta(seconds=seconds - k - 1)
                w_start = w_end - timedelta(seconds=1)
                seq = k + 1
                records.extend(NewRecord(topic=f"{TOPIC_ROOT}/lines/{ln}/output",
                                         payload=_line_payload(ln, seq, w_start, w_end, rng), qos=1,
                                         retain=False, line=ln, seq=seq, window_end=w_end)
                               for ln in lines)
                records.append(NewRecord(topic=f"{TOPIC_ROOT}/plant/output",
                                         payload=_plant_payload(lines, seq, w_start, w_end), qos=1,
                                         retain=False, line=None, seq=seq, window_end=w_end))
            last = min(seconds, first + _BATCH_WINDOWS)
            # live windows continue the backlog's seq; no last_window_end: no gap to fill
            states = [LineState(ln, LineTotals(seq=last).to_json()) for ln in lines]
            await store.commit_window(records, states, PlantTotals(seq=last).to_json())
        backlog = store.backlog
    finally:
        await store.close()
    fill_s = time.monotonic() - started
    files = {p.name: p.stat().st_size for p in path.parent.glob(path.name + "*")}
    total = sum(files.values())
    return {"windows": backlog, "line_windows": seconds * len(lines), "fill_s": round(fill_s, 1),
            "disk_bytes": total, "files": files,
            "disk_bytes_per_window": round(total / backlog, 1) if backlog else math.nan}


def run_outbox(n_lines: int, seconds: int, s: Settings) -> dict[str, Any]:
    """Backlog of ``seconds`` x ``n_lines`` windows (+ plant), replayed after the broker returns."""
    d = s.workdir / f"outbox-{n_lines}x{seconds}"
    d.mkdir(parents=True, exist_ok=True)
    farm = start_farm(s.workdir, n_lines, 0)
    lines = sorted(farm.info["modbus"])
    broker = Broker(d / "broker", port=free_port())
    sub: Subscriber | None = None
    child: Child | None = None
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        fill = asyncio.run(fill_backlog(d / "state.db", lines, seconds, end=now))
        backlog_end = now.timestamp()
        cfg = agent_config(modbus_ports={k: int(v) for k, v in farm.info["modbus"].items()}, opcua=None,
                           broker_url=broker.url, state_db=d / "state.db", max_mb=4000)
        cfg_path = write_config(d / "agent.yaml", cfg)
        child = Child.python("agent", "bench.agentproc", [str(cfg_path), str(d / "agent-stats.json")], d)
        # the agent polls every PLC while the broker is still down
        reads0 = farm.reads()
        wait_for(lambda: farm.reads() >= reads0 + 2 * n_lines, 120, "the agent polls the farm",
                 child=child, period=0.5)
        time.sleep(s.warmup_s)
        broker.start()
        t_return = time.time()
        sub = Subscriber(broker, [f"{TOPIC_ROOT}/lines/+/output", f"{TOPIC_ROOT}/plant/output"]).start()
        c0 = cpu_sample(child.pid)
        expected = fill["windows"]
        seen: list[tuple[float, float]] = []  # (arrival, window_end)
        old_count = 0
        last_progress, last_count = time.monotonic(), -1
        deadline = time.monotonic() + max(120.0, expected / 500)
        while time.monotonic() < deadline and old_count < expected:
            time.sleep(0.5)
            new = [(a.t, _end(a.payload)) for a in sub.take()]
            seen.extend(new)
            old_count += sum(1 for _, e in new if e <= backlog_end)
            if old_count != last_count:
                last_progress, last_count = time.monotonic(), old_count
            elif time.monotonic() - last_progress > 15:
                break  # stalled: report what arrived
        c1 = cpu_sample(child.pid)
        time.sleep(1.5)
        seen.extend((a.t, _end(a.payload)) for a in sub.take())
        mem = rss_mb(child.pid)
    finally:
        if child is not None:
            child.stop(grace_s=30)
        if sub is not None:
            sub.stop()
        broker.stop()
        farm.child.stop()
    old = [t for t, e in seen if e <= backlog_end]
    live = [(t, e) for t, e in seen if e > t_return]
    first = min(t for t, _ in seen) if seen else math.nan
    last_old = max(old) if old else math.nan
    during = [t - e for t, e in live if t <= last_old]
    replay_s = last_old - first
    return {
        "lines": n_lines,
        "backlog_seconds": seconds,
        "backlog": fill,
        "backlog_received": len(old),
        "outage_windows_received": len(seen) - len(old) - len(live),
        "live_windows_during_replay": len(during),
        "replay_s": round(replay_s, 2),
        "replay_windows_per_s": round(len(old) / replay_s, 1) if replay_s > 0 else math.nan,
        "replay_from_return_s": round(last_old - t_return, 2),
        "live_during_replay_ms": summary(during),
        "agent_cpu_pct_during_replay": round(cpu_percent(c0, c1), 1),
        "agent_peak_rss_mb": round(mem.get("VmHWM", math.nan), 1),
    }


def _end(payload: bytes) -> float:
    text = json.loads(payload)["window_end"]
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
