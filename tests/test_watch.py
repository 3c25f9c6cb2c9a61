"""``plantfloor watch`` against a real Mosquitto: deduplicated totals, late windows,
state, plant and status rows, reconnection, and an unreachable broker.

The payload builders and the publisher here are also used by test_example_subscriber.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel
from rich.console import Console

from agent.cli.watch import BrokerAddress, parse_broker_url, run_watch
from agent.cli.watch_screen import rich_view
from agent.cli.watch_view import WatchModel, plain_lines
from agent.contract.payloads import (
    DayTotals,
    LineOutput,
    LineStatePayload,
    PlantOutput,
    ShiftReport,
    ShiftTotals,
    SourceInfo,
    StateSeconds,
    StatusPayload,
    encode,
)
from tests.fixtures.mosquitto import MosquittoBroker, free_port

ROOT = "test/plant"
T0 = datetime(2028, 4, 3, 0, 0, tzinfo=UTC)
Message = tuple[str, bytes, bool]  # topic, payload, retain


EPOCH = 1_838_930_400_000_417


def line_output(line: str, seq: int, units: int, *, historical: bool = False,
                events: Sequence[str] = (), quality: str = "good", epoch: int = EPOCH,
                minute: int | None = None, shift: ShiftTotals | None = None) -> Message:
    start = T0 + timedelta(minutes=(seq if minute is None else minute) - 1)
    out = LineOutput.model_validate({
        "site": "test", "line": line, "product": line.title(), "epoch": epoch, "seq": seq,
        "window_start": start, "window_end": start + timedelta(minutes=1),
        "units": units, "rate_per_hour": units * 60.0, "target_per_hour": 120.0,
        "attainment": units / 2.0,
        "shift": shift or ShiftTotals(name="day", units=10 * seq, target=960.0, projected=900.0,
                                      downtime_s=0.0),
        "day": DayTotals(date=dt.date(2028, 4, 3), units=20 * seq, target=1800.0),
        "state_seconds": StateSeconds(running=60.0), "quality": quality,
        "events": list(events), "historical": historical,
    })
    return f"{ROOT}/lines/{line}/output", encode(out), False


def plant_output(seq: int, units: int, epoch: int = EPOCH) -> Message:
    start = T0 + timedelta(minutes=seq - 1)
    out = PlantOutput(
        site="test", epoch=epoch, seq=seq, window_start=start, window_end=start + timedelta(minutes=1),
        units=units, units_today=100 + units, units_year_to_date=5000, target_today=3600.0,
        capacity_per_year=500000, planned_utilization=0.8, utilization=0.75,
        projected_year=401234.4, lines={"kei-ev": units}, quality="good")
    return f"{ROOT}/plant/output", encode(out), False


def line_state(line: str, state: str, *, connected: bool = True) -> Message:
    payload = LineStatePayload(
        line=line, state=state,
        source=SourceInfo(id="plc-1", connected=connected, last_ok=T0, error=None), ts=T0)
    return f"{ROOT}/lines/{line}/state", encode(payload), True


def status(*, state: str = "online", backlog: int = 0) -> Message:
    payload = StatusPayload(state=state, agent="test-gw", version="0.1.0",
                            started_at=T0, config_sha256="ab" * 32, backlog=backlog,
                            dropped=0, ts=T0)
    return f"{ROOT}/status", encode(payload), True


def publish(broker: MosquittoBroker, messages: Sequence[Message]) -> None:
    """Publish at QoS 1, in order, each acknowledged before the next (blocking)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload, retain in messages:
            info = client.publish(topic, payload, qos=1, retain=retain)
            info.wait_for_publish(timeout=5)
            assert info.is_published(), f"publish to {topic} not acknowledged"
    finally:
        client.disconnect()
        client.loop_stop()


