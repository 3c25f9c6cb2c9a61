"""End to end, time-compressed: simulated PLCs serving reason codes and rejects on a seeded
schedule -> the agent -> a real Mosquitto -> the retained shift reports, judged by the ledger.

One real second is a minute of the plant: the agent's wall clock and the simulators' run
60 times faster than real time (the agent's monotonic clock does not: a window's time in
each reason is its share of the window, as always). Three shifts pass in about 40 s: one
the agent saw only the end of, and two it saw whole, one with a break. Every published
shift report is compared with the simulators' books: units and rejects exactly, the time
in each reason (run, minor stops, downtime by reason) to the poll resolution.

The simulators' shifts end two minutes before the agent's, as a line runs out before
the shift's end: units built at a shift's last moment would be read, and counted, in the
next one, which the books could not tell.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import agent.runtime.windows
from agent.config import Config
from agent.core.calendar import Interval, Period, ShiftCalendar
from agent.runtime.pipeline import Agent
from simulators.config import SimConfig
from simulators.production import SimLine
from tests.agentrig import ALL_DAYS, ROOT_TOPIC, wait_until

TOKYO = ZoneInfo("Asia/Tokyo")
RATE = 60.0                        # plant seconds per real second
POLL_S = 0.1                       # real seconds: 6 s of the plant
THRESHOLD_S = 60.0                 # downtime.minor_stop_s
CODES = {"stopped": 0, "running": 1, "fault": 2, "changeover": 3, "blocked": 4, "starved": 5}
START = datetime(2028, 4, 3, 7, 54, tzinfo=TOKYO)       # a Monday
#: when the lines start building: the schedule of a seed is then the same on every run
PRODUCTION_FROM = datetime(2028, 4, 3, 7, 57, tzinfo=TOKYO)
END = datetime(2028, 4, 3, 8, 33, tzinfo=TOKYO)
PRODUCTION = {
    "takt_jitter": 0.05, "micro_stop_rate_per_hour": 20, "micro_stop_s": 20,
    "micro_stop_reasons": ["blocked", "starved"], "breakdown_rate_per_hour": 6, "repair_s": 150,
    "breakdown_reason": "fault", "changeover_every_s": 330, "changeover_s": 100,
    "durations": "fixed", "reject_rate": 0.1,
}


class CompressedClock:
    """The plant's wall clock, ``RATE`` times faster than real time from ``start``."""

    def __init__(self, start: datetime) -> None:
        self.start = start.astimezone(UTC)
        self.m0 = time.monotonic()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self.m0) * RATE)


def sim_config() -> SimConfig:
    return SimConfig.model_validate({
        # a seed whose stops all end well away from the minor-stop threshold (the test
        # checks it), so that a poll's lag cannot tip a stop from minor to downtime
        "seed": 7, "timezone": "Asia/Tokyo",
        "shifts": [{"name": "early", "start": "07:50", "end": "07:58", "days": ALL_DAYS},
                   {"name": "a", "start": "08:00", "end": "08:14", "days": ALL_DAYS,
                    "breaks": [{"start": "08:06", "end": "08:08"}]},
                   {"name": "b", "start": "08:16", "end": "08:30", "days": ALL_DAYS}],
        "plcs": [
            {"id": "plc-m", "kind": "modbus", "port": 0, "lines": [{
                "id": "kei", "takt_s": 20, "production": PRODUCTION,
                "counter": {"address": 100}, "reject_counter": {"address": 102},
                "state": {"address": 110, "codes": CODES}}]},
            {"id": "plc-u", "kind": "opcua", "port": 0, "lines": [{
                "id": "rogue", "takt_s": 30, "production": {**PRODUCTION, "changeover_every_s": 400},
                "counter": {"node": "Rogue.Good"}, "total_counter": {"node": "Rogue.Total"},
                "state": {"node": "Rogue.State", "codes": CODES}}]},
        ]})


