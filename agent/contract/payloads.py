"""MQTT payload models: the contract with subscribers (``plantfloor schema payloads``).

Every payload carries ``schema``; timestamps are RFC 3339 in UTC with milliseconds.
Adding a field is compatible; renaming or removing one bumps the schema version.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

__all__ = [
    "OUTPUT_SCHEMA",
    "PLANT_SCHEMA",
    "SHIFT_SCHEMA",
    "STATE_SCHEMA",
    "STATUS_SCHEMA",
    "DayTotals",
    "LineOutput",
    "LinePayload",
    "LineStatePayload",
    "Loss",
    "PlantOutput",
    "ReasonTime",
    "SecondCounter",
    "ShiftRef",
    "ShiftReport",
    "ShiftTime",
    "ShiftTotals",
    "SourceInfo",
    "StateSeconds",
    "StatusPayload",
    "WindowTime",
    "encode",
    "payload_schemas",
    "rfc3339",
]

OUTPUT_SCHEMA: Final = "plantfloor.output/1"
STATE_SCHEMA: Final = "plantfloor.state/1"
STATUS_SCHEMA: Final = "plantfloor.status/1"
PLANT_SCHEMA: Final = "plantfloor.plant/1"
SHIFT_SCHEMA: Final = "plantfloor.shift/1"

Event = Literal[
    "rollover", "counter_reset", "implausible_jump", "source_unreachable", "gap_recovered",
    "invalid_value", "bad_quality", "uncertain_quality", "rebaselined", "clock_step", "agent_offline",
    "new_epoch", "clock_unsynced",
]
EPOCH_DESCRIPTION = ("the state store's lifetime: changes only when the store is created afresh "
                     "(first start, a lost, corrupt or replaced file); compare for equality. "
                     "A window is identified by (line, epoch, seq)")


@functools.lru_cache(maxsize=256)
def rfc3339(ts: datetime) -> str:
    """UTC, milliseconds, ``Z``: 2028-04-03T06:31:00.000Z.

    Cached: every line's payload of a window carries the same window start and end.
    """
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


Ratio = float | None
Category = Literal["planned", "unplanned", "idle"]


class ShiftTotals(_Payload):
    name: str | None = Field(..., description="shift name; null outside every shift")
    units: int = Field(..., ge=0, description="units built so far in this shift (or off-shift period)")
    target: float = Field(..., ge=0, description="planned units for the whole shift")
    projected: float = Field(..., ge=0, description="units + the counted rate x the planned time left in the shift; the rate is units / the planned time they were built in (since counted_since; an outage's time once the counter brought its units)")
    downtime_s: float = Field(..., ge=0, description="stopped + faulted seconds so far in this shift")
    availability: Ratio = Field(None, ge=0, description="run time / observed planned busy time so far (unobserved time is neither run time nor downtime); null while none was observed, or without a state tag")
    performance: Ratio = Field(None, ge=0, description="ideal cycle x total units / run time so far; null while the line has not run")
    quality: Ratio = Field(None, ge=0, description="good / total units so far; 1 when not measured (quality_measured false); null before the first unit")
    oee: Ratio = Field(None, ge=0, description="availability x performance x quality; null while one of them is")
    quality_measured: bool = Field(False, description="the line has a total or reject counter")
    covered_s: float = Field(0.0, ge=0, description="planned seconds of the shift so far in windows the agent observed")
    coverage: float = Field(1.0, ge=0, le=1, description="covered_s / planned seconds of the shift so far (1 while none has elapsed)")
    counted_since: Timestamp | None = Field(None, description="start of the shift's first window in the agent's books: units are counted from there, and the rate of the projection is units / planned time since then")


class DayTotals(_Payload):
    date: dt.date = Field(..., description="production day: the date its first shift starts, in the site time zone")
    units: int = Field(..., ge=0)
    target: float = Field(..., ge=0)
    availability: Ratio = Field(None, ge=0, description="as for the shift, over the production day so far")
    performance: Ratio = Field(None, ge=0, description="as for the shift, over the production day so far")
    quality: Ratio = Field(None, ge=0, description="as for the shift, over the production day so far")
    oee: Ratio = Field(None, ge=0, description="as for the shift, over the production day so far")
    covered_s: float = Field(0.0, ge=0, description="planned seconds of the production day so far in windows the agent observed")
    coverage: float = Field(1.0, ge=0, le=1, description="covered_s / planned seconds of the production day so far (1 while none has elapsed)")
    counted_since: Timestamp | None = Field(None, description="start of the production day's first window in the agent's books")


class WindowTime(_Payload):
    """The window's planned time in exact buckets: planned_s = run_s + minor_stop_s + the
    sum of down_s + unknown_s (milliseconds; docs/mqtt.md, "The time model")."""

    planned_s: float = Field(..., ge=0, description="planned production seconds of the window (all of it or none: windows never straddle a shift or break boundary)")
    run_s: float = Field(..., ge=0, description="seconds running")
    minor_stop_s: float = Field(..., ge=0, description="seconds of stops still shorter than downtime.minor_stop_s")
    down_s: dict[str, float] = Field(..., description="seconds of downtime by reason (planned stops included)")
    unknown_s: float = Field(..., ge=0, description="seconds with no known state: no state tag, an unmapped value, the source unreachable, the agent not running")
    unknown_values: dict[str, float] = Field(default_factory=dict, description="the part of unknown_s in which the state tag held a value its map does not name, by raw value")
    stops: dict[str, int] = Field(default_factory=dict, description="stops that became downtime in this window (reached downtime.minor_stop_s), by reason")
    minor_stops: int = Field(0, ge=0, description="stops that ended in this window shorter than downtime.minor_stop_s")
    reclassified_s: dict[str, float] = Field(default_factory=dict, description="minor-stop seconds of earlier windows of the same shift instance that became downtime of this reason in this window (move them in a running total)")


class SecondCounter(_Payload):
    """The line's second counter (total_counter or reject_counter) in this window."""

    role: Literal["total", "rejects"] = Field(..., description="what it counts: every unit built, or rejected units")
    units: int = Field(..., ge=0, description="what it counted in this window")
    counter: int | None = Field(None, description="its baseline at the window's end (the last good raw value)")
    quality: Literal["good", "uncertain", "bad"] = Field(..., description="as the window's quality, for this counter")
    events: list[Event] = Field(default_factory=list, description="as the window's events, for this counter")


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
    reason: str | None = Field(None, description="the line's reason at the window's end: running, a downtime reason (downtime.reasons), or unknown")
    rejects: int | None = Field(None, ge=0, description="rejected units in this window (total - units); null without a total or reject counter")
    total: int | None = Field(None, ge=0, description="every unit built in this window, good or not (units + rejects); null without a total or reject counter")
    time: WindowTime | None = Field(None, description="the window's planned time in exact buckets (run, minor stops, downtime by reason, unknown)")
    second_counter: SecondCounter | None = Field(None, description="the total or reject counter, when the line has one")
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
    utilization: float = Field(..., description="units_year_to_date / (capacity_per_year pro rata to the planned time counted this year, the opening balance's included)")
    projected_year: float = Field(..., description="units_year_to_date + the year-to-date rate (over the planned time counted, the opening balance's included) x the planned time left this year")
    year_counted_since: Timestamp | None = Field(None, description="start of the first window counted this production year")
    year_covered_s: float = Field(0.0, ge=0, description="planned seconds of the production year in windows the agent observed (some line counting)")
    year_coverage: float = Field(1.0, ge=0, le=1, description="year_covered_s / planned seconds of the production year so far")
    year_opening_units: int = Field(0, ge=0, description="units recorded by an operator as built earlier in the production year (plantfloor state opening), included in units_year_to_date: measured = units_year_to_date - year_opening_units")
    year_opening_through: dt.date | None = Field(None, description="the last production day the opening balance covers; null without one")
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
    reason: str | None = Field(None, description="running, the downtime reason the state tag names (downtime.reasons), or unknown")
    category: Category | None = Field(None, description="the reason's category: planned, unplanned or idle; null while running or unknown")
    raw: int | None = Field(None, description="the state tag's last good raw value; with reason unknown, a value its map does not name")

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
    seq: int | None = Field(None, ge=0, description="the plant seq of the last window committed to the state store when this status was built (null before the store is open): a store restored from an older backup is behind it and starts a new epoch")
    backlog: int = Field(..., ge=0, description="window messages waiting in the outbox (one per line and one for the plant per window)")
    dropped: int = Field(..., ge=0, description="window messages dropped since start, oldest first (outbox full)")
    alarms: list[Alarm] = Field(default_factory=list)
    ts: Timestamp
    site_backlog: int | None = Field(None, ge=0, description="with site_ack: line windows the broker took that the site service has not acknowledged yet (kept in the state file); null without site_ack")
    site_oldest_unacknowledged: Timestamp | None = Field(None, description="with site_ack: the window_end of the oldest of them; null when none")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ShiftRef(_Payload):
    name: str = Field(..., description="the shift's name")
    start: Timestamp
    end: Timestamp
    date: dt.date = Field(..., description="production day of the shift instance (the local date it starts)")


