"""The software PLCs: what they serve, every fault knob, the production model, the runner."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from ruamel.yaml import YAML

from agent.config import Config, ModbusSource, ModbusTag, OpcUaSource, OpcUaTag, Shift
from agent.contract.errors import ConfigError
from simulators.config import (
    ModbusPlcConfig,
    OpcUaPlcConfig,
    ProductionConfig,
    SimConfig,
    load_sim_config,
)
from simulators.ledger import Ledger
from simulators.modbus_plc import counter_words
from simulators.production import ShiftCalendar, SimLine
from simulators.runner import SimulatorSet, run_simulators
from tests.fixtures.simulators import (
    make_modbus_cfg,
    make_opcua_cfg,
    modbus_line,
    opcua_line,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
STATES = {"stopped": 0, "running": 1, "faulted": 2}


def _client(port: int, timeout: float = 0.5) -> AsyncModbusTcpClient:
    return AsyncModbusTcpClient("127.0.0.1", port=port, timeout=timeout, retries=0, reconnect_delay=0)


async def _connected(port: int, request_timeout: float = 0.5) -> AsyncModbusTcpClient:
    client = _client(port, request_timeout)
    assert await client.connect()
    return client


def _decode(words: list[int], word_order: str) -> int:
    ordered = words if word_order == "big" else words[::-1]
    value = 0
    for w in ordered:
        value = (value << 16) | w
    return value


# --- Modbus --------------------------------------------------------------------------------

@pytest.mark.parametrize(("type_", "width", "word_order", "start"), [
    ("uint16", 1, "big", 65530),
    ("uint32", 2, "big", 4294967000),
    ("uint32", 2, "little", 0x0001FFFF),
    ("uint64", 4, "big", 2**64 - 3),
    ("uint64", 4, "little", 0x0123456789ABCDEF),
])
async def test_modbus_serves_counter_words_in_order(modbus_plc, type_, width, word_order, start):
    plc = await modbus_plc(type=type_, word_order=word_order, start=start)
    client = await _connected(plc.port)
    try:
        rr = await client.read_holding_registers(100, count=width, device_id=1)
        assert not rr.isError()
        assert rr.registers == counter_words(start, width, word_order)
        assert _decode(rr.registers, word_order) == start
        plc.lines["line-a"].produce(7)
        rr = await client.read_holding_registers(100, count=width, device_id=1)
        assert _decode(rr.registers, word_order) == (start + 7) % 2 ** (16 * width)
    finally:
        client.close()


async def test_modbus_counter_and_state_in_one_coalesced_read(modbus_plc):
    plc = await modbus_plc(start=0x00010002)
    client = await _connected(plc.port)
    try:
        rr = await client.read_holding_registers(100, count=11, device_id=1)
        assert rr.registers == [1, 2] + [0] * 8 + [STATES["running"]]
        for state in ("stopped", "faulted", "running"):
            plc.lines["line-a"].set_state(state)
            rr = await client.read_holding_registers(110, count=1, device_id=1)
            assert rr.registers == [STATES[state]]
    finally:
        client.close()


async def test_modbus_input_table_and_units_are_separate(modbus_plc):
    cfg = make_modbus_cfg([
        modbus_line("a", address=0, table="input", unit_id=1, start=11, state_address=None),
        modbus_line("b", address=0, table="input", unit_id=2, start=22, state_address=None),
    ])
    plc = await modbus_plc(cfg)
    client = await _connected(plc.port)
    try:
        a = await client.read_input_registers(0, count=2, device_id=1)
        b = await client.read_input_registers(0, count=2, device_id=2)
        holding = await client.read_holding_registers(0, count=2, device_id=1)
        assert (a.registers, b.registers, holding.registers) == ([0, 11], [0, 22], [0, 0])
        unknown = await client.read_input_registers(0, count=2, device_id=9)
        assert unknown.isError()
        assert unknown.exception_code == 11
    finally:
        client.close()


async def test_modbus_port_zero_and_ready(modbus_plc):
    plc = await modbus_plc()
    assert plc.ready.is_set()
    assert plc.port > 0
    await plc.stop()
    assert not plc.ready.is_set()


async def test_modbus_writes_are_refused_and_counted(modbus_plc):
    plc = await modbus_plc(start=5)
    client = await _connected(plc.port)
    try:
        single = await client.write_register(100, 1, device_id=1)
        multi = await client.write_registers(100, [1, 2], device_id=1)
        coil = await client.write_coil(0, True, device_id=1)
        assert single.isError()
        assert multi.isError()
        assert coil.isError()
        assert single.exception_code == 1
        assert plc.write_attempts == 3
        rr = await client.read_holding_registers(100, count=2, device_id=1)
        assert rr.registers == [0, 5]
        assert plc.reads == 1
    finally:
        client.close()


@pytest.mark.parametrize("code", [2, 4, 6, 11])
async def test_modbus_exception_codes(modbus_plc, code):
    cfg = make_modbus_cfg([modbus_line("a", unit_id=1), modbus_line("b", unit_id=2)])
    plc = await modbus_plc(cfg)
    client = await _connected(plc.port)
    try:
        plc.set_exception(code, unit_id=2)
        ok = await client.read_holding_registers(100, count=2, device_id=1)
        bad = await client.read_holding_registers(100, count=2, device_id=2)
        assert not ok.isError()
        assert bad.isError()
        assert bad.exception_code == code
        plc.set_exception(code)
        assert (await client.read_holding_registers(100, count=2, device_id=1)).exception_code == code
        plc.set_exception(None)
        assert not (await client.read_holding_registers(100, count=2, device_id=2)).isError()
    finally:
        client.close()


async def test_modbus_delay_answers_late(modbus_plc):
    plc = await modbus_plc()
    client = await _connected(plc.port, request_timeout=2)
    try:
        plc.set_delay(0.3)
        t0 = time.monotonic()
        rr = await client.read_holding_registers(100, count=2, device_id=1)
        assert not rr.isError()
        assert time.monotonic() - t0 >= 0.29
        plc.set_delay(0)
        t0 = time.monotonic()
        await client.read_holding_registers(100, count=2, device_id=1)
        assert time.monotonic() - t0 < 0.2
    finally:
        client.close()


async def test_modbus_stop_drops_a_delayed_answer(modbus_plc):
    plc = await modbus_plc()
    client = await _connected(plc.port, request_timeout=0.5)
    try:
        plc.set_delay(30)
        read = asyncio.create_task(client.read_holding_registers(100, count=2, device_id=1))
        await wait_until(lambda: plc.reads == 1)
        t0 = time.monotonic()
        await plc.stop()
        assert time.monotonic() - t0 < 0.4
        with pytest.raises(ModbusIOException):
            await read
    finally:
        client.close()


async def test_modbus_silent_never_answers(modbus_plc):
    cfg = make_modbus_cfg([modbus_line("a", unit_id=1), modbus_line("b", unit_id=2)])
    plc = await modbus_plc(cfg)
    client = await _connected(plc.port, request_timeout=0.3)
    try:
        plc.set_silent(True, unit_id=1)
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(100, count=2, device_id=1)
        plc.set_silent(False, unit_id=1)
        client.close()
        client = await _connected(plc.port)
        assert not (await client.read_holding_registers(100, count=2, device_id=2)).isError()
        assert not (await client.read_holding_registers(100, count=2, device_id=1)).isError()
    finally:
        client.close()


@pytest.mark.parametrize("reset", [False, True])
async def test_modbus_restart_keeps_port(modbus_plc, reset):
    plc = await modbus_plc(start=1000)
    port = plc.port
    plc.lines["line-a"].produce(5)
    await plc.restart(reset_counters=reset)
    assert plc.port == port
    assert plc.ready.is_set()
    client = await _connected(port)
    try:
        rr = await client.read_holding_registers(100, count=2, device_id=1)
        assert rr.registers == ([0, 0] if reset else [0, 1005])
        assert plc.lines["line-a"].resets == (1 if reset else 0)
        assert plc.lines["line-a"].produced == 5
    finally:
        client.close()


async def test_ledger_matches_counters(modbus_plc, tmp_path):
    plc = await modbus_plc(start=2**32 - 2)
    line = plc.lines["line-a"]
    line.produce(3)
    line.freeze()
    line.produce(4)
    line.freeze(False)
    line.jump(10)
    client = await _connected(plc.port)
    try:
        rr = await client.read_holding_registers(100, count=2, device_id=1)
    finally:
        client.close()
    ledger = Ledger(plc.lines)
    ledger.write(tmp_path / "ledger.json")
    entry = json.loads((tmp_path / "ledger.json").read_text())["lines"]["line-a"]
    assert entry["counter"] == _decode(rr.registers, "big") == 11
    books = {
        "plc": "plc-test", "produced": 7, "expected_units": 3, "counter": 11, "served_counter": 11, "modulus": 2**32,
        "state": "running", "resets": 0, "frozen_units": 4, "jumped": 10,
        "rejected": 0, "second_role": None, "second_counter": None, "state_code": 1,
    }
    assert {k: entry[k] for k in books} == books
    assert set(entry) == set(books) | {"reason_seconds", "timeline"}
    assert entry["timeline"][0][1:] == ["running", 0, 0]


# --- OPC UA ----------------------------------------------------------------------------------

async def test_opcua_serves_types_namespace_and_changes(opcua_plc):
    cfg = make_opcua_cfg([
        opcua_line("rogue", node="Rogue.GoodCount", type="Int32", modulus=2**31, start=2**31 - 2,
                   state_node="Rogue.State"),
        opcua_line("wide", type="UInt64", start=2**40, state_type="UInt16"),
    ])
    plc = await opcua_plc(cfg)
    assert plc.ready.is_set()
    assert plc.port > 0
    assert plc.endpoint == f"opc.tcp://127.0.0.1:{plc.port}/plantfloor"
    async with Client(plc.endpoint, timeout=5) as client:
        assert await client.get_namespace_index("urn:plantfloor:simulator") == 2
        nodes = [client.get_node(plc.node_id(ln, role)) for ln in ("rogue", "wide") for role in ("counter", "state")]
        assert plc.node_id("rogue", "counter") == "ns=2;s=Rogue.GoodCount"
        dvs = await client.read_attributes(nodes)
        assert [(dv.Value.Value, dv.Value.VariantType) for dv in dvs] == [
            (2**31 - 2, ua.VariantType.Int32), (1, ua.VariantType.Int32),
            (2**40, ua.VariantType.UInt64), (1, ua.VariantType.UInt16),
        ]
        plc.lines["rogue"].produce(3)
        plc.lines["rogue"].set_state("faulted")
        t0 = time.monotonic()
        while True:
            dvs = await client.read_attributes(nodes[:2])
            if [dv.Value.Value for dv in dvs] == [1, 2]:
                break
            assert time.monotonic() - t0 < 2, "the change did not reach the nodes"
            await asyncio.sleep(0.02)


async def test_opcua_status_uncertain_and_bad(opcua_plc):
    plc = await opcua_plc(start=5)
    async with Client(plc.endpoint, timeout=5) as client:
        counter = client.get_node(plc.node_id("line-a", "counter"))
        state = client.get_node(plc.node_id("line-a", "state"))
        plc.set_status("line-a", "counter", "uncertain")
        plc.set_status("line-a", "state", "bad")

        async def statuses() -> list[int]:
            return [dv.StatusCode.value for dv in await client.read_attributes([counter, state])]

        want = [ua.StatusCodes.UncertainLastUsableValue, ua.StatusCodes.BadSensorFailure]
        t0 = time.monotonic()
        while await statuses() != want:
            assert time.monotonic() - t0 < 2
            await asyncio.sleep(0.02)
        dv = (await client.read_attributes([counter]))[0]
        assert dv.Value.Value == 5
        plc.set_status("line-a", "counter", "good")
        plc.set_status("line-a", "state", "good")
        t0 = time.monotonic()
        while await statuses() != [ua.StatusCodes.Good, ua.StatusCodes.Good]:
            assert time.monotonic() - t0 < 2
            await asyncio.sleep(0.02)


async def test_opcua_subscription_sees_production(opcua_plc):
    plc = await opcua_plc()
    seen: list[int] = []

    class Handler:
        def datachange_notification(self, node: object, val: int, data: object) -> None:
            seen.append(val)

    async with Client(plc.endpoint, timeout=5) as client:
        sub = await client.create_subscription(50, Handler())
        await sub.subscribe_data_change(client.get_node(plc.node_id("line-a", "counter")))
        await wait_until(lambda: seen == [0])
        plc.lines["line-a"].produce(2)
        await wait_until(lambda: seen[-1:] == [2])
        await sub.delete()


async def test_opcua_writes_are_refused_and_counted(opcua_plc):
    plc = await opcua_plc(start=9)
    async with Client(plc.endpoint, timeout=5) as client:
        node = client.get_node(plc.node_id("line-a", "counter"))
        with pytest.raises(UaStatusCodeError):
            await node.write_value(ua.Variant(1, ua.VariantType.UInt32))
        assert plc.write_attempts == 1
        assert await node.read_value() == 9


async def test_opcua_delay_slows_reads(opcua_plc):
    plc = await opcua_plc()
    async with Client(plc.endpoint, timeout=5) as client:
        node = client.get_node(plc.node_id("line-a", "counter"))
        plc.set_delay(0.3)
        t0 = time.monotonic()
        await client.read_attributes([node])
        assert time.monotonic() - t0 >= 0.29
        plc.set_delay(0)


@pytest.mark.parametrize("reset", [False, True])
async def test_opcua_restart_keeps_port(opcua_plc, reset):
    plc = await opcua_plc(start=40)
    port = plc.port
    await plc.restart(reset_counters=reset)
    assert plc.port == port
    assert plc.ready.is_set()
    async with Client(plc.endpoint, timeout=5) as client:
        assert await client.get_node(plc.node_id("line-a", "counter")).read_value() == (0 if reset else 40)


async def test_opcua_secure_policy_with_trusted_client(opcua_plc, tmp_path):
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
    from cryptography.x509.oid import ExtendedKeyUsageOID

    files = {}
    for who, use in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key, cert = tmp_path / f"{who}-key.pem", tmp_path / f"{who}-cert.der"
        await setup_self_signed_certificate(key, cert, f"urn:plantfloor:test:{who}", "localhost", [use],
                                            {"organizationName": "plantfloor"})
        files[who] = (cert, key)
    plc = await opcua_plc(certificate=files["server"][0], private_key=files["server"][1],
                          security_policies=["Basic256Sha256_SignAndEncrypt"],
                          trusted_client_certs=[files["client"][0]], start=3)
    client = Client(plc.endpoint, timeout=5)
    client.application_uri = "urn:plantfloor:test:client"
    await client.set_security(SecurityPolicyBasic256Sha256, str(files["client"][0]), str(files["client"][1]),
                              server_certificate=str(files["server"][0]))
    async with client:
        assert await client.get_node(plc.node_id("line-a", "counter")).read_value() == 3
    plain = Client(plc.endpoint, timeout=5)
    with pytest.raises(ua.UaError, match="No matching endpoints"):
        async with plain:
            pass


# --- the production model (pure) -------------------------------------------------------------

def test_simline_counter_faults():
    line = SimLine("x", modulus=2**16, start=65534)
    line.produce(3)
    assert (line.counter, line.produced) == (1, 3)
    line.freeze()
    line.produce(5)
    assert (line.counter, line.frozen_units) == (1, 5)
    line.freeze(False)
    line.jump(-2)
    assert (line.counter, line.jumped) == (65535, -2)
    line.reset_counter()
    assert (line.counter, line.resets, line.produced, line.expected_units) == (0, 1, 8, 3)
    with pytest.raises(ValueError, match="state"):
        line.set_state("idle")


def _events(seed: int, dts: list[float]) -> list[tuple[int, str]]:
    params = ProductionConfig(micro_stop_rate_per_hour=60, micro_stop_s=20, breakdown_rate_per_hour=10, repair_s=60)
    line = SimLine("x", modulus=2**32, takt_s=2.0, production=params, seed=seed)
    return [(line.advance(dt), line.state) for dt in dts]


def test_advance_is_deterministic_for_a_seed():
    dts = [0.1, 0.25, 1.0, 0.05] * 2000
    a, b, c = _events(7, dts), _events(7, dts), _events(8, dts)
    assert a == b
    assert a != c
    built = sum(n for n, _ in a)
    states = {s for _, s in a}
    assert states == {"running", "stopped", "faulted"}
    # 2700 s at takt 2 s with stops: fewer than 1350 units but a good part of it
    assert 300 < built < 1350


def test_advance_holds_while_state_forced():
    line = SimLine("x", modulus=100, takt_s=1.0, production=ProductionConfig(takt_jitter=0,
                   micro_stop_rate_per_hour=0, breakdown_rate_per_hour=0))
    assert line.advance(10.5) == 10
    line.set_state("stopped")
    assert line.advance(100) == 0
    assert line.state == "stopped"
    line.set_state("running")
    assert line.advance(2.0) == 2
    assert line.counter == 12


def test_breaks_follow_the_shift_calendar():
    tz = ZoneInfo("Asia/Tokyo")
    shifts = (Shift(name="day", start="06:30", end="15:15", breaks=({"start": "11:45", "end": "12:30"},),
                    days=("mon", "tue", "wed", "thu", "fri")),
              Shift(name="night", start="22:00", end="02:00", days=("mon",)))
    cal = ShiftCalendar(shifts, tz)
    monday = datetime(2025, 3, 3, tzinfo=tz)  # a Monday
    assert cal.planned(monday.replace(hour=6, minute=30))
    assert not cal.planned(monday.replace(hour=6, minute=29))
    assert not cal.planned(monday.replace(hour=12))
    assert cal.planned(monday.replace(hour=12, minute=30))
    assert not cal.planned(monday.replace(hour=15, minute=15))
    assert cal.planned(monday + timedelta(days=1, hours=1))  # Monday's night shift, after midnight
    assert not cal.planned(monday + timedelta(days=2, hours=1))  # no night shift on Tuesday
    assert not cal.planned(monday + timedelta(days=5, hours=10))  # Saturday

    now = [monday.replace(hour=11)]
    line = SimLine("x", modulus=2**32, takt_s=1.0, calendar=cal, clock=lambda: now[0],
                   production=ProductionConfig(takt_jitter=0, micro_stop_rate_per_hour=0, breakdown_rate_per_hour=0))
    built = 0
    states = []
    for _ in range(120 * 60):  # 11:00 to 13:00 in 1 s steps
        built += line.advance(1.0)
        states.append(line.state)
        now[0] += timedelta(seconds=1)
    assert built == 75 * 60  # 45 minutes of break out of 120
    assert states[45 * 60 + 10] == "stopped"
    assert states[-1] == "running"


# --- config and runner -----------------------------------------------------------------------

def _read_yaml(path: Path) -> dict:
    return YAML(typ="safe", pure=True).load(path.read_text())


def test_shipped_simulators_yaml_serves_demo_yaml():
    sim = load_sim_config(ROOT / "config" / "simulators.yaml")
    demo = Config.model_validate(_read_yaml(ROOT / "config" / "demo.yaml"))
    plcs = {p.id: p for p in sim.plcs}
    for line in demo.lines:
        source = demo.source(line.counter.source)
        plc = plcs[source.id]
        sim_line = next(ln for ln in plc.lines if ln.id == line.id)
        if isinstance(source, ModbusSource):
            assert isinstance(plc, ModbusPlcConfig)
            assert isinstance(line.counter, ModbusTag)
            assert (plc.host, plc.port) == (source.host, source.port)
            c = sim_line.counter
            assert (c.unit_id, c.address, c.table, c.type, c.word_order) == (
                source.unit_id, line.counter.address, line.counter.table, line.counter.type, line.counter.word_order)
            assert isinstance(line.state, ModbusTag)
            assert sim_line.state is not None
            assert sim_line.state.address == line.state.address
        else:
            assert isinstance(source, OpcUaSource)
            assert isinstance(plc, OpcUaPlcConfig)
            assert isinstance(line.counter, OpcUaTag)
            assert isinstance(line.state, OpcUaTag)
            assert f"opc.tcp://{plc.host}:{plc.port}{plc.path}" == source.endpoint
            assert line.counter.node == f"ns=2;s={sim_line.counter.node}"
            assert line.counter.rollover == sim_line.modulus
            assert sim_line.state is not None
            assert line.state.node == f"ns=2;s={sim_line.state.node}"
        # the shipped start values roll over within the first plant day (15.3 planned hours;
        # 6.6 running hours for kei-ev, 9 for rogue): some ten minutes of a demo at x60
        assert (sim_line.modulus - sim_line.counter.start) * sim_line.takt_s < 10 * 3600


def test_load_sim_config_errors_name_file_line_and_key(tmp_path):
    bad = tmp_path / "sim.yaml"
    bad.write_text("seed: 1\nplcs:\n  - id: p\n    kind: modbus\n    lines:\n      - id: a\n"
                   "        counter: {address: 1, colour: red}\n")
    with pytest.raises(ConfigError) as err:
        load_sim_config(bad)
    assert err.value.line == 7
    assert err.value.key == "plcs[p].lines[a].counter.colour"  # list items by their id
    bad.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"sim\.yaml:2"):
        load_sim_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_sim_config(tmp_path / "missing.yaml")


def _tiny_sim_config(tmp_path: Path) -> Path:
    path = tmp_path / "sim.yaml"
    path.write_text(
        "seed: 3\n"
        "plcs:\n"
        "  - {id: plc-m, kind: modbus, port: 0, lines: [{id: m, takt_s: 0.05, counter: {address: 0}}]}\n"
        "  - {id: plc-u, kind: opcua, port: 0, lines: [{id: u, takt_s: 0.05, counter: {node: U.Count}}]}\n")
    return path


async def test_run_simulators_keeps_the_ledger(tmp_path):
    ledger_path = tmp_path / "ledger.json"
    ready: list[SimulatorSet] = []
    task = asyncio.create_task(run_simulators(_tiny_sim_config(tmp_path), ledger_path, on_ready=ready.append))
    try:
        await wait_until(lambda: bool(ready) and ledger_path.exists(), within=15)
        sims = ready[0]
        assert all(p.ready.is_set() for p in sims.plcs.values())

        def produced() -> int:
            return sum(e["produced"] for e in json.loads(ledger_path.read_text())["lines"].values())

        first = produced()
        await wait_until(lambda: produced() > first + 5, within=5)
        data = json.loads(ledger_path.read_text())
        assert set(data["lines"]) == {"m", "u"}
        assert data["updated_at"].endswith("Z")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_simulator_set_manual_production(simulator_set, tmp_path):
    cfg = load_sim_config(_tiny_sim_config(tmp_path))
    sims = await simulator_set(cfg, auto=False)
    sims.lines["m"].produce(4)
    modbus = sims.plcs["plc-m"]
    client = await _connected(modbus.port)
    try:
        assert (await client.read_holding_registers(0, count=2, device_id=1)).registers == [0, 4]
    finally:
        client.close()
    assert sims.ledger.snapshot()["lines"]["m"]["plc"] == "plc-m"
    assert sims.lines["u"].produced == 0
    assert isinstance(cfg, SimConfig)


# --- a PLC that refreshes its served counter only every counter_update_s ------------------------

def _lagging(line, seconds: float):
    """The line config with ``counter_update_s`` set (validated again)."""
    return type(line).model_validate(line.model_dump() | {"counter_update_s": seconds})


def _fake_clock(t: float = 100.0):
    now = [t]
    return now, (lambda: now[0])


def test_served_counter_shows_the_counter_of_each_refresh_instant():
    now, clock_s = _fake_clock()
    line = SimLine("x", modulus=2**16, start=10, counter_update_s=2.0, clock_s=clock_s)
    line.produce(1)  # before the clock starts nothing is served: it follows the counter
    assert (line.served_counter, line.refreshes, line.refreshed_at, line.next_refresh_at) == (11, 0, None, None)
    line.start_clock()
    assert (line.served_counter, line.refreshed_at, line.next_refresh_at) == (11, 100.0, 102.0)
    now[0] = 101.0
    line.produce(3)
    assert (line.counter, line.served_counter, line.produced, line.refreshes) == (14, 11, 4, 0)
    now[0] = 101.999
    assert line.served_counter == 11
    now[0] = 102.0  # a unit built at the refresh instant shows at the next one
    line.produce(1)
    assert (line.served_counter, line.refreshes, line.refreshed_at, line.next_refresh_at) == (14, 1, 102.0, 104.0)
    now[0] = 105.0  # refresh 2 at 104 showed 15 ...
    line.produce(2)
    assert (line.served_counter, line.refreshes) == (15, 2)
    now[0] = 111.5  # ... and refreshes 3 to 5 all show 17
    assert (line.served_counter, line.refreshes, line.refreshed_at) == (17, 5, 110.0)
    line.start_clock(200.0)  # the schedule is kept (a PLC restart calls it again)
    assert line.refreshed_at == 110.0
    assert (line.produced, line.expected_units) == (7, 7)
    assert "served_counter=17" in repr(line)


def test_counter_faults_show_at_the_next_refresh():
    now, clock_s = _fake_clock()
    line = SimLine("x", modulus=100, start=95, counter_update_s=1.0, clock_s=clock_s)
    line.start_clock()
    line.produce(3)                        # 98, never shown: the reset comes before the refresh
    line.reset_counter(0)
    line.produce(2)
    assert (line.counter, line.served_counter) == (2, 95)
    now[0] = 101.0
    assert (line.served_counter, line.resets) == (2, 1)
    line.produce(1)
    line.freeze()
    line.produce(4)                        # built while frozen: never counted, never shown
    now[0] = 102.0
    assert line.served_counter == 3        # the unit before the freeze shows; the frozen ones never
    line.freeze(False)
    line.jump(98)                          # wraps: (3 + 98) % 100
    line.produce(1)
    assert line.served_counter == 3
    now[0] = 103.0
    assert (line.served_counter, line.counter, line.jumped) == (2, 2, 98)
    assert (line.produced, line.frozen_units, line.expected_units) == (11, 4, 7)


def test_advance_builds_at_the_clock_and_refreshes_follow():
    now, clock_s = _fake_clock(0.0)
    line = SimLine("x", modulus=2**32, takt_s=1.0, counter_update_s=5.0, clock_s=clock_s,
                   production=ProductionConfig(takt_jitter=0, micro_stop_rate_per_hour=0, breakdown_rate_per_hour=0))
    line.start_clock()
    shown = []
    for step in range(1, 121):             # 12 s in 0.1 s steps; a unit built at a refresh shows at the next
        now[0] = step / 10
        line.advance(0.1)
        shown.append(line.served_counter)
    assert line.produced == line.counter == 12
    # constant between refreshes (at 5 s and 10 s), the true count at each
    assert sorted(set(shown)) == [0, 4, 9]
    assert shown.index(4) == 49
    assert shown.index(9) == 99


def test_without_counter_update_s_the_counter_is_served_as_built():
    line = SimLine("x", modulus=2**16)
    line.start_clock()
    line.produce(3)
    assert (line.served_counter, line.refreshes, line.refreshed_at, line.next_refresh_at) == (3, 0, None, None)
    with pytest.raises(ValueError, match="counter_update_s"):
        SimLine("x", modulus=2**16, counter_update_s=0)


async def test_wait_refresh_needs_counter_update_s_and_a_started_clock():
    with pytest.raises(RuntimeError, match="no counter_update_s"):
        await SimLine("x", modulus=2**16).wait_refresh()
    with pytest.raises(RuntimeError, match="not started"):
        await SimLine("x", modulus=2**16, counter_update_s=1.0).wait_refresh()


def test_counter_update_s_config():
    sim = SimConfig.model_validate({"plcs": [
        {"id": "m", "kind": "modbus", "lines": [{"id": "a", "counter_update_s": 2.5, "counter": {"address": 0}}]},
        {"id": "u", "kind": "opcua", "lines": [{"id": "b", "counter": {"node": "B.Count"}}]},
    ]})
    assert [ln.counter_update_s for p in sim.plcs for ln in p.lines] == [2.5, None]
    sims = SimulatorSet(sim, auto=False)
    assert (sims.lines["a"].counter_update_s, sims.lines["b"].counter_update_s) == (2.5, None)
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="counter_update_s"):
            _lagging(modbus_line(), bad)
    field = SimConfig.model_json_schema()["$defs"]["SimLineConfig"]["properties"]["counter_update_s"]
    assert "refresh the served counter" in field["description"]
    ledger = Ledger(sims.lines).snapshot()["lines"]
    assert ledger["a"]["served_counter"] == ledger["a"]["counter"] == 0


async def _read_until(read, ok, what: str, within: float = 5.0) -> int:
    """Poll ``read()`` until ``ok(value)``; AssertionError after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        value = await read()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what} (last read {value})")
        await asyncio.sleep(0.02)


