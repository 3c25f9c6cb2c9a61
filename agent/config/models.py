"""Configuration models (pydantic v2): unknown keys are errors, every model is frozen.

The models describe every key of the configuration file; ``plantfloor schema config``
prints their JSON Schema. Loading YAML and turning validation errors into one sentence
naming file, line and key lives in :mod:`agent.config.load`.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from datetime import date, time
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

__all__ = [
    "DEFAULT_RATE_BOUND_FACTOR",
    "DEPRECATED_OPCUA_POLICIES",
    "ROLE_KEYS",
    "TYPE_WIDTH",
    "Break",
    "Config",
    "DowntimeConfig",
    "LineConfig",
    "ModbusSource",
    "ModbusTag",
    "MqttConfig",
    "OpcUaSecurity",
    "OpcUaSource",
    "OpcUaTag",
    "PlantConfig",
    "PublishConfig",
    "ReasonConfig",
    "Shift",
    "SourceConfig",
    "SparkplugConfig",
    "StorageConfig",
    "TagConfig",
    "TimeZoneName",
    "TlsConfig",
]

# --- constrained types, in one place -------------------------------------------------

Identifier = Annotated[
    str,
    Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
          description="lower-case letters, digits, '-' and '_'; safe inside an MQTT topic"),
]
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0)]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ModbusTable = Literal["holding", "input"]
ModbusType = Literal["uint16", "int16", "uint32", "int32", "uint64", "float32"]
WordOrder = Literal["big", "little"]
LineState = Literal["running", "stopped", "faulted", "unknown"]
#: what a state tag's map may name: running, unknown, or a reason (checked against downtime.reasons)
StateName = Annotated[
    str,
    Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
          description="running, unknown, or a reason of downtime.reasons (stopped and faulted are built in)"),
]
ReasonCategory = Literal["planned", "unplanned", "idle"]
#: the roles of a line's counters: good units, and the optional second counter of all units or rejects
CounterRole = Literal["counter", "total", "rejects"]
COUNTER_ROLES: frozenset[str] = frozenset({"counter", "total", "rejects"})
#: the configuration key of each point role of a line
ROLE_KEYS: dict[str, str] = {"counter": "counter", "total": "total_counter",
                             "rejects": "reject_counter", "state": "state"}

#: registers per Modbus value type
TYPE_WIDTH: dict[str, int] = {
    "uint16": 1, "int16": 1, "uint32": 2, "int32": 2, "uint64": 4, "float32": 2,
}
#: natural modulus of each counter type (None: not usable as a counter); a signed counter
#: counts on through its negative half (two's complement), so it wraps at its full width
TYPE_MODULUS: dict[str, int | None] = {
    "uint16": 2**16, "int16": 2**16, "uint32": 2**32, "int32": 2**32, "uint64": 2**64,
    "float32": None,
}
#: the default plausibility bound, as a multiple of the line's planned rate
DEFAULT_RATE_BOUND_FACTOR = 2.0
DEPRECATED_OPCUA_POLICIES = frozenset({"Basic128Rsa15", "Basic256"})
_NODE_ID = re.compile(r"^(ns=\d+;|nsu=[^;]+;)?(i=\d+|s=.+|g=[0-9a-fA-F-]{36}|b=[A-Za-z0-9+/=]+)$")


def _hhmm(value: str) -> str:
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise ValueError(f"{value!r} is not a time of day in HH:MM (00:00 to 23:59)")
    return value


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{value!r} is not an IANA time zone") from exc
    return value


TimeZoneName = Annotated[str, AfterValidator(_time_zone),
                         Field(description="IANA time zone, e.g. Asia/Tokyo")]

HHMM = Annotated[str, AfterValidator(_hhmm),
                 Field(description='time of day "HH:MM" in the site time zone')]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _to_time(hhmm: str) -> time:
    h, m = hhmm.split(":")
    return time(int(h), int(m))


# --- MQTT ------------------------------------------------------------------------------

class TlsConfig(_Model):
    """TLS toward the broker (``mqtts://``)."""

    ca_file: Path | None = Field(None, description="CA bundle that signed the broker's certificate; system store when absent")
    cert_file: Path | None = Field(None, description="client certificate (PEM) for certificate authentication")
    key_file: Path | None = Field(None, description="client private key (PEM)")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttConfig(_Model):
    """The broker the agent publishes to."""

    url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host:port or mqtts://host:port (TLS)")
    topic_root: str | None = Field(None, description="topic prefix R; default plantfloor/<site>")
    client_id: str | None = Field(None, description="MQTT client id; default plantfloor-<site>")
    qos: Literal[1] = Field(1, description="QoS of output messages: 1. A window leaves the outbox only once the broker acknowledged it with a success reason code (status and state are QoS 1 too). QoS 2 is not accepted: paho-mqtt cannot report a broker's refusal of a QoS 2 publish")
    version: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds")
    username: str | None = Field(None, description="user name; the password comes from password_file or PLANTFLOOR_MQTT_PASSWORD")
    password_file: Path | None = Field(None, description="file holding the password (relative names are looked up in $CREDENTIALS_DIRECTORY first)")
    tls: TlsConfig | None = Field(None, description="TLS files; implied by mqtts://")
    max_inflight: int = Field(1000, ge=1, le=65000, description="QoS>0 messages awaiting acknowledgement at once")

    @field_validator("qos", mode="before")
    @classmethod
    def _qos(cls, v: object) -> object:
        if v == 2:
            raise ValueError("2 is not accepted: paho-mqtt does not report a broker's refusal "
                             "of a QoS 2 publish, so a refused window would leave the outbox unseen; "
                             "use 1 (delivery is at least once; subscribers keep one message per "
                             "line, epoch and seq)")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"{v!r} is not an mqtt:// or mqtts:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("credentials do not belong in the URL: use username and "
                             "password_file (or PLANTFLOOR_MQTT_PASSWORD)")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"{v!r} has an invalid port") from exc
        return v

    @field_validator("topic_root")
    @classmethod
    def _root(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "#+\0") or v.startswith("/") or v.endswith("/")):
            raise ValueError(f"{v!r} is not a valid topic prefix (no wildcards, no leading or trailing '/')")
        return v

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def uses_tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts" or self.tls is not None

    def password(self) -> str | None:
        """The password from ``password_file`` (credentials directory first) or the environment."""
        if self.password_file is not None:
            return resolve_secret_file(self.password_file).read_text(encoding="utf-8").strip()
        return os.environ.get("PLANTFLOOR_MQTT_PASSWORD")


