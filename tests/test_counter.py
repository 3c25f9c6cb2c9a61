"""Counter deltas: every rule directly, then production histories with hypothesis."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agent.core.counter import CounterDelta, CounterEngine

MODULI = [2**16, 2**31, 2**32, 2**64]


# --- the rules, one by one -------------------------------------------------------------

def test_first_reading_is_the_baseline() -> None:
    eng = CounterEngine(modulus=2**16)
    assert eng.observe(1234, 0.0) == CounterDelta(0, ())
    assert eng.baseline == 1234
    assert eng.observe(1240, 1.0) == CounterDelta(6, ())
    assert eng.baseline == 1240


def test_restored_baseline_counts_from_it() -> None:
    eng = CounterEngine(modulus=2**32, baseline=100, baseline_mono=None)
    assert eng.observe(107, 5.0).units == 7


def test_value_outside_modulus_is_invalid_and_keeps_baseline() -> None:
    eng = CounterEngine(modulus=2**16, baseline=10)
    assert eng.observe(2**16, 1.0) == CounterDelta(0, ("invalid_value",))
    assert eng.observe(-1, 2.0) == CounterDelta(0, ("invalid_value",))
    assert eng.baseline == 10
    assert eng.observe(12, 3.0).units == 2


@pytest.mark.parametrize("modulus", MODULI)
def test_rollover_counts_the_distance_through_the_modulus(modulus: int) -> None:
    eng = CounterEngine(modulus=modulus, baseline=modulus - 3, baseline_mono=0.0)
    assert eng.observe(4, 1.0) == CounterDelta(7, ("rollover",))
    assert eng.baseline == 4


def test_rollover_limit_is_a_quarter_of_the_modulus() -> None:
    m = 2**16
    eng = CounterEngine(modulus=m, baseline=m - 100)
    assert eng.observe(m // 4 - 100, 1.0) == CounterDelta(m // 4, ("rollover",))
    eng = CounterEngine(modulus=m, baseline=m - 100)
    delta = eng.observe(m // 4 - 99, 1.0)
    assert delta == CounterDelta(m // 4 - 99, ("counter_reset",))


def test_drop_far_from_the_top_is_a_reset_counting_the_new_value() -> None:
    eng = CounterEngine(modulus=2**32, baseline=50_000, baseline_mono=0.0)
    assert eng.observe(12, 60.0) == CounterDelta(12, ("counter_reset",))
    assert eng.baseline == 12
    assert eng.observe(15, 61.0).units == 3


def test_reset_to_zero_counts_nothing() -> None:
    eng = CounterEngine(modulus=2**16, baseline=40_000)
    assert eng.observe(0, 1.0) == CounterDelta(0, ("counter_reset",))


def test_jump_faster_than_the_bound_is_not_counted_and_rebaselines() -> None:
    # 3600/h over 10 s allows 10 + 1 units
    eng = CounterEngine(modulus=2**32, max_rate_per_hour=3600, baseline=1000, baseline_mono=0.0)
    assert eng.observe(1011, 10.0) == CounterDelta(11, ())
    assert eng.observe(1011 + 65536, 20.0) == CounterDelta(0, ("implausible_jump",))
    assert eng.baseline == 1011 + 65536
    assert eng.observe(1011 + 65536 + 5, 25.0).units == 5


def test_rate_bound_needs_a_known_elapsed_time() -> None:
    # a baseline restored without its monotonic time: no rate bound on the first step
    eng = CounterEngine(modulus=2**32, max_rate_per_hour=60, baseline=0, baseline_mono=None)
    assert eng.observe(5000, 1.0).units == 5000
    assert eng.observe(5100, 2.0) == CounterDelta(0, ("implausible_jump",))


def test_rate_bound_narrows_what_a_rollover_may_be() -> None:
    m = 2**16
    # 3600/h over 1 s allows 2 units: a forward distance of 10 is not a rollover
    eng = CounterEngine(modulus=m, max_rate_per_hour=3600, baseline=m - 5, baseline_mono=0.0)
    assert eng.observe(1, 1.0) == CounterDelta(1, ("counter_reset",))
    eng = CounterEngine(modulus=m, max_rate_per_hour=3600, baseline=m - 1, baseline_mono=0.0)
    assert eng.observe(1, 1.0) == CounterDelta(2, ("rollover",))


def test_reset_to_an_implausible_value_counts_nothing() -> None:
    eng = CounterEngine(modulus=2**32, max_rate_per_hour=3600, baseline=10**6, baseline_mono=0.0)
    delta = eng.observe(500, 10.0)
    assert delta == CounterDelta(0, ("counter_reset", "implausible_jump"))
    assert eng.baseline == 500


def test_elapsed_comes_from_the_last_accepted_reading() -> None:
    eng = CounterEngine(modulus=2**32, max_rate_per_hour=3600, baseline=0, baseline_mono=0.0)
    assert eng.observe(2**32 + 1, 50.0).events == ("invalid_value",)   # not accepted
    assert eng.observe(51, 100.0).units == 51   # 100 s since the last accepted reading


def test_gap_recovered_rides_on_the_next_accepted_reading() -> None:
    eng = CounterEngine(modulus=2**16, baseline=5)
    eng.mark_unreachable()
    assert eng.observe(2**16, 1.0).events == ("invalid_value",)
    assert eng.observe(9, 2.0) == CounterDelta(4, ("gap_recovered",))
    assert eng.observe(10, 3.0) == CounterDelta(1, ())


def test_gap_recovered_on_a_first_reading() -> None:
    eng = CounterEngine(modulus=2**16)
    eng.mark_unreachable()
    assert eng.observe(9, 2.0) == CounterDelta(0, ("gap_recovered",))


def test_set_modulus_before_the_first_reading_only() -> None:
    eng = CounterEngine(modulus=2**32, baseline=2**31 - 2)
    eng.set_modulus(2**31)
    assert eng.observe(3, 1.0) == CounterDelta(5, ("rollover",))
    with pytest.raises(ValueError, match="cannot change"):
        eng.set_modulus(2**16)


def test_restored_baseline_outside_the_modulus_is_dropped() -> None:
    eng = CounterEngine(modulus=2**32, baseline=70_000)
    eng.set_modulus(2**16)
    assert eng.observe(5, 1.0) == CounterDelta(0, ("rebaselined",))
    assert eng.observe(8, 2.0).units == 3


@pytest.mark.parametrize("bad", [0, 1, -5])
def test_modulus_must_be_at_least_two(bad: int) -> None:
    with pytest.raises(ValueError, match="modulus"):
        CounterEngine(modulus=bad)


# --- production histories ----------------------------------------------------------------

@dataclass
class Step:
    dt: float          # true seconds since the previous step
    produce: int       # units built during the step (before any reset in it)
    kind: str          # "read", "fail" (the read failed) or "reset" (the PLC counter reset)
    after: int         # units built after a reset in this step
    jitter: float      # offset of the read's timestamp, in units of the allowed jitter


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, float | None, int, bool, list[Step]]:
    modulus = draw(st.sampled_from(MODULI))
    rate = draw(st.sampled_from([None, 360.0, 3600.0, 36000.0]))
    near_top = draw(st.booleans())
    start = (modulus - draw(st.integers(0, 50))) % modulus if near_top else draw(
        st.integers(0, modulus - 1))
    restored = draw(st.booleans())
    big = modulus // 8 if rate is None else 0
    steps = draw(st.lists(st.builds(
        Step,
        dt=st.floats(1.0, 5.0),
        produce=st.integers(0, big) if big else st.integers(-1, 2),   # -1: at the bound
        kind=st.sampled_from(["read", "read", "read", "fail", "reset"]),
        after=st.integers(0, 20),
        jitter=st.floats(-1.0, 1.0),
    ), min_size=1, max_size=60))
    return modulus, rate, start, restored, steps


@settings(max_examples=300, deadline=None)
@given(histories())
def test_counted_units_equal_produced_less_what_resets_hid(
        h: tuple[int, float | None, int, bool, list[Step]]) -> None:
    modulus, rate, counter, restored, steps = h
    # the read timestamps may be off by this much without breaking the +1 tolerance
    jitter_max = 0.0 if rate is None else min(0.4, 1500.0 / rate)
    eng = CounterEngine(modulus=modulus, max_rate_per_hour=rate,
                        baseline=counter if restored else None,
                        baseline_mono=0.0 if restored else None)
    if not restored:
        eng.observe(counter, 0.0)
    now = 0.0
    produced = hidden = counted = 0
    since_read = 0              # built since the last successful read
    since_reset: int | None = None   # built since a reset not yet read
    seen: set[str] = set()
    for s in steps:
        now += s.dt
        # what the line can build in this step: within the rate bound, and never so much
        # since the last read that a rollover could be confused with a reset
        cap = modulus // 4 - since_read
        p = int(rate * s.dt / 3600) if s.produce < 0 and rate is not None else s.produce
        if rate is not None:
            p = min(p, int(rate * s.dt / 3600))
        p = max(0, min(p, cap))
        baseline = eng.baseline
        assert baseline is not None
        if since_reset is not None:
            # after a reset the counter must read below the last read value, or the reset
            # is indistinguishable from production
            p = max(0, min(p, baseline - 1 - since_reset))
        produced += p
        since_read += p
        counter = (counter + p) % modulus
        if since_reset is not None:
            since_reset += p
        if s.kind == "reset" and 0 < baseline < modulus // 2:
            budget = cap - p if rate is None else int(rate * s.dt / 3600) - p
            q = max(0, min(s.after, baseline - 1, budget))
            hidden += since_read if since_reset is None else since_reset
            since_reset = q
            counter = q
            produced += q
            since_read += q
        elif s.kind == "fail":
            eng.mark_unreachable()
        elif s.kind == "read":
            delta = eng.observe(counter, now + s.jitter * jitter_max)
            assert delta.units >= 0
            if since_reset is not None:
                assert "counter_reset" in delta.events
            else:
                assert "counter_reset" not in delta.events
                assert "implausible_jump" not in delta.events
            counted += delta.units
            seen.update(delta.events)
            since_read = 0
            since_reset = None
    # a last read collects what was built since the previous one
    final = eng.observe(counter, now + 1.0)
    assert ("counter_reset" in final.events) == (since_reset is not None)
    counted += final.units
    seen.update(final.events)
    assert counted == produced - hidden
    for e in seen:
        event(e)


@settings(max_examples=300, deadline=None)
@given(modulus=st.sampled_from([*MODULI, 10, 1000]),
       rate=st.none() | st.floats(1.0, 1e6),
       values=st.lists(st.tuples(st.integers(-(2**65), 2**65), st.floats(0.0, 100.0),
                                 st.booleans()), max_size=50))
def test_no_history_produces_negative_units(
        modulus: int, rate: float | None, values: list[tuple[int, float, bool]]) -> None:
    eng = CounterEngine(modulus=modulus, max_rate_per_hour=rate)
    now = 0.0
    for value, dt, gap in values:
        if gap:
            eng.mark_unreachable()
        now += dt
        delta = eng.observe(value, now)
        assert delta.units >= 0
        assert delta.units < modulus
        assert eng.baseline is None or 0 <= eng.baseline < modulus
