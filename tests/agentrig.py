"""A rig for end-to-end tests: simulated PLCs, a real Mosquitto, the agent, and a deduping subscriber."""

from __future__ import annotations

import json
import uuid
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
    SimConfig,
    SimLineConfig,
)
from simulators.runner import SimulatorSet
from tests.waiting import wait_until

ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ROOT_TOPIC = "test/plant"


def sim_config(*, kei_type: str = "uint16", kei_start: int = 65_530, rogue_start: int = 2**31 - 5) -> SimConfig:
    """kei on a Modbus PLC (uint16 counter near its wrap), rogue on OPC UA (Int32 mod 2**31)."""
    return SimConfig(plcs=(
        ModbusPlcConfig(id="plc-m", lines=(SimLineConfig(
            id="kei", counter=ModbusCounterTag(address=100, type=kei_type, start=kei_start),  # type: ignore[arg-type]
            state=ModbusStateTag(address=110)),)),
        OpcUaPlcConfig(id="plc-u", lines=(OpcUaLineConfig(
            id="rogue", counter=OpcUaCounterNode(node="Rogue.GoodCount", type="Int32", modulus=2**31,
                                                 start=rogue_start),
            state=OpcUaStateNode(node="Rogue.State")),)),
    ))


def agent_config_dict(tmp_path: Path, broker_url: str, sims: SimulatorSet, *, kei_type: str = "uint16",
                      interval_s: int = 1, mode: str = "subscribe", max_mb: float = 16) -> dict[str, Any]:
    modbus = sims.plcs["plc-m"]
    opcua = sims.plcs["plc-u"]
    return {
        "site": "test",
        "timezone": "Asia/Tokyo",
        "mqtt": {"url": broker_url, "topic_root": ROOT_TOPIC, "client_id": f"agent-{uuid.uuid4().hex[:8]}",
                 "qos": 1},
        "publish": {"interval_s": interval_s, "status_interval_s": 1},
        "storage": {"path": str(tmp_path / "state.db"), "max_mb": max_mb},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "00:00", "end": "12:00", "days": ALL_DAYS},
                   {"name": "b", "start": "12:00", "end": "00:00", "days": ALL_DAYS}],
        "sources": [
            {"id": "plc-m", "kind": "modbus", "host": "127.0.0.1", "port": modbus.port,
             "poll_interval_s": 0.2, "timeout_s": 0.2, "backoff_max_s": 1},
            {"id": "plc-u", "kind": "opcua", "endpoint": opcua.endpoint, "mode": mode,
             "poll_interval_s": 0.2, "timeout_s": 2, "backoff_max_s": 1},
        ],
        "lines": [
            {"id": "kei", "product": "Sakura", "target_per_hour": 3600, "max_rate_per_hour": 3_600_000,
             "counter": {"source": "plc-m", "address": 100, "type": kei_type},
             "state": {"source": "plc-m", "address": 110, "type": "uint16"},
             "tags": {"buffer": {"source": "plc-m", "address": 112, "type": "uint16"}}},
            {"id": "rogue", "product": "Rogue", "target_per_hour": 3600,
             "counter": {"source": "plc-u", "node": "ns=2;s=Rogue.GoodCount", "rollover": 2**31},
             "state": {"source": "plc-u", "node": "ns=2;s=Rogue.State"}},
        ],
    }


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    # JSON is YAML 1.2
    path.write_text(json.dumps(data, indent=2))
    return path


class Windows:
    """Deduplicated window outputs per line from a subscriber's messages."""

    def __init__(self, messages: list[Any]) -> None:
        self.by_line: dict[str, dict[int, dict[str, Any]]] = {}
        self.conflicts: list[tuple[str, int]] = []
        self.plant: dict[int, dict[str, Any]] = {}
        for m in messages:
            if m.topic.endswith("/output") and "/lines/" in m.topic:
                p = m.json()
                seen = self.by_line.setdefault(p["line"], {})
                old = seen.get(p["seq"])
                if old is not None and _strip(old) != _strip(p):
                    self.conflicts.append((p["line"], p["seq"]))
                seen.setdefault(p["seq"], p)
            elif m.topic.endswith("/plant/output"):
                p = m.json()
                self.plant.setdefault(p["seq"], p)

    def units(self, line: str) -> int:
        return sum(p["units"] for p in self.by_line.get(line, {}).values())

    def seqs(self, line: str) -> list[int]:
        return sorted(self.by_line.get(line, {}))

    def contiguous(self, line: str) -> bool:
        s = self.seqs(line)
        return s == list(range(1, len(s) + 1))

    def events(self, line: str) -> set[str]:
        return {e for p in self.by_line.get(line, {}).values() for e in p["events"]}


def _strip(p: dict[str, Any]) -> dict[str, Any]:
    """A window's identity without the delivery flag (a resend later may say historical)."""
    return {k: v for k, v in p.items() if k != "historical"}

__all__ = ["ROOT_TOPIC", "Windows", "agent_config_dict", "sim_config", "wait_until", "write_yaml"]