def resolve_secret_file(path: Path) -> Path:
    """A relative secret name is looked up in systemd's ``$CREDENTIALS_DIRECTORY`` first."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and not path.is_absolute() and (Path(creds) / path).exists():
        return Path(creds) / path
    return path


# --- windows, storage, plant, shifts ---------------------------------------------------

class PublishConfig(_Model):
    interval_s: int = Field(60, ge=1, le=3600, description="window length in seconds; must divide 3600; windows align to wall-clock multiples from local midnight")
    status_interval_s: int = Field(60, ge=1, le=3600, description="how often R/status is republished")
    replay_per_s: int = Field(3000, ge=0, le=1_000_000, description="at most this many backlog records a second while replaying the outbox (live windows go first and are not counted), so that a replay leaves the broker and the subscribers room for the live windows; 0: as fast as the broker acknowledges")

    @field_validator("interval_s")
    @classmethod
    def _divides_day(cls, v: int) -> int:
        if 3600 % v:
            raise ValueError(f"{v} does not divide an hour (3600 s) into whole windows")
        return v


class StorageConfig(_Model):
    path: Path = Field(Path("/var/lib/plantfloor/state.db"), description="SQLite file: durable outbox and counter state")
    max_mb: float = Field(512, gt=0, description="bound of the outbox; the oldest windows are dropped first beyond it")


class PlantConfig(_Model):
    capacity_per_year: int = Field(..., gt=0, description="vehicles per year the plant can build")
    planned_utilization: float = Field(..., gt=0, le=1, description="share of capacity planned to be used (0..1]")
    holidays: tuple[date, ...] = Field((), description="dates with no production (plant calendar)")


class Break(_Model):
    start: HHMM
    end: HHMM


class Shift(_Model):
    """A shift: planned production time is start..end less breaks; it may cross midnight."""

    name: Identifier
    start: HHMM
    end: HHMM = Field(..., description='"00:00" means midnight; an end before the start crosses midnight')
    breaks: tuple[Break, ...] = Field((), description="planned breaks inside the shift (no target)")
    days: tuple[Weekday, ...] = Field(("mon", "tue", "wed", "thu", "fri"), description="weekdays on which the shift starts")

    @model_validator(mode="after")
    def _check(self) -> Shift:
        if self.start == self.end:
            raise ValueError("a shift cannot start and end at the same time")
        span = self.span_minutes()
        for b in self.breaks:
            bs, be = self.offset_minutes(b.start), self.offset_minutes(b.end)
            if not (0 <= bs < be <= span):
                raise ValueError(f"break {b.start}-{b.end} is not inside the shift {self.start}-{self.end}")
        offs = sorted((self.offset_minutes(b.start), self.offset_minutes(b.end)) for b in self.breaks)
        for (_, e1), (s2, _) in itertools.pairwise(offs):
            if s2 < e1:
                raise ValueError("breaks overlap")
        return self

    def _minutes(self, hhmm: str) -> int:
        t = _to_time(hhmm)
        return t.hour * 60 + t.minute

    def span_minutes(self) -> int:
        """Length of the shift in minutes (wall-clock, before DST)."""
        return (self._minutes(self.end) - self._minutes(self.start)) % 1440 or 1440

    def offset_minutes(self, hhmm: str) -> int:
        """Minutes from the shift's start to a time of day inside it."""
        return (self._minutes(hhmm) - self._minutes(self.start)) % 1440

    def planned_minutes(self) -> int:
        return self.span_minutes() - sum(
            self.offset_minutes(b.end) - self.offset_minutes(b.start) for b in self.breaks)


