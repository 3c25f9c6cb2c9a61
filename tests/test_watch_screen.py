"""The terminal view at 80 and 200 columns: every figure labelled, none truncated, stale lines."""

from __future__ import annotations

import datetime as dt
import io
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from rich.console import Console

from agent.cli.watch_screen import rich_view
from agent.cli.watch_view import WatchModel
from agent.contract.payloads import ShiftReport, ShiftTotals, encode
from agent.core.clock import SimulatedClock
from tests.test_watch import EPOCH, ROOT, Message, line_output, line_state, plant_output, status

TOKYO = ZoneInfo("Asia/Tokyo")
T0 = datetime(2028, 4, 3, 0, 0, tzinfo=UTC)   # 09:00 JST


def shift_report(line: str | None, units: int, *, epoch: int = EPOCH, name: str = "night") -> Message:
    start = T0 - timedelta(hours=2, minutes=30)
    report = ShiftReport.model_validate({
        "site": "test", "line": line, "product": line.title() if line else None,
        "lines": None if line else ["kei-ev", "rogue"], "epoch": epoch,
        "shift": {"name": name, "start": start, "end": start + timedelta(hours=2), "date": dt.date(2028, 4, 2)},
        "units": units, "rejects": 12, "total": units + 12, "target": 1306.7, "attainment": units / 1306.7,
        "time": {"calendar_s": 7200, "planned_s": 7200, "planned_stop_s": 600, "planned_busy_s": 6600,
                 "run_s": 5400, "minor_stop_s": 300, "down_s": 900, "unknown_s": 0, "covered_s": 7200,
                 "ideal_run_s": 5000, "fully_productive_s": 4900},
        "minor_stops": 4,
        "downtime": {"fault": {"category": "unplanned", "seconds": 900, "stops": 2},
                     "changeover": {"category": "planned", "seconds": 600, "stops": 1}},
        "ideal_cycle_s": 50 if line else None, "availability": 0.8182, "performance": 0.9259,
        "quality": 0.9885, "oee": 0.7488, "quality_measured": True, "top_losses": [], "coverage": 1.0,
    })
    topic = f"{ROOT}/lines/{line}/shift" if line else f"{ROOT}/plant/shift"
    return topic, encode(report), True


def _model(*, offline: bool = False) -> WatchModel:
    model = WatchModel()
    messages = [line_output("kei-ev", 1, 1234, events=["rollover"]), line_output("rogue", 1, 7),
                line_state("kei-ev", "running"), line_state("rogue", "faulted"),
                plant_output(1, 1241), status(state="offline" if offline else "online"),
                shift_report("kei-ev", 1024), shift_report("rogue", 512), shift_report(None, 1536)]
    for topic, payload, _ in messages:
        model.apply(topic.removeprefix(f"{ROOT}/"), payload)
    return model


def _render(model: WatchModel, width: int, at: datetime) -> str:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    clock = SimulatedClock(60, at)
    console.print(rich_view(model, "mqtt://127.0.0.1:1883 connected", clock=clock, tz=TOKYO, width=width))
    return console.export_text()


def _flat(text: str) -> str:
    """The text with every run of white space as one space: phrases wrapped at a space still match."""
    return " ".join(text.split())


def test_80_columns_show_every_key_figure_whole_and_labelled() -> None:
    raw = _render(_model(), 80, T0 + timedelta(minutes=1, seconds=20))
    assert max(len(line) for line in raw.splitlines()) <= 80
    assert "…" not in raw, raw                                      # nothing cut short
    text = _flat(raw)
    assert "simulated time x60, 2028-04-03 09:01 JST" in text
    for label in ("last 60 s", "this shift", "today", "OEE", "year to date"):
        assert label in text, label
    assert "1,234" in text                     # the window's units, with a thousands separator
    assert "09:01 JST · day shift" in text
    assert "10/960" in text                    # this shift: units / target, whole numbers
    assert "20/1,800" in text                  # today
    assert "today 1,341 / 3,600 units" in text                # the plant's day
    assert "year to date 5,000 units" in text
    assert "utilisation 75.0 % of capacity" in text
    assert "(plan 80.0 %)" in text
    assert "capacity 500,000 a year" in text
    assert "401,234" in text
    assert "faulted" in text
    assert "running" in text
    # the last shift: units, OEE and downtime by reason
    assert "Last shift night 2028-04-02 06:30-08:30" in text
    assert "plant 1,536 / 1,307 units" in text
    assert "kei-ev 1,024 / 1,307 units, OEE 75 %" in text
    assert "fault 15 min (2 stops)" in text
    assert "changeover 10 min" in text
    # events summarised, once each, at plant local time
    assert "counter rolled over kei-ev 09:01" in text
    assert "agent started 09:00" in text
    assert "STALE" not in text
    assert "backlog 0 · alarms none" in text    # "dropped 0" only where there is room


