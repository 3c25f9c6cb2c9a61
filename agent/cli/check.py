"""``plantfloor check``: validate a configuration, print its summary, optionally connect once."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

from agent.config import (
    DEFAULT_RATE_BOUND_FACTOR,
    Config,
    LineConfig,
    ModbusSource,
    ModbusTag,
    OpcUaSource,
    OpcUaTag,
)
from agent.config.load import load_config, with_broker
from agent.contract.errors import PlantfloorError
from agent.core.calendar import ShiftCalendar
from agent.outputs.sparkplug import checks as sparkplug_checks

__all__ = ["check_command", "summary", "warnings"]


def _tag(tag: ModbusTag | OpcUaTag | None, cfg: Config) -> str:
    if tag is None:
        return "none"
    if isinstance(tag, OpcUaTag):
        roll = f", rollover {tag.rollover:,}" if tag.rollover else ""
        return f"{tag.source} {tag.node}{roll}"
    src = cfg.source(tag.source)
    unit = tag.unit_id if tag.unit_id is not None else getattr(src, "unit_id", 1)
    roll = f", rollover {tag.rollover:,}" if tag.rollover else ""
    return f"{tag.source} unit {unit} {tag.table} {tag.address} {tag.type} {tag.word_order}{roll}"


def _source_line(src: ModbusSource | OpcUaSource) -> str:
    if isinstance(src, ModbusSource):
        return (f"{src.id:<14} modbus  {src.host}:{src.port} unit {src.unit_id}, "
                f"poll {src.poll_interval_s:g} s, timeout {src.timeout_s:g} s")
    sec = f"{src.security.policy}/{src.security.mode}" if src.security else "security None"
    return f"{src.id:<14} opcua   {src.endpoint} ({src.mode}, {src.poll_interval_s:g} s, {sec})"


def summary(cfg: Config, *, year: int | None = None) -> str:
    """The human summary: sources, lines, tags, targets per hour, shift, day and year."""
    year = year or datetime.now(cfg.tz).year
    cal = ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)
    year_h = cal.year_planned_seconds(year) / 3600
    plan = cfg.plant.capacity_per_year * cfg.plant.planned_utilization
    out = [
        f"site {cfg.site} ({cfg.timezone}); windows of {cfg.publish.interval_s} s; "
        f"broker {cfg.mqtt.url} (MQTT {cfg.mqtt.version}), topics {cfg.topic_root}/...",
        f"plant: capacity {cfg.plant.capacity_per_year:,} /year x planned utilisation "
        f"{cfg.plant.planned_utilization:.2f} = target {plan:,.0f} /year",
        "shifts:",
    ]
    for s in cfg.shifts:
        brk = ", ".join(f"{b.start}-{b.end}" for b in s.breaks) or "no breaks"
        out.append(f"  {s.name:<10} {s.start}-{s.end} on {','.join(s.days)}; breaks {brk}; "
                   f"{s.planned_minutes()} planned min")
    out.append(f"  planned production time in {year}: {year_h:,.1f} h "
               f"({len(cfg.plant.holidays)} plant holidays configured)")
    out.append("sources:")
    out.extend(f"  {_source_line(s)}" for s in cfg.sources)
    out.append("lines:")
    total_year = 0.0
    for line in cfg.lines:
        line_year = cal.year_planned_share_seconds(year, line.plan_share) / 3600 * line.rate_target
        out.extend(_line_summary(cfg, line, line_year, year))
        total_year += line_year
    out.extend(_plant_plan(cfg, total_year, year))
    node = sparkplug_checks.describe(cfg)
    if node is not None:
        out.append(node)
    return "\n".join(out)


def _plant_plan(cfg: Config, total_year: float, year: int) -> list[str]:
    """The lines' year plans summed against the plant's plan, with the gap named."""
    plant = cfg.plant
    plan = plant.capacity_per_year * plant.planned_utilization
    share = total_year / plan * 100 if plan else 0.0
    of = (f"{plan:,.0f} ({plant.planned_utilization * 100:g} % of "
          f"{plant.capacity_per_year:,})")
    gap = total_year - plan
    if abs(gap) < 0.5:
        verdict = "on the plan"
    elif gap < 0:
        verdict = f"short of the plan by {-gap:,.0f} units ({share:.1f} % of it)"
    else:
        verdict = f"over the plan by {gap:,.0f} units ({share:.1f} % of it)"
    return [f"plant plan for {year}: the lines plan {total_year:,.0f} against {of}: {verdict}"]


def _line_calendar(line: LineConfig) -> list[str]:
    out = []
    if line.start is not None:
        out.append(f"from {line.start}")
    if line.ramp_up:
        steps = ", ".join(f"{s.share * 100:g} % from {s.from_}" for s in line.ramp_up)
        out.append(f"ramp-up {steps}")
    out.extend(f"not planned {p.from_} to {p.to} ({p.reason})" for p in line.not_planned)
    return [f"    plan    {'; '.join(out)}"] if out else []


def _line_summary(cfg: Config, line: LineConfig, line_year: float, year: int) -> list[str]:
    rate = line.rate_target
    per_shift = ", ".join(f"{s.name} {rate * s.planned_minutes() / 60:,.1f}" for s in cfg.shifts)
    per_day = rate * sum(s.planned_minutes() for s in cfg.shifts if "wed" in s.days) / 60
    how = "max_rate_per_hour" if line.max_rate_per_hour else f"default: {DEFAULT_RATE_BOUND_FACTOR:g} x the target"
    bound = f"; plausibility bound {line.rate_bound:,.1f} /h ({how})"
    return [
        f"  {line.id:<14} {line.product}",
        f"    counter {_tag(line.counter, cfg)}",
        f"    state   {_tag(line.state, cfg)}",
        f"    target  {rate:,.1f} /h at full rate; per shift {per_shift}; per day "
        f"{per_day:,.1f}; in {year} {line_year:,.0f}{bound}",
        *_line_calendar(line),
    ]


def warnings(cfg: Config) -> list[str]:
    """What is valid but deserves a second look."""
    out: list[str] = []
    for s in cfg.sources:
        if isinstance(s, OpcUaSource) and s.security is None:
            out.append(f"source {s.id}: OPC UA security policy None (no signing, no encryption)")
    if not cfg.mqtt.uses_tls:
        out.append("mqtt: plain TCP to the broker (use mqtts:// outside a trusted network)")
    for line in cfg.lines:
        if line.state is None:
            out.append(f"line {line.id}: no state tag; time per state will read 'unknown'")
    if cfg.mqtt.version == "3.1.1":
        out.append("mqtt: version 3.1.1 cannot report a refused publish (an ACL denial is "
                   "acknowledged as success): a refused window leaves the outbox unseen; use 5")
    out.extend(sparkplug_checks.warnings(cfg))
    return out


def check_command(path: Path, *, connect: bool = False, broker: str | None = None,
                  year: int | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    loaded = load_config(path)
    cfg = with_broker(loaded.config, broker) if broker else loaded.config
    print(f"{path}: valid (sha256 {loaded.sha256[:12]})", file=out)
    print(summary(cfg, year=year), file=out)
    for w in warnings(cfg):
        print(f"warning: {w}", file=out)
    if not connect:
        return 0
    results = asyncio.run(_quietly(_connect_all(cfg)))
    failed = 0
    for name, ok, detail in results:
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", file=out)
    return 1 if failed else 0


async def _quietly(work: Awaitable[list[tuple[str, bool, str]]]) -> list[tuple[str, bool, str]]:
    """The connection attempts without their INFO logs: each endpoint's one line says it
    (warnings and, with --debug, everything still show, before the table)."""
    root = logging.getLogger()
    level = root.level
    if level > logging.DEBUG:
        root.setLevel(logging.WARNING)
    try:
        return await work
    finally:
        root.setLevel(level)


async def _connect_all(cfg: Config) -> list[tuple[str, bool, str]]:
    checks = [_check_source(cfg, s) for s in cfg.sources] + [_check_broker(cfg)]
    return list(await asyncio.gather(*checks))


def reason(exc: BaseException, *, names: Sequence[str] = (), timeout_s: float | None = None) -> str:
    """Why an endpoint failed, for its one line: the error's own sentence without the
    names the line already shows, never a raw exception text (``[Errno 2] ...``)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s" if timeout_s else "no answer in time"
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename}: no such file" if exc.filename else "a file is missing"
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror[0].lower()}{exc.strerror[1:]}"
    text = str(exc) or type(exc).__name__
    for name in names:
        for prefix in (f"source {name}: ", f"{name}: "):
            if text.startswith(prefix):
                text = text[len(prefix):]
    return text


