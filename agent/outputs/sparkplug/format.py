"""The Sparkplug B output format: a window becomes one DDATA per line and one NDATA.

At commit (:meth:`SparkplugFormat.records`) each line's window is stored as a DDATA
template of its device and the plant's as an NDATA template of the node
(:mod:`agent.outputs.sparkplug.encoding`); at send time (:meth:`SparkplugFormat.wire`)
a template gets this session's aliases and, when sent late, ``is_historical``. The
edge node (:mod:`agent.outputs.sparkplug.node`) adds ``seq`` and the payload
timestamp as it publishes. The format also remembers each device's latest values,
which the births announce as current.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from agent.config import Config
from agent.contract.errors import PublishRefused
from agent.outputs.base import WindowOutputs
from agent.outputs.sparkplug.encoding import BirthMetric, Unknown, template, to_data
from agent.outputs.sparkplug.metrics import (
    MetricSpec,
    line_metrics,
    line_values,
    node_metrics,
    plant_values,
)
from agent.store import NewRecord, OutboxRecord

__all__ = ["NAMESPACE", "SparkplugFormat", "Topics"]

NAMESPACE: Final = "spBv1.0"
#: Sparkplug 3.0 requires QoS 0 for every message but the will (see docs/sparkplug.md for
#: how a QoS 0 record is known to have reached the broker before it leaves the outbox)
DATA_QOS: Final = 0


@dataclass(frozen=True, slots=True)
class Topics:
    """The edge node's topics (Sparkplug 3.0, chapter 4)."""

    group_id: str
    edge_node_id: str

    def node(self, verb: str) -> str:
        return f"{NAMESPACE}/{self.group_id}/{verb}/{self.edge_node_id}"

    def device(self, verb: str, device_id: str) -> str:
        return f"{NAMESPACE}/{self.group_id}/{verb}/{self.edge_node_id}/{device_id}"

    @staticmethod
    def state(host_id: str) -> str:
        return f"{NAMESPACE}/STATE/{host_id}"


def _ms(ts: Any) -> int:
    return int(ts.timestamp() * 1000)


class SparkplugFormat:
    """Records and wire bytes of the Sparkplug output; the metric catalogue and aliases."""

    name = "sparkplug"

    def __init__(self, cfg: Config) -> None:
        sp = cfg.sparkplug
        if sp is None:
            raise ValueError("output sparkplug needs the sparkplug section")
        self.topics = Topics(sp.group_id, sp.edge_node_id)
        #: DATA metrics repeat their datatype (``sparkplug.data_datatypes``)
        self.data_datatypes = sp.data_datatypes
        self.node_specs: list[MetricSpec] = node_metrics(cfg)
        self.device_specs: dict[str, list[MetricSpec]] = {
            line.id: line_metrics(line) for line in cfg.lines}
        # aliases are unique across the node: the node's metrics first, then each device's
        self.aliases: dict[str | None, dict[str, int]] = {}
        next_alias = 1
        for device, specs in [(None, self.node_specs), *self.device_specs.items()]:
            self.aliases[device] = {s.name: next_alias + i for i, s in enumerate(specs)}
            next_alias += len(specs)
        # the latest values (and their time) per device, None for the node: the births' values
        self.latest: dict[str | None, tuple[dict[str, Any], int]] = {}

    @classmethod
    def from_config(cls, cfg: Config) -> SparkplugFormat:
        return cls(cfg)

    def records(self, window: WindowOutputs) -> list[NewRecord]:
        ts = _ms(window.end)
        out = []
        for line in window.lines:
            specs = self.device_specs.get(line.line)
            if specs is None:
                continue
            values = line_values(line.model(), specs)
            self.latest[line.line] = (values, ts)
            out.append(NewRecord(topic=self.topics.device("DDATA", line.line),
                                 payload=template(specs, values, ts), qos=DATA_QOS, retain=False,
                                 line=line.line, seq=line.seq, window_end=window.end,
                                 format=self.name))
        plant_specs = [s for s in self.node_specs if s.name.startswith("plant/")]
        values = plant_values(window.plant, plant_specs)
        self.latest[None] = ({**self.latest.get(None, ({}, 0))[0], **values}, ts)
        out.append(NewRecord(topic=self.topics.node("NDATA"), payload=template(plant_specs, values, ts),
                             qos=DATA_QOS, retain=False, line=None, seq=window.plant.seq,
                             window_end=window.end, format=self.name))
        return out

    def wire(self, record: OutboxRecord, *, historical: bool) -> bytes:
        """The body of the DDATA/NDATA (aliases, ``is_historical``); the node stamps ``seq``.

        A window of a line this configuration no longer has is refused
        (:class:`~agent.contract.errors.PublishRefused`: it stays in the outbox, alarmed), since the
        device was not born; a metric since removed is left out.
        """
        try:
            return to_data(record.payload, self.aliases.get(record.line, {}), historical=historical,
                           datatypes=self.data_datatypes)
        except Unknown as exc:
            # kept in the outbox, parked and alarmed like any refused record, never dropped
            raise PublishRefused(record.topic, 0x80, str(exc)) from exc

    def birth_metrics(self, device: str | None, now_ms: int,
                      extra: Mapping[str, Any] | None = None) -> list[BirthMetric]:
        """A device's (or, for None, the node's) metrics with their latest values."""
        specs = self.node_specs if device is None else self.device_specs[device]
        values, ts = self.latest.get(device, ({}, now_ms))
        values = {**values, **(extra or {})}
        aliases = self.aliases[device]
        return [BirthMetric(spec=s, value=values.get(s.name),
                            ts_ms=now_ms if extra and s.name in extra else ts,
                            alias=aliases[s.name]) for s in specs]