# --- downtime reasons -------------------------------------------------------------------

class ReasonConfig(_Model):
    """Why a line is not running: the reason's OEE category and the line state it reports."""

    category: ReasonCategory = Field(
        ..., description="planned: a planned stop (changeover, maintenance), not part of planned "
                         "busy time; unplanned: downtime that lowers availability (fault, blocked, "
                         "starved); idle: the line could run but has nothing to do (no orders), "
                         "downtime too")
    state: Literal["stopped", "faulted"] = Field(
        "stopped", description="the line state reported while in this reason (state topic, "
                               "state_seconds): stopped or faulted")


#: reasons every configuration has; downtime.reasons may redefine their category
BUILTIN_REASONS: dict[str, ReasonConfig] = {
    "stopped": ReasonConfig(category="unplanned", state="stopped"),
    "faulted": ReasonConfig(category="unplanned", state="faulted"),
}


class DowntimeConfig(_Model):
    """Reason codes of stops and the minor-stop threshold (docs/mqtt.md, "The time model")."""

    minor_stop_s: float = Field(
        60.0, ge=0, le=3600,
        description="a stop shorter than this is a minor stop (a performance loss), not downtime "
                    "of its reason; a stop reaching it is downtime of its reason from its start; "
                    "0 makes every stop downtime")
    reasons: dict[Identifier, ReasonConfig] = Field(
        default_factory=dict,
        description="reasons a state map may name besides the built-in stopped and faulted "
                    "(both unplanned), e.g. changeover: {category: planned}")

    @field_validator("reasons")
    @classmethod
    def _not_states(cls, v: dict[str, ReasonConfig]) -> dict[str, ReasonConfig]:
        for name in v:
            if name in ("running", "unknown"):
                raise ValueError(f"{name!r} is a line state, not a reason of a stop")
        return v

    def all_reasons(self) -> dict[str, ReasonConfig]:
        """The built-in reasons and the configured ones."""
        return {**BUILTIN_REASONS, **self.reasons}


# --- sources -----------------------------------------------------------------------------

