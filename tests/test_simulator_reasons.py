"""The simulators' reasons, rejects and books of time: what they serve and what the ledger says."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client
from pydantic import ValidationError
from pymodbus.client import AsyncModbusTcpClient
from ruamel.yaml import YAML

from agent.config import Config, ModbusTag, OpcUaTag
from simulators.config import (
    ModbusPlcConfig,
    OpcUaLineConfig,
    OpcUaPlcConfig,
    ProductionConfig,
    SimLineConfig,
    load_sim_config,
)
from simulators.ledger import Ledger
from simulators.production import SimLine
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
CODES = {"stopped": 0, "running": 1, "fault": 2, "changeover": 3, "blocked": 4, "starved": 5}
PRODUCTION = ProductionConfig(
    takt_jitter=0, micro_stop_rate_per_hour=30, micro_stop_s=20,
    micro_stop_reasons=("blocked", "starved"), breakdown_rate_per_hour=3, repair_s=120,
    breakdown_reason="fault", changeover_every_s=600, changeover_s=300, durations="fixed",
    reject_rate=0.1)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2028, 4, 3, 6, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def line(clock: Clock, seed: int = 3, **kw: Any) -> SimLine:
    return SimLine("x", modulus=2**32, takt_s=10.0, production=PRODUCTION, seed=seed,
                   clock=clock, codes=CODES, second_role="rejects", **kw)


def test_reasons_and_rejects_follow_a_seeded_schedule_and_the_books_balance() -> None:
    clock = Clock()
    a, b = line(clock), line(clock)
    served: list[str] = []
    for _ in range(3 * 3600):                 # three hours in 1 s steps
        clock.now += timedelta(seconds=1)
        a.advance(1.0)
        b.advance(1.0)
        served.append(a.state)
    assert list(a.timeline) == list(b.timeline)   # the same seed, the same schedule
    assert set(served) == {"running", "blocked", "starved", "fault", "changeover"}
    assert a.state_code == CODES[a.state]
    # fixed durations: every stop lasts exactly its mean (to the 1 s step)
    spans: dict[str, set[float]] = {}
    tl = list(a.timeline)
    for (t1, reason, _, _), (t2, _, _, _) in itertools.pairwise(tl):
        spans.setdefault(reason, set()).add((t2 - t1).total_seconds())
    assert spans["changeover"] == {300.0}
    assert spans["fault"] == {120.0}
    assert spans["blocked"] | spans["starved"] <= {20.0}
    # the books of time cover the whole run, reason by reason, as the timeline says
    seconds = a.reason_seconds()
    assert sum(seconds.values()) == pytest.approx(3 * 3600)
    by_timeline: dict[str, float] = {}
    for (t1, reason, _, _), t2 in zip(tl, [t for t, _, _, _ in tl[1:]] + [clock.now], strict=True):
        by_timeline[reason] = by_timeline.get(reason, 0.0) + (t2 - t1).total_seconds()
    assert seconds == pytest.approx(by_timeline)
    # every unit is good or a reject; about a tenth are rejects; the reject counter shows them
    assert a.rejected == a.served_second > 0
    assert 0.05 < a.rejected / (a.produced + a.rejected) < 0.15
    # the units a change of reason was served with are the units built by then
    assert tl[-1][2:] <= (a.produced, a.rejected)
    snap = Ledger({"x": a}).snapshot()["lines"]["x"]
    assert (snap["rejected"], snap["second_role"], snap["second_counter"]) == (a.rejected, "rejects",
                                                                              a.rejected)
    assert snap["timeline"][-1][1] == tl[-1][1]
    assert sum(snap["reason_seconds"].values()) == pytest.approx(3 * 3600, abs=0.01)


def test_a_total_counter_counts_good_units_and_rejects() -> None:
    clock = Clock()
    x = SimLine("x", modulus=2**32, production=PRODUCTION, clock=clock, codes=CODES,
                second_role="total", second_start=1000)
    x.produce(5)
    x.reject(2)
    assert (x.produced, x.rejected, x.served_second) == (5, 2, 1007)


def test_a_reason_without_a_code_is_refused() -> None:
    with pytest.raises(ValidationError, match="no raw value for blocked, changeover, fault, starved"):
        SimLineConfig.model_validate({"id": "x", "counter": {"address": 0}, "state": {"address": 10},
                                      "production": PRODUCTION.model_dump()})
    with pytest.raises(ValueError, match="state must be one of"):
        line(Clock()).set_state("coffee")


async def test_plcs_serve_the_reason_code_and_the_reject_counter(
        modbus_plc: Callable[..., Any], opcua_plc: Callable[..., Any]) -> None:
    m = await modbus_plc(ModbusPlcConfig(id="m", port=0, lines=(SimLineConfig.model_validate({
        "id": "kei", "counter": {"address": 100}, "reject_counter": {"address": 102},
        "state": {"address": 110, "codes": CODES}, "production": PRODUCTION.model_dump()}),)))
    kei = m.lines["kei"]
    kei.produce(7)
    kei.reject(3)
    kei.set_state("changeover")
    client = AsyncModbusTcpClient("127.0.0.1", port=m.port, timeout=0.5, retries=0, reconnect_delay=0)
    assert await client.connect()
    try:
        rr = await client.read_holding_registers(100, count=11, device_id=1)
    finally:
        client.close()
    assert rr.registers[:4] == [0, 7, 0, 3]
    assert rr.registers[10] == CODES["changeover"]
    u = await opcua_plc(OpcUaPlcConfig(id="u", port=0, lines=(OpcUaLineConfig.model_validate({
        "id": "rogue", "counter": {"node": "R.Good"}, "total_counter": {"node": "R.Total", "start": 10},
        "state": {"node": "R.State", "codes": CODES}, "production": PRODUCTION.model_dump()}),)))
    rogue = u.lines["rogue"]
    rogue.produce(4)
    rogue.reject(1)
    rogue.set_state("blocked")
    async with Client(u.endpoint, timeout=5) as c:
        async def served() -> bool:
            values = [await c.get_node(u.node_id("rogue", role)).read_value()
                      for role in ("counter", "second", "state")]
            return values == [4, 15, CODES["blocked"]]
        await wait_until(served, 5, "the nodes show the line")


def test_shipped_simulators_serve_every_reason_the_demo_maps() -> None:
    sim = load_sim_config(ROOT / "config" / "simulators.yaml")
    demo = Config.model_validate(YAML(typ="safe", pure=True).load((ROOT / "config" / "demo.yaml").read_text()))
    sim_lines = {ln.id: ln for plc in sim.plcs for ln in plc.lines}
    for line in demo.lines:
        s = sim_lines[line.id]
        assert s.state is not None
        assert line.state is not None
        # every code the simulator serves names the same reason in the agent's map
        assert {code: reason for reason, code in s.state.codes.items()} == line.state_map
        assert s.production.reasons() <= set(demo.downtime.all_reasons())
        assert s.second is not None
        assert line.second_counter is not None
        assert s.second[0] == line.second_counter[0]
        tag = line.second_counter[1]
        if isinstance(tag, ModbusTag):
            assert tag.address == s.second[1].address  # type: ignore[union-attr]
        else:
            assert isinstance(tag, OpcUaTag)
            assert tag.node == f"ns=2;s={s.second[1].node}"  # type: ignore[union-attr]
        assert s.production.reject_rate > 0