class ReasonTime(_Payload):
    category: Category = Field(..., description="planned stops are not part of planned busy time; unplanned and idle downtime lowers availability")
    seconds: float = Field(..., ge=0, description="seconds of downtime in this reason")
    stops: int = Field(..., ge=0, description="stops of this reason that reached downtime.minor_stop_s in this shift instance")


class ShiftTime(_Payload):
    """ISO 22400 times of a shift instance: planned_busy_s = planned_s - planned_stop_s =
    run_s + minor_stop_s + down_s + unknown_s."""

    calendar_s: float = Field(..., ge=0, description="planned production time of the whole shift instance by the calendar: the shift less its breaks")
    planned_s: float = Field(..., ge=0, description="planned production time the report accounts for: calendar_s, less the part before the agent's state store began (its first window)")
    planned_stop_s: float = Field(..., ge=0, description="downtime of planned reasons (changeover, maintenance)")
    planned_busy_s: float = Field(..., ge=0, description="planned_s - planned_stop_s")
    run_s: float = Field(..., ge=0, description="running within planned time")
    minor_stop_s: float = Field(..., ge=0, description="stops shorter than downtime.minor_stop_s (a performance loss)")
    down_s: float = Field(..., ge=0, description="downtime of unplanned and idle reasons")
    unknown_s: float = Field(..., ge=0, description="planned time with no known state (no state tag, an unmapped value, the source unreachable, the agent not running)")
    covered_s: float = Field(..., ge=0, description="planned time in windows the agent was running for")
    ideal_run_s: float = Field(..., ge=0, description="ideal cycle x total units: performance = ideal_run_s / run_s")
    fully_productive_s: float = Field(..., ge=0, description="ideal cycle x good units: planned_busy_s less every loss")