class ModbusSource(_Model):
    """A Modbus TCP endpoint (a PLC or a gateway; unit ids are per tag)."""

    id: Identifier
    kind: Literal["modbus"] = Field(..., description="protocol: modbus (TCP)")
    host: str = Field(..., min_length=1, description="PLC or gateway address")
    port: Port = Field(502, description="Modbus TCP port")
    unit_id: int = Field(1, ge=0, le=255, description="default unit id of this source's tags")
    poll_interval_s: float = Field(1.0, ge=0.1, le=3600, description="time from the start of one poll to the start of the next (an overrunning poll is followed at once, and counted)")
    timeout_s: float = Field(0.5, gt=0, le=60, description="per request, one attempt; at most poll_interval_s, so a poll never outlasts its interval")
    max_registers: int = Field(125, ge=1, le=125, description="largest coalesced read")
    max_gap: int = Field(8, ge=0, le=124, description="unused registers a coalesced read may span")
    backoff_max_s: float = Field(30.0, ge=1, description="cap of the reconnect backoff")

    @model_validator(mode="after")
    def _bounded(self) -> ModbusSource:
        if self.timeout_s > self.poll_interval_s:
            raise ValueError(f"timeout_s ({self.timeout_s:g} s) must fit in poll_interval_s "
                             f"({self.poll_interval_s:g} s)")
        return self


class OpcUaSecurity(_Model):
    policy: Literal["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss",
                    "Basic128Rsa15", "Basic256"] = Field(..., description="security policy; the deprecated Basic128Rsa15 and Basic256 are refused")
    mode: Literal["Sign", "SignAndEncrypt"] = Field("SignAndEncrypt", description="message security mode")
    certificate: Path = Field(..., description="client certificate (DER or PEM)")
    private_key: Path = Field(..., description="client private key (PEM)")
    server_certificate: Path | None = Field(None, description="pinned server certificate")
    trust_dir: Path | None = Field(None, description="folder of trusted CA / server certificates")

    @model_validator(mode="after")
    def _check(self) -> OpcUaSecurity:
        if self.policy in DEPRECATED_OPCUA_POLICIES:
            raise ValueError(f"policy {self.policy} is deprecated and insecure; use Basic256Sha256, "
                             "Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss")
        if self.server_certificate is None and self.trust_dir is None:
            raise ValueError("server_certificate (pinned) or trust_dir is required: the server's certificate must be verified")
        return self


class OpcUaSource(_Model):
    """An OPC UA server."""

    id: Identifier
    kind: Literal["opcua"] = Field(..., description="protocol: opcua")
    endpoint: str = Field(..., description="opc.tcp://host:port/path")
    mode: Literal["subscribe", "poll"] = Field("subscribe", description="subscribe: monitored items; poll: one Read service call per poll")
    poll_interval_s: float = Field(1.0, ge=0.1, le=3600, description="poll period, or publishing interval in subscribe mode")
    sampling_interval_s: float | None = Field(None, gt=0, description="monitored-item sampling interval; default poll_interval_s")
    queue_size: int = Field(10, ge=1, le=10000, description="monitored-item queue size")
    timeout_s: float = Field(4.0, gt=0, le=60, description="per request")
    username: str | None = Field(None, description="user name for the OPC UA session (anonymous when absent)")
    password_file: Path | None = Field(None, description="password for username; else PLANTFLOOR_OPCUA_PASSWORD")
    security: OpcUaSecurity | None = Field(None, description="absent means policy None, which `check` warns about")
    backoff_max_s: float = Field(30.0, ge=1, description="cap of the reconnect backoff")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "opc.tcp" or not parts.hostname:
            raise ValueError(f"{v!r} is not an opc.tcp:// endpoint URL")
        if parts.username or parts.password:
            raise ValueError("credentials do not belong in the endpoint URL: use username and "
                             "password_file (or PLANTFLOOR_OPCUA_PASSWORD)")
        return v


SourceConfig = Annotated[ModbusSource | OpcUaSource, Field(discriminator="kind")]


# --- tags and lines -------------------------------------------------------------------

