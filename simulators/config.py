"""Configuration of the software PLCs (pydantic v2, frozen, unknown keys are errors).

A simulator file names PLCs (Modbus TCP or OPC UA servers) and, per PLC, the lines whose
good-unit counter, state (a raw code per reason: running, stopped, faulted, changeover,
blocked, starved, ...) and optional reject or total counter it serves, each with its takt
time and production randomness.
:func:`load_sim_config` reads it as YAML 1.2 and turns every problem into one
:class:`agent.contract.errors.ConfigError` naming the file, line and key.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.config import Shift, TimeZoneName
from agent.config.load import load_model

__all__ = [
    "DEFAULT_STATE_CODES",
    "ModbusCounterTag",
    "ModbusLineConfig",
    "ModbusPlcConfig",
    "ModbusStateTag",
    "OpcUaCounterNode",
    "OpcUaLineConfig",
    "OpcUaPlcConfig",
    "OpcUaStateNode",
    "PlcConfig",
    "ProductionConfig",
    "SimConfig",
    "SimLineConfig",
    "load_sim_config",
]

Identifier = Annotated[
    str,
    Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
          description="lower-case letters, digits, '-' and '_'"),
]
SimPort = Annotated[int, Field(ge=0, le=65535, description="TCP port; 0 picks a free one")]
UnitId = Annotated[int, Field(ge=0, le=255, description="Modbus unit id")]
Address = Annotated[int, Field(ge=0, le=65535, description="0-based protocol address")]

MODBUS_COUNTER_MODULUS: dict[str, int] = {"uint16": 2**16, "uint32": 2**32, "uint64": 2**64}
OPCUA_COUNTER_MODULUS: dict[str, int] = {"UInt32": 2**32, "UInt64": 2**64, "Int32": 2**31}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: the raw state value a PLC serves for each reason, unless its state tag says otherwise
DEFAULT_STATE_CODES: dict[str, int] = {"stopped": 0, "running": 1, "faulted": 2}


class ProductionConfig(_Model):
    """Randomness of one line; the defaults give a realistic but lively line."""

    takt_jitter: float = Field(0.05, ge=0, le=0.5, description="relative standard deviation of each unit's cycle time")
    micro_stop_rate_per_hour: float = Field(4.0, ge=0, description="short stops (starved/blocked) per running hour")
    micro_stop_s: float = Field(15.0, gt=0, description="mean length of a short stop; the line is stopped meanwhile")
    micro_stop_reasons: tuple[Identifier, ...] = Field(("stopped",), min_length=1, description="the reason a short stop serves, drawn for each stop (e.g. [blocked, starved])")
    breakdown_rate_per_hour: float = Field(0.3, ge=0, description="breakdowns per running hour")
    repair_s: float = Field(90.0, gt=0, description="mean repair time; the line is faulted meanwhile")
    breakdown_reason: Identifier = Field("faulted", description="the reason a breakdown serves (e.g. fault)")
    changeover_every_s: float | None = Field(None, gt=0, description="a changeover after every this many running seconds (none when absent)")
    changeover_s: float = Field(600.0, gt=0, description="mean length of a changeover")
    changeover_reason: Identifier = Field("changeover", description="the reason a changeover serves")
    durations: Literal["random", "fixed"] = Field("random", description="random: stop lengths drawn around their mean (exponential); fixed: exactly the mean")
    reject_rate: float = Field(0.0, ge=0, le=1, description="share of the units built that are rejects (scrap, rework): they move the reject counter, not the good one")

    def reasons(self) -> set[str]:
        """Every reason this production can serve (besides running, and stopped off shift)."""
        out = {*self.micro_stop_reasons, self.breakdown_reason}
        if self.changeover_every_s is not None:
            out.add(self.changeover_reason)
        return out


class ModbusCounterTag(_Model):
    """Where a Modbus PLC serves a line's good-unit counter."""

    unit_id: UnitId = 1
    address: Address
    table: Literal["holding", "input"] = "holding"
    type: Literal["uint16", "uint32", "uint64"] = "uint32"
    word_order: Literal["big", "little"] = Field("big", description="big: most significant word first")
    start: int = Field(0, ge=0, description="counter value when the simulator starts")

    @property
    def width(self) -> int:
        """Registers the counter occupies."""
        return {"uint16": 1, "uint32": 2, "uint64": 4}[self.type]

    @property
    def modulus(self) -> int:
        return MODBUS_COUNTER_MODULUS[self.type]

    @model_validator(mode="after")
    def _check(self) -> ModbusCounterTag:
        if self.start >= self.modulus:
            raise ValueError(f"start {self.start} does not fit a {self.type} (modulus {self.modulus})")
        if self.address + self.width > 65536:
            raise ValueError(f"a {self.type} at address {self.address} runs past register 65535")
        return self


