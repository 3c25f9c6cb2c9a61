"""A whole production day of the Kyushu demo plant on the plant clock, in well under a minute.

The demo's own configs (config/demo.yaml, config/simulators.yaml: Kyushu's plan, lines,
shifts and breaks) run on one simulated plant clock, shared by the simulators and the
agent, 1,800 times faster than real time: from 05:00 on a Monday, through the day shift
with its breaks, the night shift across midnight, to 01:25 on Tuesday (20 plant hours in
about 41 real seconds); the lines start once the agent has its baselines. The agent polls its PLCs on real time, as always; rates, state
durations and windows follow the plant clock. Then ``plantfloor report``'s reports of the
day are judged by the simulators' books: every shift's units and rejects exactly, the
day's totals, and the time accounts that must add up.

The simulators' shifts end a quarter of an hour (half a real second) before the agent's,
as a line runs out before the shift's end: a unit built at a shift's last moment is read,
and counted, in the window after it, which the books could not tell.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.cli import main
from agent.cli.demo import packaged_config
from agent.config import Config
from agent.config.load import load_config
from agent.contract.payloads import ShiftReport
from agent.core.clock import SimulatedClock
from agent.runtime.pipeline import Agent
from agent.store.reports import read_reports
from agent.views.report import day_totals, report
from simulators.config import SimConfig, load_sim_config
from simulators.production import SimLine
from tests.waiting import wait_until

TOKYO = ZoneInfo("Asia/Tokyo")
SPEED = 1800.0                                       # plant seconds per real second
START = datetime(2028, 4, 3, 5, 0, tzinfo=TOKYO)      # a Monday in the Sakura's first weeks
SHIFT = datetime(2028, 4, 3, 6, 30, tzinfo=TOKYO)
END = datetime(2028, 4, 4, 1, 25, tzinfo=TOKYO)       # the night shift ended at 01:15
DAY = date(2028, 4, 3)
PLANNED_S = 460 * 60                                  # each shift: 525 minutes less 65 of breaks


def sim_config() -> SimConfig:
    raw = load_sim_config(packaged_config("simulators.yaml")).model_dump(mode="json")
    for plc in raw["plcs"]:
        plc["port"] = 0
    for shift in raw["shifts"]:
        shift["end"] = {"15:15": "15:00", "01:15": "01:00"}[shift["end"]]
    return SimConfig.model_validate(raw)


def agent_config(tmp_path: Path, broker_url: str, sims: Any) -> Config:
    raw = load_config(packaged_config("demo.yaml")).config.model_dump(mode="json", exclude_none=True)
    raw["mqtt"] = {**raw["mqtt"], "url": broker_url, "client_id": "agent-plant-day"}
    raw["storage"] = {"path": str(tmp_path / "state.db"), "max_mb": 64}
    raw["publish"] = {**raw["publish"], "interval_s": 300}    # shifts and breaks lie on its grid
    for src in raw["sources"]:
        plc = sims.plcs[src["id"]]
        src["poll_interval_s"] = 0.1                           # real seconds: 3 plant minutes
        if src["kind"] == "modbus":
            src.update(port=plc.port, timeout_s=0.1)
        else:
            src.update(endpoint=plc.endpoint, timeout_s=2)
    return Config.model_validate(raw)


def built(line: SimLine, since: datetime, until: datetime) -> tuple[int, int]:
    """Units and rejects the line built in [since, until), from its timeline (the line
    stands still at both ends, so the last change of reason before each tells)."""
    tl = list(line.timeline)
    before = [(p, r) for t, _, p, r in tl if t < since] or [(0, 0)]
    upto = [(p, r) for t, _, p, r in tl if t < until] or [(0, 0)]
    return upto[-1][0] - before[-1][0], upto[-1][1] - before[-1][1]


async def test_a_full_production_day_on_the_plant_clock_matches_the_ledger(
        tmp_path: Path, mosquitto: Any, simulator_set: Callable[..., Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    clock = SimulatedClock(SPEED, START)
    sims = await simulator_set(sim_config(), auto=False, tick_s=0.02, plant=clock,
                               state_path=tmp_path / "simulators-state.json")
    cfg = agent_config(tmp_path, mosquitto.url, sims)
    stop = asyncio.Event()
    agent_ = Agent(cfg, config_sha256="0" * 64, clock=clock, simulated_ok=True)
    task = asyncio.create_task(agent_.run(stop))
    try:
        # the lines start once the agent has read both PLCs: its first reading is a baseline
        await wait_until(lambda: agent_.board is not None and all(
            t.reason != "unknown" for t in agent_.board.trackers.values()), 30, "first readings")
        assert clock.wall() < SHIFT, "the agent read both PLCs before the day shift"
        sims.resume()

        def committed_until() -> datetime | None:
            return agent_.closer.resume_point() if agent_.closer is not None else None

        await wait_until(lambda: (committed_until() or START) >= END, 90,
                         "the agent's windows up to 01:25 the next morning")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        await sims.pause()
        await sims.save_state()

    reports = read_reports(cfg.storage.path, DAY)
    by = {(r.shift.name, r.line): r for r in reports}
    assert set(by) == {(s, ln) for s in ("day", "night") for ln in ("kei-ev", "rogue", None)}
    kei, rogue = sims.lines["kei-ev"], sims.lines["rogue"]
    assert min(kei.produced, rogue.produced) > 400, "both lines ran both shifts"
    served = {reason for line in (kei, rogue) for _, reason, _, _ in line.timeline}
    assert {"running", "stopped", "fault", "changeover"} <= served
    for name in ("day", "night"):
        plant = by[(name, None)]
        for line in (kei, rogue):
            r: ShiftReport = by[(name, line.id)]
            # every unit and reject of the shift, exactly, as the simulators built them
            assert (r.units, r.rejects) == built(line, r.shift.start, r.shift.end), (name, line.id)
            t = r.time
            assert t.calendar_s == t.planned_s == t.covered_s == PLANNED_S   # breaks are not planned
            assert r.coverage == 1
            ms = {k: round(v * 1000) for k, v in t.model_dump().items()}
            assert ms["planned_s"] == ms["planned_busy_s"] + ms["planned_stop_s"]
            assert ms["planned_busy_s"] == ms["run_s"] + ms["down_s"] + ms["minor_stop_s"] + ms["unknown_s"]
            assert r.oee is not None
            assert 0.5 < r.oee < 1.0, (name, line.id, r.oee)
            assert r.downtime, (name, line.id)       # downtime by reason
            assert set(r.downtime) <= {"fault", "changeover", "blocked", "starved", "stopped"}
        assert plant.units == by[(name, "kei-ev")].units + by[(name, "rogue")].units
    night = by[("night", None)].shift
    assert night.start.astimezone(TOKYO) == datetime(2028, 4, 3, 16, 30, tzinfo=TOKYO)
    assert night.end.astimezone(TOKYO) == datetime(2028, 4, 4, 1, 15, tzinfo=TOKYO)  # across midnight
    # the day's report: its totals are the day's production, as the ledger has it
    day = {d["line"]: d for d in day_totals(reports)}
    assert (day["kei-ev"]["units"], day["rogue"]["units"]) == (kei.produced, rogue.produced)
    assert day[None]["units"] == kei.produced + rogue.produced
    doc = json.loads(report(cfg, day=DAY.isoformat(), fmt="json",
                            read=lambda d, s: read_reports(cfg.storage.path, d, s)))
    assert {d["line"]: d["units"] for d in doc["day"]} == {
        "kei-ev": kei.produced, "rogue": rogue.produced, None: kei.produced + rogue.produced}
    # the plan: the plant built close to its target of the day (1,641 at Kyushu's rates)
    target = by[("day", None)].target + by[("night", None)].target
    assert 0.85 < day[None]["units"] / target < 1.05, (day[None]["units"], target)
    # plantfloor report on a demo's state: its default day is the plant's, not the machine's
    cfg_path = tmp_path / "agent.json"
    cfg_path.write_text(json.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    capsys.readouterr()
    assert main(["report", str(cfg_path), "--state", str(tmp_path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["date"] == "2028-04-04"   # 01:25, after the night shift
