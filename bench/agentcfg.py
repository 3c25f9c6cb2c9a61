"""The agent's configuration for a farm: one Modbus line per PLC, OPC UA lines in subscribe mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.plcs import TAGS_PER_PLC

__all__ = ["ALL_DAYS", "TOPIC_ROOT", "agent_config", "write_config"]

TOPIC_ROOT = "bench/agent"
ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
#: registers 3..30: the 28 tags besides the counter (0-1) and the state (2)
OTHER_TAGS = range(3, 3 + TAGS_PER_PLC - 2)


def agent_config(*, modbus_ports: dict[str, int], opcua: dict[str, Any] | None, broker_url: str,
                 state_db: Path, interval_s: int = 1, max_mb: float = 1024) -> dict[str, Any]:
    """A config polling every PLC at 1 Hz and publishing ``interval_s`` windows (QoS 1)."""
    sources: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    for line, port in sorted(modbus_ports.items()):
        src = f"plc-{line}"
        sources.append({"id": src, "kind": "modbus", "host": "127.0.0.1", "port": port,
                        "poll_interval_s": 1, "timeout_s": 1, "backoff_max_s": 5})
        lines.append({
            "id": line, "product": "Sakura", "target_per_hour": 1800,
            "counter": {"source": src, "address": 0, "type": "uint32"},
            "state": {"source": src, "address": 2, "type": "uint16"},
            "tags": {f"v{a:02d}": {"source": src, "address": a, "type": "uint16"} for a in OTHER_TAGS},
        })
    if opcua is not None:
        sources.append({"id": "plc-ua", "kind": "opcua", "endpoint": opcua["endpoint"], "mode": "subscribe",
                        "poll_interval_s": 1, "timeout_s": 4, "backoff_max_s": 5})
        for i, line in enumerate(opcua["lines"]):
            lines.append({"id": line, "product": "Rogue", "target_per_hour": 1800,
                          "counter": {"source": "plc-ua", "node": f"ns=2;s=L{i:04d}.GoodCount"},
                          "state": {"source": "plc-ua", "node": f"ns=2;s=L{i:04d}.State"}})
    return {
        "site": "bench",
        "timezone": "UTC",
        "mqtt": {"url": broker_url, "topic_root": TOPIC_ROOT, "client_id": "bench-agent", "qos": 1},
        "publish": {"interval_s": interval_s, "status_interval_s": 60},
        "storage": {"path": str(state_db), "max_mb": max_mb},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "00:00", "end": "12:00", "days": ALL_DAYS},
                   {"name": "b", "start": "12:00", "end": "00:00", "days": ALL_DAYS}],
        "sources": sources,
        "lines": lines,
    }


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    """Write the config as JSON (which is YAML 1.2)."""
    path.write_text(json.dumps(cfg, indent=1))
    return path
