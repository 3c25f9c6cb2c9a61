"""Software PLCs for tests and the demo: Modbus TCP and OPC UA servers over a seeded production model.

A :class:`SimLine` holds one line's ground truth (units built) and the counter its PLC
shows; :class:`ModbusPlc` and :class:`OpcUaPlc` serve lines; :class:`SimulatorSet` runs the
PLCs of a simulator config with the production task and the ledger file.
"""

from __future__ import annotations

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
    load_sim_config,
)
from simulators.ledger import Ledger
from simulators.modbus_plc import ModbusPlc
from simulators.opcua_plc import OpcUaPlc
from simulators.production import ShiftCalendar, SimLine
from simulators.runner import SimulatorSet, run_simulators

__all__ = [
    "Ledger",
    "ModbusCounterTag",
    "ModbusPlc",
    "ModbusPlcConfig",
    "ModbusStateTag",
    "OpcUaCounterNode",
    "OpcUaLineConfig",
    "OpcUaPlc",
    "OpcUaPlcConfig",
    "OpcUaStateNode",
    "ProductionConfig",
    "ShiftCalendar",
    "SimConfig",
    "SimLine",
    "SimLineConfig",
    "SimulatorSet",
    "load_sim_config",
    "run_simulators",
]
