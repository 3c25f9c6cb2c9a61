"""The roll-up benchmark's load: a site config, synthetic line windows, a QoS 1 publisher.

Windows are what agents publish (``agent.contract.payloads.LineOutput``), encoded once up front so
that generating them costs nothing during a measurement.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.contract.payloads import DayTotals, LineOutput, ShiftTotals, StateSeconds, encode

__all__ = ["GATEWAYS", "Publisher", "line_ids", "site_config", "window"]

GATEWAYS = 3
ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
SITE_ROOT = "bench/site"


def line_ids(lines: int) -> list[tuple[str, str]]:
    """``lines`` lines spread over the gateways: (gateway, line)."""
    return [(f"gw{i % GATEWAYS + 1}", f"line-{i:04d}") for i in range(lines)]


def site_config(path: Path, *, broker_url: str, db_url: str, lines: int, grace_s: float,
                adopt_interval_s: float) -> Path:
    """A roll-up config (JSON is YAML 1.2) with the defaults of config/rollup.yaml, 1 s windows."""
    gateways: dict[str, list[str]] = {}
    for gw, line in line_ids(lines):
        gateways.setdefault(gw, []).append(line)
    data: dict[str, Any] = {
        "site": "bench", "timezone": "Asia/Tokyo",
        "mqtt": {"url": broker_url, "topic_root": SITE_ROOT, "client_id": "bench-rollup"},
        "database": {"url": db_url},
        "publish": {"interval_s": 1, "grace_s": grace_s, "status_interval_s": 5},
        "leadership": {"adopt_interval_s": adopt_interval_s},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "00:00", "end": "12:00", "days": ALL_DAYS},
                   {"name": "b", "start": "12:00", "end": "00:00", "days": ALL_DAYS}],
        "gateways": [{"id": gw, "topic_root": f"{SITE_ROOT}/{gw}", "lines": ls} for gw, ls in gateways.items()],
    }
    path.write_text(json.dumps(data, indent=1))
    return path


def window(gw: str, line: str, seq: int, start: datetime, units: int) -> tuple[str, bytes]:
    """The topic and JSON of one 1 s line window."""
    end = start + timedelta(seconds=1)
    payload = encode(LineOutput(
        site="bench", line=line, product="P", epoch=1_000_000 + int(line[-4:]), seq=seq, window_start=start,
        window_end=end, units=units, rate_per_hour=units * 3600.0, target_per_hour=1.0, attainment=units / 1.0,
        shift=ShiftTotals(name="a", units=units, target=43200.0, projected=0.0, downtime_s=0.0),
        day=DayTotals(date=start.date(), units=units, target=86400.0),
        state_seconds=StateSeconds(running=1.0), quality="good", events=[]))
    return f"{SITE_ROOT}/{gw}/lines/{line}/output", payload


class Publisher:
    """A paho QoS 1 publisher on its own network thread."""

    def __init__(self, host: str, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-gateways", protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(0)
        self._up = threading.Event()
        self.client.on_connect = lambda *_a: self._up.set()
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._up.wait(10):
            raise RuntimeError("the benchmark's publisher could not connect")

    def send(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish without waiting for the acknowledgements."""
        for topic, payload in messages:
            self.client.publish(topic, payload, qos=1)

    def send_acked(self, messages: Sequence[tuple[str, bytes]], chunk: int = 10_000) -> float:
        """Publish and wait for every PUBACK (in chunks: paho's message ids are 16-bit); seconds taken."""
        t0 = time.monotonic()
        for i in range(0, len(messages), chunk):
            infos = [self.client.publish(t, p, qos=1) for t, p in messages[i:i + chunk]]
            for info in infos:
                info.wait_for_publish(60)
        return time.monotonic() - t0

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
