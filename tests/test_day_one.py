"""Day-one polish: ``check --connect`` prints one clean line per endpoint and no logs in its
table; every command takes a broker in the same forms, refused in one sentence; ``--help``
shows defaults."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.cli.check import check_command, reason
from agent.config import BROKER_FORMS, broker_url
from agent.runtime.logconfig import configure_logging
from tests.agentrig import agent_config_dict, sim_config, write_yaml


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("given", "url"), [
    ("mqtt://broker.plant:1884", "mqtt://broker.plant:1884"),
    ("mqtts://broker.plant:8883", "mqtts://broker.plant:8883"),
    ("127.0.0.1:1883", "mqtt://127.0.0.1:1883"),
    ("broker.plant", "mqtt://broker.plant"),
])
def test_every_broker_form_gives_one_url(given: str, url: str) -> None:
    assert broker_url(given) == url


@pytest.mark.parametrize("given", ["http://broker:80", "broker:port", "", "mqtt://", "host:1883/x"])
def test_a_bad_broker_is_refused_in_one_sentence(given: str) -> None:
    with pytest.raises(ValueError, match=f"is not a broker address: give {BROKER_FORMS}$"):
        broker_url(given)


def test_run_watch_demo_and_check_accept_and_refuse_brokers_alike(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, demo showed 127.0.0.1:1883 while run and watch refused it, in two sentences."""
    config = str(Path(__file__).resolve().parent.parent / "config" / "demo.yaml")
    refusals = set()
    for argv in (["run", config], ["watch"], ["demo"], ["check", config]):
        assert main([*argv, "--broker", "broker:port"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        refusals.add(err)
    assert refusals == {f"plantfloor: --broker: 'broker:port' is not a broker address: give "
                        f"{BROKER_FORMS}\n"}
    assert main(["check", config, "--broker", "127.0.0.1:1884"]) == 0
    assert "broker mqtt://127.0.0.1:1884 (MQTT" in capsys.readouterr().out


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, needle in ((["watch"], "(default: mqtt://127.0.0.1:1883)"),
                         (["report"], "(default: text)"),
                         (["demo"], "default: mqtt://127.0.0.1:1883 if reachable")):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        assert needle in " ".join(capsys.readouterr().out.split())


def test_a_failure_reads_as_a_sentence_not_a_raw_exception() -> None:
    missing = FileNotFoundError(2, "No such file or directory", "/etc/plantfloor/opcua/c.der")
    assert reason(missing) == "/etc/plantfloor/opcua/c.der: no such file"
    assert reason(ConnectionRefusedError(111, "Connection refused")) == "connection refused"
    assert reason(TimeoutError(), timeout_s=5) == "no answer within 5 s"
    assert reason(Exception("source plc-kei: cannot connect to 10.0.0.1:502"),
                  names=("plc-kei",)) == "cannot connect to 10.0.0.1:502"


async def test_check_connect_prints_one_line_per_endpoint_and_no_logs(
        tmp_path: Path, mosquitto: Any, simulator_set: Callable[..., Any]) -> None:
    """Before: ``FAIL source plc-kei: source plc-kei: cannot connect...`` and an INFO log
    line in the table."""
    sims = await simulator_set(sim_config(), auto=False)
    data = agent_config_dict(tmp_path, mosquitto.url, sims)
    data["sources"][0]["port"] = _closed_port()
    config = write_yaml(tmp_path / "agent.yaml", data)
    logs = io.StringIO()
    configure_logging(fmt="text", stream=logs)
    out = io.StringIO()
    code = await asyncio.to_thread(check_command, config, connect=True, out=out)
    assert code == 1
    table = [ln for ln in out.getvalue().splitlines() if ln.startswith(("ok  ", "FAIL"))]
    assert len(table) == len(data["sources"]) + 1
    first = data["sources"][0]["id"]
    [failed] = [ln for ln in table if ln.startswith("FAIL")]
    assert failed.startswith(f"FAIL source {first}: ")
    assert failed.count(first) == 1
    assert "Errno" not in out.getvalue()
    assert table[-1].startswith(f"ok   broker {mosquitto.url}: connected at ")
    assert table[-1].endswith(" JST")
    assert " INFO " not in logs.getvalue()


async def test_an_endpoint_that_drops_the_connection_is_not_called_lost(
        tmp_path: Path, mosquitto: Any, simulator_set: Callable[..., Any]) -> None:
    """Before: "connection lost" for a PLC the check never read."""
    sims = await simulator_set(sim_config(), auto=False)

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    try:
        data = agent_config_dict(tmp_path, mosquitto.url, sims)
        data["sources"][0]["port"] = server.sockets[0].getsockname()[1]
        config = write_yaml(tmp_path / "agent.yaml", data)
        out = io.StringIO()
        code = await asyncio.to_thread(check_command, config, connect=True, out=out)
    finally:
        server.close()
        await server.wait_closed()
    assert code == 1
    [failed] = [ln for ln in out.getvalue().splitlines() if ln.startswith("FAIL")]
    assert "lost" not in failed
    assert failed.startswith(f"FAIL source {data['sources'][0]['id']}: ")