def test_200_columns_add_rates_oee_parts_downtime_and_data_quality_apart() -> None:
    raw = _render(_model(), 200, T0 + timedelta(minutes=1, seconds=20))
    assert "…" not in raw
    assert max(len(line) for line in raw.splitlines()) <= 200
    text = _flat(raw)
    assert "Kei-Ev" in text                         # the product
    assert "74,040 / 120" in text                   # rate per hour: the window's against the target
    assert "day 10 / 960" in text
    assert "OEE quality" in text
    assert "data" in text
    assert "availability 82 %, performance 93 %, OEE quality 99 %" in text
    assert "mqtt://127.0.0.1:1883 connected" in text
    assert "backlog 0 · dropped 0 · alarms none" in text
    # the wide view holds more than the narrow one
    narrow = _render(_model(), 80, T0 + timedelta(minutes=1, seconds=20))
    assert "Kei-Ev" not in narrow
    assert "OEE quality" not in narrow


def test_a_line_is_stale_when_its_last_window_is_older_than_two_intervals() -> None:
    fresh = _render(_model(), 80, T0 + timedelta(minutes=2, seconds=59))
    assert "STALE" not in fresh
    text = _render(_model(), 80, T0 + timedelta(minutes=3, seconds=1))
    assert text.count("STALE since 09:01") == 2


def test_every_line_is_stale_while_the_agent_is_offline() -> None:
    text = _render(_model(offline=True), 80, T0 + timedelta(minutes=1, seconds=5))
    assert text.count("STALE since 09:01") == 2
    assert "offline" in text


def test_before_any_message_the_view_says_it_waits() -> None:
    text = _render(WatchModel(), 80, T0)
    assert "waiting for its status" in text
    assert "no window yet" in text


def test_a_shift_report_another_state_store_left_retained_is_not_shown() -> None:
    model = WatchModel()
    for topic, payload, _ in (shift_report(None, 99, epoch=EPOCH + 1, name="later"),
                              plant_output(1, 3), line_output("kei-ev", 1, 3)):
        model.apply(topic.removeprefix(f"{ROOT}/"), payload)
    text = _flat(_render(model, 80, T0 + timedelta(minutes=1)))
    assert "Last shift" not in text
    # this epoch's report replaces it when it comes, although its shift started earlier
    topic, payload, _ = shift_report(None, 1536)
    model.apply(topic.removeprefix(f"{ROOT}/"), payload)
    text = _flat(_render(model, 80, T0 + timedelta(minutes=1)))
    assert "Last shift night 2028-04-02 06:30-08:30: plant 1,536 / 1,307 units" in text


def test_off_shift_a_standing_line_shows_no_downtime() -> None:
    model = _model()
    off = ShiftTotals(name=None, units=0, target=0.0, projected=0.0, downtime_s=4080.0)
    topic, payload, _ = line_output("rogue", 2, 0, shift=off)
    model.apply(topic.removeprefix(f"{ROOT}/"), payload)
    raw = _render(model, 200, T0 + timedelta(minutes=2, seconds=20))
    row = next(line for line in raw.splitlines() if line.startswith("rogue"))
    assert "off shift 0 / 0" in row
    assert "1 h 08 min" not in row
    assert row.rstrip().endswith("-  good")
