"""The configuration file as a whole (pydantic v2) and its cross-field checks: unknown keys
are errors, every model is frozen.

The models describe every key of the configuration file; ``plantfloor schema config``
prints their JSON Schema. Loading YAML and turning validation errors into one sentence
naming file, line and key lives in :mod:`agent.config.load`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import (
    Field,
    model_validator,
)

from agent.config.board import BoardConfig
from agent.config.lines import LineConfig, ModbusTag, OpcUaTag, TagConfig
from agent.config.mqtt import MetricsConfig, MqttConfig, SiteAckConfig, SparkplugConfig
from agent.config.plant import (
    DowntimeConfig,
    PlantConfig,
    PublishConfig,
    Shift,
    StorageConfig,
)
from agent.config.sources import ModbusSource, OpcUaSource, SourceConfig
from agent.config.types import (
    ROLE_KEYS,
    TYPE_MODULUS,
    Identifier,
    TimeZoneName,
    _Model,
    _to_time,
)

__all__ = ["Config"]

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
    site_ack: SiteAckConfig | None = Field(None, description="the site service this gateway serves: its line windows stay in the state file until the site acknowledges them on this topic, and are published again when it does not (absent: a window leaves once the broker has it)")
    board: BoardConfig = Field(BoardConfig(), description="plantfloor board: the read-only web board of this gateway (docs/board.md)")

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
            key = f"{'tags.' + tag_name if tag_name else ROLE_KEYS[role]}"
            name = f"lines.{i}.{key}"            # the path the error is located by
            label = f"lines[{line.id}].{key}"    # as the error names it
            if isinstance(tag, ModbusTag):
                src = cfg.source(tag.source)
                assert isinstance(src, ModbusSource)
                unit = tag.unit_id if tag.unit_id is not None else src.unit_id
                for reg in range(tag.address, tag.address + tag.width):
                    k = (tag.source, unit, tag.table, reg)
                    if k in used:
                        raise ValueError(f"{name}.address: register {tag.table} {reg} of unit {unit} on "
                                         f"{tag.source!r} is already used by {used[k]}")
                    used[k] = label
            elif isinstance(tag, OpcUaTag):
                k2 = (tag.source, tag.node)
                if k2 in nodes:
                    raise ValueError(f"{name}.node: {tag.node!r} on {tag.source!r} is already used by {nodes[k2]}")
                nodes[k2] = label


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
