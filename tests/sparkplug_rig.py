"""Helpers of the Sparkplug tests: configs, the test host application, waiting on a node."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import Config, SparkplugConfig
from tests.agentrig import one_line_config
from tests.sparkplug_wire import Node, command
from tests.waiting import wait_until

GROUP = "plant"
NODE = "gw-1"
HOST = "scada"


def sparkplug_config(tmp_path: Path, broker_url: str, sims: Any, *, output: str = "sparkplug",
                     host: str | None = None, version: str = "5", **kw: Any) -> Config:
    """:func:`one_line_config` (line ``kei`` on ``plc-a``) as a Sparkplug edge node."""
    cfg = one_line_config(tmp_path, broker_url, sims, max_rate=3_600_000, **kw)
    return cfg.model_copy(update={
        "output": output, "mqtt": cfg.mqtt.model_copy(update={"version": version}),
        "sparkplug": SparkplugConfig(group_id=GROUP, edge_node_id=NODE, primary_host_id=host)})


def node(sub: Any) -> Node:
    return Node.read(GROUP, NODE, sub.messages)


class Host:
    """The test's host application: publishes its STATE and commands (MQTT 5, QoS 1)."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"host-{id(self):x}",
                                  protocol=mqtt.MQTTv5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def state(self, online: bool, ts_ms: int | None = None) -> int:
        ts = ts_ms if ts_ms is not None else int(time.time() * 1000)
        self._publish(f"spBv1.0/STATE/{HOST}", json.dumps({"online": online, "timestamp": ts}).encode(),
                      retain=True)
        return ts

    def rebirth(self) -> None:
        self._publish(f"spBv1.0/{GROUP}/NCMD/{NODE}", command(
            [{"name": "Node Control/Rebirth", "datatype": 11, "boolean_value": True}],
            int(time.time() * 1000)))

    def ncmd(self, metrics: list[dict[str, Any]]) -> None:
        self._publish(f"spBv1.0/{GROUP}/NCMD/{NODE}", command(metrics, int(time.time() * 1000)))

    def dcmd(self, device: str, metrics: list[dict[str, Any]]) -> None:
        self._publish(f"spBv1.0/{GROUP}/DCMD/{NODE}/{device}", command(metrics, int(time.time() * 1000)))

    async def wait_connected(self) -> None:
        """After a broker restart: paho's thread reconnects by itself."""
        await wait_until(self.client.is_connected, 20, "the host application reconnected")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def wait_node(sub: Any, pred: Any, within: float = 20.0, what: str = "node condition") -> Node:
    """Wait until ``pred(node)`` holds; return the node's messages then."""
    await wait_until(lambda: bool(pred(node(sub))), within, what)
    return node(sub)


def births(n: Node) -> list[int]:
    """Indexes of the NBIRTHs in the node's messages."""
    return [i for i, m in enumerate(n.messages) if m.verb == "NBIRTH"]


def sessions(n: Node) -> list[list[Any]]:
    """The messages from each NBIRTH up to the next NBIRTH or NDEATH."""
    out: list[list[Any]] = []
    current: list[Any] | None = None
    for m in n.messages:
        if m.verb == "NBIRTH":
            current = [m]
            out.append(current)
        elif m.verb == "NDEATH":
            current = None
        elif current is not None:
            current.append(m)
    return out