async def _steady_between_refreshes(line: SimLine, read, build, reads: int = 3) -> tuple[int, list[int]]:
    """Within one refresh period: see the served value on the wire, then ``build()`` and read
    after each; retried when a refresh falls inside. Returns (served value, values read)."""
    deadline = time.monotonic() + 20
    while True:
        gen = line.refreshes
        await _read_until(read, lambda v: v == line.served_counter, "the served value on the wire")
        shown = line.served_counter
        values = []
        for _ in range(reads):
            await build()
            values.append(await read())
        if line.refreshes == gen:
            return shown, values
        assert time.monotonic() < deadline, "no refresh period long enough to watch"


async def _manual_lag_scenario(line: SimLine, read) -> list[int]:
    """Build 2 units three times between two refreshes, then wait for one; return the counts
    the PLC's counter passed through that were never served."""
    start = line.counter

    async def build() -> None:
        line.produce(2)

    shown, values = await _steady_between_refreshes(line, read, build)
    assert values == [shown] * 3, "the served value moved between refreshes"
    assert line.counter == (shown + 6) % line.modulus  # the PLC's counter and the ledger moved on
    assert line.served_counter == shown
    assert Ledger({"x": line}).snapshot()["lines"]["x"]["served_counter"] == shown
    before = line.refreshes
    value = await line.wait_refresh()
    assert line.refreshes > before
    assert value == line.counter == (start + line.produced) % line.modulus  # the true count at the refresh
    assert await _read_until(read, lambda v: v == value, "the refreshed value on the wire") == value
    assert line.expected_units == line.produced
    return [(shown + 2) % line.modulus, (shown + 4) % line.modulus]


