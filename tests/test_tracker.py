"""Per-line window accumulation: units, events, quality, state time, outages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.contract.readings import Quality, Reading
from agent.core.counter import CounterMemory
from agent.core.tracker import LineTracker

STATE_MAP = {0: "stopped", 1: "running", 2: "faulted"}


def tracker(*, modulus: int | None = None, rate: float = 3.6e9, state_tag: bool = True,
            baseline: int | None = None, start: float = 0.0,
            stored_modulus: int | None = None, rebaseline: str | None = None) -> LineTracker:
    memory = None
    if baseline is not None or rebaseline is not None:
        memory = CounterMemory(baseline, stored_modulus or modulus or 2**32,
                               None if baseline is None else start, None, rebaseline)
    return LineTracker(line_id="kei-ev", configured_modulus=modulus, max_rate_per_hour=rate,
                       state_map=STATE_MAP, has_state_tag=state_tag, start_mono=start,
                       memory=memory)


def count(value: int | None, mono: float, quality: Quality = Quality.GOOD,
          modulus: int | None = None) -> Reading:
    return Reading(line="kei-ev", role="counter", value=value, quality=quality, mono=mono,
                   modulus=modulus)


def state(value: int | None, mono: float, quality: Quality = Quality.GOOD) -> Reading:
    return Reading(line="kei-ev", role="state", value=value, quality=quality, mono=mono)


def test_units_and_good_quality() -> None:
    t = tracker()
    t.on_reading(count(100, 1.0))
    t.on_reading(count(103, 2.0))
    t.on_reading(count(105, 3.0))
    r = t.close_window(60.0)
    assert (r.line, r.units, r.events, r.quality, r.counter) == ("kei-ev", 5, (), "good", 105)
    nxt = t.close_window(120.0)
    assert (nxt.units, nxt.quality, nxt.counter) == (0, "bad", 105)


def test_window_without_a_good_counter_reading_is_bad() -> None:
    t = tracker(baseline=7)
    t.on_reading(state(1, 1.0))
    r = t.close_window(60.0)
    assert (r.units, r.quality, r.counter) == (0, "bad", 7)


@pytest.mark.parametrize(("quality", "event"), [(Quality.BAD, "bad_quality"),
                                                 (Quality.UNCERTAIN, "uncertain_quality")])
def test_non_good_counter_readings_are_never_counted(quality: Quality, event: str) -> None:
    t = tracker(baseline=100)
    t.on_reading(count(100, 1.0))
    t.on_reading(count(150, 2.0, quality))
    t.on_reading(count(None, 3.0, quality))
    r = t.close_window(60.0)
    assert (r.units, r.events, r.quality) == (0, (event,), "uncertain")
    t.on_reading(count(101, 61.0))
    assert t.close_window(120.0).units == 1


def test_only_bad_counter_readings_make_a_bad_window() -> None:
    t = tracker(baseline=100)
    t.on_reading(count(None, 1.0, Quality.BAD))
    r = t.close_window(60.0)
    assert (r.quality, r.events) == ("bad", ("bad_quality",))


def test_rollover_keeps_quality_good_and_reset_does_not() -> None:
    t = tracker(modulus=2**16, baseline=2**16 - 2)
    t.on_reading(count(3, 1.0))
    r = t.close_window(60.0)
    assert (r.units, r.events, r.quality) == (5, ("rollover",), "good")
    t.on_reading(count(1, 61.0))
    r = t.close_window(120.0)
    assert (r.units, r.events, r.quality) == (1, ("counter_reset",), "uncertain")


def test_events_are_unique_in_first_seen_order() -> None:
    t = tracker(modulus=2**16, baseline=2**16 - 1)
    t.on_reading(count(None, 1.0, Quality.BAD))
    t.on_reading(count(0, 2.0))
    t.on_reading(count(None, 3.0, Quality.BAD))
    t.on_reading(count(40_000, 4.0))
    t.on_reading(count(5, 5.0))
    t.on_reading(count(6, 5.5))
    assert t.close_window(6.0).events == ("bad_quality", "rollover", "gap_recovered", "counter_reset")


def test_modulus_from_the_first_counter_reading() -> None:
    t = tracker(baseline=2**31 - 1, stored_modulus=2**31)
    t.on_reading(count(1, 1.0, modulus=2**31))
    assert t.engine.modulus == 2**31
    assert t.close_window(2.0).units == 2


def test_a_counter_whose_type_changed_is_rebaselined() -> None:
    # an OPC UA node re-downloaded as UInt16 where it was UInt32
    t = tracker(baseline=70_000, stored_modulus=2**32)
    t.on_reading(count(70_005, 1.0, modulus=2**32))
    t.on_reading(count(12, 2.0, modulus=2**16))
    t.on_reading(count(15, 3.0, modulus=2**16))
    r = t.close_window(4.0)
    assert r.units == 5 + 3
    assert "rebaselined" in r.events
    assert r.quality == "uncertain"


def test_a_signed_counter_counts_through_its_negative_half() -> None:
    # int16 (two's complement): 32766, 32767, -32768, -32767 are four consecutive counts
    t = tracker()
    for i, v in enumerate([32_766, 32_767, -32_768, -32_767]):
        t.on_reading(count(v, float(i), modulus=2**16))
    r = t.close_window(5.0)
    assert (r.units, r.quality, r.counter) == (3, "good", 32_769)
    t.on_reading(count(-1, 6.0, modulus=2**16))
    t.on_reading(count(1, 7.0, modulus=2**16))
    r = t.close_window(8.0)
    assert (r.units, r.events) == (65_535 - 32_769 + 2, ("rollover",))


def test_a_value_outside_the_counter_is_flagged_bad_never_counted() -> None:
    t = tracker(modulus=2**31, baseline=100)
    t.on_reading(count(-5, 1.0, modulus=2**32))   # 2**32 - 5: outside a DINT counter
    r = t.close_window(2.0)
    assert (r.units, r.quality, r.events) == (0, "bad", ("invalid_value",))
    assert t.value_error is not None
    assert "outside" in t.value_error
    t.on_reading(count(104, 3.0, modulus=2**32))
    r = t.close_window(4.0)
    assert (r.units, r.events) == (4, ("gap_recovered",))
    assert t.value_error is None


def test_a_pending_rebaseline_applies_to_the_first_reading() -> None:
    t = tracker(rebaseline="a line moved to another PLC")
    t.on_reading(count(5_000_000, 1.0))
    t.on_reading(count(5_000_002, 2.0))
    r = t.close_window(3.0)
    assert (r.units, r.events) == (2, ("rebaselined",))
    assert r.memory is not None
    assert r.memory.rebaseline is None


def test_configured_modulus_wins_over_the_reading() -> None:
    t = tracker(modulus=1000, baseline=999)
    t.on_reading(count(4, 1.0, modulus=2**32))
    assert t.engine.modulus == 1000
    assert t.close_window(2.0).units == 5


def test_default_modulus_is_32_bit() -> None:
    t = tracker(baseline=2**32 - 1)
    t.on_reading(count(0, 1.0))
    assert t.engine.modulus == 2**32
    assert t.close_window(2.0).events == ("rollover",)


def test_state_mapping_and_changes() -> None:
    t = tracker()
    assert t.state == "unknown"
    assert t.on_reading(state(1, 1.0)) is True
    assert t.on_reading(state(1, 2.0)) is False
    assert t.on_reading(state(2, 3.0)) is True
    assert t.state == "faulted"
    assert t.on_reading(state(9, 4.0)) is True        # unmapped
    assert t.state == "unknown"
    t.on_reading(state(0, 5.0))
    assert t.on_reading(state(None, 6.0, Quality.BAD)) is True
    assert t.state == "unknown"
    t.on_reading(state(1, 7.0))
    assert t.on_reading(state(1, 8.0, Quality.UNCERTAIN)) is True
    assert t.state == "unknown"
    assert t.on_reading(count(5, 9.0)) is False


def test_without_a_state_tag_the_state_is_unknown() -> None:
    t = tracker(state_tag=False)
    assert t.on_reading(state(1, 1.0)) is False
    r = t.close_window(10.0)
    assert (r.state, r.state_seconds["unknown"]) == ("unknown", 10.0)


def test_state_seconds_integrate_monotonic_time() -> None:
    t = tracker(start=100.0)
    t.on_reading(state(1, 110.0))     # unknown 10 s
    t.on_reading(state(0, 130.0))     # running 20 s
    t.on_reading(state(2, 135.0))     # stopped 5 s
    r = t.close_window(160.0)         # faulted 25 s
    assert r.state_seconds == {"running": 20.0, "stopped": 5.0, "faulted": 25.0, "unknown": 10.0}
    assert r.state == "faulted"
    r2 = t.close_window(220.0)        # the state carries over
    assert r2.state_seconds == {"running": 0.0, "stopped": 0.0, "faulted": 60.0, "unknown": 0.0}


def test_a_late_reading_adds_no_negative_time() -> None:
    t = tracker(start=0.0)
    t.on_reading(state(1, 10.0))
    t.close_window(60.0)
    t.on_reading(state(0, 59.5))      # answered just before the close, handled after it
    r = t.close_window(120.0)
    assert r.state_seconds["stopped"] == 60.0
    assert sum(r.state_seconds.values()) == 60.0


def test_source_down_and_gap_recovered() -> None:
    t = tracker()
    t.on_reading(state(1, 1.0))
    t.on_reading(count(500, 1.0))
    assert t.on_source_down(30.0, "connection refused") is True
    assert t.on_source_down(40.0, "connection refused") is False
    assert (t.state, t.last_error) == ("unknown", "connection refused")
    r = t.close_window(60.0)
    assert r.events == ("source_unreachable",)
    assert r.quality == "uncertain"
    assert r.state_seconds == {"running": 29.0, "stopped": 0.0, "faulted": 0.0, "unknown": 31.0}
    down = t.close_window(120.0)
    assert (down.units, down.quality, down.counter) == (0, "bad", 500)
    # the units built during the outage land in the window in which they are read
    t.on_reading(count(560, 130.0))
    t.on_reading(count(561, 131.0))
    back = t.close_window(180.0)
    assert (back.units, back.events, back.quality) == (61, ("source_unreachable", "gap_recovered"), "uncertain")
    assert t.last_error is None


def test_discard_window_drops_the_accumulation() -> None:
    t = tracker(baseline=0)
    t.on_reading(count(5, 1.0))
    t.discard_window(60.0)
    t.on_reading(count(7, 61.0))
    r = t.close_window(120.0)
    assert (r.units, sum(r.state_seconds.values())) == (2, 60.0)


_ACTIONS = st.lists(st.tuples(
    st.sampled_from(["count", "state", "bad", "down", "close"]),
    st.floats(0.01, 30.0), st.integers(0, 3)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(start=st.floats(0.0, 1e6), actions=_ACTIONS)
def test_state_seconds_sum_to_elapsed_time(start: float, actions: list[tuple[str, float, int]]) -> None:
    t = tracker(start=start)
    now = opened = start
    counter = 0
    total_units = 0
    for kind, dt, value in actions:
        now += dt
        if kind == "count":
            counter += value
            t.on_reading(count(counter, now))
        elif kind == "state":
            t.on_reading(state(value, now))
        elif kind == "bad":
            t.on_reading(count(None, now, Quality.BAD))
        elif kind == "down":
            t.on_source_down(now, "timeout")
        else:
            r = t.close_window(now)
            assert sum(r.state_seconds.values()) == pytest.approx(now - opened, abs=1e-6)
            assert all(v >= 0 for v in r.state_seconds.values())
            assert r.units >= 0
            total_units += r.units
            opened = now
    r = t.close_window(now + 1.0)
    total_units += r.units
    assert sum(r.state_seconds.values()) == pytest.approx(now + 1.0 - opened, abs=1e-6)
    assert total_units == counter - _first_count(actions)


def _first_count(actions: list[tuple[str, float, int]]) -> int:
    """The value of the first counter reading: the baseline, which counts nothing."""
    for kind, _, value in actions:
        if kind == "count":
            return value
    return 0


def test_every_window_of_an_outage_says_source_unreachable() -> None:
    t = tracker()
    t.on_reading(count(10, 0.5))
    t.on_source_down(1.0, "connection refused")
    first = t.close_window(2.0)
    second = t.close_window(3.0)
    assert "source_unreachable" in first.events
    assert first.quality == "uncertain"
    assert second.events == ("source_unreachable",)
    assert second.quality == "bad"
    assert second.units == 0
    t.on_reading(count(15, 3.5))
    back = t.close_window(4.0)
    assert back.units == 5
    assert "gap_recovered" in back.events
    assert "source_unreachable" in back.events  # the window began while the source was away
    after = t.close_window(5.0)
    assert "source_unreachable" not in after.events


def test_tags_report_the_last_good_value_of_the_window() -> None:
    t = LineTracker(line_id="kei-ev", configured_modulus=None, max_rate_per_hour=3600,
                    state_map=STATE_MAP, has_state_tag=True, start_mono=0.0,
                    tag_names=["buffer", "temp"])
    t.on_reading(Reading("kei-ev", "tag", 7, Quality.GOOD, 0.5, name="buffer"))
    t.on_reading(Reading("kei-ev", "tag", 9, Quality.GOOD, 0.7, name="buffer"))
    t.on_reading(Reading("kei-ev", "tag", 21.5, Quality.GOOD, 0.7, name="temp"))
    t.on_reading(Reading("kei-ev", "tag", None, Quality.BAD, 0.8, name="temp"))
    first = t.close_window(1.0)
    assert first.tags == {"buffer": 9, "temp": 21.5}
    assert first.units == 0
    assert t.close_window(2.0).tags == {"buffer": None, "temp": None}


def test_units_after_a_run_of_bad_counter_readings_are_a_gap() -> None:
    t = tracker()
    t.on_reading(count(10, 0.5))
    t.on_reading(count(None, 1.0, quality=Quality.BAD))
    bad = t.close_window(2.0)
    assert bad.quality == "uncertain"
    assert "bad_quality" in bad.events
    t.on_reading(count(14, 2.5))
    back = t.close_window(3.0)
    assert back.units == 4
    assert "gap_recovered" in back.events
