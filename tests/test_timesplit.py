"""A window's planned time in exact buckets, and minor stops against downtime (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.timesplit import StopClassifier, TimeSplit, allocate

REASONS = ["running", "unknown", "blocked", "fault", "changeover"]


@settings(max_examples=300, deadline=None)
@given(weights=st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=12),
       total=st.integers(0, 10**9))
def test_allocation_is_exact_and_proportional(weights: list[float], total: int) -> None:
    parts = allocate(weights, total)
    assert sum(parts) == total
    assert all(p >= 0 for p in parts)
    whole = sum(weights)
    if whole > 0:
        for w, p in zip(weights, parts, strict=True):
            assert abs(p - total * w / whole) < 1 + 1e-6 * total


def test_allocation_without_weight_goes_to_the_last_part() -> None:
    assert allocate([0.0, 0.0], 900_000) == [0, 900_000]
    assert allocate([], 5) == []
    assert allocate([1.0, 1.0, 1.0], 0) == [0, 0, 0]
    assert allocate([1.0, 1.0, 1.0], 100) == [34, 33, 33]


def test_a_short_stop_is_a_minor_stop_and_a_long_one_downtime_from_its_start() -> None:
    c = StopClassifier(minor_stop_ms=60_000)
    # a 40 s blocked stop inside one minute: minor
    w1 = c.split([("running", None, 10.0), ("blocked", None, 40.0), ("running", None, 10.0)], 60_000, "p")
    assert (w1.run_ms, w1.minor_ms, w1.down_ms, w1.minor_stops, w1.stops) == (20_000, 40_000, {}, 1, {})
    # a fault from 30 s into a window, over the next window: minor until it reaches 60 s
    w2 = c.split([("running", None, 30.0), ("fault", None, 30.0)], 60_000, "p")
    assert (w2.minor_ms, w2.down_ms) == (30_000, {})
    w3 = c.split([("fault", None, 45.0), ("running", None, 15.0)], 60_000, "p")
    assert w3.down_ms == {"fault": 45_000}
    assert w3.reclassified_ms == {"fault": 30_000}   # the first 30 s become downtime too
    assert (w3.stops, w3.minor_stops) == ({"fault": 1}, 0)
    for w in (w1, w2, w3):
        assert w.holds()


def test_a_stop_counts_planned_time_only_and_spans_a_break() -> None:
    c = StopClassifier(minor_stop_ms=60_000)
    before = c.split([("running", None, 30.0), ("blocked", None, 30.0)], 60_000, "p")
    during = c.split([("blocked", None, 600.0)], 0, "p")       # a break: nothing planned
    after = c.split([("blocked", None, 20.0), ("running", None, 40.0)], 60_000, "p")
    assert before.minor_ms == 30_000
    assert during == TimeSplit()
    assert (after.minor_ms, after.minor_stops, after.down_ms) == (20_000, 1, {})


def test_reclassification_stays_within_the_shift_instance() -> None:
    c = StopClassifier(minor_stop_ms=60_000)
    end_of_a = c.split([("running", None, 20.0), ("fault", None, 40.0)], 60_000, "a")
    start_of_b = c.split([("fault", None, 60.0)], 60_000, "b")
    assert end_of_a.minor_ms == 40_000
    # shift a keeps its 40 s as minor stops; b moves nothing of a's
    assert (start_of_b.down_ms, start_of_b.reclassified_ms, start_of_b.stops) == (
        {"fault": 60_000}, {}, {"fault": 1})


def test_a_change_of_reason_starts_a_new_stop_and_unknown_ends_one() -> None:
    c = StopClassifier(minor_stop_ms=60_000)
    w = c.split([("blocked", None, 50.0), ("starved", None, 50.0), ("unknown", 7, 10.0),
                 ("starved", None, 10.0)], 120_000, "p")
    assert (w.minor_ms, w.unknown_ms) == (110_000, 10_000)
    assert w.minor_stops == 2          # blocked, and the first starved (the second is open)
    assert w.unknown_values == {7: w.unknown_ms}
    assert c.open_stop == "starved"


def test_threshold_zero_makes_every_stop_downtime() -> None:
    c = StopClassifier(minor_stop_ms=0)
    w = c.split([("running", None, 59.0), ("blocked", None, 1.0)], 60_000, "p")
    assert (w.minor_ms, w.down_ms, w.stops) == (0, {"blocked": 1_000}, {"blocked": 1})


_SEGMENT = st.tuples(st.sampled_from(REASONS), st.floats(0.0, 200.0))
_WINDOW = st.tuples(st.lists(_SEGMENT, max_size=6), st.sampled_from([0, 60_000, 60_000, 60_000]))


def _reference(windows: list[tuple[list[tuple[str, float]], int]], parts: list[list[int]],
               threshold: int) -> tuple[int, dict[str, int], dict[str, int], int]:
    """Minor and downtime of one period by the definition, from the allocated segments:
    a stop is a run of one reason; its planned length decides minor or downtime."""
    flat = [(reason, ms) for (segs, _), ms_list in zip(windows, parts, strict=True)
            for (reason, _), ms in zip(segs or [("unknown", 0.0)], ms_list, strict=True)]
    runs: list[list[object]] = []
    for reason, ms in flat:
        if runs and runs[-1][0] == reason:
            runs[-1][1] = int(runs[-1][1]) + ms  # type: ignore[call-overload]
        else:
            runs.append([reason, ms])
    minor, down, stops, minor_stops = 0, {}, {}, 0
    for i, (reason, length) in enumerate(runs):
        assert isinstance(reason, str)
        assert isinstance(length, int)
        if reason in ("running", "unknown"):
            continue
        if length >= threshold and length > 0:
            down[reason] = down.get(reason, 0) + length
            stops[reason] = stops.get(reason, 0) + 1
        else:
            minor += length
            ended = i < len(runs) - 1
            minor_stops += 1 if ended and length > 0 else 0
    return minor, down, stops, minor_stops


@settings(max_examples=400, deadline=None)
@given(windows=st.lists(_WINDOW, min_size=1, max_size=25), threshold=st.integers(0, 150_000))
def test_the_window_identity_and_the_definition_of_a_minor_stop(
        windows: list[tuple[list[tuple[str, float]], int]], threshold: int) -> None:
    c = StopClassifier(minor_stop_ms=threshold)
    minor, down, stops, minor_stops = 0, {}, {}, 0
    parts = []
    for segs, planned in windows:
        split = c.split([(r, 7 if r == "unknown" else None, s) for r, s in segs], planned, "p")
        parts.append(allocate([s for _, s in segs] or [0.0], planned))
        assert split.holds()
        assert split.planned_ms == planned
        assert all(v >= 0 for v in (split.run_ms, split.minor_ms, split.unknown_ms,
                                    *split.down_ms.values()))
        minor += split.minor_ms
        for r, ms in split.down_ms.items():
            down[r] = down.get(r, 0) + ms
        for r, ms in split.reclassified_ms.items():   # a running total moves them
            minor -= ms
            down[r] = down.get(r, 0) + ms
        for r, n in split.stops.items():
            stops[r] = stops.get(r, 0) + n
        minor_stops += split.minor_stops
    want_minor, want_down, want_stops, want_minor_stops = _reference(windows, parts, threshold)
    assert minor >= 0
    # the open stop at the end is judged by its length so far, like the reference
    assert (minor, {r: v for r, v in down.items() if v}, stops) == (
        want_minor, {r: v for r, v in want_down.items() if v}, want_stops)
    assert minor_stops == want_minor_stops