async def test_modbus_lagging_counter_manual(modbus_plc):
    plc = await modbus_plc(make_modbus_cfg([_lagging(modbus_line(start=2**32 - 4), 0.5)]))
    line = plc.lines["line-a"]
    client = await _connected(plc.port)

    async def read() -> int:
        rr = await client.read_holding_registers(100, count=2, device_id=1)
        return _decode(rr.registers, "big")

    try:
        await _manual_lag_scenario(line, read)
        # a power cycle resets the counter; the served counter shows it at the next refresh
        line.produce(3)
        gen = line.refreshes
        await plc.restart(reset_counters=True)
        client.close()
        client = await _connected(plc.port)
        served = await read()
        if line.refreshes == gen:
            assert served != 0
            assert served == line.served_counter
        assert await line.wait_refresh() == 0
        assert await read() == 0
        assert (line.resets, line.expected_units) == (1, line.produced)
    finally:
        client.close()


async def test_opcua_lagging_counter_manual(opcua_plc):
    plc = await opcua_plc(make_opcua_cfg([_lagging(opcua_line(type="Int32", modulus=2**31, start=2**31 - 3), 0.5)]))
    line = plc.lines["line-a"]
    seen: list[int] = []

    class Handler:
        def datachange_notification(self, node: object, val: int, data: object) -> None:
            seen.append(val)

    async with Client(plc.endpoint, timeout=5) as client:
        node = client.get_node(plc.node_id("line-a", "counter"))
        sub = await client.create_subscription(20, Handler())
        await sub.subscribe_data_change(node)

        async def read() -> int:
            return int(await node.read_value())

        hidden = await _manual_lag_scenario(line, read)
        await wait_until(lambda: seen[-1:] == [line.counter], what="the subscription sees the refreshed value")
        # only refreshed values are ever served, not the counts between two refreshes
        assert not set(hidden) & set(seen), (hidden, seen)
        await sub.delete()


