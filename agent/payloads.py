"""MQTT payload models: the contract with subscribers (``plantfloor schema payloads``).

Every payload carries ``schema``; timestamps are RFC 3339 in UTC with milliseconds.
Adding a field is compatible; renaming or removing one bumps the schema version.
"""

from __future__ import annotations

import datetime as dt
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

__all__ = [
    "OUTPUT_SCHEMA",
    "PLANT_SCHEMA",
    "STATE_SCHEMA",
    "STATUS_SCHEMA",
    "DayTotals",
    "LineOutput",
    "LineStatePayload",
    "PlantOutput",
    "ShiftTotals",
    "SourceInfo",
    "StateSeconds",
    "StatusPayload",
    "encode",
    "payload_schemas",
    "rfc3339",
]

OUTPUT_SCHEMA: Final = "plantfloor.output/1"
STATE_SCHEMA: Final = "plantfloor.state/1"
STATUS_SCHEMA: Final = "plantfloor.status/1"
PLANT_SCHEMA: Final = "plantfloor.plant/1"

Event = Literal[
    "rollover", "counter_reset", "implausible_jump", "source_unreachable", "gap_recovered",
    "invalid_value", "bad_quality", "uncertain_quality", "rebaselined", "clock_step", "agent_offline",
    "new_epoch",
]
EPOCH_DESCRIPTION = ("the state store's lifetime: changes only when the store is created afresh "
                     "(first start, a lost, corrupt or replaced file); compare for equality. "
                     "A window is identified by (line, epoch, seq)")


def rfc3339(ts: datetime) -> str:
    """UTC, milliseconds, ``Z``: 2028-04-03T06:31:00.000Z."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[datetime, PlainSerializer(rfc3339, return_type=str, when_used="json"),
                      Field(description="RFC 3339, UTC, milliseconds")]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StateSeconds(_Payload):
    running: float = Field(0.0, ge=0)
    stopped: float = Field(0.0, ge=0)
    faulted: float = Field(0.0, ge=0)
    unknown: float = Field(0.0, ge=0)


class ShiftTotals(_Payload):
    name: str | None = Field(..., description="shift name; null outside every shift")
    units: int = Field(..., ge=0, description="units built so far in this shift (or off-shift period)")
    target: float = Field(..., ge=0, description="planned units for the whole shift")
    projected: float = Field(..., ge=0, description="units + current rate x remaining planned time")
    downtime_s: float = Field(..., ge=0, description="stopped + faulted seconds so far in this shift")


class DayTotals(_Payload):
    date: dt.date = Field(..., description="production day: the date its first shift starts, in the site time zone")
    units: int = Field(..., ge=0)
    target: float = Field(..., ge=0)


class LineOutput(_Payload):
    """``R/lines/<line>/output``: one per line per window."""

    schema_: Literal["plantfloor.output/1"] = Field(OUTPUT_SCHEMA, alias="schema")
    site: str
    line: str
    product: str
    epoch: int = Field(..., ge=0, description=EPOCH_DESCRIPTION)
    seq: int = Field(..., ge=1, description="per line within an epoch: starts at 1, +1 per window, survives restarts")
    window_start: Timestamp
    window_end: Timestamp
    units: int = Field(..., ge=0, description="good units counted in this window")
    rate_per_hour: float = Field(..., ge=0, description="units / window length, per hour")
    target_per_hour: float = Field(..., ge=0, description="planned rate; 0 in breaks and outside shifts")
    attainment: float | None = Field(..., description="units / target units of the window; null when the target is 0")
    shift: ShiftTotals
    day: DayTotals
    state_seconds: StateSeconds
    quality: Literal["good", "uncertain", "bad"]
    events: list[Event]
    counter: int | None = Field(None, description="the counter baseline at the window's end: the last good raw value read so far (a signed counter as its two's complement)")
    tags: dict[str, int | float | None] = Field(
        default_factory=dict, description="the line's extra process values: last good value read in the window, null if none")
    historical: bool = Field(False, description="sent later than one window after window_end")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PlantOutput(_Payload):
    """``R/plant/output``: the plant, once per window."""

    schema_: Literal["plantfloor.plant/1"] = Field(PLANT_SCHEMA, alias="schema")
    site: str
    epoch: int = Field(..., ge=0, description=EPOCH_DESCRIPTION)
    seq: int = Field(..., ge=1, description="within an epoch: starts at 1, +1 per window")
    window_start: Timestamp
    window_end: Timestamp
    units: int = Field(..., ge=0)
    units_today: int = Field(..., ge=0)
    units_year_to_date: int = Field(..., ge=0)
    target_today: float = Field(..., ge=0)
    capacity_per_year: int
    planned_utilization: float
    utilization: float = Field(..., description="units_year_to_date / (capacity_per_year pro rata to the planned time counted this year)")
    projected_year: float = Field(..., description="units_year_to_date + the year-to-date rate x the planned time left this year")
    year_counted_since: Timestamp | None = Field(None, description="start of the first window counted this production year")
    lines: dict[str, int] = Field(..., description="units per line in this window")
    quality: Literal["good", "uncertain", "bad"]
    historical: bool = False

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SourceInfo(_Payload):
    id: str = Field(..., description="the source of the line's counter")
    connected: bool
    last_ok: Timestamp | None = Field(..., description="last poll with a good reading")
    error: str | None = Field(..., description="why the source or a point of the line is not good, e.g. 'modbus exception 2 (illegal data address)' or 'BadSensorFailure'")
    code: int | None = Field(None, description="the Modbus exception code or OPC UA StatusCode of that error")


class LineStatePayload(_Payload):
    """``R/lines/<line>/state``: retained, on change."""

    schema_: Literal["plantfloor.state/1"] = Field(STATE_SCHEMA, alias="schema")
    line: str
    state: Literal["running", "stopped", "faulted", "unknown"]
    source: SourceInfo
    ts: Timestamp

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Alarm(_Payload):
    kind: str = Field(..., description="publish_refused, outbox_full, disk_full, store_corrupt, ...")
    message: str
    since: Timestamp


class StatusPayload(_Payload):
    """``R/status``: retained birth, last will, clean shutdown, and every status interval."""

    schema_: Literal["plantfloor.status/1"] = Field(STATUS_SCHEMA, alias="schema")
    state: Literal["online", "offline"]
    agent: str
    version: str
    started_at: Timestamp | None
    config_sha256: str
    epoch: int | None = Field(None, description=EPOCH_DESCRIPTION + "; null before the store is open")
    backlog: int = Field(..., ge=0, description="window messages waiting in the outbox (one per line and one for the plant per window)")
    dropped: int = Field(..., ge=0, description="window messages dropped since start, oldest first (outbox full)")
    alarms: list[Alarm] = Field(default_factory=list)
    ts: Timestamp

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def encode(model: BaseModel) -> bytes:
    """Compact UTF-8 JSON, keys by alias (``schema``)."""
    return model.model_dump_json(by_alias=True).encode()


def payload_schemas() -> dict[str, Any]:
    """JSON Schema of every payload, keyed by topic pattern."""
    return {
        "R/status": StatusPayload.model_json_schema(by_alias=True),
        "R/lines/<line>/output": LineOutput.model_json_schema(by_alias=True),
        "R/lines/<line>/state": LineStatePayload.model_json_schema(by_alias=True),
        "R/plant/output": PlantOutput.model_json_schema(by_alias=True),
    }


def dumps_schemas() -> str:
    return json.dumps(payload_schemas(), indent=2)
