"""The roll-up's test rig: configs, replicas (in process or as processes), a window publisher,
and queries of the database. Waiting is always a poll with a deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from agent.rollup.config import RollupConfig
from agent.rollup.database import Database
from agent.rollup.service import RollupService
from tests.agentrig import write_yaml

__all__ = ["ALL_DAYS", "InProcessReplica", "ReplicaProcess", "WindowPublisher", "prepare_site", "query",
           "rollup_config", "write_yaml"]

ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
SITE_ROOT = "test/site"


def rollup_config(broker_url: str, db_url: str, gateways: dict[str, Sequence[str]], *, interval_s: int = 1,
                  grace_s: float = 2.0, **sections: Any) -> dict[str, Any]:
    """A roll-up config: gateway ``gw`` publishes under ``test/site/<gw>``; fast ticks for tests."""
    cfg: dict[str, Any] = {
        "site": "test", "timezone": "Asia/Tokyo",
        "mqtt": {"url": broker_url, "topic_root": SITE_ROOT, "client_id": "rollup"},
        "database": {"url": db_url, "pool_size": 3, "connect_timeout_s": 5},
        "publish": {"interval_s": interval_s, "grace_s": grace_s, "status_interval_s": 5},
        "ingest": {"batch_delay_s": 0.01, "drain_idle_s": 0.5, "session_expiry_s": 3600},
        "leadership": {"lock_poll_s": 0.2, "tick_s": 0.05, "adopt_interval_s": 0.5},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "00:00", "end": "12:00", "days": ALL_DAYS},
                   {"name": "b", "start": "12:00", "end": "00:00", "days": ALL_DAYS}],
        "gateways": [{"id": gw, "topic_root": f"{SITE_ROOT}/{gw}", "lines": list(lines)}
                     for gw, lines in gateways.items()],
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


async def prepare_site(cfg: dict[str, Any], *, back_s: int) -> datetime:
    """Migrate the database and create the site with its first window ``back_s`` ago (so a
    test's windows can all be in the past); returns that origin."""
    rc = RollupConfig.model_validate(cfg)
    db = Database(rc.database, application_name="test")
    assert await db.open()
    try:
        await db.migrate()
        interval = rc.publish.interval_s
        start = datetime.now(UTC) - timedelta(seconds=back_s)
        origin = start - timedelta(seconds=int(start.timestamp()) % interval, microseconds=start.microsecond)
        site = await db.site(rc.site, interval_s=interval, origin=origin)
        return site.origin
    finally:
        await db.close()


class InProcessReplica:
    """A replica on the test's event loop: ``async with InProcessReplica(cfg, "a") as r``."""

    def __init__(self, cfg: dict[str, Any] | RollupConfig, replica: str) -> None:
        self.cfg = cfg if isinstance(cfg, RollupConfig) else RollupConfig.model_validate(cfg)
        self.service = RollupService(self.cfg, replica=replica)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> InProcessReplica:
        self.task = asyncio.create_task(self.service.run(self.stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, timeout=20)

    @property
    def leading(self) -> bool:
        return bool(self.service.leader and self.service.leader.is_leader)


class ReplicaProcess:
    """``plantfloor rollup CFG --replica NAME`` as a child process (so it can be killed -9)."""

    def __init__(self, config: Path, replica: str, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.replica = replica
        self.log_path = log_dir / f"rollup-{replica}.log"
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "rollup", str(config), "--replica",
                                          replica], stdout=log, stderr=log, env={**os.environ, **(env or {})})
        finally:
            log.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, within: float) -> int:
        deadline = time.monotonic() + within
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"replica {self.replica} did not exit within {within} s:\n{self.log()[-2000:]}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ensure_stopped(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()


class WindowPublisher:
    """A QoS 1 MQTT 5 publisher on its own network thread; ``publish`` waits for the PUBACK."""

    def __init__(self, host: str, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(0)
        self._connected = threading.Event()
        self.client.on_connect = lambda *_a: self._connected.set()
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("the test publisher could not connect")

    def reaches_a_subscriber(self, topic: str) -> bool:
        """Publish a probe and tell whether the broker had a subscriber for it (its PUBACK
        is not 0x10 "no matching subscribers")."""
        reasons: list[int] = []
        self.client.on_publish = lambda _c, _u, _mid, reason, _p: reasons.append(int(reason.value))
        try:
            self.client.publish(topic, b"probe", qos=1).wait_for_publish(10)
        finally:
            self.client.on_publish = None
        return bool(reasons) and reasons[0] < 0x10

    def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def query(url: str, text: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of one statement, on a connection of its own."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(text, params)  # type: ignore[arg-type]
        return list(await cur.fetchall()) if cur.description is not None else []