class ModbusTag(_Model):
    source: Identifier
    address: int = Field(..., ge=0, le=65535, description="0-based protocol address")
    table: ModbusTable = Field("holding", description="holding registers (function 3) or input registers (function 4)")
    type: ModbusType = Field("uint32", description="register data type; counters must be integer types")
    word_order: WordOrder = Field("big", description="big: the first register holds the most significant word")
    unit_id: int | None = Field(None, ge=0, le=255, description="default: the source's unit_id")
    rollover: int | None = Field(None, ge=2, description="counter modulus where it is not the type's")
    map: dict[int, StateName] | None = Field(
        None, description="state tag: raw value to running, a downtime reason (downtime.reasons; "
                          "stopped and faulted are built in) or unknown; an unmapped value reads unknown")

    @property
    def width(self) -> int:
        return TYPE_WIDTH[self.type]

    @model_validator(mode="after")
    def _check(self) -> ModbusTag:
        if self.address + self.width > 65536:
            raise ValueError(f"a {self.type} at address {self.address} runs past register 65535")
        return self


class OpcUaTag(_Model):
    source: Identifier
    node: str = Field(..., description='node id, e.g. "ns=2;s=Rogue.GoodCount" or "nsu=urn:...;i=1001"')
    rollover: int | None = Field(None, ge=2, description="counter modulus (PackML DINT counters: 2147483648)")
    map: dict[int, StateName] | None = Field(
        None, description="state tag: raw value to running, a downtime reason (downtime.reasons; "
                          "stopped and faulted are built in) or unknown; an unmapped value reads unknown")

    @field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        if not _NODE_ID.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid OPC UA node id (expected e.g. ns=2;s=Name or ns=2;i=1001)")
        return v


def _tag_kind(v: object) -> str:
    if isinstance(v, dict):
        return "opcua" if "node" in v else "modbus"
    return "opcua" if isinstance(v, OpcUaTag) else "modbus"


TagConfig = Annotated[
    Annotated[ModbusTag, Tag("modbus")] | Annotated[OpcUaTag, Tag("opcua")],
    Discriminator(_tag_kind),
]
DEFAULT_STATE_MAP: dict[int, str] = {0: "stopped", 1: "running", 2: "faulted"}


class LineConfig(_Model):
    id: Identifier
    product: str = Field(..., min_length=1, description="product built on the line, e.g. Sakura")
    target_per_hour: float | None = Field(None, gt=0, description="planned rate during planned production time")
    takt_s: float | None = Field(None, gt=0, description="planned takt time; target_per_hour = 3600 / takt_s")
    counter: TagConfig = Field(..., description="the good-unit counter")
    total_counter: TagConfig | None = Field(
        None, description="optional counter of every unit built, good or not (OEE quality = good / "
                          "total); counted like counter, with the line's plausibility bound; at most "
                          "one of total_counter and reject_counter")
    reject_counter: TagConfig | None = Field(
        None, description="optional counter of rejected units (scrap, rework): total = good + "
                          "rejects; counted like counter, with the line's plausibility bound")
    ideal_cycle_s: float | None = Field(
        None, gt=0, description="ideal cycle time of one unit, for OEE performance (ideal_cycle_s x "
                                "total / run time); default the planned takt (takt_s, or 3600 / "
                                "target_per_hour)")
    state: TagConfig | None = Field(
        None, description="line state tag; its map names running, a downtime reason or unknown "
                          "for each raw value (default 0 stopped, 1 running, 2 faulted)")
    max_rate_per_hour: float | None = Field(
        None, gt=0,
        description="plausibility bound on the counter's rate: a jump faster than this since the "
                    "counter last advanced is not counted (implausible_jump) and the counter is "
                    "re-baselined; default twice the planned rate (target_per_hour or 3600 / takt_s)")
    tags: dict[Identifier, TagConfig] = Field(
        default_factory=dict,
        description="extra process values read with the counter (e.g. buffer level, andon); "
                    "the last good value of each is reported in every window")

    def points(self) -> Iterator[tuple[Literal["counter", "total", "rejects", "state", "tag"],
                                       str | None, TagConfig]]:
        """Every point the line reads: (role, tag name, tag)."""
        yield "counter", None, self.counter
        second = self.second_counter
        if second is not None:
            yield second[0], None, second[1]
        if self.state is not None:
            yield "state", None, self.state
        for name, tag in self.tags.items():
            yield "tag", name, tag

    @model_validator(mode="after")
    def _check(self) -> LineConfig:
        if (self.target_per_hour is None) == (self.takt_s is None):
            raise ValueError("give exactly one of target_per_hour and takt_s")
        if self.total_counter is not None and self.reject_counter is not None:
            raise ValueError("give at most one of total_counter and reject_counter")
        return self

    @property
    def second_counter(self) -> tuple[Literal["total", "rejects"], TagConfig] | None:
        """The counter that measures quality: (``total`` or ``rejects``, its tag), or None."""
        if self.total_counter is not None:
            return "total", self.total_counter
        if self.reject_counter is not None:
            return "rejects", self.reject_counter
        return None

    @property
    def ideal_cycle(self) -> float:
        """Ideal seconds per unit: ``ideal_cycle_s``, else the planned takt."""
        if self.ideal_cycle_s is not None:
            return self.ideal_cycle_s
        return 3600.0 / self.rate_target

    @property
    def rate_target(self) -> float:
        """Planned units per hour of planned production time."""
        if self.target_per_hour is not None:
            return self.target_per_hour
        assert self.takt_s is not None
        return 3600.0 / self.takt_s

    @property
    def rate_bound(self) -> float:
        """The plausibility bound in units per hour: ``max_rate_per_hour``, else twice the plan."""
        if self.max_rate_per_hour is not None:
            return self.max_rate_per_hour
        return DEFAULT_RATE_BOUND_FACTOR * self.rate_target

    @property
    def state_map(self) -> dict[int, str]:
        if self.state is not None and self.state.map is not None:
            return dict(self.state.map)
        return dict(DEFAULT_STATE_MAP)


