"""SourceSupervisor: scheduling, back-off, transitions, and Modbus PLCs failing for real."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from agent.contract.errors import SourceUnavailable
from agent.contract.readings import Quality, Reading, SourceHealth
from agent.sources.modbus import ModbusTcpSource
from agent.sources.modbus_plan import PointRef
from agent.sources.supervisor import SourceSupervisor, backoff_delay, poll_phase
from tests.test_modbus_source import modbus_cfg
from tests.waiting import wait_until as wait_for


class FakeClock:
    """Time that moves only when the supervisor sleeps or a fake read takes time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s
        await asyncio.sleep(0)


class ScriptedSource:
    """A Source whose connect/read outcomes follow a script (no protocol involved)."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.id = "fake"
        self.connect_ok: Callable[[int], bool] = lambda n: True
        self.read_fails: Callable[[int], Exception | None] = lambda n: None
        self.read_cost_s = 0.0           # advances the fake clock, or real time without one
        self.clock = clock
        self.connects = self.reads = self.closes = 0
        self.in_flight = self.max_in_flight = 0
        self.read_starts: list[float] = []
        self.hold_at: int | None = None  # the connect attempt that waits for `resume`
        self.resume = asyncio.Event()

    async def connect(self) -> None:
        self.connects += 1
        if self.hold_at is not None and self.connects >= self.hold_at:
            await self.resume.wait()
        if not self.connect_ok(self.connects):
            raise SourceUnavailable(self.id, "refused")

    async def read(self) -> Sequence[Reading]:
        self.reads += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.read_starts.append(self.clock() if self.clock else time.monotonic())
        try:
            if self.clock is not None:
                self.clock.now += self.read_cost_s
                await asyncio.sleep(0)
            elif self.read_cost_s:
                await asyncio.sleep(self.read_cost_s)   # a slow PLC, not synchronisation
            exc = self.read_fails(self.reads)
            if exc is not None:
                raise exc
            return [Reading("l", "counter", self.reads, Quality.GOOD, time.monotonic())]
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        self.closes += 1


@contextlib.asynccontextmanager
async def running(sup: SourceSupervisor) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(sup.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def supervisor(src: Any, **kw: Any) -> tuple[SourceSupervisor, list[Sequence[Reading]], list[SourceHealth]]:
    readings: list[Sequence[Reading]] = []
    health: list[SourceHealth] = []
    kw.setdefault("poll_interval_s", 0.05)
    sup = SourceSupervisor(src, on_readings=readings.append, on_health=health.append, **kw)
    return sup, readings, health


async def test_interval_is_start_to_start_and_first_ok_set() -> None:
    clock = FakeClock()
    src = ScriptedSource(clock)
    src.read_cost_s = 0.3
    sup, readings, health = supervisor(src, poll_interval_s=1.0, clock=clock, sleep=clock.sleep)
    async with running(sup):
        await asyncio.wait_for(sup.first_ok.wait(), 5)
        await wait_for(lambda: sup.polls >= 5)
    gaps = [b - a for a, b in zip(src.read_starts, src.read_starts[1:], strict=False)]
    assert gaps[:4] == pytest.approx([1.0] * 4)
    assert clock.sleeps[:3] == pytest.approx([0.7] * 3)
    assert sup.overruns == 0
    assert sup.last_poll_latency_s == pytest.approx(0.3)
    assert len(readings) >= 4
    assert [h.connected for h in health] == [True]   # one transition, not one per poll
    assert src.closes >= 1                           # closed when cancelled


async def test_slow_read_delays_the_next_poll_and_counts_overruns() -> None:
    src = ScriptedSource()
    src.read_cost_s = 0.12
    sup, _, _ = supervisor(src, poll_interval_s=0.03)
    async with running(sup):
        await wait_for(lambda: sup.polls >= 4)
    assert src.max_in_flight == 1                       # never overlapping
    gaps = [b - a for a, b in zip(src.read_starts, src.read_starts[1:], strict=False)]
    assert min(gaps) >= 0.12 * 0.9
    assert sup.overruns >= 3


def test_backoff_delay_is_full_jitter_under_a_growing_cap() -> None:
    rng = random.Random(7)
    samples = [[backoff_delay(a, initial_s=0.5, max_s=8.0, rng=rng) for _ in range(200)]
               for a in range(8)]
    for a, s in enumerate(samples):
        cap = min(8.0, 0.5 * 2**a)
        assert min(s) >= 0.0
        assert max(s) <= cap
        assert max(s) > 0.8 * cap          # spread over the whole range
        assert len(set(s)) > 150           # jittered
    assert backoff_delay(10_000, initial_s=0.5, max_s=8.0, rng=rng) <= 8.0


async def test_backoff_grows_caps_and_resets_after_stability() -> None:
    clock = FakeClock()
    src = ScriptedSource(clock)
    phase = {"connect_fails": True, "fail_read_at": None}
    src.connect_ok = lambda n: not phase["connect_fails"]
    src.read_fails = lambda n: SourceUnavailable("fake", "lost") if n == phase["fail_read_at"] else None
    src.hold_at = 9
    sup, _, _ = supervisor(src, poll_interval_s=1.0, backoff_max_s=4.0, backoff_initial_s=0.5,
                           stable_after_s=10.0, clock=clock, sleep=clock.sleep, rng=random.Random(1))
    async with running(sup):
        await wait_for(lambda: src.connects == 9)
        expect_rng = random.Random(1)
        expected = [backoff_delay(a, initial_s=0.5, max_s=4.0, rng=expect_rng) for a in range(8)]
        assert sup.backoffs == pytest.approx(expected)           # seeded: reproducible
        assert max(sup.backoffs[5:]) > 2.0                       # the cap grew...
        assert all(d <= 4.0 for d in sup.backoffs)               # ...up to its limit
        phase["connect_fails"] = False
        src.hold_at = None
        src.resume.set()
        await wait_for(lambda: src.reads >= 15)                  # > 10 s of good polls
        phase["fail_read_at"] = src.reads + 1
        n = len(sup.backoffs)
        await wait_for(lambda: len(sup.backoffs) > n)
    assert sup.backoffs[n] <= 0.5                                # reset to the first step
    assert sup.reconnects == 1


async def test_no_reset_without_stability() -> None:
    clock = FakeClock()
    src = ScriptedSource(clock)
    src.read_fails = lambda n: SourceUnavailable("fake", "lost")  # connects, then fails at once
    src.hold_at = 7
    sup, _, health = supervisor(src, poll_interval_s=1.0, backoff_max_s=64.0, backoff_initial_s=1.0,
                                clock=clock, sleep=clock.sleep, rng=random.Random(3))
    async with running(sup):
        await wait_for(lambda: src.connects == 7)
    rng = random.Random(3)
    assert sup.backoffs == pytest.approx(
        [backoff_delay(a, initial_s=1.0, max_s=64.0, rng=rng) for a in range(6)])
    assert sup.reconnects >= 5
    assert [h.connected for h in health] == [False]


async def test_failure_logged_once_and_recovery_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.sources.supervisor")
    clock = FakeClock()
    src = ScriptedSource(clock)
    state = {"fail": True}
    src.read_fails = lambda n: SourceUnavailable("fake", "PLC gone") if state["fail"] else None
    sup, _, health = supervisor(src, poll_interval_s=0.1, backoff_max_s=1.0, clock=clock,
                                sleep=clock.sleep, rng=random.Random(0))
    async with running(sup):
        await wait_for(lambda: src.reads >= 30)
        state["fail"] = False
        await wait_for(lambda: sup.healthy is True)
        await wait_for(lambda: sup.polls >= src.reads and src.reads >= 40)
    records = [r for r in caplog.records if r.name == "agent.sources.supervisor"]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    infos = [r for r in records if r.levelno == logging.INFO]
    assert len(warnings) == 1
    assert "PLC gone" in warnings[0].getMessage()
    assert [r.getMessage() for r in infos] == ["source fake: recovered"]
    assert [(h.connected, h.error) for h in health] == [(False, "PLC gone"), (True, None)]
    assert health[1].last_ok_mono is not None


async def test_a_bug_in_the_source_does_not_kill_the_supervisor(caplog: pytest.LogCaptureFixture) -> None:
    src = ScriptedSource()
    src.read_fails = lambda n: ZeroDivisionError("oops") if n <= 2 else None
    sup, readings, health = supervisor(src, poll_interval_s=0.02, backoff_max_s=1.0, backoff_initial_s=0.01)
    async with running(sup) as task:
        await asyncio.wait_for(sup.first_ok.wait(), 5)
        assert not task.done()
    assert readings
    assert health[0].error == "ZeroDivisionError: oops"
    assert health[-1].connected


async def test_cancel_propagates_and_closes_the_source() -> None:
    src = ScriptedSource()
    sup, _, _ = supervisor(src)
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(sup.first_ok.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert src.closes >= 1



class AnswerWithTheCancel(ScriptedSource):
    """A read whose answer arrives together with the cancellation: ``asyncio.wait_for`` on
    Python 3.11 (as pymodbus and asyncua await it) then returns the answer and the
    cancellation is lost; ``in_connect`` does the same in connect."""

    def __init__(self, *, in_connect: bool = False) -> None:
        super().__init__()
        self.in_connect = in_connect
        self.waiting = asyncio.Event()

    async def _swallow(self) -> None:
        if self.waiting.is_set():
            return   # once
        self.waiting.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    async def connect(self) -> None:
        await super().connect()
        if self.in_connect:
            await self._swallow()

    async def read(self) -> Sequence[Reading]:
        if not self.in_connect and self.reads >= 2:
            await self._swallow()
        return await super().read()


@pytest.mark.parametrize("in_connect", [False, True], ids=["read", "connect"])
async def test_a_cancellation_a_protocol_client_swallowed_still_stops_the_supervisor(in_connect: bool) -> None:
    src = AnswerWithTheCancel(in_connect=in_connect)
    sup, _, _ = supervisor(src)
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(src.waiting.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)   # a bound for a failing run, not a timing
    if task not in done:
        task.cancel()   # the supervisor is sleeping now: this one reaches it
        with contextlib.suppress(asyncio.CancelledError):
            await task
        pytest.fail("the supervisor ran on after it was cancelled")
    assert task.cancelled()
    assert src.closes >= 1


# --- against software PLCs (real pymodbus servers on loopback) -------------------------------

def _modbus(plc: Any, **kw: Any) -> ModbusTcpSource:
    pts = [PointRef("line-a", "counter", 1, "holding", 100, "uint32"),
           PointRef("line-a", "state", 1, "holding", 110, "uint16")]
    return ModbusTcpSource(modbus_cfg(plc.port, timeout_s=0.2), pts, failures_before_reset=1, **kw)


def _counter(batch: Sequence[Reading]) -> Reading:
    return next(r for r in batch if r.role == "counter")


async def test_stalled_plc_does_not_affect_a_healthy_plc(modbus_plc: Any) -> None:
    good, stalled = await modbus_plc(), await modbus_plc()
    stalled.set_silent(True)
    sup_good, r_good, _ = supervisor(_modbus(good), poll_interval_s=0.05)
    sup_bad, _, h_bad = supervisor(_modbus(stalled), poll_interval_s=0.05, backoff_max_s=1.0)
    async with running(sup_good), running(sup_bad):
        await wait_for(lambda: len(h_bad) >= 1 and sup_good.polls >= 5)
        start = sup_good.polls
        t0 = time.monotonic()
        good.lines["line-a"].produce(4)
        await wait_for(lambda: sup_good.polls >= start + 10)
        elapsed = time.monotonic() - t0
    assert elapsed < 10 * 0.05 + 0.4      # the healthy PLC kept its pace
    assert all(r.quality is Quality.GOOD for batch in r_good for r in batch)
    assert _counter(r_good[-1]).value == 4
    assert h_bad[0].connected is False
    assert sup_bad.first_ok.is_set() is False
    assert sup_good.overruns == 0


async def test_plc_restart_with_counter_reset_reconnects_by_itself(modbus_plc: Any) -> None:
    plc = await modbus_plc()
    plc.lines["line-a"].produce(500)
    sup, readings, health = supervisor(_modbus(plc), poll_interval_s=0.05, backoff_max_s=0.3,
                                       backoff_initial_s=0.05)
    async with running(sup):
        await wait_for(lambda: bool(readings) and _counter(readings[-1]).value == 500)
        await plc.restart(reset_counters=True)         # same port, counters at 0
        plc.lines["line-a"].produce(3)
        await wait_for(lambda: _counter(readings[-1]).value == 3)
    assert sup.reconnects >= 1
    assert [h.connected for h in health] == [True, False, True]


async def test_network_loss_of_ten_seconds(modbus_plc: Any) -> None:
    plc = await modbus_plc()
    plc.lines["line-a"].produce(9)
    cap = 1.0
    sup, readings, health = supervisor(_modbus(plc), poll_interval_s=0.1, backoff_max_s=cap,
                                       backoff_initial_s=0.1)
    async with running(sup):
        await asyncio.wait_for(sup.first_ok.wait(), 5)
        await plc.stop()
        await wait_for(lambda: sup.healthy is False)
        down = time.monotonic()
        # the outage itself: ten seconds during which the supervisor keeps backing off
        await wait_for(lambda: time.monotonic() - down >= 10.0, within=12)
        assert sup.healthy is False
        attempts = len(sup.backoffs)
        assert attempts >= 8                              # kept trying, capped at 1 s
        plc.lines["line-a"].produce(1)
        await plc.start()                                 # same port
        back = time.monotonic()
        await wait_for(lambda: sup.healthy is True, within=5)
        recovered_in = time.monotonic() - back
    assert recovered_in < cap + 0.5                       # at most one back-off step plus a connect
    assert max(sup.backoffs) <= cap
    assert len(set(sup.backoffs)) > 1                     # jittered
    assert _counter(readings[-1]).value == 10
    assert [h.connected for h in health] == [True, False, True]


@pytest.mark.parametrize("start_wall", [1000.3, 1000.9, 1000.5, 1000.0])
async def test_polls_after_the_first_fall_on_the_phase(start_wall: float) -> None:
    """With a phase, every poll but the first starts half a second past a wall-clock second,
    clear of the window boundaries; the first comes at once."""
    clock = FakeClock()
    src = ScriptedSource(clock)
    src.read_cost_s = 0.1
    base = clock.now
    sup, _, _ = supervisor(src, poll_interval_s=1.0, clock=clock, sleep=clock.sleep,
                           phase_s=poll_phase(1.0), wall=lambda: start_wall + clock.now - base)
    async with running(sup):
        await wait_for(lambda: sup.polls >= 5)
    starts = [t - base for t in src.read_starts]
    assert starts[0] == 0.0
    assert [round((start_wall + t) % 1.0, 6) for t in starts[1:5]] == [0.5] * 4
    gaps = [b - a for a, b in itertools.pairwise(starts[1:])]
    assert gaps[:3] == pytest.approx([1.0] * 3)
    assert 0.5 <= starts[1] <= 1.5   # the first poll keeps its time
    assert sup.overruns == 0


def test_the_phase_stays_clear_of_whole_seconds() -> None:
    assert poll_phase(1.0) == 0.5
    assert poll_phase(0.5) == 0.25
    assert poll_phase(5.0) == 0.5
    for interval in (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 60.0):
        phase = poll_phase(interval)
        assert all((phase + k * interval) % 1.0 != 0 for k in range(50)), interval
