"""Logging: JSON lines parse, text suits journald, and secrets never reach the output."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import Config
from agent.runtime.logconfig import REDACTED, collect_secrets, configure_logging

PASSWORD = "s3cr3t-Pa55!"
OPCUA_PASSWORD = "opc-ua-pw-42"


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {n: logging.getLogger(n).level for n in ("asyncua", "pymodbus")}
    yield
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    for n, lvl in quiet.items():
        logging.getLogger(n).setLevel(lvl)


def log_everything(log: logging.Logger) -> None:
    log.info("connecting as plantfloor with password %s", PASSWORD)
    log.warning("url mqtt://plantfloor:%s@broker:1883", PASSWORD)
    log.error("settings %r", {"password": PASSWORD, "opcua": OPCUA_PASSWORD})
    log.info("extra carries it", extra={"detail": PASSWORD, "nested": {"pw": OPCUA_PASSWORD}})
    try:
        raise ValueError(f"bad login {PASSWORD}")
    except ValueError:
        log.exception("login failed")
    log.info("inline " + PASSWORD, stack_info=True)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_never_appear(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    configure_logging(fmt=fmt, secrets=[PASSWORD, OPCUA_PASSWORD, ""], stream=out)  # type: ignore[arg-type]
    log = logging.getLogger("plantfloor.test")
    log_everything(log)
    text = out.getvalue()
    assert PASSWORD not in text
    assert OPCUA_PASSWORD not in text
    assert text.count(REDACTED) >= (6 if fmt == "text" else 8)
    assert "ValueError: bad login ***" in text.replace("\\n", "\n")


def test_json_lines_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    configure_logging(fmt="json", level=logging.DEBUG, stream=out)
    log = logging.getLogger("agent.runtime.pipeline")
    log.debug("window %s closed", 7, extra={"line": "kei-ev"})
    log.warning("naïve ünïcode ✓ and \"quotes\"\nand a newline")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("boom")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    objs = [json.loads(line) for line in lines]
    assert objs[0]["msg"] == "window 7 closed"
    assert objs[0]["level"] == "DEBUG"
    assert objs[0]["logger"] == "agent.runtime.pipeline"
    assert objs[0]["line"] == "kei-ev"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", objs[0]["ts"])
    assert objs[1]["msg"].endswith("and a newline")
    assert "✓" in objs[1]["msg"]
    assert "ZeroDivisionError" in objs[2]["exc"]


def test_text_has_iso_timestamp_outside_journald(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    configure_logging(fmt="text", stream=out)
    logging.getLogger("agent.x").warning("hello %d", 5)
    logging.getLogger("agent.x").debug("below the level")
    line = out.getvalue()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d WARNING agent\.x: hello 5\n", line)


def test_text_under_journald_has_priority_no_timestamp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal"
    with path.open("w", encoding="utf-8") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        configure_logging(fmt="text", stream=stream)
        log = logging.getLogger("agent.y")
        log.warning("disk nearly full")
        try:
            raise OSError("no space")
        except OSError:
            log.exception("commit failed")
        log.info("fine")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "<4>WARNING agent.y: disk nearly full"
    assert lines[1] == "<3>ERROR agent.y: commit failed"
    assert all(line.startswith("<3>") for line in lines[2:-1])  # the traceback keeps "error"
    assert lines[-1] == "<6>INFO agent.y: fine"


def test_journal_stream_of_another_file_is_ignored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")  # stderr redirected elsewhere by the user
    path = tmp_path / "log"
    with path.open("w", encoding="utf-8") as stream:
        configure_logging(fmt="text", stream=stream)
        logging.getLogger("agent.z").info("hi")
    assert re.match(r"\d{4}-\d\d-\d\dT", path.read_text(encoding="utf-8"))


def test_reconfigure_replaces_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    first, second = io.StringIO(), io.StringIO()
    configure_logging(stream=first)
    configure_logging(stream=second, secrets=[PASSWORD])
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "plantfloor"]
    assert len(ours) == 1
    logging.getLogger("agent.r").info("pw=%s", PASSWORD)
    assert first.getvalue() == ""
    assert second.getvalue().endswith("INFO agent.r: pw=***\n")
    assert logging.getLogger("asyncua").level == logging.CRITICAL


def test_collect_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text(PASSWORD + "\n")
    (tmp_path / "opcua-pw").write_text(OPCUA_PASSWORD)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("PLANTFLOOR_OPCUA_PASSWORD", "from-env")
    monkeypatch.delenv("PLANTFLOOR_MQTT_PASSWORD", raising=False)
    cfg = Config.model_validate({
        "site": "t", "timezone": "UTC",
        "mqtt": {"username": "u", "password_file": "mqtt-password"},
        "plant": {"capacity_per_year": 1000, "planned_utilization": 0.5},
        "shifts": [{"name": "day", "start": "06:00", "end": "14:00"}],
        "sources": [
            {"id": "a", "kind": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840",
             "username": "u", "password_file": str(tmp_path / "opcua-pw")},
            {"id": "b", "kind": "opcua", "endpoint": "opc.tcp://127.0.0.1:4841",
             "username": "u", "password_file": str(tmp_path / "missing")},
        ],
        "lines": [{"id": "l", "product": "p", "target_per_hour": 10,
                   "counter": {"source": "a", "node": "ns=2;s=C"}}],
    })
    assert collect_secrets(cfg) == [PASSWORD, OPCUA_PASSWORD, "from-env"]


def test_malformed_call_neither_raises_nor_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    configure_logging(stream=out, secrets=[PASSWORD])
    root = logging.getLogger()
    # pytest's own capture handlers raise on a malformed record: leave only ours
    monkeypatch.setattr(root, "handlers", [h for h in root.handlers if h.get_name() == "plantfloor"])
    logging.getLogger("agent.m").warning("one placeholder %s %s", PASSWORD)
    text = out.getvalue()
    assert "one placeholder" in text
    assert PASSWORD not in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_text_on_a_terminal_shows_the_plants_local_time_and_zone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, a plant in Japan read its logs in the gateway's zone (UTC)."""
    from zoneinfo import ZoneInfo

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    tty, pipe = _Terminal(), io.StringIO()
    configure_logging(fmt="text", stream=tty, tz=ZoneInfo("Asia/Tokyo"))
    record = logging.LogRecord("agent.x", logging.WARNING, __file__, 1, "hello", None, None)
    record.created = 1_796_000_000.25                 # 2026-11-30T00:53:20.250Z
    logging.getLogger().handlers[-1].handle(record)
    assert tty.getvalue() == "2026-11-30 09:53:20.250 JST WARNING agent.x: hello\n"
    # a file or a pipe keeps the machine-readable ISO form
    configure_logging(fmt="text", stream=pipe, tz=ZoneInfo("Asia/Tokyo"))
    logging.getLogger().handlers[-1].handle(record)
    assert re.fullmatch(r"2026-11-\d\dT\d\d:\d\d:20\.250[+-]\d\d:\d\d WARNING agent\.x: hello\n",
                        pipe.getvalue())