async def wait_for(predicate: Callable[[], bool], within_s: float = 10.0,
                   what: str = "condition") -> None:
    """Poll ``predicate`` every 30 ms until true; AssertionError after ``within_s``."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {within_s} s")
        await asyncio.sleep(0.03)


# --- the model, without a broker -------------------------------------------------------

def _apply(model: WatchModel, messages: Sequence[Message]) -> None:
    for topic, payload, _ in messages:
        model.apply(topic.removeprefix(f"{ROOT}/"), payload)


def _fields(row: str) -> dict[str, str]:
    head, *pairs = row.split(" ")
    fields = dict(pair.split("=", 1) for pair in pairs)
    fields["_"] = head
    return fields


def _last_row(text: str, head: str) -> dict[str, str]:
    rows = [r for r in text.splitlines() if r.split(" ", 1)[0] == head]
    assert rows, f"no {head!r} row in:\n{text}"
    return _fields(rows[-1])


def test_model_counts_each_window_once_and_keeps_the_newest() -> None:
    model = WatchModel()
    _apply(model, [
        line_output("kei-ev", 1, 3), line_output("kei-ev", 2, 4), line_output("kei-ev", 2, 4),
        line_output("kei-ev", 5, 1),
        line_output("kei-ev", 3, 2, historical=True, events=["gap_recovered"]),
        line_output("kei-ev", 1, 3),
    ])
    view = model.lines["kei-ev"]
    assert view.total == 3 + 4 + 1 + 2
    assert view.duplicates == 2
    assert view.historical == 1
    assert view.missing == 1  # seq 4 has not arrived
    assert view.latest is not None
    assert view.latest.seq == 5  # a late window does not replace the newest
    assert list(view.events) == [(T0 + timedelta(minutes=3), "gap_recovered")]  # the window's end


def test_model_keeps_the_windows_of_a_new_epoch_apart() -> None:
    """A lost state store: seq starts again at 1 in a new epoch; nothing is dropped as a repeat."""
    model = WatchModel()
    _apply(model, [
        line_output("kei-ev", 1, 3), line_output("kei-ev", 2, 4),
        line_output("kei-ev", 1, 5, epoch=EPOCH + 1, minute=3),
        line_output("kei-ev", 2, 6, epoch=EPOCH + 1, minute=4),
        line_output("kei-ev", 2, 6, epoch=EPOCH + 1, minute=4),
        plant_output(1, 7), plant_output(1, 11, epoch=EPOCH + 1),
    ])
    view = model.lines["kei-ev"]
    assert view.total == 3 + 4 + 5 + 6
    assert view.duplicates == 1
    assert view.missing == 0
    assert view.latest is not None
    assert (view.latest.epoch, view.latest.seq) == (EPOCH + 1, 2)
    assert model.plant.total == 7 + 11


def test_model_accepts_added_fields_and_counts_invalid_payloads() -> None:
    model = WatchModel()
    _, payload, _ = line_output("kei-ev", 1, 7)
    data = json.loads(payload)
    data["oee"] = 0.8  # a compatible addition by a newer agent
    data["shift"]["breaks_s"] = 900.0
    data["events"] = ["rollover", "operator_note", "gap_recovered"]  # a newer event name
    assert model.apply("lines/kei-ev/output", json.dumps(data).encode())
    assert model.lines["kei-ev"].total == 7
    assert [e for _, e in model.lines["kei-ev"].events] == ["rollover", "gap_recovered"]
    model.apply("lines/kei-ev/output", b"not json")
    model.apply("lines/kei-ev/output", json.dumps({**data, "seq": 0}).encode())
    model.apply("lines/kei-ev/somethingelse", b"{}")
    assert model.invalid == 2
    assert model.lines["kei-ev"].total == 7


def test_plain_format_is_stable() -> None:
    model = WatchModel()
    _apply(model, [line_output("kei-ev", 2, 2, events=["rollover"]), line_state("kei-ev", "running"),
                   plant_output(2, 2), status(backlog=3)])
    assert plain_lines(model) == [
        "line=kei-ev seq=2 units=2 total=2 rate=120.0/h target=120.0/h attainment=100% "
        "shift=day:20/960 proj=900 day=40/1800 oee=- state=running reason=- quality=good events=rollover "
        "windows=1 dup=0 missing=0",
        "plant seq=2 units=2 total=2 today=102/3600 ytd=5000 util=75.0% planned=80.0% "
        "proj_year=401234 capacity=500000 quality=good dup=0",
        "status state=online agent=test-gw version=0.1.0 backlog=3 dropped=0 alarms=-",
    ]


def test_rich_view_shows_lines_plant_and_status() -> None:
    model = WatchModel()
    _apply(model, [line_output("kei-ev", 1, 2), line_state("rogue", "faulted", connected=False),
                   plant_output(1, 2), status(state="offline")])
    console = Console(file=io.StringIO(), width=220, color_system=None)
    console.print(rich_view(model, "mqtt://x connected", width=220))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "kei-ev" in text
    assert "Kei-Ev" in text
    assert "faulted" in text
    assert "401,234" in text  # projected year
    assert "agent test-gw offline" in text
    assert "PLC unreachable: rogue via plc-1" in text


# --- run_watch against Mosquitto --------------------------------------------------------

class _Watch:
    """run_watch in a task, printing plain rows into a buffer."""

    def __init__(self, url: str, *, plain: bool = True) -> None:
        self.out = io.StringIO()
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(run_watch(
            broker_url=url, root=ROOT, plain=plain, interval_s=0.05, stop=self.stop,
            out=self.out))

    def text(self) -> str:
        return self.out.getvalue()

    async def finish(self) -> int:
        self.stop.set()
        return await asyncio.wait_for(self.task, 10)


async def test_watch_prints_deduplicated_totals(mosquitto: MosquittoBroker) -> None:
    await asyncio.to_thread(publish, mosquitto, [status(), line_state("kei-ev", "running")])
    watch = _Watch(mosquitto.url)
    try:
        # the retained status arriving proves the subscription is in place
        await wait_for(lambda: "status state=online" in watch.text(), what="status row")
        await asyncio.to_thread(publish, mosquitto, [
            line_output("kei-ev", 1, 3), line_output("kei-ev", 2, 4), line_output("kei-ev", 2, 4),
            line_output("rogue", 1, 5), line_output("kei-ev", 1, 3),
            line_output("kei-ev", 5, 1),
            # replayed late, out of order, one of them twice
            line_output("kei-ev", 4, 6, historical=True),
            line_output("kei-ev", 3, 2, historical=True, events=["gap_recovered"]),
            line_output("kei-ev", 3, 2, historical=True, events=["gap_recovered"]),
            plant_output(1, 8), plant_output(1, 8), plant_output(2, 4),
            line_state("rogue", "faulted"),
        ])
        await wait_for(lambda: "state=faulted" in watch.text(), what="last message shown")
    finally:
        assert await watch.finish() == 0
    text = watch.text()
    kei = _last_row(text, "line=kei-ev")
    assert kei["total"] == str(3 + 4 + 1 + 6 + 2)
    assert (kei["seq"], kei["units"], kei["windows"]) == ("5", "1", "5")
    assert (kei["dup"], kei["missing"]) == ("3", "0")
    assert (kei["state"], kei["quality"]) == ("running", "good")
    rogue = _last_row(text, "line=rogue")
    assert (rogue["total"], rogue["state"]) == ("5", "faulted")
    plant = _last_row(text, "plant")
    assert (plant["seq"], plant["units"], plant["total"], plant["dup"]) == ("2", "4", "12", "1")
    assert _last_row(text, "status")["agent"] == "test-gw"


async def test_watch_reconnects_after_broker_restart(mosquitto: MosquittoBroker) -> None:
    await asyncio.to_thread(publish, mosquitto, [status()])
    watch = _Watch(mosquitto.url)
    try:
        await wait_for(lambda: "status state=online" in watch.text(), what="status row")
        await asyncio.to_thread(mosquitto.stop)
        await wait_for(lambda: "notice: connection to" in watch.text(), what="lost notice")
        await asyncio.to_thread(mosquitto.start)
        await wait_for(lambda: "notice: reconnected" in watch.text(), within_s=15,
                       what="reconnected notice")

        def shown() -> bool:
            return "line=kei-ev seq=1 units=9 total=9" in watch.text()

        # resubscription follows the CONNACK: publish until the window shows (redelivery
        # of the same seq is harmless, which is the point)
        deadline = time.monotonic() + 10
        while not shown() and time.monotonic() < deadline:
            await asyncio.to_thread(publish, mosquitto, [line_output("kei-ev", 1, 9)])
            with contextlib.suppress(AssertionError):
                await wait_for(shown, within_s=0.5)
    finally:
        assert await watch.finish() == 0
    assert f"notice: connection to {mosquitto.url} lost" in watch.text()
    assert _last_row(watch.text(), "line=kei-ev")["total"] == "9"


async def test_watch_live_view_renders_to_a_console(mosquitto: MosquittoBroker) -> None:
    retained_output = (*line_output("kei-ev", 1, 2)[:2], True)
    await asyncio.to_thread(publish, mosquitto, [status(), retained_output])
    watch = _Watch(mosquitto.url, plain=False)
    try:
        await wait_for(lambda: "kei-ev" in watch.text(), what="live table")
    finally:
        assert await watch.finish() == 0
    assert "Plant" in watch.text()
    assert "test-gw" in watch.text()


async def test_watch_returns_1_when_no_broker_listens(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    started = time.monotonic()
    rc = await run_watch(broker_url=url, root=ROOT, plain=True, out=io.StringIO())
    assert rc == 1
    assert time.monotonic() - started < 6
    err = capsys.readouterr().err
    assert f"cannot reach the MQTT broker at {url}" in err
    assert err.count("\n") == 1


async def test_watch_rejects_a_malformed_url(capsys: pytest.CaptureFixture[str]) -> None:
    rc = await run_watch(broker_url="http://127.0.0.1:1", out=io.StringIO())
    assert rc == 2
    assert "'http://127.0.0.1:1'" in capsys.readouterr().err


def test_parse_broker_url() -> None:
    assert parse_broker_url("mqtt://h") == BrokerAddress("h", 1883, False)
    assert parse_broker_url("mqtts://u:p@h:9000") == BrokerAddress("h", 9000, True, "u", "p")
    with pytest.raises(ValueError, match="invalid port"):
        parse_broker_url("mqtt://h:99999")


async def test_cancelling_watch_closes_the_client(mosquitto: MosquittoBroker) -> None:
    await asyncio.to_thread(publish, mosquitto, [status()])
    watch = _Watch(mosquitto.url)
    await wait_for(lambda: "status state=online" in watch.text(), what="status row")
    watch.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watch.task
    assert not [t for t in threading.enumerate() if t.name.startswith("paho-mqtt-client-")]


def test_documented_examples_are_valid_payloads() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "mqtt.md").read_text()
    models: dict[str, type[BaseModel]] = {
        "plantfloor.status/1": StatusPayload, "plantfloor.output/1": LineOutput,
        "plantfloor.state/1": LineStatePayload, "plantfloor.plant/1": PlantOutput,
        "plantfloor.shift/1": ShiftReport,
    }
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", doc, re.S)]
    assert sorted(b["schema"] for b in blocks) == sorted(models)
    for block in blocks:
        models[block["schema"]].model_validate(block)
    documented = re.search(r"```\n(line=.*?)```", doc, re.S)
    assert documented is not None
    heads = [row.split(" ", 1)[0] for row in documented.group(1).splitlines()]
    assert heads == ["line=kei-ev", "plant", "status"]
