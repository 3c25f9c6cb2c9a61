"""The simulated PLC farm, run as its own process: ``python -m bench.plcs SPEC.json READY.json``.

``SPEC.json`` holds ``{"modbus": N, "opcua_lines": L}``: N Modbus TCP servers, each
serving one line whose counter is a uint32 in holding registers 0-1 and whose state is
holding register 2; registers 3..30 are the PLC's other 28 process values (the simulator
serves every unused register, as 0). With L > 0 one OPC UA server serves L lines, a
counter node and a state node each (2 L monitored items). Every server listens on an
ephemeral loopback port; once all listen, ``READY.json`` is written (atomically) with
the ports and the endpoint. SIGUSR1 writes ``READY.json``'s sibling ``reads.json``: the
read requests every Modbus server has answered so far (so the benchmark can count the
requests an agent makes). SIGTERM or SIGINT stops the farm.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from simulators.config import (
    ModbusCounterTag,
    ModbusPlcConfig,
    ModbusStateTag,
    OpcUaCounterNode,
    OpcUaLineConfig,
    OpcUaPlcConfig,
    OpcUaStateNode,
    ProductionConfig,
    SimConfig,
    SimLineConfig,
)
from simulators.modbus_plc import ModbusPlc
from simulators.opcua_plc import OpcUaPlc
from simulators.runner import SimulatorSet

__all__ = ["TAGS_PER_PLC", "farm_config", "modbus_line_id", "opcua_line_id"]

#: counter (2 registers) + state + 28 other registers = 30 tags in 31 registers 0..30
TAGS_PER_PLC = 30
TAKT_S = 2.0
#: lively lines without long stops, so most windows carry units
_PRODUCTION = ProductionConfig(takt_jitter=0.05, micro_stop_rate_per_hour=2.0, micro_stop_s=10.0,
                               breakdown_rate_per_hour=0.0)


def modbus_line_id(i: int) -> str:
    return f"m{i:04d}"


def opcua_line_id(i: int) -> str:
    return f"u{i:04d}"


def farm_config(modbus: int, opcua_lines: int) -> SimConfig:
    """The simulator config of a farm of ``modbus`` PLCs and one OPC UA server of ``opcua_lines`` lines."""
    plcs: list[ModbusPlcConfig | OpcUaPlcConfig] = [
        ModbusPlcConfig(id=f"plc-{modbus_line_id(i)}", lines=(SimLineConfig(
            id=modbus_line_id(i), takt_s=TAKT_S, production=_PRODUCTION,
            counter=ModbusCounterTag(address=0, type="uint32", start=1000 * i),
            state=ModbusStateTag(address=2)),))
        for i in range(modbus)
    ]
    if opcua_lines:
        plcs.append(OpcUaPlcConfig(id="plc-ua", lines=tuple(
            OpcUaLineConfig(id=opcua_line_id(i), takt_s=TAKT_S, production=_PRODUCTION,
                            counter=OpcUaCounterNode(node=f"L{i:04d}.GoodCount", type="UInt32"),
                            state=OpcUaStateNode(node=f"L{i:04d}.State"))
            for i in range(opcua_lines))))
    return SimConfig(plcs=tuple(plcs))


async def _serve(spec: dict[str, Any], ready: Path) -> None:
    cfg = farm_config(int(spec.get("modbus", 0)), int(spec.get("opcua_lines", 0)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with SimulatorSet(cfg, auto=True, tick_s=0.1) as sims:
        info: dict[str, Any] = {"pid": os.getpid(), "modbus": {}, "opcua": None}
        for plc_id, plc in sims.plcs.items():
            if isinstance(plc, ModbusPlc):
                info["modbus"][plc.cfg.lines[0].id] = plc.port
            elif isinstance(plc, OpcUaPlc):
                info["opcua"] = {"endpoint": plc.endpoint, "lines": [ln.id for ln in plc.cfg.lines],
                                 "plc": plc_id}
        modbus = [plc for plc in sims.plcs.values() if isinstance(plc, ModbusPlc)]
        counts = ready.with_name("reads.json")
        loop.add_signal_handler(signal.SIGUSR1, lambda: _write_json(counts, {
            "t": time.time(), "reads": sum(plc.reads for plc in modbus)}))
        _write_json(ready, info)
        await stop.wait()


def _write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    asyncio.run(_serve(spec, Path(argv[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
