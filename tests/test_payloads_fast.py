"""The window path's JSON (LinePayload, orjson, no re-validation) equals the model's, byte for byte."""

from __future__ import annotations

import math
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Config
from agent.contract.payloads import Event, LineOutput, LinePayload, encode
from agent.core.calendar import ShiftCalendar
from agent.core.report import LineTotals, Reporter
from agent.core.timesplit import TimeSplit
from agent.core.tracker import SecondResult, WindowResult

EVENTS = list(typing.get_args(Event))
T0 = datetime(2028, 4, 3, 5, 0, tzinfo=UTC)


def _config(second: str | None) -> Config:
    line: dict[str, Any] = {"id": "kei-ev", "product": "Sakura", "takt_s": 90,
                            "counter": {"source": "plc", "address": 0},
                            "state": {"source": "plc", "address": 4}}
    if second is not None:
        line[f"{second}_counter"] = {"source": "plc", "address": 2}
    return Config.model_validate({
        "site": "kyushu", "timezone": "Asia/Tokyo",
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "day", "start": "06:30", "end": "15:15",
                    "breaks": [{"start": "11:45", "end": "12:30"}]},
                   {"name": "night", "start": "16:30", "end": "01:15"}],
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 5020}],
        "lines": [line]})


CONFIGS = {k: _config(k) for k in (None, "total", "reject")}

floats = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
reasons = st.sampled_from(["blocked", "starved", "breakdown", "changeover", "unknown-7"])
ms = st.integers(min_value=0, max_value=3_600_000)


@st.composite
def results(draw: st.DrawFn, second: str | None) -> WindowResult:
    seconds = draw(st.dictionaries(st.sampled_from(["running", "stopped", "faulted", "unknown"]),
                                   st.floats(min_value=0, max_value=3600, allow_nan=False)))
    tag_values = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**64 - 1),
                           st.floats())
    time = TimeSplit(planned_ms=draw(ms), run_ms=draw(ms), minor_ms=draw(ms),
                     down_ms=draw(st.dictionaries(reasons, ms, max_size=3)), unknown_ms=draw(ms),
                     unknown_values=draw(st.dictionaries(st.integers(0, 65535), ms, max_size=2)),
                     stops=draw(st.dictionaries(reasons, st.integers(0, 50), max_size=2)),
                     minor_stops=draw(st.integers(0, 100)),
                     reclassified_ms=draw(st.dictionaries(reasons, ms, max_size=2)))
    sec = None
    if second is not None:
        sec = SecondResult(role="total" if second == "total" else "rejects",
                           units=draw(st.integers(0, 10_000)),
                           events=tuple(draw(st.lists(st.sampled_from(EVENTS), max_size=2))),
                           quality=draw(st.sampled_from(["good", "uncertain", "bad"])),
                           counter=draw(st.one_of(st.none(), st.integers(0, 2**64 - 1))))
    return WindowResult(
        line="kei-ev", units=draw(st.integers(0, 100_000)),
        events=tuple(draw(st.lists(st.sampled_from(EVENTS), max_size=3))),
        quality=draw(st.sampled_from(["good", "uncertain", "bad"])), state_seconds=seconds,
        counter=draw(st.one_of(st.none(), st.integers(0, 2**64 - 1))), state="running",
        tags=draw(st.dictionaries(st.text(min_size=1, max_size=8), tag_values, max_size=6)),
        reason=draw(st.sampled_from(["running", "unknown", "blocked"])), time=time,
        covered=draw(st.booleans()), second=sec)


@st.composite
def histories(draw: st.DrawFn) -> tuple[str | None, int, datetime, list[WindowResult]]:
    second = draw(st.sampled_from([None, "total", "reject"]))
    interval = draw(st.sampled_from([1, 7, 60, 900, 3600]))
    start = T0 + timedelta(seconds=draw(st.integers(0, 3 * 86400)) // interval * interval,
                           microseconds=draw(st.sampled_from([0, 123_456])))
    return second, interval, start, draw(st.lists(results(second), min_size=1, max_size=6))


@settings(max_examples=150, deadline=None)
@given(histories(), st.integers(0, 2**31), st.booleans())
def test_the_window_paths_json_is_the_models_json(
        history: tuple[str | None, int, datetime, list[WindowResult]], epoch: int,
        historical: bool) -> None:
    """Random windows through Reporter.line_window: the bytes published are exactly what the
    validated LineOutput encodes to."""
    second, interval, start, windows = history
    cfg = CONFIGS[second]
    rep = Reporter(cfg, ShiftCalendar.from_config(cfg))
    totals = LineTotals()
    for result in windows:
        end = start + timedelta(seconds=interval)
        w = rep.line_window(cfg.lines[0], result, start, end, totals, epoch=epoch,
                            historical=historical)
        model = LineOutput.model_validate(w.output.fields)
        assert w.output.json == encode(model)
        # and reads back as what it says (timestamps on the wire are to the millisecond)
        assert encode(LineOutput.model_validate_json(w.output.json)) == w.output.json
        assert w.output.model() == model
        totals, start = w.totals, end


def test_awkward_values_encode_as_the_model_does() -> None:
    """Floats at the edges of their formats, NaN tags, booleans, 64-bit counters."""
    cfg = CONFIGS[None]
    rep = Reporter(cfg, ShiftCalendar.from_config(cfg))
    for tags in ({"a": math.nan, "b": math.inf, "c": -math.inf}, {"x": True, "y": False},
                 {"tiny": 1e-7, "huge": 1.5e300, "neg": -0.0, "third": 1 / 3},
                 {"big": 2**64 - 1, "small": -2**63}):
        result = WindowResult(line="kei-ev", units=1, events=(), quality="good",
                              state_seconds={"running": 1e-9}, counter=2**64 - 1, state="running",
                              tags=tags)
        w = rep.line_window(cfg.lines[0], result, T0, T0 + timedelta(seconds=1), LineTotals())
        assert w.output.json == encode(LineOutput.model_validate(w.output.fields))


def test_a_payload_of_a_model_keeps_it() -> None:
    cfg = CONFIGS[None]
    rep = Reporter(cfg, ShiftCalendar.from_config(cfg))
    result = WindowResult(line="kei-ev", units=3, events=(), quality="good",
                          state_seconds={"running": 1.0}, counter=9, state="running")
    model, _ = rep.line_output(cfg.lines[0], result, T0, T0 + timedelta(seconds=60), LineTotals())
    payload = LinePayload.of(model)
    assert payload.model() is model
    assert payload.json == encode(model)
    assert (payload.line, payload.seq, payload.units, payload.quality) == ("kei-ev", 1, 3, "uncertain")
    assert payload.day_target == model.day.target