def test_the_demo_stamps_its_terminal_lines_with_the_plant_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's view tells simulated plant time (2028-04-03 16:01 JST): so do its log
    lines on the terminal; a pipe keeps the machine's time."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from agent.core.clock import SimulatedClock
    from agent.runtime.logconfig import show_plant_time

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    clock = SimulatedClock(60, datetime(2028, 4, 3, 7, 1, 0, 500_000, tzinfo=UTC), running=False)
    tokyo = ZoneInfo("Asia/Tokyo")
    record = logging.LogRecord("agent.x", logging.INFO, __file__, 1, "agent started", None, None)
    record.created = 1_796_000_000.25                 # the machine's time: 2026-11-30
    tty, pipe = _Terminal(), io.StringIO()
    configure_logging(fmt="text", stream=tty)
    show_plant_time(tokyo, clock.wall)
    logging.getLogger().handlers[-1].handle(record)
    assert tty.getvalue() == "2028-04-03 16:01:00.500 JST INFO agent.x: agent started\n"
    configure_logging(fmt="text", stream=pipe)
    show_plant_time(tokyo, clock.wall)
    logging.getLogger().handlers[-1].handle(record)
    assert pipe.getvalue().startswith("2026-11-")


def test_records_go_to_sys_stderr_as_it_is_when_they_are_written(monkeypatch: pytest.MonkeyPatch) -> None:
    # the live terminal view (rich's Live) stands in for sys.stderr while it draws: a log
    # line must reach its stand-in, which prints it above the frame, not the real stream
    configure_logging()
    stand_in = io.StringIO()
    monkeypatch.setattr("sys.stderr", stand_in)
    logging.getLogger("plantfloor.test").warning("source plc-kei: recovered")
    assert "source plc-kei: recovered" in stand_in.getvalue()