@pytest.mark.parametrize("kind", ["modbus", "opcua"])
async def test_unlagged_counter_shows_every_unit(modbus_plc, opcua_plc, kind):
    if kind == "modbus":
        plc = await modbus_plc()
        client = await _connected(plc.port)

        async def read() -> int:
            return _decode((await client.read_holding_registers(100, count=2, device_id=1)).registers, "big")
    else:
        plc = await opcua_plc()
        client = Client(plc.endpoint, timeout=5)
        await client.connect()
        node = client.get_node(plc.node_id("line-a", "counter"))

        async def read() -> int:
            return int(await node.read_value())
    line = plc.lines["line-a"]
    try:
        for n in range(1, 4):
            line.produce(1)
            assert line.served_counter == line.counter == n
            await _read_until(read, lambda v, n=n: v == n, f"unit {n} on the wire")
        assert (line.refreshes, line.refreshed_at) == (0, None)
    finally:
        if kind == "modbus":
            client.close()
        else:
            await client.disconnect()


async def test_lagging_counters_with_automatic_production(simulator_set, tmp_path):
    steady = {"takt_jitter": 0, "micro_stop_rate_per_hour": 0, "breakdown_rate_per_hour": 0}
    cfg = SimConfig.model_validate({"plcs": [
        {"id": "plc-m", "kind": "modbus", "port": 0, "lines": [
            {"id": "m", "takt_s": 0.05, "counter_update_s": 0.6, "production": steady, "counter": {"address": 0}}]},
        {"id": "plc-u", "kind": "opcua", "port": 0, "lines": [
            {"id": "u", "takt_s": 0.05, "counter_update_s": 0.6, "production": steady,
             "counter": {"node": "U.Count"}}]},
    ]})
    ledger_path = tmp_path / "ledger.json"
    sims = await simulator_set(cfg, auto=True, ledger_path=ledger_path)
    m, u = sims.lines["m"], sims.lines["u"]
    assert m.refreshed_at == u.refreshed_at  # one schedule for the whole set
    client = await _connected(sims.plcs["plc-m"].port)
    ua_client = Client(sims.plcs["plc-u"].endpoint, timeout=5)
    await ua_client.connect()
    try:
        node = ua_client.get_node(sims.plcs["plc-u"].node_id("u", "counter"))

        async def read_m() -> int:
            return _decode((await client.read_holding_registers(0, count=2, device_id=1)).registers, "big")

        async def read_u() -> int:
            return int(await node.read_value())

        for line, read in ((m, read_m), (u, read_u)):
            async def build(line: SimLine = line) -> None:
                produced = line.produced
                await wait_until(lambda: line.produced > produced, within=5, what="production")

            shown, values = await _steady_between_refreshes(line, read, build, reads=2)
            assert values == [shown, shown]
            assert line.counter >= shown + 2
            counter_before = line.counter
            value = await line.wait_refresh()
            assert counter_before <= value <= line.counter  # the count at the refresh instant
            await _read_until(read, lambda v, line=line: v == line.served_counter, "the refreshed value")
        await sims.write_ledger()
        entry = json.loads(ledger_path.read_text())["lines"]["m"]
        assert entry["expected_units"] == entry["produced"] > 0
        assert "served_counter" in entry
    finally:
        client.close()
        await ua_client.disconnect()