def agent_config(tmp_path: Path, broker_url: str, sims: Any) -> Config:
    state_map = {v: k for k, v in CODES.items()}
    return Config.model_validate({
        "site": "test", "timezone": "Asia/Tokyo",
        "mqtt": {"url": broker_url, "topic_root": ROOT_TOPIC, "client_id": "agent-shift-e2e"},
        "publish": {"interval_s": 60, "status_interval_s": 5},
        "storage": {"path": str(tmp_path / "state.db"), "max_mb": 16},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "early", "start": "07:50", "end": "08:00", "days": ALL_DAYS},
                   {"name": "a", "start": "08:00", "end": "08:16", "days": ALL_DAYS,
                    "breaks": [{"start": "08:06", "end": "08:08"}]},
                   {"name": "b", "start": "08:16", "end": "08:32", "days": ALL_DAYS}],
        "downtime": {"minor_stop_s": THRESHOLD_S, "reasons": {
            "changeover": {"category": "planned"}, "fault": {"category": "unplanned", "state": "faulted"},
            "blocked": {"category": "unplanned"}, "starved": {"category": "unplanned"}}},
        "sources": [
            {"id": "plc-m", "kind": "modbus", "host": "127.0.0.1", "port": sims.plcs["plc-m"].port,
             "poll_interval_s": POLL_S, "timeout_s": POLL_S, "backoff_max_s": 1},
            {"id": "plc-u", "kind": "opcua", "endpoint": sims.plcs["plc-u"].endpoint, "mode": "poll",
             "poll_interval_s": POLL_S, "timeout_s": 2, "backoff_max_s": 1}],
        "lines": [
            {"id": "kei", "product": "Sakura", "takt_s": 20, "max_rate_per_hour": 1e9,
             "counter": {"source": "plc-m", "address": 100},
             "reject_counter": {"source": "plc-m", "address": 102},
             "state": {"source": "plc-m", "address": 110, "type": "uint16", "map": state_map}},
            {"id": "rogue", "product": "Rogue", "takt_s": 30, "ideal_cycle_s": 25,
             "max_rate_per_hour": 1e9, "counter": {"source": "plc-u", "node": "ns=2;s=Rogue.Good"},
             "total_counter": {"source": "plc-u", "node": "ns=2;s=Rogue.Total"},
             "state": {"source": "plc-u", "node": "ns=2;s=Rogue.State", "map": state_map}}],
    })


# --- the books: what the simulators served, by the definitions of docs/mqtt.md --------------------

def _overlap(a: datetime, b: datetime, intervals: tuple[Interval, ...]) -> float:
    return sum(max(0.0, (min(b, hi) - max(a, lo)).total_seconds()) for lo, hi in intervals)


class Books:
    """One line's truth over one shift instance, from its timeline of served reasons."""

    def __init__(self, line: SimLine, period: Period, planned: tuple[Interval, ...], end: datetime) -> None:
        tl = list(line.timeline)
        segments = [(t1, t2, reason) for (t1, reason, _, _), (t2, _, _, _)
                    in zip(tl, [*tl[1:], (end, "", 0, 0)], strict=True)]
        self.run = 0.0
        self.minor = 0.0
        self.down: dict[str, float] = defaultdict(float)
        self.stops: dict[str, int] = defaultdict(int)
        self.changes = defaultdict(int)          # changes of reason within the shift, by reason
        self.lengths: list[float] = []           # every stop's planned length
        runs: list[list[tuple[datetime, datetime, str]]] = []
        for seg in segments:
            if runs and runs[-1][-1][2] == seg[2]:
                runs[-1].append(seg)
            else:
                runs.append([seg])
            if period.start <= seg[0] < period.end:
                self.changes[seg[2]] += 1
        for run in runs:
            reason = run[0][2]
            here = sum(_overlap(a, b, period.planned) for a, b, _ in run)
            if reason == "running":
                self.run += here
                continue
            length = sum(_overlap(a, b, planned) for a, b, _ in run)
            if here:
                self.lengths.append(length)
            if length < THRESHOLD_S:
                self.minor += here
                continue
            self.down[reason] += here
            so_far = 0.0
            for a, b, _ in run:                  # the stop is counted where it reaches the threshold
                for lo, hi in planned:
                    step = max(0.0, (min(b, hi) - max(a, lo)).total_seconds())
                    if so_far < THRESHOLD_S <= so_far + step:
                        at = max(a, lo) + timedelta(seconds=THRESHOLD_S - so_far)
                        self.stops[reason] += period.start <= at < period.end
                    so_far += step
        # units and rejects built by a moment: those of the last change of reason before it
        # (the lines stand still around every shift's start and end)
        before = [(p, r) for t, _, p, r in tl if t < period.start] or [(0, 0)]
        upto = [(p, r) for t, _, p, r in tl if t < period.end]
        self.units = upto[-1][0] - before[-1][0]
        self.rejects = upto[-1][1] - before[-1][1]