# --- Sparkplug B ----------------------------------------------------------------------

#: what a Sparkplug id may not contain: the topic separator and wildcards (Sparkplug 3.0,
#: 4.1.1), and the NUL and control characters MQTT forbids or advises against in topics
_SPARKPLUG_FORBIDDEN = re.compile(r"[+/#\x00-\x1f\x7f-\x9f]")


def _sparkplug_id(value: str) -> str:
    bad = _SPARKPLUG_FORBIDDEN.search(value)
    if bad is not None:
        raise ValueError(f"{value!r} contains {bad.group(0)!r}: a Sparkplug id is a UTF-8 "
                         "string without '+', '/', '#' and control characters")
    if len(value.encode()) > 1024:
        raise ValueError("a Sparkplug id longer than 1024 bytes makes unwieldy topics")
    return value


SparkplugId = Annotated[str, Field(min_length=1), AfterValidator(_sparkplug_id)]


class SparkplugConfig(_Model):
    """The agent as a Sparkplug B 3.0 edge node (docs/sparkplug.md); each line is a device."""

    group_id: SparkplugId = Field(..., description="Sparkplug Group ID (e.g. the plant); no '+', '/', '#'")
    edge_node_id: SparkplugId = Field(..., description="Sparkplug Edge Node ID: unique per gateway within the group (two gateways with one id make host applications demand rebirths from both, endlessly)")
    primary_host_id: SparkplugId | None = Field(None, description="when set, births wait for this host application's STATE online, and the node disconnects and starts over when the host goes offline")
    client_id: str | None = Field(None, min_length=1, description="MQTT client id of the edge node's own connection; default <mqtt client id>-sparkplug")


# --- the file -------------------------------------------------------------------------

