"""A rig for end-to-end tests: simulated PLCs, a real Mosquitto, the agent, and a deduping subscriber."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.runtime.pipeline import Agent
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
            {"id": "rogue", "product": "Rogue", "target_per_hour": 3600, "max_rate_per_hour": 3_600_000,
             "counter": {"source": "plc-u", "node": "ns=2;s=Rogue.GoodCount", "rollover": 2**31},
             "state": {"source": "plc-u", "node": "ns=2;s=Rogue.State"}},
        ],
    }


STEADY = ProductionConfig(takt_jitter=0, micro_stop_rate_per_hour=0, breakdown_rate_per_hour=0)


def two_plcs(*, start_a: int = 1_000, start_b: int = 7_000_000, update_s: float | None = None,
             takt_s: float = 1.0, type_: str = "uint32") -> SimConfig:
    """One line's counter on each of two Modbus PLCs (the line can move from one to the other)."""
    def plc(pid: str, line: str, start: int) -> ModbusPlcConfig:
        return ModbusPlcConfig(id=pid, lines=(SimLineConfig(
            id=line, takt_s=takt_s, production=STEADY, counter_update_s=update_s,
            counter=ModbusCounterTag(address=100, type=type_, start=start)),))  # type: ignore[arg-type]
    return SimConfig(plcs=(plc("plc-a", "line-a", start_a), plc("plc-b", "line-b", start_b)))


def one_line_config(tmp_path: Path, broker_url: str, sims: Any, *, plc: str = "plc-a",
                    interval_s: int = 1, target: float = 1800, max_rate: float | None = None,
                    store: str = "state.db", type_: str = "uint32") -> Config:
    """One line, ``kei``, counting on ``plc`` (of :func:`two_plcs`)."""
    line: dict[str, Any] = {"id": "kei", "product": "Sakura", "target_per_hour": target,
                            "counter": {"source": plc, "address": 100, "type": type_}}
    if max_rate is not None:
        line["max_rate_per_hour"] = max_rate
    return Config.model_validate({
        "site": "test", "timezone": "Asia/Tokyo",
        "mqtt": {"url": broker_url, "topic_root": ROOT_TOPIC, "client_id": f"agent-{id(sims):x}", "qos": 1},
        "publish": {"interval_s": interval_s, "status_interval_s": 5},
        "storage": {"path": str(tmp_path / store), "max_mb": 16},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "00:00", "end": "12:00", "days": ALL_DAYS},
                   {"name": "b", "start": "12:00", "end": "00:00", "days": ALL_DAYS}],
        "sources": [{"id": p, "kind": "modbus", "host": "127.0.0.1", "port": sims.plcs[p].port,
                     "poll_interval_s": 0.2, "timeout_s": 0.2, "backoff_max_s": 1}
                    for p in ("plc-a", "plc-b")],
        "lines": [line],
    })


class Run:
    """One agent run on a config: started, then stopped cleanly (SIGTERM's path)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stop = asyncio.Event()
        self.agent = Agent(cfg, config_sha256="0" * 64)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Run:
        self.task = asyncio.create_task(self.agent.run(self.stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout=15)


async def windows_after(sub: Any, n: int, *, within: float = 15.0,
                        where: Callable[[dict[str, Any]], bool] = lambda p: True) -> None:
    """Wait until ``n`` more distinct windows of the line (matching ``where``) have arrived."""
    def count() -> int:
        return sum(1 for p in Windows(sub.messages).windows("kei") if where(p))
    target = count() + n
    await wait_until(lambda: count() >= target, within, f"{n} more window(s)")


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    # JSON is YAML 1.2
    path.write_text(json.dumps(data, indent=2))
    return path


class Windows:
    """Deduplicated window outputs per line (by epoch and seq) from a subscriber's messages."""

    def __init__(self, messages: list[Any]) -> None:
        self.by_line: dict[str, dict[tuple[int, int], dict[str, Any]]] = {}
        self.conflicts: list[tuple[str, int, int]] = []
        self.plant: dict[tuple[int, int], dict[str, Any]] = {}
        for m in messages:
            if m.topic.endswith("/output") and "/lines/" in m.topic:
                p = m.json()
                seen = self.by_line.setdefault(p["line"], {})
                key = (p["epoch"], p["seq"])
                old = seen.get(key)
                if old is not None and _strip(old) != _strip(p):
                    self.conflicts.append((p["line"], *key))
                seen.setdefault(key, p)
            elif m.topic.endswith("/plant/output"):
                p = m.json()
                self.plant.setdefault((p["epoch"], p["seq"]), p)

    def units(self, line: str) -> int:
        return sum(p["units"] for p in self.by_line.get(line, {}).values())

    def windows(self, line: str) -> list[dict[str, Any]]:
        """The line's distinct windows in time order."""
        return sorted(self.by_line.get(line, {}).values(), key=lambda p: p["window_start"])

    def seqs(self, line: str) -> list[int]:
        return [seq for _, seq in sorted(self.by_line.get(line, {}))]

    def epochs(self, line: str) -> list[int]:
        return sorted({epoch for epoch, _ in self.by_line.get(line, {})})

    def contiguous(self, line: str) -> bool:
        """Within every epoch, seq runs 1, 2, 3, ... without a hole."""
        keys = self.by_line.get(line, {})
        for epoch in self.epochs(line):
            s = sorted(seq for e, seq in keys if e == epoch)
            if s != list(range(1, len(s) + 1)):
                return False
        return True

    def tiles(self, line: str) -> bool:
        """Each window starts where the previous one ended: no overlap, no hole."""
        w = self.windows(line)
        return all(a["window_end"] == b["window_start"] for a, b in itertools.pairwise(w))

    def events(self, line: str) -> set[str]:
        return {e for p in self.by_line.get(line, {}).values() for e in p["events"]}


def _strip(p: dict[str, Any]) -> dict[str, Any]:
    """A window's identity without the delivery flag (a resend later may say historical)."""
    return {k: v for k, v in p.items() if k != "historical"}

__all__ = ["ROOT_TOPIC", "Run", "Windows", "agent_config_dict", "one_line_config", "sim_config",
           "two_plcs", "wait_until", "windows_after", "write_yaml"]