async def test_shift_reports_match_the_ledger(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # a window must close within a fraction of its (compressed) minute
    monkeypatch.setattr(agent.runtime.windows, "TICK_S", 0.01)
    clock = CompressedClock(START)
    sims = await simulator_set(sim_config(), auto=False, clock=clock)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    cfg = agent_config(tmp_path, mosquitto.url, sims)
    stop = asyncio.Event()
    agent_ = Agent(cfg, config_sha256="0" * 64, wall=clock)
    task = asyncio.create_task(agent_.run(stop))
    kei, rogue = sims.lines["kei"], sims.lines["rogue"]
    try:
        # production starts once the agent reads both PLCs: its first reading is a baseline
        await wait_until(lambda: agent_.board is not None and all(
            t.reason != "unknown" for t in agent_.board.trackers.values()), 15, "first readings")
        assert clock() < PRODUCTION_FROM, "the agent read both PLCs before the lines start"
        await wait_until(lambda: clock() >= PRODUCTION_FROM, 10, "the lines' start")
        last = PRODUCTION_FROM.astimezone(UTC)
        while last < END.astimezone(UTC):
            await asyncio.sleep(0.02)      # the pace of compressed time, not synchronisation
            now = clock()
            for line in (kei, rogue):
                line.advance((now - last).total_seconds(), now=now)
            last = now
        await wait_until(lambda: len(_reports(sub)) == 9, 20, "the reports of three shifts")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)

    reports = _reports(sub)
    calendar = ShiftCalendar.from_config(cfg)
    periods = {p.name: p for p in calendar.shifts_on(START.date())}
    planned = tuple(iv for p in periods.values() for iv in p.planned)
    end = clock()
    assert min(kei.produced, rogue.produced) > 20, "the lines ran"
    assert {r.state for r in (kei, rogue)} <= set(CODES)
    served = {reason for line in (kei, rogue) for _, reason, _, _ in line.timeline}
    assert {"fault", "changeover", "running"} <= served
    assert served & {"blocked", "starved"}
    for (line_id, name), r in sorted(reports.items(), key=lambda kv: (kv[0][0] or "~", kv[0][1])):
        period = periods[name]
        assert r["shift"]["start"] == period.start.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        t = r["time"]
        ms = {k: round(v * 1000) for k, v in t.items()}
        lines_in = 1 if line_id else 2                 # the plant sums the planned time of its lines
        assert ms["calendar_s"] == lines_in * round(period.planned_seconds * 1000)
        assert ms["planned_busy_s"] == ms["run_s"] + ms["down_s"] + ms["minor_stop_s"] + ms["unknown_s"]
        assert ms["planned_s"] == ms["planned_busy_s"] + ms["planned_stop_s"]
        assert r["total"] == r["units"] + r["rejects"]
        if line_id is None:
            lines = [reports[(ln, name)] for ln in ("kei", "rogue")]
            assert r["units"] == sum(x["units"] for x in lines)
            assert r["rejects"] == sum(x["rejects"] for x in lines)
            assert t["run_s"] == pytest.approx(sum(x["time"]["run_s"] for x in lines), abs=0.002)
            continue
        books = Books(sims.lines[line_id], period, planned, end)
        # counts exactly
        assert (r["units"], r["rejects"]) == (books.units, books.rejects), (line_id, name)
        if name == "early":
            # the agent saw its last six minutes only, and says so
            assert t["planned_s"] == t["covered_s"] == 6 * 60
            assert r["coverage"] == round(6 / 10, 4)
            continue
        assert t["covered_s"] == t["planned_s"] == t["calendar_s"]
        # no stop is so close to the threshold that a poll could tip it (else: another seed)
        assert all(abs(length - THRESHOLD_S) > 2 * POLL_S * RATE for length in books.lengths), (
            line_id, name, books.lengths)
        # times to the poll resolution: each change of reason is seen up to a poll late
        lag = POLL_S * RATE + 3.0
        changes = sum(books.changes.values())
        assert t["run_s"] == pytest.approx(books.run, abs=lag * (books.changes["running"] + 2))
        assert t["minor_stop_s"] == pytest.approx(books.minor, abs=lag * (changes + 2))
        got = {k: v["seconds"] for k, v in r["downtime"].items()}
        for reason in set(got) | set(books.down):
            want = books.down.get(reason, 0.0)
            assert got.get(reason, 0.0) == pytest.approx(want, abs=lag * (books.changes[reason] + 2)), (
                line_id, name, reason)
        assert {k: v["stops"] for k, v in r["downtime"].items() if v["stops"]} == {
            k: v for k, v in books.stops.items() if v}, (line_id, name)
        assert t["unknown_s"] <= lag
        busy = t["planned_busy_s"]
        assert r["availability"] == round(t["run_s"] / busy, 4)
        ideal = 20 if line_id == "kei" else 25
        assert r["performance"] == round(ideal * r["total"] / t["run_s"], 4)
        assert r["quality"] == round(r["units"] / r["total"], 4)
        assert r["quality_measured"] is True
    # a subscriber arriving later gets the last report of each line, retained
    late = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/lines/+/shift")
    await wait_until(lambda: len(late.messages) == 2, 10, "retained reports")
    assert {m.json()["shift"]["name"] for m in late.messages} == {"b"}
    assert all(m.retain for m in late.messages)


def _reports(sub: Any) -> dict[tuple[str | None, str], dict[str, Any]]:
    out: dict[tuple[str | None, str], dict[str, Any]] = {}
    for m in sub.messages:
        if m.topic.endswith("/shift") and m.payload:
            p = m.json()
            out[(p["line"], p["shift"]["name"])] = p
    return out
