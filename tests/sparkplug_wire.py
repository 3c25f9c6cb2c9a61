"""An independent Sparkplug B reader for the tests: the project's .proto and the wire format.

Nothing here imports the agent's encoder or the ``protobuf`` package. The message
definitions are read from ``agent/outputs/sparkplug/sparkplug_b.proto`` by a small
parser, and payloads are decoded (and commands encoded) with the protobuf wire format
written out below: a bug in the agent's descriptor or encoder cannot hide behind the
same bug here.

:class:`Node` follows one edge node's messages as a host application would: births set
the alias tables, DATA messages are read through them.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTO = Path(__file__).resolve().parent.parent / "agent" / "outputs" / "sparkplug" / "sparkplug_b.proto"

SCALARS = {"uint32", "uint64", "float", "double", "bool", "string", "bytes"}


@dataclass(frozen=True)
class FieldDef:
    name: str
    number: int
    type: str          # a scalar, or the full name of a message
    repeated: bool
    oneof: str | None


@dataclass
class Schema:
    """Messages (full name -> fields by number), enums (name -> value), extension ranges."""

    messages: dict[str, dict[int, FieldDef]] = field(default_factory=dict)
    enums: dict[str, dict[str, int]] = field(default_factory=dict)
    extensions: dict[str, int] = field(default_factory=dict)


def parse_proto(text: str) -> Schema:
    """Parse the proto2 subset the Sparkplug definition uses."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    tokens = re.findall(r"[A-Za-z_][\w.]*|\d+|[{}=;]", text)
    schema = Schema()
    scope: list[tuple[str, str]] = []   # (kind, name)
    pending: list[tuple[str, str, str, int, bool, str | None]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("message", "enum", "oneof"):
            scope.append((tok, tokens[i + 1]))
            if tok == "message":
                schema.messages[_full(scope)] = {}
            elif tok == "enum":
                schema.enums[tokens[i + 1]] = {}
            i += 3
        elif tok == "}":
            scope.pop()
            i += 1
        elif tok in ("syntax", "package", "option"):
            i = tokens.index(";", i) + 1
        elif tok == "extensions":
            schema.extensions[_full(scope)] = int(tokens[i + 1])
            i = tokens.index(";", i) + 1
        elif scope and scope[-1][0] == "enum":
            schema.enums[scope[-1][1]][tok] = int(tokens[i + 2])
            i += 4
        else:
            label = "optional"
            if tok in ("optional", "repeated", "required"):
                label, i = tok, i + 1
            type_, name, number = tokens[i], tokens[i + 1], int(tokens[i + 3])
            oneof = scope[-1][1] if scope[-1][0] == "oneof" else None
            pending.append((_full(scope), type_, name, number, label == "repeated", oneof))
            i += 5
    for owner, type_, name, number, repeated, oneof in pending:
        resolved = type_ if type_ in SCALARS else _resolve(schema, owner, type_)
        schema.messages[owner][number] = FieldDef(name, number, resolved, repeated, oneof)
    return schema


def _full(scope: list[tuple[str, str]]) -> str:
    return ".".join(name for kind, name in scope if kind == "message")


def _resolve(schema: Schema, owner: str, type_: str) -> str:
    parts = owner.split(".")
    for n in range(len(parts), -1, -1):
        candidate = ".".join([*parts[:n], type_])
        if candidate in schema.messages:
            return candidate
    raise ValueError(f"unknown type {type_} in {owner}")


SCHEMA = parse_proto(PROTO.read_text(encoding="utf-8"))
DATATYPES = SCHEMA.enums["DataType"]


# --- the wire format -----------------------------------------------------------------------

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def decode(data: bytes, message: str = "Payload") -> dict[str, Any]:
    """A message as a dict by field name (repeated fields as lists); unknown fields kept by number."""
    fields = SCHEMA.messages[message]
    out: dict[str, Any] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            raw, pos = _varint(data, pos)
            value: Any = raw
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ValueError(f"wire type {wire} at {pos}")
        f = fields.get(number)
        if f is None:
            out.setdefault(number, []).append(value)
            continue
        value = _convert(f, value)
        if f.repeated:
            out.setdefault(f.name, []).append(value)
        else:
            out[f.name] = value
    return out


def _convert(f: FieldDef, value: Any) -> Any:
    if f.type == "string":
        return value.decode("utf-8")
    if f.type == "bytes":
        return bytes(value)
    if f.type == "bool":
        return bool(value)
    if f.type == "double":
        return struct.unpack("<d", value)[0]
    if f.type == "float":
        return struct.unpack("<f", value)[0]
    if f.type in ("uint32", "uint64"):
        return value
    return decode(value, f.type)


def _put_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode(values: dict[str, Any], message: str = "Payload") -> bytes:
    """The inverse of :func:`decode` for the fields the tests send (commands)."""
    by_name = {f.name: f for f in SCHEMA.messages[message].values()}
    out = bytearray()
    for name, value in values.items():
        f = by_name[name]
        for item in (value if f.repeated else [value]):
            if f.type in ("uint32", "uint64", "bool"):
                out += _put_varint(f.number << 3) + _put_varint(int(item))
            elif f.type == "double":
                out += _put_varint(f.number << 3 | 1) + struct.pack("<d", item)
            else:
                body = item.encode() if f.type == "string" else (
                    item if f.type == "bytes" else encode(item, f.type))
                out += _put_varint(f.number << 3 | 2) + _put_varint(len(body)) + body
    return bytes(out)


def command(metrics: list[dict[str, Any]], ts_ms: int = 0) -> bytes:
    """An NCMD/DCMD payload."""
    return encode({"timestamp": ts_ms, "metrics": metrics})


# --- following a node ------------------------------------------------------------------------

def metric_value(m: dict[str, Any]) -> Any:
    """A metric's value (None when is_null): the oneof field that is present."""
    if m.get("is_null"):
        return None
    for f in SCHEMA.messages["Payload.Metric"].values():
        if f.oneof == "value" and f.name in m:
            return m[f.name]
    return None


@dataclass
class Message:
    """One Sparkplug message as received: verb, device, payload, metrics by name."""

    verb: str
    device: str | None
    payload: dict[str, Any]
    metrics: dict[str, dict[str, Any]]

    @property
    def seq(self) -> int | None:
        return self.payload.get("seq")

    def value(self, name: str) -> Any:
        return metric_value(self.metrics[name])


@dataclass
class Node:
    """The messages of one edge node, read through the aliases its births define."""

    group: str
    node: str
    messages: list[Message] = field(default_factory=list)      # what the node sent
    commands: list[Message] = field(default_factory=list)      # NCMD/DCMD sent to it
    aliases: dict[int, str] = field(default_factory=dict)

    @classmethod
    def read(cls, group: str, node: str, received: list[Any]) -> Node:
        """From a test subscriber's messages (``.topic``, ``.payload``), in arrival order."""
        self = cls(group, node)
        for m in received:
            parts = m.topic.split("/")
            if parts[:2] != ["spBv1.0", group] or len(parts) < 4 or parts[3] != node:
                continue
            self.add(parts[2], parts[4] if len(parts) > 4 else None, m.payload)
        return self

    def add(self, verb: str, device: str | None, data: bytes) -> None:
        payload = decode(data)
        metrics: dict[str, dict[str, Any]] = {}
        for m in payload.get("metrics", []):
            if verb in ("NBIRTH", "DBIRTH") and "alias" in m:
                self.aliases[m["alias"]] = m["name"]
            name = m.get("name") or self.aliases.get(m.get("alias", -1), f"alias:{m.get('alias')}")
            metrics[name] = m
        message = Message(verb, device, payload, metrics)
        (self.commands if verb in ("NCMD", "DCMD") else self.messages).append(message)

    def of(self, *verbs: str) -> list[Message]:
        return [m for m in self.messages if m.verb in verbs]

    def windows(self, device: str) -> dict[tuple[int, int], Message]:
        """The device's distinct windows by (epoch, seq): the dedupe rule of docs/sparkplug.md."""
        out: dict[tuple[int, int], Message] = {}
        for m in self.of("DDATA"):
            if m.device == device:
                out.setdefault((m.value("epoch"), m.value("seq")), m)
        return out

    def units(self, device: str) -> int:
        return sum(m.value("units") for m in self.windows(device).values())

    def seqs(self) -> list[int]:
        """The ``seq`` of every message but NDEATH, in arrival order."""
        return [m.seq for m in self.messages if m.verb != "NDEATH" and m.seq is not None]