class ModbusStateTag(_Model):
    """Where a Modbus PLC serves a line's state: uint16, 0 stopped, 1 running, 2 faulted."""

    unit_id: UnitId = 1
    address: Address
    table: Literal["holding", "input"] = "holding"
    type: Literal["uint16"] = "uint16"
    codes: dict[Identifier, Annotated[int, Field(ge=0, le=65535)]] = Field(
        default_factory=lambda: dict(DEFAULT_STATE_CODES),
        description="raw value served for each reason (default stopped 0, running 1, faulted 2)")


def _check_codes(line_id: str, codes: dict[str, int], production: ProductionConfig) -> None:
    missing = sorted(({"running", "stopped"} | production.reasons()) - set(codes))
    if missing:
        raise ValueError(f"line {line_id!r}: the state's codes name no raw value for "
                         f"{', '.join(missing)}")


class _LineBase(_Model):
    id: Identifier
    takt_s: float = Field(3.0, gt=0, description="mean cycle time of one unit while running")
    production: ProductionConfig = Field(default_factory=ProductionConfig,
                                         description="stops, breakdowns and cycle-time jitter")
    counter_update_s: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description=(
            "refresh the served counter (Modbus registers, OPC UA node) only every this many "
            "seconds of the simulator clock, counted from when the simulator started, as a PLC "
            "with a slow scan or copy task does: each refresh shows the true count of that "
            "moment, and units built between refreshes (and resets, jumps) show at the next "
            "one. Production and the ledger are unaffected. Default: every unit shows as it "
            "is built"),
    )


class SimLineConfig(_LineBase):
    """A line served by a Modbus PLC."""

    counter: ModbusCounterTag
    state: ModbusStateTag | None = None
    reject_counter: ModbusCounterTag | None = Field(None, description="a counter of rejected units")
    total_counter: ModbusCounterTag | None = Field(None, description="a counter of every unit built, good or not")

    @property
    def modulus(self) -> int:
        """Where the counter wraps."""
        return self.counter.modulus

    @property
    def second(self) -> tuple[str, ModbusCounterTag] | None:
        """The reject or total counter: (``rejects`` or ``total``, its tag), or None."""
        if self.reject_counter is not None:
            return "rejects", self.reject_counter
        if self.total_counter is not None:
            return "total", self.total_counter
        return None

    def registers(self) -> list[tuple[int, str, int]]:
        """Every (unit id, table, address) this line occupies."""
        counters = [self.counter] + ([self.second[1]] if self.second is not None else [])
        regs: list[tuple[int, str, int]] = [(c.unit_id, c.table, c.address + i)
                                            for c in counters for i in range(c.width)]
        if self.state is not None:
            regs.append((self.state.unit_id, self.state.table, self.state.address))
        return regs

    @model_validator(mode="after")
    def _check(self) -> SimLineConfig:
        if self.reject_counter is not None and self.total_counter is not None:
            raise ValueError(f"line {self.id!r}: give at most one of reject_counter and total_counter")
        if self.state is not None:
            _check_codes(self.id, self.state.codes, self.production)
        return self


ModbusLineConfig = SimLineConfig


class OpcUaCounterNode(_Model):
    """A line's good-unit counter node on an OPC UA PLC."""

    node: str = Field(..., min_length=1, description='string identifier in the simulator namespace, e.g. "Rogue.GoodCount" (served as ns=2;s=...)')
    type: Literal["UInt32", "UInt64", "Int32"] = "UInt32"
    modulus: int | None = Field(None, ge=2, description="Int32 only: where the counter wraps (default 2**31, PackML DINT)")
    start: int = Field(0, ge=0, description="counter value when the simulator starts")

    @property
    def effective_modulus(self) -> int:
        return self.modulus if self.modulus is not None else OPCUA_COUNTER_MODULUS[self.type]

    @model_validator(mode="after")
    def _check(self) -> OpcUaCounterNode:
        if self.modulus is not None:
            if self.type != "Int32":
                raise ValueError("modulus is only for Int32 counters")
            if self.modulus > 2**31:
                raise ValueError(f"modulus {self.modulus} is wider than an Int32 can count (2**31)")
        if self.start >= self.effective_modulus:
            raise ValueError(f"start {self.start} is not below the modulus {self.effective_modulus}")
        return self