class Loss(_Payload):
    cause: str = Field(..., description="a reason, minor_stops, unknown, speed or quality")
    kind: Literal["downtime", "minor_stops", "unknown", "speed", "quality"]
    seconds: float = Field(..., description="seconds of planned busy time lost")


class ShiftReport(_Payload):
    """``R/lines/<line>/shift`` and ``R/plant/shift``: retained, when a shift instance ends."""

    schema_: Literal["plantfloor.shift/1"] = Field(SHIFT_SCHEMA, alias="schema")
    site: str
    line: str | None = Field(..., description="the line; null for the plant")
    product: str | None = Field(..., description="the line's product; null for the plant")
    lines: list[str] | None = Field(None, description="the plant: the lines it sums")
    epoch: int = Field(..., ge=0, description=EPOCH_DESCRIPTION)
    shift: ShiftRef
    units: int = Field(..., ge=0, description="good units of the shift instance")
    rejects: int | None = Field(..., ge=0, description="rejected units; null when not measured (the plant: when none of its lines measures them)")
    total: int = Field(..., ge=0, description="units + rejects (units when not measured)")
    target: float = Field(..., ge=0, description="planned units of the shift instance")
    attainment: float | None = Field(..., description="units / target; null when the target is 0")
    time: ShiftTime
    minor_stops: int = Field(..., ge=0, description="stops that ended shorter than downtime.minor_stop_s")
    downtime: dict[str, ReasonTime] = Field(..., description="downtime by reason, planned stops included")
    unknown_values: dict[str, float] = Field(default_factory=dict, description="seconds of unknown time in which the state tag held a value its map does not name, by raw value")
    ideal_cycle_s: float | None = Field(None, description="the line's ideal cycle (null for the plant)")
    availability: float | None = Field(..., description="run_s / planned_busy_s; null when planned_busy_s is 0 or without a state tag")
    performance: float | None = Field(..., description="ideal_run_s / run_s; null when the line did not run")
    quality: float | None = Field(..., description="units / total; 1 when not measured; null when nothing was built")
    oee: float | None = Field(..., description="availability x performance x quality")
    quality_measured: bool
    top_losses: list[Loss] = Field(..., description="the largest losses of planned busy time, largest first")
    coverage: float = Field(..., ge=0, le=1, description="covered_s / calendar_s (1 when nothing was planned): how much of the shift the agent saw")
    partial: bool = Field(False, description="coverage below 0.9: the figures describe the part of the shift the agent observed")
    counted_since: Timestamp | None = Field(None, description="start of the shift's first window in the agent's books (the plant: the earliest of its lines')")
    historical: bool = Field(False, description="sent later than one window after the shift's end")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class LinePayload:
    """A line's window payload as the window path builds it, 500 times a second at scale.

    ``fields`` are the :class:`LineOutput` fields by alias, in the model's order, with
    Python values (sub-payloads as dicts). :attr:`json` is the contract's bytes written
    by orjson without validating the fields again; it equals ``encode(self.model())``
    byte for byte (tests/test_payloads_fast.py checks it over random windows). The model
    itself is built only when asked for (Sparkplug's metrics, tests).
    """

    __slots__ = ("_json", "_model", "fields")

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        self._json: bytes | None = None
        self._model: LineOutput | None = None

    @classmethod
    def of(cls, model: LineOutput) -> LinePayload:
        """The payload of a model built elsewhere."""
        payload = cls(model.model_dump(by_alias=True))
        payload._model = model
        return payload

    @property
    def line(self) -> str:
        return str(self.fields["line"])

    @property
    def seq(self) -> int:
        return int(self.fields["seq"])

    @property
    def units(self) -> int:
        return int(self.fields["units"])

    @property
    def quality(self) -> str:
        return str(self.fields["quality"])

    @property
    def day_target(self) -> float:
        return float(self.fields["day"]["target"])

    @property
    def json(self) -> bytes:
        """The payload's JSON (compact, keys by alias, as :func:`encode` writes it)."""
        if self._json is None:
            f = self.fields
            self._json = orjson.dumps({**f, "window_start": rfc3339(f["window_start"]),
                                       "window_end": rfc3339(f["window_end"]),
                                       "shift": _stamped(f["shift"]), "day": _stamped(f["day"])})
        return self._json

    def model(self) -> LineOutput:
        """The validated :class:`LineOutput` of these fields."""
        if self._model is None:
            self._model = LineOutput.model_validate(self.fields)
        return self._model


def _stamped(block: dict[str, Any]) -> dict[str, Any]:
    """A shift or day block with its ``counted_since`` as the contract writes a timestamp."""
    since = block.get("counted_since")
    return {**block, "counted_since": rfc3339(since)} if isinstance(since, datetime) else block


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
        "R/lines/<line>/shift": ShiftReport.model_json_schema(by_alias=True),
        "R/plant/shift": ShiftReport.model_json_schema(by_alias=True),
    }


def dumps_schemas() -> str:
    return json.dumps(payload_schemas(), indent=2)