class Config(_Model):
    """The agent's configuration file."""

    site: Identifier
    timezone: TimeZoneName = Field(..., description="IANA time zone of the site, e.g. Asia/Tokyo")
    mqtt: MqttConfig = Field(MqttConfig(), description="the broker")
    publish: PublishConfig = Field(PublishConfig(), description="windows and status")
    storage: StorageConfig = Field(StorageConfig(), description="durable outbox and counter state")
    plant: PlantConfig = Field(..., description="capacity and planned utilisation")
    shifts: tuple[Shift, ...] = Field(..., min_length=1, description="the shift calendar (planned production time)")
    downtime: DowntimeConfig = Field(DowntimeConfig(), description="reason codes of stops (what a state map may name) and the minor-stop threshold")
    sources: tuple[SourceConfig, ...] = Field(..., min_length=1, description="PLC endpoints")
    lines: tuple[LineConfig, ...] = Field(..., min_length=1, description="production lines: counter, state and target")
    metrics: MetricsConfig | None = Field(None, description="optional Prometheus endpoint (off when absent)")
    output: Literal["json", "sparkplug", "both"] = Field("json", description="window output: the JSON topics (docs/mqtt.md), Sparkplug B (docs/sparkplug.md) or both")
    sparkplug: SparkplugConfig | None = Field(None, description="Sparkplug B edge node identity; required when output is sparkplug or both")

    @model_validator(mode="after")
    def _output(self) -> Config:
        if self.output != "json" and self.sparkplug is None:
            raise ValueError(f"output: {self.output} needs the sparkplug section "
                             "(group_id and edge_node_id)")
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def topic_root(self) -> str:
        return self.mqtt.topic_root or f"plantfloor/{self.site}"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"plantfloor-{self.site}"

    def points_of(self, source_id: str) -> Iterator[
            tuple[LineConfig, Literal["counter", "total", "rejects", "state", "tag"], str | None,
                  TagConfig]]:
        """Every point (line, role, tag name, tag) that a source serves."""
        for line in self.lines:
            for role, name, tag in line.points():
                if tag.source == source_id:
                    yield line, role, name, tag

    def point_identity(self, tag: TagConfig, *, counter: bool = True) -> str:
        """The identity of a point: its source's endpoint and its address or node.

        A stored counter baseline belongs to exactly this identity (CONTRACT.md, "Counter
        identity"); for a counter it includes the modulus, since a baseline is not a value
        of a counter with another range.
        """
        src = self.source(tag.source)
        if isinstance(tag, ModbusTag):
            assert isinstance(src, ModbusSource)
            unit = tag.unit_id if tag.unit_id is not None else src.unit_id
            ident = (f"modbus://{src.host}:{src.port} unit {unit} {tag.table} {tag.address} "
                     f"{tag.type} {tag.word_order}")
            return f"{ident} modulus {tag.rollover or TYPE_MODULUS[tag.type]}" if counter else ident
        assert isinstance(src, OpcUaSource)
        ident = f"{src.endpoint} {tag.node}"
        return f"{ident} modulus {tag.rollover or 'of its type'}" if counter else ident

    def source(self, source_id: str) -> ModbusSource | OpcUaSource:
        for s in self.sources:
            if s.id == source_id:
                return s
        raise KeyError(source_id)

    @model_validator(mode="after")
    def _cross(self) -> Config:
        _unique("sources", [s.id for s in self.sources])
        _unique("lines", [ln.id for ln in self.lines])
        _unique("shifts", [s.name for s in self.shifts])
        by_id = {s.id: s for s in self.sources}
        for i, line in enumerate(self.lines):
            for role, name, tag in line.points():
                key = f"tags.{name}" if name else ROLE_KEYS[role]
                where = f"lines.{i}.{key}.source"
                src = by_id.get(tag.source)
                if src is None:
                    raise ValueError(f"{where}: line {line.id!r} names source {tag.source!r}, "
                                     f"which is not among the sources ({', '.join(by_id) or 'none'})")
                want = ModbusTag if src.kind == "modbus" else OpcUaTag
                if not isinstance(tag, want):
                    raise ValueError(f"lines.{i}.{key}: source {src.id!r} is {src.kind}; "
                                     f"give {'address/table/type' if src.kind == 'modbus' else 'node'}")
            _check_counter(line.counter, f"lines.{i}.counter")
            second = line.second_counter
            if second is not None:
                _check_counter(second[1], f"lines.{i}.{ROLE_KEYS[second[0]]}")
            _check_state_map(line, i, self.downtime)
        _check_tag_overlap(self)
        _check_shift_overlap(self.shifts)
        _check_window_grid(self.shifts, self.publish.interval_s)
        return self


class MetricsConfig(_Model):
    """Prometheus endpoint (off unless configured)."""

    host: str = Field("127.0.0.1", description="bind address; keep it on loopback unless a proxy fronts it")
    port: int = Field(9464, ge=0, le=65535, description="TCP port of the /metrics endpoint (0 picks a free port)")


