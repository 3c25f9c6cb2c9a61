"""Sparkplug messages read back as the JSON contract's messages, for ``plantfloor watch``.

:class:`SparkplugReader` follows one edge node as a host application does (births set
the aliases, DATA is read through them) and rebuilds from each DDATA the line's window
(``lines/<line>/output``), from each plant NDATA the plant's (``plant/output``), and
from the node's status metrics and NDEATH a ``status``: the watch's model and views then
serve both outputs unchanged. Folders become nested objects again; DateTime metrics
become RFC 3339 text; a metric with ``is_historical`` marks the window historical.
"""

from __future__ import annotations

import contextlib
import json
import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from agent.contract.payloads import OUTPUT_SCHEMA, PLANT_SCHEMA, STATUS_SCHEMA, LineOutput, rfc3339
from agent.outputs.sparkplug.proto import DATATYPES, Payload

__all__ = ["SparkplugReader"]


def _paths(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    """("list", path) of list fields (sent as one String joined with ','), ("optional", path)
    of optional nested models (a folder of nulls is the model's null)."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) is list:
            yield "list", f"{prefix}{name}"
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _paths(annotation, f"{prefix}{name}/")
        elif len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            yield "optional", f"{prefix}{name}"
            yield from _paths(args[0], f"{prefix}{name}/")


_LINE_PATHS = list(_paths(LineOutput))
_LINE_LISTS = frozenset(p for kind, p in _LINE_PATHS if kind == "list")
#: deepest first, so an optional model inside another collapses before its parent
_LINE_OPTIONAL = sorted((p for kind, p in _LINE_PATHS if kind == "optional"),
                        key=lambda p: -p.count("/"))


def _all_null(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_all_null(v) for v in value.values())
    return value is None


def _collapse(data: dict[str, Any], path: str) -> None:
    *folders, leaf = path.split("/")
    node: Any = data
    for folder in folders:
        node = node.get(folder) if isinstance(node, dict) else None
    if isinstance(node, dict) and isinstance(node.get(leaf), dict) and _all_null(node[leaf]):
        node[leaf] = None


class SparkplugReader:
    """Turns one node's Sparkplug messages into (subtopic, JSON payload) pairs."""

    def __init__(self, group_id: str, edge_node_id: str) -> None:
        self.group_id = group_id
        self.edge_node_id = edge_node_id
        self.prefix = f"spBv1.0/{group_id}/"
        self._names: dict[int, str] = {}
        self._types: dict[str, int] = {}
        self._status: dict[str, Any] = {}

    @property
    def topics(self) -> list[str]:
        """The subscriptions: every message of the node and its devices."""
        return [f"spBv1.0/{self.group_id}/+/{self.edge_node_id}/#"]

    def apply(self, topic: str, data: bytes) -> list[tuple[str, bytes]]:
        parts = topic.split("/")
        if len(parts) < 4 or parts[:2] != ["spBv1.0", self.group_id] or parts[3] != self.edge_node_id:
            return []
        verb, device = parts[2], (parts[4] if len(parts) > 4 else None)
        payload = Payload()
        try:
            payload.ParseFromString(data)
        except Exception:  # protobuf's DecodeError: not a Sparkplug payload, ignored
            return []
        if verb == "NBIRTH":
            self._names.clear()
        metrics, historical = self._read(payload, birth=verb in ("NBIRTH", "DBIRTH"))
        if verb == "NDEATH":
            return [("status", self._status_json("offline"))]
        out: list[tuple[str, bytes]] = []
        if verb == "DDATA" and device is not None:
            out.append((f"lines/{device}/output", self._line(device, metrics, historical)))
        if verb == "NDATA" and any(k.startswith("plant/") for k in metrics):
            out.append(("plant/output", self._plant(metrics, historical)))
        status = {k: v for k, v in metrics.items() if k.startswith("agent/")}
        if status or verb == "NBIRTH":
            self._status.update(status)
            out.append(("status", self._status_json("online")))
        return out

    def _read(self, payload: Any, *, birth: bool) -> tuple[dict[str, Any], bool]:
        values: dict[str, Any] = {}
        historical = False
        for m in payload.metrics:
            if birth and m.HasField("alias"):
                self._names[m.alias] = m.name
            name = m.name if m.HasField("name") else self._names.get(m.alias)
            if name is None:
                continue
            if m.HasField("datatype"):
                self._types[name] = m.datatype
            historical |= m.is_historical
            which = m.WhichOneof("value")
            value = None if m.is_null or which is None else getattr(m, which)
            if value is not None and self._types.get(name) == DATATYPES["DateTime"]:
                value = rfc3339(datetime.fromtimestamp(value / 1000, UTC))
            values[name] = value
        return values, historical

    def _nest(self, metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in metrics.items():
            if not name.startswith(prefix):
                continue
            path = name[len(prefix):]
            if path in _LINE_LISTS and isinstance(value, str):
                value = [v for v in value.split(",") if v]
            elif isinstance(value, str) and value[:1] in "{[":
                with contextlib.suppress(ValueError):  # a text that merely starts so
                    value = json.loads(value)
            *folders, leaf = path.split("/")
            node = out
            for folder in folders:
                node = node.setdefault(folder, {})
            node[leaf] = value
        return out

    def _line(self, device: str, metrics: dict[str, Any], historical: bool) -> bytes:
        data = self._nest(metrics)
        for path in _LINE_OPTIONAL:
            _collapse(data, path)
        if "state" not in LineOutput.model_fields:
            data.pop("state", None)
        data.update({"schema": OUTPUT_SCHEMA, "site": self.group_id, "line": device,
                     "historical": historical})
        return json.dumps(data).encode()

    def _plant(self, metrics: dict[str, Any], historical: bool) -> bytes:
        data = self._nest(metrics, "plant/")
        if isinstance(data.get("lines"), dict):  # a line without a window here: not in it
            data["lines"] = {k: v for k, v in data["lines"].items() if v is not None}
        data.update({"schema": PLANT_SCHEMA, "site": self.group_id, "historical": historical})
        return json.dumps(data).encode()

    def _status_json(self, state: str) -> bytes:
        s = self._status
        now = rfc3339(datetime.now(UTC))
        alarms = [{"kind": k, "message": "", "since": now}
                  for k in str(s.get("agent/alarms") or "").split(",") if k]
        return json.dumps({
            "schema": STATUS_SCHEMA, "state": state, "agent": self.edge_node_id,
            "version": s.get("agent/version") or "-", "started_at": None, "config_sha256": "-",
            "backlog": s.get("agent/backlog") or 0, "dropped": s.get("agent/dropped") or 0,
            "alarms": alarms, "ts": now}).encode()
