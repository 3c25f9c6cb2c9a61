"""The plant clock: real by default, simulated for the demo and tests, refused by ``plantfloor run``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cli.demo import packaged_config, parse_start
from agent.config.load import load_config
from agent.contract.errors import ConfigError
from agent.core.clock import Clock, SimulatedClock, SystemClock, describe
from agent.runtime.pipeline import Agent
from simulators.config import load_sim_config
from simulators.runner import SimulatorSet

TOKYO = ZoneInfo("Asia/Tokyo")
START = datetime(2028, 4, 3, 7, 12, tzinfo=TOKYO)


class RealTime:
    """A real monotonic clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_simulated_clock_runs_plant_time_at_its_speed_from_its_start() -> None:
    real = RealTime()
    clock = SimulatedClock(60, START, real_mono=real)
    assert clock.wall() == START.astimezone(UTC)
    assert clock.mono() == START.timestamp()         # plant POSIX seconds: restarts follow on
    real.now += 1.5
    assert clock.wall() == START + timedelta(seconds=90)
    assert clock.mono() == START.timestamp() + 90
    assert clock.real_s(60) == 1.0                   # a plant minute takes a real second
    assert describe(clock, TOKYO) == "simulated time x60, 2028-04-03 07:13 JST"
    assert isinstance(clock, Clock)
    assert clock.simulated


@given(st.floats(0.01, 10_000), st.lists(st.floats(0, 1e4), min_size=1, max_size=20))
def test_plant_time_never_goes_back_and_keeps_its_pace(speed: float, steps: list[float]) -> None:
    real = RealTime()
    clock = SimulatedClock(speed, START, real_mono=real)
    last_wall, last_mono = clock.wall(), clock.mono()
    for step in steps:
        real.now += step
        wall, mono = clock.wall(), clock.mono()
        assert wall >= last_wall
        assert mono >= last_mono
        assert mono - last_mono == pytest.approx(step * speed, rel=1e-9, abs=1e-3)
        last_wall, last_mono = wall, mono


def test_the_system_clock_is_the_machines() -> None:
    clock = SystemClock()
    assert not clock.simulated
    assert clock.real_s(5.0) == 5.0
    assert abs((clock.wall() - datetime.now(UTC)).total_seconds()) < 60
    assert describe(clock, TOKYO).endswith("JST")


@pytest.mark.parametrize("speed", [0, -1, float("nan"), float("inf")])
def test_a_clock_without_a_sensible_speed_is_refused(speed: float) -> None:
    with pytest.raises(ValueError, match="speed must be a positive number"):
        SimulatedClock(speed, START)


def test_a_clock_without_a_time_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a time zone"):
        SimulatedClock(60, datetime(2028, 4, 3, 7, 12))


def test_the_production_agent_refuses_a_simulated_clock() -> None:
    cfg = load_config(packaged_config("demo.yaml")).config
    with pytest.raises(ConfigError, match="plantfloor run keeps the plant's real time"):
        Agent(cfg, config_sha256="0" * 64, clock=SimulatedClock(60, START))
    agent = Agent(cfg, config_sha256="0" * 64, clock=SimulatedClock(60, START), simulated_ok=True)
    assert agent.wall() >= START


def test_demo_start_is_site_time_unless_it_says_otherwise() -> None:
    assert parse_start("2028-04-03T06:20", TOKYO) == datetime(2028, 4, 3, 6, 20, tzinfo=TOKYO)
    assert parse_start("2028-04-03T06:20+00:00", TOKYO).utcoffset() == timedelta(0)
    with pytest.raises(ConfigError, match="--start 'monday' is not a plant date"):
        parse_start("monday", TOKYO)


async def test_the_simulators_keep_their_counters_across_a_restart(tmp_path: Path) -> None:
    cfg = load_sim_config(packaged_config("simulators.yaml"))
    state = tmp_path / "sims.json"
    first = SimulatorSet(cfg, auto=False, state_path=state)
    assert not first.restored
    kei, rogue = first.lines["kei-ev"], first.lines["rogue"]
    kei.produce(300)                 # through the top of its 32-bit counter
    assert kei.counter < 300
    kei.reject(2)
    rogue.produce(5)
    await first.save_state()
    again = SimulatorSet(cfg, auto=False, state_path=state)
    assert again.restored
    start = cfg.plcs[0].lines[0].counter.start
    assert again.lines["kei-ev"].counter == kei.counter == (start + 300) % 2**32
    assert again.lines["kei-ev"].served_counter == kei.counter
    assert again.lines["kei-ev"].second_counter == 2
    assert again.lines["rogue"].counter == rogue.counter
    assert again.lines["rogue"].produced == 0   # the books are this run's; the counters the PLC's


def test_unreadable_or_foreign_simulator_state_starts_afresh(tmp_path: Path) -> None:
    cfg = load_sim_config(packaged_config("simulators.yaml"))
    state = tmp_path / "sims.json"
    state.write_text("{not json")
    assert not SimulatorSet(cfg, auto=False, state_path=state).restored
    state.write_text(json.dumps({"lines": {"kei-ev": {"plc": "elsewhere", "counter": 5, "modulus": 2**32,
                                                      "second_counter": 0, "second_modulus": 2**32}}}))
    sims = SimulatorSet(cfg, auto=False, state_path=state)
    assert not sims.restored
    assert sims.lines["kei-ev"].counter == cfg.plcs[0].lines[0].counter.start


def test_a_held_clock_stands_still_and_runs_on_from_there() -> None:
    real = RealTime()
    clock = SimulatedClock(60, START, real_mono=real, running=False)
    real.now += 10
    assert clock.wall() == START.astimezone(UTC)
    assert not clock.running
    clock.release()
    real.now += 1
    assert clock.wall() == START + timedelta(minutes=1)
    clock.hold()
    real.now += 5
    assert clock.mono() == START.timestamp() + 60
    clock.release()
    real.now += 2
    assert clock.mono() == START.timestamp() + 180
