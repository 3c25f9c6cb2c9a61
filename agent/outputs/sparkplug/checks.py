"""``plantfloor check`` for the Sparkplug output: the node's summary and what may collide.

The ids' characters are validated with the config (:class:`agent.config.SparkplugConfig`);
here are the warnings about what is valid but likely wrong. Two gateways that present
the same group and edge node id make a host application see one node born and dying in
turn: it asks both for rebirths, endlessly. An id cannot be checked against the other
gateways from one config, so the warnings name the usual ways it happens: an id copied
from an example or derived from the site (the same on every gateway of the site), a
generic name, and ids that differ from another only in case (the specification advises
against ids that match when lower-cased).
"""

from __future__ import annotations

from agent.config import Config

__all__ = ["describe", "warnings"]

#: edge node ids that say nothing about which gateway it is
GENERIC = frozenset({
    "edge", "edge-node", "edge_node", "edgenode", "node", "node1", "node-1", "gateway", "gw",
    "gw1", "gw-1", "gateway1", "gateway-1", "plantfloor", "agent", "default", "test", "demo",
})


def describe(cfg: Config) -> str | None:
    """One summary line for the Sparkplug node, or None when the output is JSON only."""
    sp = cfg.sparkplug
    if sp is None or cfg.output == "json":
        return None
    host = f"waits for primary host {sp.primary_host_id}" if sp.primary_host_id else "no primary host"
    devices = ", ".join(line.id for line in cfg.lines)
    return (f"sparkplug: edge node spBv1.0/{sp.group_id}/+/{sp.edge_node_id} ({host}); "
            f"devices {devices}; output {cfg.output}")


def warnings(cfg: Config) -> list[str]:
    """Sparkplug ids likely to collide between gateways, and a section without effect."""
    sp = cfg.sparkplug
    if sp is None:
        return []
    if cfg.output == "json":
        return ["sparkplug: the section has no effect while output is json"]
    out: list[str] = []
    node = sp.edge_node_id
    if node.lower() in GENERIC or node.lower() in (sp.group_id.lower(), cfg.site.lower()):
        out.append(f"sparkplug.edge_node_id {node!r} is likely the same on other gateways: two "
                   "nodes with one id make host applications demand rebirths from both; use "
                   "this gateway's own name (e.g. its host name)")
    for key, value in (("group_id", sp.group_id), ("edge_node_id", node)):
        if value != value.lower():
            out.append(f"sparkplug.{key} {value!r} has upper-case letters: ids that match when "
                       "lower-cased collide in some host applications; prefer lower case")
    if sp.client_id is None and cfg.mqtt.client_id is None:
        out.append(f"sparkplug: the MQTT client id defaults to {cfg.client_id}-sparkplug, the same "
                   "on every gateway of the site; a broker disconnects one of two clients with one "
                   "id: set mqtt.client_id or sparkplug.client_id per gateway")
    return out
