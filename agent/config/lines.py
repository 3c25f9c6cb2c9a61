"""Points (Modbus registers, OPC UA nodes) and the lines that read them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from agent.config.types import (
    _NODE_ID,
    DEFAULT_RATE_BOUND_FACTOR,
    TYPE_WIDTH,
    Identifier,
    ModbusTable,
    ModbusType,
    StateName,
    WordOrder,
    _Model,
)

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


class RampStep(_Model):
    """From a production day on, the line's target is a share of its full rate."""

    # "from" is a Python keyword: the field is from_, written and read as "from"
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              serialize_by_alias=True)

    from_: dt.date = Field(..., alias="from", description="first production day of this share")
    share: float = Field(..., gt=0, le=1, description="share of the full rate planned from that day (1 = full rate)")


class NotPlanned(_Model):
    """Production days on which the line is not planned to build (a move, a retooling)."""

    # "from" is a Python keyword: the field is from_, written and read as "from"
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              serialize_by_alias=True)

    from_: dt.date = Field(..., alias="from", description="first production day not planned")
    to: dt.date = Field(..., description="last production day not planned (inclusive)")
    reason: str = Field(..., min_length=1, description="why, shown by plantfloor check")

    @model_validator(mode="after")
    def _check(self) -> NotPlanned:
        if self.to < self.from_:
            raise ValueError(f"to ({self.to}) is before from ({self.from_})")
        return self


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
    start: dt.date | None = Field(
        None, description="the line's first production day: before it the line has no planned "
                          "time (no target, attainment or downtime); default planned all along")
    ramp_up: list[RampStep] = Field(
        default_factory=list,
        description="the target as a share of the full rate from given production days, in date "
                    "order; the full rate after the last step only if its share is 1")
    not_planned: list[NotPlanned] = Field(
        default_factory=list,
        description="production days the line does not build (a move, a retooling): no planned "
                    "time, so no target, attainment or downtime there")

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
        days = [step.from_ for step in self.ramp_up]
        if days != sorted(set(days)):
            raise ValueError("ramp_up steps must be in increasing date order")
        return self

    def plan_share(self, day: dt.date) -> float:
        """The share of the full rate planned on production day ``day``: 0 before ``start``
        and in a ``not_planned`` period, the ramp-up's share where one applies, else 1."""
        if self.start is not None and day < self.start:
            return 0.0
        if any(p.from_ <= day <= p.to for p in self.not_planned):
            return 0.0
        share = 1.0
        for step in self.ramp_up:
            if step.from_ <= day:
                share = step.share
        return share

    @property
    def has_plan(self) -> bool:
        """The line has a calendar of its own (a start, a ramp-up or a period not planned)."""
        return self.start is not None or bool(self.ramp_up or self.not_planned)

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
