"""The roll-up's MQTT payloads: what it reads from gateways and what it publishes for the site.

* :class:`IncomingWindow` parses ``R/lines/<line>/output`` with the agent's own
  :class:`~agent.contract.payloads.LineOutput`, as a tolerant consumer should (docs/mqtt.md): unknown
  fields and event names are accepted, the schema's major version is checked;
  :class:`IncomingShiftReport` does the same for ``R/lines/<line>/shift``.
* :class:`SitePlantOutput` is ``S/plant/output``: the fields of ``R/plant/output``
  (``plantfloor.plant/1``) plus ``revision`` and ``gateways``. Additions are compatible, so
  a consumer of a gateway's plant figure reads the site's unchanged.
* :class:`RollupStatus` is the retained ``S/rollup/<replica>/status`` of each replica.
* :class:`SiteAck` is the retained ``S/rollup/ack/<gateway>``: what the site has committed
  of each of the gateway's lines (the end-to-end acknowledgement).
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.contract.payloads import LineOutput, PlantOutput, ShiftReport, Timestamp

__all__ = [
    "ACK_SCHEMA",
    "ROLLUP_STATUS_SCHEMA",
    "GatewayReport",
    "IncomingShiftReport",
    "IncomingWindow",
    "LineAck",
    "RollupStatus",
    "SiteAck",
    "SitePlantOutput",
    "site_payload_schemas",
]

ROLLUP_STATUS_SCHEMA: Final = "plantfloor.rollup-status/1"


class IncomingWindow(LineOutput):
    """A gateway's line window as received: the agent's model, tolerant of additions (parse
    with ``extra="ignore"``: unknown fields at any depth are dropped). No infinity or NaN
    here; at any depth, :func:`agent.rollup.bounds.out_of_bounds` checks the rest."""

    events: list[str]  # type: ignore[assignment]  # a newer agent may name new events

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, allow_inf_nan=False)


class IncomingShiftReport(ShiftReport):
    """A gateway's ``R/lines/<line>/shift`` as received (parse with ``extra="ignore"``)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, allow_inf_nan=False)


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayReport(_Payload):
    """One gateway's part in a site window."""

    lines: dict[str, int] = Field(..., description="units per line of this gateway that reported the window")
    missing: list[str] = Field(..., description="configured lines of this gateway with no window for it (yet)")
    late: list[str] = Field(..., description="lines whose window arrived after the site window was first published")


class SitePlantOutput(PlantOutput):
    """``S/plant/output``: the site's plant figure, once per site window (and per revision)."""

    revision: int = Field(0, ge=0, description="0 when first published; +1 each time windows that arrived later "
                                               "changed it (keep the highest per epoch and seq)")
    gateways: dict[str, GatewayReport] = Field(..., description="per gateway: the lines that contributed, "
                                                                "and those missing or late")


class RollupStatus(_Payload):
    """``S/rollup/<replica>/status``: retained; birth, last will, changes of role, every status interval."""

    schema_: Literal["plantfloor.rollup-status/1"] = Field(ROLLUP_STATUS_SCHEMA, alias="schema")
    state: Literal["online", "offline"]
    site: str
    replica: str
    client_id: str
    version: str
    ready: bool = Field(..., description="subscribed: windows routed to this replica are being committed")
    leader: bool = Field(..., description="this replica publishes the site's plant figure")
    started_at: Timestamp
    windows: int = Field(..., ge=0, description="line windows this replica committed since it started")
    duplicates: int = Field(..., ge=0, description="line windows it received that the database already held")
    rejected: int = Field(..., ge=0, description="messages it could not read or store (kept in rejected_message)")
    dropped: int = Field(0, ge=0, description="QoS 0 messages dropped because its ingest queue was full")
    alarms: list[str] = Field(default_factory=list, description="what needs an operator: leader_failing (the "
                                                                 "site figure cannot be computed), writer_failing "
                                                                 "(windows cannot be committed)")
    last_error: str | None = Field(None, description="the last such failure, in one sentence")
    ts: Timestamp

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


ACK_SCHEMA: Final = "plantfloor.rollup-ack/1"


class LineAck(_Payload):
    """What the site has committed of one line."""

    epoch: int = Field(..., ge=0, description="the agent's epoch these windows belong to (the one that advanced last)")
    first: int = Field(..., ge=1, description="the lowest seq of the run the site has without a gap (the first "
                                             "window of the epoch it received, lower when earlier ones arrive later)")
    seq: int = Field(..., ge=0, description="every window of this epoch from first up to this seq is committed at "
                                            "the site (first - 1: none yet)")


class SiteAck(_Payload):
    """``S/rollup/ack/<gateway>``: retained, QoS 1, republished after each commit that moved a
    line of the gateway. Replicas publish it independently: keep the widest run per epoch."""

    schema_: Literal["plantfloor.rollup-ack/1"] = Field(ACK_SCHEMA, alias="schema")
    site: str
    gateway: str = Field(..., description="the gateway's id in the roll-up's config")
    lines: dict[str, LineAck] = Field(..., description="per line of the gateway that the site has received")
    ts: Timestamp

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def site_payload_schemas() -> dict[str, Any]:
    """JSON Schema of the roll-up's own payloads, keyed by topic pattern."""
    return {
        "S/plant/output": SitePlantOutput.model_json_schema(by_alias=True),
        "S/rollup/<replica>/status": RollupStatus.model_json_schema(by_alias=True),
        "S/rollup/ack/<gateway>": SiteAck.model_json_schema(by_alias=True),
    }
