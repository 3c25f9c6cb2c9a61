"""Counter deltas: every rule directly, then production histories with hypothesis."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agent.core.counter import BASELINE_LAG_S, CounterDelta, CounterEngine, CounterMemory
from agent.runtime.lines import CounterClock

MODULI = [2**16, 2**31, 2**32, 2**64]
FAST = 3.6e9  # a bound so loose that the rule under test is the only one that matters


def engine(modulus: int = 2**32, rate: float = FAST, baseline: int | None = None,
           anchor: float | None = 0.0, last: float | None = None) -> CounterEngine:
    return CounterEngine(modulus=modulus, max_rate_per_hour=rate, baseline=baseline,
                         anchor=anchor if baseline is not None else None, last=last)


# --- the rules, one by one -------------------------------------------------------------

def test_first_reading_is_the_baseline() -> None:
    eng = engine(2**16)
    assert eng.observe(1234, 0.0) == CounterDelta(0, ())
    assert eng.baseline == 1234
    assert eng.observe(1240, 1.0) == CounterDelta(6, ())
    assert eng.baseline == 1240


def test_restored_baseline_counts_from_it() -> None:
    eng = engine(baseline=100)
    assert eng.observe(107, 5.0).units == 7


def test_a_restored_baseline_needs_its_time() -> None:
    with pytest.raises(ValueError, match="anchor"):
        CounterEngine(modulus=2**32, max_rate_per_hour=60, baseline=5)


def test_value_outside_modulus_is_invalid_and_keeps_baseline() -> None:
    eng = engine(2**16, baseline=10)
    delta = eng.observe(2**16, 1.0)
    assert delta.units == 0
    assert delta.events == ("invalid_value",)
    assert delta.note is not None
    assert "65536" in delta.note
    assert eng.observe(-1, 2.0).events == ("invalid_value",)
    assert eng.baseline == 10
    assert eng.observe(12, 3.0).units == 2


@pytest.mark.parametrize("modulus", MODULI)
def test_rollover_counts_the_distance_through_the_modulus(modulus: int) -> None:
    eng = engine(modulus, baseline=modulus - 3)
    assert eng.observe(4, 1.0) == CounterDelta(7, ("rollover",))
    assert eng.baseline == 4


def test_rollover_limit_is_a_quarter_of_the_modulus() -> None:
    m = 2**16
    eng = engine(m, baseline=m - 100)
    assert eng.observe(m // 4 - 100, 1.0) == CounterDelta(m // 4, ("rollover",))
    eng = engine(m, baseline=m - 100)
    assert eng.observe(m // 4 - 99, 1.0) == CounterDelta(m // 4 - 99, ("counter_reset",))


def test_drop_far_from_the_top_is_a_reset_counting_the_new_value() -> None:
    eng = engine(baseline=50_000)
    assert eng.observe(12, 60.0) == CounterDelta(12, ("counter_reset",))
    assert eng.baseline == 12
    assert eng.observe(15, 61.0).units == 3


def test_reset_to_zero_counts_nothing() -> None:
    eng = engine(2**16, baseline=40_000)
    assert eng.observe(0, 1.0) == CounterDelta(0, ("counter_reset",))


def test_jump_faster_than_the_bound_is_not_counted_and_rebaselines() -> None:
    # 3600/h over 10 s allows 10 + 1 units
    eng = engine(rate=3600, baseline=1000, anchor=0.0)
    assert eng.observe(1011, 10.0) == CounterDelta(11, ())
    delta = eng.observe(1011 + 65536, 20.0)
    assert (delta.units, delta.events) == (0, ("implausible_jump",))
    assert delta.note is not None
    assert "1011 -> 66547" in delta.note
    assert eng.baseline == 1011 + 65536
    assert eng.observe(1011 + 65536 + 5, 25.0).units == 5


def test_the_first_reading_after_a_restart_is_bounded() -> None:
    # the stored baseline was last read 30 s ago at 120/h: at most 1 + 1 units
    eng = engine(rate=120, baseline=5000, anchor=-30.0, last=-30.0)
    delta = eng.observe(4_294_967_000, 0.0)
    assert (delta.units, delta.events) == (0, ("implausible_jump",))
    assert eng.baseline == 4_294_967_000


def test_a_reset_counts_only_what_the_line_could_have_built() -> None:
    # a simulator (or a PLC) restarted with a fresh counter while the agent was away
    eng = engine(rate=3600, baseline=10**6, anchor=0.0)
    delta = eng.observe(500, 10.0)
    assert (delta.units, delta.events) == (0, ("counter_reset", "implausible_jump"))
    assert eng.baseline == 500
    eng = engine(rate=3600, baseline=10**6, anchor=0.0)
    assert eng.observe(9, 10.0) == CounterDelta(9, ("counter_reset",))


def test_rate_bound_narrows_what_a_rollover_may_be() -> None:
    m = 2**16
    # 3600/h over 1 s allows 2 units: a forward distance of 10 is not a rollover
    eng = engine(m, rate=3600, baseline=m - 5, anchor=0.0)
    assert eng.observe(1, 1.0) == CounterDelta(1, ("counter_reset",))
    eng = engine(m, rate=3600, baseline=m - 1, anchor=0.0)
    assert eng.observe(1, 1.0) == CounterDelta(2, ("rollover",))


def test_a_burst_is_bounded_from_before_the_counter_last_advanced() -> None:
    # 120/h (one every 30 s); the PLC shows its count only every 60 s, read every 1 s
    eng = engine(rate=120, baseline=10, anchor=0.0, last=0.0)
    for t in range(1, 60):
        assert eng.observe(10, float(t)).units == 0
    # 2 units appear at once; read 1 s after the previous poll, 60 s after the last advance
    assert eng.observe(12, 60.0) == CounterDelta(2, ())
    for t in range(61, 120):
        assert eng.observe(12, float(t)).units == 0
    assert eng.observe(14, 120.0) == CounterDelta(2, ())


def test_a_burst_right_after_the_first_reading_counts() -> None:
    # the first reading may show a value the PLC reached up to BASELINE_LAG_S earlier
    eng = engine(rate=3600)
    assert eng.observe(100, 0.0).units == 0
    assert eng.observe(105, 0.3) == CounterDelta(5, ())
    fresh = engine(rate=3600)
    fresh.observe(100, 0.0)
    too_many = int(3600 * (BASELINE_LAG_S + 1) / 3600) + 2
    assert fresh.observe(100 + too_many, 1.0).events == ("implausible_jump",)


def test_invalid_values_do_not_move_the_bound() -> None:
    eng = engine(rate=3600, baseline=0, anchor=0.0, last=0.0)
    assert eng.observe(2**32 + 1, 50.0).events == ("invalid_value",)   # not accepted
    assert eng.observe(51, 100.0).units == 51   # 100 s since the last accepted reading


def test_gap_recovered_rides_on_the_next_accepted_reading() -> None:
    eng = engine(2**16, baseline=5)
    eng.mark_unreachable()
    assert eng.observe(2**16, 1.0).events == ("invalid_value",)
    assert eng.observe(9, 2.0) == CounterDelta(4, ("gap_recovered",))
    assert eng.observe(10, 3.0) == CounterDelta(1, ())


def test_gap_recovered_on_a_first_reading() -> None:
    eng = engine(2**16)
    eng.mark_unreachable()
    assert eng.observe(9, 2.0) == CounterDelta(0, ("gap_recovered",))


def test_a_modulus_change_rebaselines() -> None:
    eng = engine(baseline=2**31 - 2)
    eng.set_modulus(2**32)   # unchanged: nothing happens
    assert eng.observe(2**31, 1.0).units == 2
    eng.set_modulus(2**16)
    delta = eng.observe(7, 2.0)
    assert (delta.units, delta.events) == (0, ("rebaselined",))
    assert eng.observe(9, 3.0).units == 2


def test_set_modulus_before_the_first_reading_keeps_nothing_to_rebaseline() -> None:
    eng = engine()
    eng.set_modulus(2**31)
    assert eng.observe(3, 1.0) == CounterDelta(0, ())


def test_restored_baseline_outside_the_modulus_is_dropped() -> None:
    eng = engine(2**16, baseline=70_000)
    assert eng.observe(5, 1.0).events == ("rebaselined",)
    assert eng.observe(8, 2.0).units == 3


def test_rebaseline_counts_nothing_and_says_why() -> None:
    eng = engine(baseline=10)
    eng.rebaseline("maintenance preset the counter")
    assert eng.memory() == CounterMemory(None, 2**32, None, None, "maintenance preset the counter")
    delta = eng.observe(900_000, 1.0)
    assert (delta.units, delta.events) == (0, ("rebaselined",))
    assert delta.note is not None
    assert "maintenance" in delta.note
    assert eng.memory().rebaseline is None
    assert eng.observe(900_003, 2.0).units == 3


def test_memory_round_trips() -> None:
    eng = engine(rate=3600, baseline=10, anchor=0.0, last=0.0)
    eng.observe(12, 5.0)
    eng.observe(12, 6.0)
    mem = eng.memory()
    assert mem == CounterMemory(12, 2**32, 0.0, 6.0, None)
    again = CounterEngine(modulus=mem.modulus, max_rate_per_hour=3600, baseline=mem.baseline,
                          anchor=mem.anchor, last=mem.last)
    assert again.observe(14, 7.0).units == 2


@pytest.mark.parametrize("bad", [0, 1, -5])
def test_modulus_must_be_at_least_two(bad: int) -> None:
    with pytest.raises(ValueError, match="modulus"):
        CounterEngine(modulus=bad, max_rate_per_hour=1)


def test_every_engine_has_a_bound() -> None:
    with pytest.raises(ValueError, match="positive"):
        CounterEngine(modulus=2**16, max_rate_per_hour=0)


# --- production histories ----------------------------------------------------------------

@dataclass
class Step:
    dt: float        # true seconds of this step
    share: float     # share of what the line can build in the step that it builds
    kind: str        # read | fail | reset | restart | reboot | moved | lost | down | up


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, float, int, float, list[Step]]:
    modulus = draw(st.sampled_from(MODULI))
    rate = draw(st.sampled_from([120.0, 360.0, 3600.0, 36000.0]))
    near_top = draw(st.booleans())
    start = (modulus - draw(st.integers(0, 50))) % modulus if near_top else draw(
        st.integers(0, modulus - 1))
    burst = draw(st.sampled_from([0.0, 0.0, 5.0, 12.0, BASELINE_LAG_S]))
    steps = draw(st.lists(st.builds(
        Step, dt=st.floats(0.2, 5.0), share=st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0, 1),
        kind=st.sampled_from(["read"] * 6 + ["fail", "reset", "restart", "reboot", "moved",
                                             "lost", "down", "up"]),
    ), min_size=1, max_size=80))
    return modulus, rate, start, burst, steps


class Plant:
    """A simulated line and its PLC: builds at most ``rate`` per hour, shows its count in bursts."""

    def __init__(self, modulus: int, rate: float, counter: int, burst: float) -> None:
        self.modulus, self.rate, self.burst = modulus, rate, burst
        self.counter = counter      # what the PLC holds now
        self.shown = counter        # what it serves (refreshed every `burst` s)
        self.shown_built = 0        # units built up to the last refresh
        self.built = 0
        self.since_shown = 0.0
        self.carry = 0.0            # fractional capacity carried between steps

    def run(self, dt: float, share: float, cap: int) -> None:
        # never faster than the rate: at most a fraction of a unit is carried over
        self.carry += self.rate * dt / 3600.0
        p = min(int(self.carry * share), cap)
        self.carry = min(self.carry - p, 0.999)
        self.built += p
        self.counter = (self.counter + p) % self.modulus
        self.since_shown += dt
        if self.since_shown >= self.burst:
            self.refresh()

    def refresh(self) -> None:
        self.shown, self.shown_built, self.since_shown = self.counter, self.built, 0.0


@settings(max_examples=400, deadline=None)
@given(histories())
def test_counted_units_never_exceed_what_was_built(
        h: tuple[int, float, int, float, list[Step]]) -> None:
    """Any interleaving of reads, outages, resets, restarts (same boot or after a reboot),
    a counter moved to another PLC, a lost store and a PLC that shows its count in bursts:
    every reading counts exactly the units built between the two counts it compares, less
    only what a reset or a re-baseline hid; the total never exceeds what was built.
    """
    modulus, rate, counter, burst, steps = h
    plant = Plant(modulus, rate, counter, burst)
    wall0 = datetime(2028, 4, 3, tzinfo=UTC)
    now = 0.0          # true time
    shift = 0.0        # this process's monotonic clock = now + shift (changes at a reboot)
    boot = 0
    eng = CounterEngine(modulus=modulus, max_rate_per_hour=rate)
    eng.observe(plant.shown, now)
    read_built = plant.shown_built    # units built up to the count the baseline shows
    fresh = False      # the baseline was dropped: the next reading re-baselines
    reset_at: int | None = None       # built when the PLC last reset since the last read
    up = True
    counted = hidden = 0
    seen: set[str] = set()
    for s in steps:
        # never so much between reads that a rollover could pass for more than a quarter
        cap = modulus // 4 - (plant.built - read_built) - 1
        if reset_at is not None:
            # after a reset the count must stay below the last value read, or the reset
            # is indistinguishable from production
            cap = min(cap, (eng.baseline or 0) - 1 - (plant.built - reset_at))
        plant.run(s.dt, s.share, max(cap, 0))
        now += s.dt
        if s.kind == "down":
            up = False
        elif s.kind == "up":
            up = True
        elif s.kind == "fail" or (s.kind == "read" and not up):
            eng.mark_unreachable()
        elif s.kind == "reset" and eng.baseline is not None and not fresh \
                and 0 < eng.baseline < modulus // 2:
            plant.counter = 0
            plant.refresh()
            reset_at = plant.built
        elif s.kind in ("restart", "reboot"):
            # the memory goes through the store as wall-clock and monotonic times
            mem = eng.memory()
            old_shift, old_boot = shift, f"boot-{boot}"
            if s.kind == "reboot":
                boot += 1
                shift += 1000.0 + s.dt

            def wall_of(mono: float | None, old: float = old_shift) -> datetime | None:
                return None if mono is None else wall0 + timedelta(seconds=mono - old)

            clock = CounterClock(wall0 + timedelta(seconds=now), now + shift, f"boot-{boot}")
            anchor = clock.to_mono(wall_of(mem.anchor), mem.anchor, old_boot)
            last = clock.to_mono(wall_of(mem.last), mem.last, old_boot)
            eng = CounterEngine(modulus=modulus, max_rate_per_hour=rate, baseline=mem.baseline,
                                anchor=anchor, last=last, rebaseline=mem.rebaseline)
        elif s.kind == "moved":
            # the line's counter is now another PLC's, at another value: re-baselined
            plant.counter = (plant.counter + modulus // 3 + 7) % modulus
            plant.refresh()
            eng.rebaseline("the counter changed")
            fresh, reset_at = True, None
        elif s.kind == "lost":
            eng = CounterEngine(modulus=modulus, max_rate_per_hour=rate)
            fresh, reset_at = True, None
        elif s.kind == "read":
            delta = eng.observe(plant.shown, now + shift)
            if eng.baseline is not None and fresh:
                expected = 0
                hidden += plant.shown_built - read_built
            elif reset_at is not None:
                expected = plant.shown_built - reset_at
                hidden += reset_at - read_built
                assert "counter_reset" in delta.events
            else:
                expected = plant.shown_built - read_built
                assert "counter_reset" not in delta.events
            assert "implausible_jump" not in delta.events
            assert delta.units == expected, (delta, expected)
            counted += delta.units
            read_built = plant.shown_built
            fresh, reset_at = False, None
            seen.update(delta.events)
    assert counted + hidden <= plant.built
    assert counted <= plant.built
    for e in seen:
        event(e)


@settings(max_examples=300, deadline=None)
@given(modulus=st.sampled_from([*MODULI, 10, 1000]),
       rate=st.floats(1.0, 1e6),
       values=st.lists(st.tuples(st.integers(-(2**65), 2**65), st.floats(0.0, 100.0),
                                 st.booleans()), max_size=50))
def test_no_history_produces_negative_or_impossible_units(
        modulus: int, rate: float, values: list[tuple[int, float, bool]]) -> None:
    eng = CounterEngine(modulus=modulus, max_rate_per_hour=rate)
    now = 0.0
    first: float | None = None
    for value, dt, gap in values:
        if gap:
            eng.mark_unreachable()
        now += dt
        delta = eng.observe(value, now)
        if first is None and eng.baseline is not None:
            first = now
        assert delta.units >= 0
        assert delta.units < modulus
        if first is not None:
            # never more than the line could have built since it was first seen
            assert delta.units <= rate * (now - first + BASELINE_LAG_S) / 3600 + 1
        assert eng.baseline is None or 0 <= eng.baseline < modulus
