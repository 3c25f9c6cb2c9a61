"""The JSON contract (docs/mqtt.md): ``R/lines/<line>/output`` and ``R/plant/output`` every
window, and the retained shift reports ``R/lines/<line>/shift`` and ``R/plant/shift``."""

from __future__ import annotations

from agent.config import Config
from agent.contract.payloads import encode
from agent.outputs.base import WindowOutputs
from agent.store import NewRecord, OutboxRecord

__all__ = ["HISTORICAL_FALSE", "HISTORICAL_TRUE", "JsonFormat", "mark_historical"]

HISTORICAL_FALSE = b'"historical":false}'
HISTORICAL_TRUE = b'"historical":true}'


def mark_historical(payload: bytes) -> bytes:
    """The payload with its trailing ``"historical":false}`` turned true (else unchanged).

    The stored JSON is never re-serialised: ``historical`` is the payload's last field.
    """
    if payload.endswith(HISTORICAL_FALSE):
        return payload[: -len(HISTORICAL_FALSE)] + HISTORICAL_TRUE
    return payload


class JsonFormat:
    """One JSON message per line and one for the plant per window, at the configured QoS."""

    name = "json"

    def __init__(self, root: str = "plantfloor", qos: int = 1) -> None:
        self.root = root
        self.qos = qos

    @classmethod
    def from_config(cls, cfg: Config) -> JsonFormat:
        return cls(cfg.topic_root, cfg.mqtt.qos)

    def records(self, window: WindowOutputs) -> list[NewRecord]:
        out = [NewRecord(topic=f"{self.root}/lines/{o.line}/output", payload=o.json, qos=self.qos,
                         retain=False, line=o.line, seq=o.seq, window_end=window.end)
               for o in window.lines]
        out.append(NewRecord(topic=f"{self.root}/plant/output", payload=encode(window.plant),
                             qos=self.qos, retain=False, line=None, seq=window.plant.seq,
                             window_end=window.end))
        # a shift's report is retained: a subscriber arriving later still gets the last one
        out += [NewRecord(topic=f"{self.root}/{'lines/' + r.line if r.line else 'plant'}/shift",
                          payload=encode(r), qos=1, retain=True, line=r.line, seq=None,
                          window_end=window.end)
                for r in window.shift_reports]
        return out

    def wire(self, record: OutboxRecord, *, historical: bool) -> bytes:
        return mark_historical(record.payload) if historical else record.payload