def _unique(what: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for i, x in enumerate(ids):
        if x in seen:
            raise ValueError(f"{what}.{i}: duplicate id {x!r}")
        seen.add(x)


def _check_counter(tag: TagConfig, where: str) -> None:
    if isinstance(tag, ModbusTag):
        natural = TYPE_MODULUS[tag.type]
        if natural is None:
            raise ValueError(f"{where}.type: a counter must be an integer type, not {tag.type}")
        if tag.rollover is not None and tag.rollover > natural:
            raise ValueError(f"{where}.rollover: {tag.rollover} is wider than a {tag.type} "
                             f"can count (at most {natural})")
    if tag.map is not None:
        raise ValueError(f"{where}.map: only a state tag has a map")


def _check_state_map(line: LineConfig, i: int, downtime: DowntimeConfig) -> None:
    """Every name in a state map is running, unknown or a reason of ``downtime.reasons``."""
    if line.state is None or line.state.map is None:
        return
    reasons = downtime.all_reasons()
    for raw, name in line.state.map.items():
        if name not in ("running", "unknown") and name not in reasons:
            raise ValueError(f"lines.{i}.state.map.{raw}: {name!r} is not running, unknown or a "
                             f"reason of downtime.reasons ({', '.join(sorted(reasons))})")


def _check_window_grid(shifts: tuple[Shift, ...], interval_s: int) -> None:
    """Shift and break times on the window grid: no window straddles a shift or a break, so
    each window is wholly planned or unplanned and belongs to one shift instance."""
    for i, s in enumerate(shifts):
        times = [("start", s.start), ("end", s.end)]
        times += [(f"breaks.{j}.{k}", getattr(b, k)) for j, b in enumerate(s.breaks)
                  for k in ("start", "end")]
        for key, hhmm in times:
            t = _to_time(hhmm)
            if ((t.hour * 60 + t.minute) * 60) % interval_s:
                raise ValueError(f"shifts.{i}.{key}: {hhmm} is not on the grid of the "
                                 f"{interval_s} s windows (publish.interval_s), so a window would "
                                 "straddle it; shift and break times must be multiples of it")


def _check_tag_overlap(cfg: Config) -> None:
    used: dict[tuple[str, int, str, int], str] = {}
    nodes: dict[tuple[str, str], str] = {}
    for i, line in enumerate(cfg.lines):
        for role, tag_name, tag in line.points():
            name = f"lines.{i}.{'tags.' + tag_name if tag_name else ROLE_KEYS[role]}"
            if isinstance(tag, ModbusTag):
                src = cfg.source(tag.source)
                assert isinstance(src, ModbusSource)
                unit = tag.unit_id if tag.unit_id is not None else src.unit_id
                for reg in range(tag.address, tag.address + tag.width):
                    k = (tag.source, unit, tag.table, reg)
                    if k in used:
                        raise ValueError(f"{name}.address: register {tag.table} {reg} of unit {unit} on "
                                         f"{tag.source!r} is already used by {used[k]}")
                    used[k] = name
            elif isinstance(tag, OpcUaTag):
                k2 = (tag.source, tag.node)
                if k2 in nodes:
                    raise ValueError(f"{name}.node: {tag.node!r} on {tag.source!r} is already used by {nodes[k2]}")
                nodes[k2] = name


def _check_shift_overlap(shifts: tuple[Shift, ...]) -> None:
    """Two shifts overlap when, on some weekday, their minute ranges of the week intersect."""
    order = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    week = 7 * 1440
    spans: list[tuple[int, int, str]] = []
    for s in shifts:
        t = _to_time(s.start)
        for d in s.days:
            start = order.index(d) * 1440 + t.hour * 60 + t.minute
            spans.append((start, start + s.span_minutes(), s.name))
    for a in range(len(spans)):
        for b in range(a + 1, len(spans)):
            s1, e1, n1 = spans[a]
            s2, e2, n2 = spans[b]
            if n1 == n2:
                continue
            for shift in (0, week, -week):
                if s1 < e2 + shift and s2 + shift < e1:
                    raise ValueError(f"shifts: {n1!r} and {n2!r} overlap")


Config.model_rebuild()
