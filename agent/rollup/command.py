"""``plantfloor rollup ROLLUPCONFIG [--replica NAME] [--broker URL] [--check [--connect]]``.

Without ``--check`` it runs one replica in the foreground (systemd runs exactly this);
SIGTERM/SIGINT stop it cleanly (exit 0). ``--check`` validates the file and prints what
the replica would do; ``--connect`` also reaches the database and the broker once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from agent.contract.errors import ConfigError, PlantfloorError
from agent.core.calendar import ShiftCalendar
from agent.outputs.mqtt.loop import tls_context
from agent.rollup import sql
from agent.rollup.config import RollupConfig, load_rollup_config, replica_name
from agent.rollup.migrate import migrations
from agent.rollup.service import RollupService
from agent.runtime.logconfig import configure_logging

__all__ = ["rollup_command", "summary"]

RunUntilSignal = Callable[..., int]


def rollup_command(config: Path, *, replica: str | None, broker: str | None, check: bool, connect: bool,
                   debug: bool, log_format: Literal["text", "json"], run_until_signal: RunUntilSignal) -> int:
    """The command's body; ``run_until_signal`` is the CLI's signal-handling runner."""
    cfg, _raw = load_rollup_config(config)
    if broker is not None:
        cfg = _with_broker(cfg, broker)
    name = replica_name(cfg, replica)
    if check:
        print(summary(cfg, name))
        if connect:
            _secrets(cfg)
            print(asyncio.run(_probe(cfg)))
        return 0
    secrets = _secrets(cfg)
    configure_logging(fmt=log_format, level=logging.DEBUG if debug else logging.INFO, secrets=secrets)
    stop = asyncio.Event()
    service = RollupService(cfg, replica=name)

    def main() -> Awaitable[None]:
        return service.run(stop)

    return run_until_signal(main, stop=stop)


def summary(cfg: RollupConfig, replica: str) -> str:
    """What a replica of this config does, in a few lines."""
    cal = ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)
    year = datetime.now(UTC).year
    planned_h = cal.year_planned_seconds(year) / 3600
    out = [
        f"site {cfg.site} ({cfg.timezone}): replica {replica}, MQTT client id {cfg.client_id(replica)}",
        f"database {_where(cfg.database.url)}: pool of {cfg.database.pool_size}, schema version "
        f"{migrations()[-1].version}",
        f"broker {cfg.mqtt.url}: shared subscription group {cfg.share_group}",
        f"publishes {cfg.topic_root}/plant/output (leader), {cfg.topic_root}/rollup/{replica}/status and "
        f"{cfg.topic_root}/rollup/ack/<gateway>",
        f"site window {cfg.publish.interval_s} s, grace {cfg.publish.grace_s:g} s for lines that are late",
        f"plan: capacity {cfg.plant.capacity_per_year:,} a year x {cfg.plant.planned_utilization:g}; "
        f"{planned_h:,.1f} planned hours in {year}",
        "gateways:",
    ]
    for gw in cfg.gateways:
        out.append(f"  {gw.id:<16} {gw.topic_root}/lines/+/output  lines: {', '.join(gw.lines)}")
    return "\n".join(out)


async def _probe(cfg: RollupConfig) -> str:
    """Reach the database and the broker once; raise a one-sentence error when either fails."""
    kwargs: dict[str, Any] = {"connect_timeout": max(1, round(cfg.database.connect_timeout_s))}
    password = cfg.database.password()
    if password is not None:
        kwargs["password"] = password
    try:
        async with await psycopg.AsyncConnection.connect(cfg.database.url, autocommit=True, **kwargs) as conn:
            cur = await conn.execute(sql.SERVER_VERSION)
            row = await cur.fetchone()
            cur = await conn.execute(sql.HAS_TABLE, {"table": "plantfloor.schema_migration"})
            has = await cur.fetchone()
            version = "none yet (created at the first start)"
            if has is not None and has[0]:
                cur = await conn.execute(sql.SCHEMA_VERSION)
                got = await cur.fetchone()
                version = str(got[0]) if got is not None else "0"
    except psycopg.Error as exc:
        raise PlantfloorError(f"database {_where(cfg.database.url)}: {' '.join(str(exc).split())}") from exc
    db_line = f"database: PostgreSQL {row[0] if row else '?'}, plantfloor schema {version}"
    await asyncio.to_thread(_mqtt_once, cfg)
    return f"{db_line}\nbroker: {cfg.mqtt.url} accepted an MQTT 5 connection"


def _mqtt_once(cfg: RollupConfig) -> None:
    """Blocking (run in a thread): one MQTT 5 connection, then a clean disconnect."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{cfg.client_id('check')}-{os.getpid()}",
                         protocol=mqtt.MQTTv5)
    if cfg.mqtt.username is not None:
        client.username_pw_set(cfg.mqtt.username, cfg.mqtt.password())
    if cfg.mqtt.uses_tls:
        client.tls_set_context(tls_context(cfg.mqtt))
    try:
        client.connect(cfg.mqtt.host, cfg.mqtt.port, keepalive=10)
    except OSError as exc:
        raise PlantfloorError(f"broker {cfg.mqtt.url}: {exc.strerror or exc}") from exc
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not client.is_connected():
            raise PlantfloorError(f"broker {cfg.mqtt.url} did not accept the connection within 10 s")
    finally:
        client.disconnect()
        client.loop_stop()


def _with_broker(cfg: RollupConfig, url: str) -> RollupConfig:
    try:
        mqtt_cfg = type(cfg.mqtt).model_validate({**cfg.mqtt.model_dump(exclude_unset=True), "url": url})
    except ValidationError as exc:
        reason = str(exc.errors(include_url=False)[0].get("msg", "invalid")).removeprefix("Value error, ")
        raise ConfigError(reason, key="--broker") from None
    return cfg.model_copy(update={"mqtt": mqtt_cfg})


def _secrets(cfg: RollupConfig) -> list[str]:
    """The passwords a replica uses, for the log's redaction; an unreadable file is exit 2."""
    found: list[str] = []
    for key, read in (("mqtt.password_file", cfg.mqtt.password), ("database.password_file", cfg.database.password)):
        try:
            value = read()
        except OSError as exc:
            raise ConfigError(f"cannot read the password file ({exc.strerror})", key=key) from exc
        if value:
            found.append(value)
    found += [os.environ[v] for v in ("PLANTFLOOR_MQTT_PASSWORD", "PGPASSWORD") if os.environ.get(v)]
    return found


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
