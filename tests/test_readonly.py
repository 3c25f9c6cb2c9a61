"""The agent only ever reads from PLCs: no write call in its code, no write on the wire."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agent.contract.readings import Quality
from agent.sources.modbus import ModbusTcpSource
from agent.sources.modbus_plan import PointRef
from tests.test_modbus_source import modbus_cfg

AGENT = Path(__file__).resolve().parent.parent / "agent"

# pymodbus client calls and request PDUs that change a PLC, and asyncua's write services
WRITE_CALL = re.compile(
    r"\b(write_registers?|write_coils?|readwrite_registers|mask_write_register"
    r"|Write(Single|Multiple)(Register|Coil)s?Request|ReadWriteMultipleRegistersRequest"
    r"|MaskWriteRegisterRequest|write_values?|write_attributes?)\b"
)


def write_calls(text: str) -> list[str]:
    return [m.group(0) for m in WRITE_CALL.finditer(text)]


def test_scanner_finds_what_it_looks_for() -> None:
    assert write_calls("await client.write_register(1, 2, device_id=1)") == ["write_register"]
    assert write_calls("client.readwrite_registers(read_address=0)") == ["readwrite_registers"]
    assert write_calls("pdu = WriteMultipleRegistersRequest(address=0)") == ["WriteMultipleRegistersRequest"]
    assert write_calls("await node.write_value(3)") == ["write_value"]
    assert write_calls("await client.read_holding_registers(0, count=2)") == []


def test_no_write_call_anywhere_in_the_agent() -> None:
    files = sorted(AGENT.rglob("*.py"))
    assert any(f.name == "modbus.py" for f in files)
    found = {str(f.relative_to(AGENT)): calls for f in files
             if (calls := write_calls(f.read_text(encoding="utf-8")))}
    assert found == {}


async def test_polling_a_plc_sends_no_write(modbus_plc: Any) -> None:
    plc = await modbus_plc()
    pts = [PointRef("line-a", "counter", 1, "holding", 100, "uint32"),
           PointRef("line-a", "state", 1, "holding", 110, "uint16")]
    src = ModbusTcpSource(modbus_cfg(plc.port), pts)
    await src.connect()
    try:
        for n in range(1, 6):
            plc.lines["line-a"].produce(1)
            readings = await src.read()
            assert {r.value for r in readings if r.role == "counter"} == {n}
            assert all(r.quality is Quality.GOOD for r in readings)
        await src.connect()   # reconnecting sends nothing either
        await src.read()
    finally:
        await src.close()
    assert plc.reads >= 6
    assert plc.write_attempts == 0
