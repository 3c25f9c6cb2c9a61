"""Which metrics the edge node and its devices publish: names, datatypes, values.

The metrics are derived from the payload models, so the Sparkplug output carries what the
JSON output carries and a field added to :class:`~agent.contract.payloads.LineOutput` or
:class:`~agent.contract.payloads.PlantOutput` becomes a metric without a change here. A nested
model becomes a folder (``shift/units``); the line's ``tags`` and the plant's ``lines``
become one metric per configured tag or line (``tags/buffer``, ``plant/lines/kei``).

Datatypes: ``int`` is UInt64 (every count, ``epoch`` and ``seq`` is non-negative; a
counter may exceed 2**63), ``float`` Double, ``bool`` Boolean, ``datetime`` DateTime
(ms since 1970, UTC), text, dates and ``Literal`` values String, a list of strings one
String joined with ``,``; anything else is String holding its JSON.
"""

from __future__ import annotations

import datetime as dt
import json
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel

from agent.config import Config, LineConfig
from agent.contract.payloads import LineOutput, PlantOutput
from agent.outputs.sparkplug.proto import DATATYPES

__all__ = [
    "BDSEQ",
    "REBIRTH",
    "STATUS_METRICS",
    "MetricSpec",
    "line_metrics",
    "line_values",
    "node_metrics",
    "plant_values",
]

BDSEQ: Final = "bdSeq"
REBIRTH: Final = "Node Control/Rebirth"
#: fields that are the message's identity or delivery, not metrics: the topic names the
#: device, the node's birth the site; ``historical`` is each metric's ``is_historical``
_SKIPPED: Final = frozenset({"schema_", "site", "line", "historical"})


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its name and Sparkplug datatype (a :data:`DATATYPES` value)."""

    name: str
    datatype: int


#: the agent's own status, published as NDATA when it changes
STATUS_METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec("agent/version", DATATYPES["String"]),
    MetricSpec("agent/backlog", DATATYPES["UInt64"]),
    MetricSpec("agent/dropped", DATATYPES["UInt64"]),
    MetricSpec("agent/alarms", DATATYPES["String"]),
    MetricSpec("agent/commands_refused", DATATYPES["UInt64"]),
)


def _datatype(annotation: Any) -> int | type[BaseModel] | None:
    """The datatype of a field's annotation; a model class for a folder; None for a dict."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _datatype(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _datatype(args[0]) if len(args) == 1 else DATATYPES["String"]
    if origin is typing.Literal:
        return DATATYPES["String"]
    if origin is dict:
        return None
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return annotation
        for kind, name in ((bool, "Boolean"), (int, "UInt64"), (float, "Double"),
                           (dt.datetime, "DateTime")):
            if issubclass(annotation, kind):
                return DATATYPES[name]
    return DATATYPES["String"]


def _specs(model: type[BaseModel], prefix: str,
           keys: Mapping[str, tuple[Sequence[str], int]]) -> Iterator[MetricSpec]:
    for name, info in model.model_fields.items():
        if name in _SKIPPED:
            continue
        kind = _datatype(info.annotation)
        if isinstance(kind, type):
            yield from _specs(kind, f"{prefix}{name}/", keys)
        elif kind is None:
            names, datatype = keys.get(name, ((), DATATYPES["String"]))
            if name in keys:
                yield from (MetricSpec(f"{prefix}{name}/{key}", datatype) for key in names)
            else:
                yield MetricSpec(f"{prefix}{name}", DATATYPES["String"])
        else:
            yield MetricSpec(f"{prefix}{name}", kind)


def line_metrics(line: LineConfig) -> list[MetricSpec]:
    """Every metric of a line's device, in birth order."""
    specs = list(_specs(LineOutput, "", {"tags": (list(line.tags), DATATYPES["Double"])}))
    if "state" not in LineOutput.model_fields:
        specs.append(MetricSpec("state", DATATYPES["String"]))
    return specs


def node_metrics(cfg: Config) -> list[MetricSpec]:
    """The node's metrics other than ``bdSeq`` and ``Node Control/Rebirth``: plant and status."""
    lines = [line.id for line in cfg.lines]
    return [*_specs(PlantOutput, "plant/", {"lines": (lines, DATATYPES["UInt64"])}),
            *STATUS_METRICS]


def _values(data: Mapping[str, Any], specs: Sequence[MetricSpec], prefix: str) -> dict[str, Any]:
    """Each metric's value, found by its name's path in the payload's dump (None when absent).

    Names never contain '/' inside a key (ids and tag names are identifiers), so the path
    is the name split on '/'; a dict the catalogue does not expand is one value (JSON).
    """
    out: dict[str, Any] = {}
    for spec in specs:
        if not spec.name.startswith(prefix):
            continue
        node: Any = data
        for key in spec.name[len(prefix):].split("/"):
            node = node.get(key) if isinstance(node, dict) else None
        out[spec.name] = node
    return out


def _dominant_state(seconds: Mapping[str, float]) -> str:
    """The state the line spent most of the window in (ties: running, stopped, faulted, unknown)."""
    order = ("running", "stopped", "faulted", "unknown")
    return max(order, key=lambda s: (seconds.get(s, 0.0), -order.index(s)))


def line_values(out: LineOutput, specs: Sequence[MetricSpec]) -> dict[str, Any]:
    """A line window's metric values by name (a missing name is a null)."""
    values = _values(out.model_dump(mode="python"), specs, "")
    if "state" not in LineOutput.model_fields:
        values["state"] = _dominant_state(out.state_seconds.model_dump())
    return values


def plant_values(out: PlantOutput, specs: Sequence[MetricSpec]) -> dict[str, Any]:
    """The plant window's metric values by name."""
    return _values(out.model_dump(mode="python"), specs, "plant/")


def wire_value(datatype: int, value: Any) -> tuple[str, Any] | None:
    """The ``Metric`` value field and its value for a Python value; None for a null."""
    if value is None:
        return None
    if datatype == DATATYPES["DateTime"]:
        if isinstance(value, dt.datetime):
            return "long_value", int(value.timestamp() * 1000)
        return "long_value", int(value)
    if datatype in (DATATYPES["UInt64"], DATATYPES["Int64"]):
        return "long_value", int(value) % 2**64
    if datatype == DATATYPES["Double"]:
        return "double_value", float(value)
    if datatype == DATATYPES["Boolean"]:
        return "boolean_value", bool(value)
    return "string_value", _text(value)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return json.dumps(value, default=str, separators=(",", ":"))

