"""Constrained types of the configuration, in one place, and the frozen base model."""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
)

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
