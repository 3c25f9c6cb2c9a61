"""Sparkplug B payloads: stored templates, what goes on the wire, births, death, commands.

A window is stored in the outbox as a *template*: a ``Payload`` whose metrics carry their
names, datatypes, the window's timestamp and values, and nothing that belongs to an MQTT
session. At send time :func:`to_data` turns names into the session's aliases, drops the
datatypes (a DATA message should not repeat them) and marks the metrics historical when
the window is sent late; :func:`stamp` then adds the payload timestamp and the session's
``seq``. A template never depends on the configuration's order of lines, so a stored
window stays valid across restarts and configuration changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.outputs.sparkplug.metrics import BDSEQ, REBIRTH, MetricSpec, wire_value
from agent.outputs.sparkplug.proto import DATATYPES, Payload

__all__ = [
    "Command",
    "Unknown",
    "birth",
    "decode_commands",
    "ndeath",
    "stamp",
    "template",
    "to_data",
]


class Unknown(ValueError):
    """A stored metric whose name the current session does not know (a removed line or tag)."""


def _add(payload: Any, spec: MetricSpec, value: Any, ts_ms: int, *, alias: int | None,
         name: bool = True, datatype: bool = True) -> None:
    metric = payload.metrics.add()
    if name:
        metric.name = spec.name
    if alias is not None:
        metric.alias = alias
    metric.timestamp = ts_ms
    if datatype:
        metric.datatype = spec.datatype
    field = wire_value(spec.datatype, value)
    if field is None:
        metric.is_null = True
    else:
        setattr(metric, field[0], field[1])


def template(specs: Sequence[MetricSpec], values: Mapping[str, Any], ts_ms: int) -> bytes:
    """A window's stored form: every metric by name, with its datatype, value and timestamp."""
    payload = Payload()
    for spec in specs:
        _add(payload, spec, values.get(spec.name), ts_ms, alias=None)
    return bytes(payload.SerializeToString())


def to_data(stored: bytes, aliases: Mapping[str, int], *, historical: bool,
            datatypes: bool = False) -> bytes:
    """A stored template as the body of an NDATA/DDATA: aliases instead of names, and
    no datatypes unless ``datatypes`` (the birth announced them).

    A metric the birth did not announce (a tag or line since removed from the
    configuration) is left out; raises :class:`Unknown` when no metric is left (a
    device that no longer exists), since nothing of it may be sent.
    """
    payload = Payload()
    payload.ParseFromString(stored)
    known = [m for m in payload.metrics if m.name in aliases]
    if not known:
        raise Unknown("none of its metrics is in this session's birth")
    if len(known) < len(payload.metrics):
        kept = [m.SerializeToString() for m in known]
        del payload.metrics[:]
        for data in kept:
            payload.metrics.add().ParseFromString(data)
    for metric in payload.metrics:
        alias = aliases[metric.name]
        metric.ClearField("name")
        if not datatypes:
            metric.ClearField("datatype")
        metric.alias = alias
        if historical:
            metric.is_historical = True
    return bytes(payload.SerializeToString())


def stamp(body: bytes, *, seq: int, now_ms: int) -> bytes:
    """The message as sent: ``body`` with the payload timestamp and the session's ``seq``."""
    payload = Payload()
    payload.ParseFromString(body)
    payload.timestamp = now_ms
    payload.seq = seq
    return bytes(payload.SerializeToString())


@dataclass(frozen=True, slots=True)
class BirthMetric:
    """A metric as announced in a birth: its current value and when it was taken."""

    spec: MetricSpec
    value: Any
    ts_ms: int
    alias: int | None


def birth(metrics: Iterable[BirthMetric], *, bdseq: int | None, now_ms: int, seq: int) -> bytes:
    """An NBIRTH (with ``bdseq``: bdSeq and ``Node Control/Rebirth`` first) or a DBIRTH."""
    payload = Payload()
    payload.timestamp = now_ms
    payload.seq = seq
    if bdseq is not None:
        _add(payload, MetricSpec(BDSEQ, DATATYPES["Int64"]), bdseq, now_ms, alias=None)
        # the specification forbids an alias for the rebirth metric
        _add(payload, MetricSpec(REBIRTH, DATATYPES["Boolean"]), False, now_ms, alias=None)
    for m in metrics:
        _add(payload, m.spec, m.value, m.ts_ms, alias=m.alias)
    return bytes(payload.SerializeToString())


def ndeath(bdseq: int, now_ms: int) -> bytes:
    """The NDEATH (the MQTT will): the bdSeq metric alone, no ``seq``."""
    payload = Payload()
    payload.timestamp = now_ms
    _add(payload, MetricSpec(BDSEQ, DATATYPES["Int64"]), bdseq, now_ms, alias=None)
    return bytes(payload.SerializeToString())


@dataclass(frozen=True, slots=True)
class Command:
    """One metric of an NCMD or DCMD: its name or alias and its value (None when null)."""

    name: str | None
    alias: int | None
    value: Any


def decode_commands(data: bytes) -> list[Command]:
    """The metrics of a command payload; ``ValueError`` when it is not a Sparkplug payload."""
    payload = Payload()
    try:
        payload.ParseFromString(data)
    except Exception as exc:  # protobuf raises its own DecodeError (a plain Exception)
        raise ValueError(f"not a Sparkplug B payload: {exc}") from exc
    out = []
    for metric in payload.metrics:
        which = metric.WhichOneof("value")
        out.append(Command(name=metric.name if metric.HasField("name") else None,
                           alias=metric.alias if metric.HasField("alias") else None,
                           value=getattr(metric, which) if which else None))
    return out