async def _check_source(cfg: Config, src: ModbusSource | OpcUaSource) -> tuple[str, bool, str]:
    from agent.sources.base import make_source

    name = f"source {src.id}"
    where = src.endpoint if isinstance(src, OpcUaSource) else f"{src.host}:{src.port}"
    timeout = max(5.0, src.timeout_s * 3)
    try:
        source = make_source(cfg, src)
    except (PlantfloorError, OSError) as exc:
        return name, False, reason(exc, names=(src.id, where))
    connected = False
    try:
        await asyncio.wait_for(source.connect(), timeout=timeout)
        connected = True
        readings = await asyncio.wait_for(source.read(), timeout=timeout)
    except (PlantfloorError, TimeoutError, OSError) as exc:
        why = reason(exc, names=(src.id, where), timeout_s=timeout)
        if connected and "lost" in why:
            # never reached as a PLC: the endpoint took the connection, then dropped it
            why = "connected, but the connection ended before the first answer"
        return name, False, why
    finally:
        await source.close()
    bad = [r for r in readings if r.quality != "good"]
    parts = [(", ".join(f"{r.line}.{k}={v}" for k, v in r.values.items()) if r.values is not None
              else f"{r.line}.{r.role}={r.value}")
             + ("" if r.quality == "good" else f" ({r.quality}: {r.error})")
             for r in sorted(readings, key=lambda r: (r.line, r.role))]
    return name, not bad, ", ".join(parts) or "no points"


async def _check_broker(cfg: Config) -> tuple[str, bool, str]:
    from agent.outputs.mqtt.publisher import Publisher

    name = f"broker {cfg.mqtt.url}"
    try:
        password = cfg.mqtt.password()
    except OSError as exc:
        # outside systemd a credential name (password_file: mqtt-password) is not found unless
        # CREDENTIALS_DIRECTORY names the folder that holds it (docs/operations.md)
        return name, False, (f"cannot read the password file {cfg.mqtt.password_file} "
                             f"(mqtt.password_file): {exc.strerror}; outside systemd set "
                             "CREDENTIALS_DIRECTORY to the folder of the credentials")
    pub = Publisher(cfg.mqtt, client_id=f"{cfg.client_id}-check", will_topic=f"{cfg.topic_root}/check",
                    will_payload=b"", password=password, backoff_max_s=1.0)
    try:
        await pub.start()
        try:
            await asyncio.wait_for(pub.connected.wait(), timeout=5.0)
        except TimeoutError:
            return name, False, reason(Exception(pub.last_error), names=(cfg.mqtt.url,)) \
                if pub.last_error else "no connection within 5 s"
        return name, True, f"connected at {datetime.now(cfg.tz):%Y-%m-%d %H:%M:%S %Z}"
    finally:
        await pub.stop()