class OpcUaStateNode(_Model):
    """A line's state node: 0 stopped, 1 running, 2 faulted."""

    node: str = Field(..., min_length=1, description='string identifier, e.g. "Rogue.State"')
    type: Literal["Int32", "UInt16"] = "Int32"
    codes: dict[Identifier, Annotated[int, Field(ge=0, le=65535)]] = Field(
        default_factory=lambda: dict(DEFAULT_STATE_CODES),
        description="raw value served for each reason (default stopped 0, running 1, faulted 2)")


class OpcUaLineConfig(_LineBase):
    """A line served by an OPC UA PLC."""

    counter: OpcUaCounterNode
    state: OpcUaStateNode | None = None
    reject_counter: OpcUaCounterNode | None = Field(None, description="a counter of rejected units")
    total_counter: OpcUaCounterNode | None = Field(None, description="a counter of every unit built, good or not")

    @property
    def modulus(self) -> int:
        """Where the counter wraps."""
        return self.counter.effective_modulus

    @property
    def second(self) -> tuple[str, OpcUaCounterNode] | None:
        """The reject or total counter: (``rejects`` or ``total``, its node), or None."""
        if self.reject_counter is not None:
            return "rejects", self.reject_counter
        if self.total_counter is not None:
            return "total", self.total_counter
        return None

    @model_validator(mode="after")
    def _check(self) -> OpcUaLineConfig:
        if self.reject_counter is not None and self.total_counter is not None:
            raise ValueError(f"line {self.id!r}: give at most one of reject_counter and total_counter")
        if self.state is not None:
            _check_codes(self.id, self.state.codes, self.production)
        return self


class ModbusPlcConfig(_Model):
    """A Modbus TCP server; unit ids are per tag."""

    id: Identifier
    kind: Literal["modbus"] = "modbus"
    host: str = "127.0.0.1"
    port: SimPort = 0
    lines: tuple[SimLineConfig, ...] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ModbusPlcConfig:
        used: dict[tuple[int, str, int], str] = {}
        for line in self.lines:
            for key in line.registers():
                if key in used:
                    unit, table, addr = key
                    raise ValueError(f"line {line.id!r}: {table} register {addr} of unit {unit} "
                                     f"is already used by line {used[key]!r}")
                used[key] = line.id
        return self


class OpcUaPlcConfig(_Model):
    """An OPC UA server; its namespace is registered first, so it gets index 2."""

    id: Identifier
    kind: Literal["opcua"] = "opcua"
    host: str = "127.0.0.1"
    port: SimPort = 0
    path: str = Field("/plantfloor", pattern=r"^/.*", description="path of the endpoint URL")
    namespace: str = Field("urn:plantfloor:simulator", min_length=1, description="namespace URI of the served nodes")
    lines: tuple[OpcUaLineConfig, ...] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _check(self) -> OpcUaPlcConfig:
        seen: dict[str, str] = {}
        for line in self.lines:
            nodes = [line.counter.node] + ([line.state.node] if line.state is not None else [])
            nodes += [line.second[1].node] if line.second is not None else []
            for node in nodes:
                if node in seen:
                    raise ValueError(f"line {line.id!r}: node {node!r} is already used by line {seen[node]!r}")
                seen[node] = line.id
        return self


PlcConfig = Annotated[ModbusPlcConfig | OpcUaPlcConfig, Field(discriminator="kind")]


class SimConfig(_Model):
    """A set of software PLCs."""

    seed: int = Field(42, description="line i draws its randomness from random.Random(seed + i)")
    timezone: TimeZoneName = Field("UTC", description="IANA time zone of the shift calendar")
    shifts: tuple[Shift, ...] | None = Field(None, description="when present, lines stop outside shifts and during breaks")
    holidays: tuple[date, ...] = Field((), description="dates on which no shift starts (the plant's holidays)")
    plcs: tuple[PlcConfig, ...] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> SimConfig:
        for what, ids in (("plcs", [p.id for p in self.plcs]),
                          ("lines", [ln.id for p in self.plcs for ln in p.lines])):
            seen: set[str] = set()
            for x in ids:
                if x in seen:
                    raise ValueError(f"{what}: duplicate id {x!r}")
                seen.add(x)
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def load_sim_config(path: Path | str) -> SimConfig:
    """Read a simulator file (YAML 1.2, duplicate keys refused); raise ConfigError naming file, line and key."""
    return load_model(Path(path), SimConfig)[0]
