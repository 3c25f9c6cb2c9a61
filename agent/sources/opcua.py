"""The OPC UA source (asyncua): poll mode (one Read service call) and subscribe mode.

Only the Read, Browse and subscription services are used: the agent never writes to a
PLC. Every value arrives as a ``DataValue`` and its StatusCode decides the quality
(``read_values()`` would drop it). asyncua's own auto-reconnect stays off: the source
supervisor owns reconnection, and every :meth:`OpcUaClientSource.connect` builds a fresh
client and, in subscribe mode, a fresh subscription.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import DataChangeNotif, Subscription
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from agent.config import COUNTER_ROLES, Config, OpcUaSource, OpcUaTag, resolve_secret_file
from agent.contract.errors import SourceUnavailable
from agent.contract.readings import Quality, Reading, TagRole
from agent.sources.opcua_security import ServerNotTrusted, configure_security

__all__ = ["OpcUaClientSource", "OpcUaPoint", "parse_node_id", "status_name", "to_reading"]

_log = logging.getLogger(__name__)

#: natural modulus of each integer variant type; signed types count on through their
#: negative half (two's complement), so they wrap at their full width
_MODULUS: dict[ua.VariantType, int] = {
    ua.VariantType.Byte: 2**8, ua.VariantType.SByte: 2**8,
    ua.VariantType.UInt16: 2**16, ua.VariantType.Int16: 2**16,
    ua.VariantType.UInt32: 2**32, ua.VariantType.Int32: 2**32,
    ua.VariantType.UInt64: 2**64, ua.VariantType.Int64: 2**64,
}
_SEVERITY = {0: Quality.GOOD, 1: Quality.UNCERTAIN, 2: Quality.BAD, 3: Quality.BAD}
#: InfoType "DataValue" plus the Overflow bit: the server's item queue discarded values
_OVERFLOW = 0x0480
_KEEPALIVE_S = 5.0
_PASSWORD_ENV = "PLANTFLOOR_OPCUA_PASSWORD"


@dataclass(frozen=True, slots=True)
class OpcUaPoint:
    """One configured node and the line and role it feeds."""

    line: str
    role: TagRole
    node: str
    name: str | None = None


def parse_node_id(text: str, namespaces: Sequence[str] = ()) -> ua.NodeId:
    """A node id string; ``nsu=<uri>;...`` is resolved against the server's namespace array.

    Raises ``ValueError`` for a malformed id or a namespace URI the server does not have.
    """
    try:
        parsed = ua.NodeId.from_string(text)
    except Exception as exc:
        raise ValueError(f"{text!r} is not a valid node id") from exc
    uri = getattr(parsed, "NamespaceUri", None)
    if not uri:
        return ua.NodeId(parsed.Identifier, parsed.NamespaceIndex, parsed.NodeIdType)
    if uri not in namespaces:
        raise ValueError(f"namespace {uri!r} of {text!r} is not on the server")
    return ua.NodeId(parsed.Identifier, ua.Int16(list(namespaces).index(uri)), parsed.NodeIdType)


def status_name(code: int) -> str:
    """The symbolic name of a StatusCode, ignoring its info bits."""
    return str(ua.StatusCode(ua.UInt32(code & 0xFFFF0000)).name)


def _bad(point: OpcUaPoint, mono: float, error: str, code: int | None) -> Reading:
    return Reading(point.line, point.role, None, Quality.BAD, mono, error=error, code=code,
                   name=point.name)


def to_reading(point: OpcUaPoint, dv: ua.DataValue, mono: float) -> Reading:
    """Decide on a DataValue: Good -> good, Uncertain -> uncertain, Bad -> bad (value None).

    Integers keep their sign; a counter carries the natural modulus of its variant type
    (a configured ``rollover`` is applied downstream). A value that is not an integer is
    bad (BadTypeMismatch); a counter must be of an integer type: a Double, Boolean or
    String served for a counter node (a bad download) is bad with the type in the reason,
    never taken for a count.
    """
    code = int(dv.StatusCode.value) if dv.StatusCode is not None else 0
    quality = _SEVERITY[code >> 30]
    if quality is Quality.BAD:
        return _bad(point, mono, status_name(code), code)
    variant = dv.Value
    raw: Any = variant.Value if variant is not None else None
    vtype = variant.VariantType if variant is not None else ua.VariantType.Null
    value: int | float | None = None
    if point.role in COUNTER_ROLES and (vtype not in _MODULUS or not isinstance(raw, int)
                                    or isinstance(raw, bool)):
        return _bad(point, mono, f"the counter node holds {vtype.name} {raw!r}, not an integer count",
                    StatusCodes.BadTypeMismatch)
    if point.role == "tag" and isinstance(raw, float):
        value = raw
    elif isinstance(raw, bool):
        value = int(raw)
    elif isinstance(raw, int):
        value = raw
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    if value is None:
        return _bad(point, mono, f"{vtype.name} value {raw!r} is not an integer",
                    StatusCodes.BadTypeMismatch)
    modulus = _MODULUS.get(vtype) if point.role in COUNTER_ROLES else None
    if quality is Quality.GOOD:
        return Reading(point.line, point.role, value, quality, mono, modulus=modulus,
                       name=point.name)
    return Reading(point.line, point.role, value, quality, mono,
                   error=status_name(code), code=code, modulus=modulus, name=point.name)


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, UaStatusCodeError):
        return status_name(int(exc.code))
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Handler:
    """asyncua's handler path: every notification is delivered, none dropped silently."""

    def __init__(self, source: OpcUaClientSource) -> None:
        self._source = source

    def datachange_notification(self, node: Any, val: Any, data: DataChangeNotif) -> None:
        self._source._on_datachange(node.nodeid, data.monitored_item.Value)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        self._source._on_status(int(status.Status.value))


class OpcUaClientSource:
    """An OPC UA server, polled with the Read service or watched through a subscription.

    In subscribe mode ``read()`` returns the latest value of every node, stamped with the
    time of the call: a live subscription (checked on every call) vouches that it is
    still current. ``dropped`` counts values the server reported as discarded from a
    monitored item's queue (the Overflow info bit); the client side discards none.
    """

    def __init__(self, cfg: OpcUaSource, points: Sequence[OpcUaPoint]) -> None:
        self.id = cfg.id
        self.dropped = 0
        self._cfg = cfg
        self._points = tuple(points)
        self._client: Client | None = None
        self._sub: Subscription | None = None
        self._nodes: list[ua.NodeId | None] = []
        self._errors: dict[int, tuple[str, int | None]] = {}
        self._latest: dict[ua.NodeId, ua.DataValue] = {}
        self._lost: str | None = None
        self._keepalive_count = max(1, math.ceil(_KEEPALIVE_S / cfg.poll_interval_s))
        self._stale_after = 2 * self._keepalive_count * cfg.poll_interval_s + cfg.timeout_s

    @classmethod
    def from_config(cls, cfg: Config, source: OpcUaSource) -> OpcUaClientSource:
        """Every point (counter, state, tags) of every line that names this source."""
        points = [OpcUaPoint(line.id, role, tag.node, name)
                  for line, role, name, tag in cfg.points_of(source.id) if isinstance(tag, OpcUaTag)]
        return cls(source, points)

    def _unavailable(self, reason: str) -> SourceUnavailable:
        return SourceUnavailable(self.id, f"{self._cfg.endpoint}: {reason}")

    async def connect(self) -> None:
        """Open a session (secured as configured), resolve node ids, subscribe if asked."""
        await self.close()
        cfg = self._cfg
        client = Client(cfg.endpoint, timeout=cfg.timeout_s, watchdog_intervall=max(1.0, cfg.timeout_s))
        client.name = client.description = f"plantfloor {cfg.id}"
        self._client = client
        self._lost = None
        budget = 3 * cfg.timeout_s + 2
        try:
            async with asyncio.timeout(budget):
                await self._open(client)
        except ServerNotTrusted as exc:
            await self.close()
            raise self._unavailable(f"security check failed, no session opened: {exc.reason}") from exc
        except TimeoutError as exc:
            await self.close()
            raise self._unavailable(f"connect did not complete within {budget:g} s") from exc
        except Exception as exc:  # the adapter boundary: library and OS errors become retries
            await self.close()
            raise self._unavailable(f"cannot connect: {_describe(exc, cfg.timeout_s)}") from exc

    async def _open(self, client: Client) -> None:
        cfg = self._cfg
        if cfg.security is not None:
            await configure_security(client, cfg.security, cfg.timeout_s)
        if cfg.username is not None:
            client.set_user(cfg.username)
            password = await self._password()
            if password is not None:
                client.set_password(password)
        await client.connect()
        await self._resolve(client)
        if cfg.mode == "subscribe":
            # seed with one Read so the first read() has real values whatever the
            # publishing interval; notifications (initial values first) overwrite them
            for nodeid, dv in zip(self._unique_nodes(), await self._read_service(client), strict=True):
                self._latest[nodeid] = dv
            await self._subscribe(client)

    async def _password(self) -> str | None:
        if self._cfg.password_file is not None:
            path = resolve_secret_file(self._cfg.password_file)
            return (await asyncio.to_thread(path.read_text, encoding="utf-8")).strip()
        return os.environ.get(_PASSWORD_ENV)

    async def _resolve(self, client: Client) -> None:
        self._errors.clear()
        namespaces: list[str] = []
        if any(p.node.startswith("nsu=") for p in self._points):
            namespaces = list(await client.get_namespace_array())
        self._nodes = []
        for i, point in enumerate(self._points):
            try:
                self._nodes.append(parse_node_id(point.node, namespaces))
            except ValueError as exc:
                self._nodes.append(None)
                self._errors[i] = (str(exc), StatusCodes.BadNodeIdUnknown)

    def _unique_nodes(self) -> list[ua.NodeId]:
        return list(dict.fromkeys(n for n in self._nodes if n is not None))

    async def _read_service(self, client: Client) -> list[ua.DataValue]:
        nodes = self._unique_nodes()
        if not nodes:
            return []
        params = ua.ReadParameters()
        params.MaxAge = 0
        params.TimestampsToReturn = ua.TimestampsToReturn.Neither
        params.NodesToRead = [ua.ReadValueId(NodeId=n, AttributeId=AttributeIds.Value) for n in nodes]
        values: list[ua.DataValue] = await client.uaclient.read(params)
        if len(values) != len(nodes):
            raise UaError(f"the server answered {len(values)} values for {len(nodes)} nodes")
        return values

    async def _subscribe(self, client: Client) -> None:
        cfg = self._cfg
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=cfg.poll_interval_s * 1000,
            RequestedLifetimeCount=self._keepalive_count * 4,
            RequestedMaxKeepAliveCount=self._keepalive_count,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        sub = await client.create_subscription(params, _Handler(self))
        self._sub = sub
        nodes = self._unique_nodes()
        if not nodes:
            return
        sampling = (cfg.sampling_interval_s or cfg.poll_interval_s) * 1000
        results = await sub.subscribe_data_change(
            [client.get_node(n) for n in nodes], queuesize=cfg.queue_size, sampling_interval=ua.Double(sampling))
        for nodeid, result in zip(nodes, results, strict=True):
            if isinstance(result, ua.StatusCode):
                # the item could not be monitored: the point reads bad with the server's reason
                code = int(result.value)
                for i, n in enumerate(self._nodes):
                    if n == nodeid:
                        self._errors[i] = (status_name(code), code)

    def _on_datachange(self, nodeid: ua.NodeId, dv: ua.DataValue) -> None:
        if dv.StatusCode is not None and int(dv.StatusCode.value) & _OVERFLOW == _OVERFLOW:
            self.dropped += 1
        self._latest[nodeid] = dv

    def _on_status(self, code: int) -> None:
        if code >> 30:  # anything but good ends the subscription (BadShutdown, BadTimeout, ...)
            self._lost = f"subscription ended ({status_name(code)})"

    async def read(self) -> Sequence[Reading]:
        """One Reading per point; ``SourceUnavailable`` when the session is gone."""
        client = self._client
        if client is None:
            raise self._unavailable("not connected")
        if self._cfg.mode == "poll":
            try:
                values = await self._read_service(client)
            except Exception as exc:
                raise self._unavailable(f"read failed: {_describe(exc, self._cfg.timeout_s)}") from exc
            by_node = dict(zip(self._unique_nodes(), values, strict=True))
        else:
            await self._check_alive(client)
            by_node = dict(self._latest)
        now = time.monotonic()
        readings: list[Reading] = []
        for i, point in enumerate(self._points):
            nodeid = self._nodes[i] if i < len(self._nodes) else None
            if i in self._errors:
                readings.append(_bad(point, now, *self._errors[i]))
            elif nodeid is None or nodeid not in by_node:
                readings.append(_bad(point, now, "no value received yet", None))
            else:
                readings.append(to_reading(point, by_node[nodeid], now))
        return readings

    async def _check_alive(self, client: Client) -> None:
        if self._lost is not None:
            raise self._unavailable(self._lost)
        if client.uaclient.state is not UaClientState.CONNECTED:
            raise self._unavailable(f"session lost (client {client.uaclient.state.value})")
        try:
            await client.check_connection()
        except Exception as exc:
            raise self._unavailable(f"session lost: {_describe(exc, self._cfg.timeout_s)}") from exc
        sub = self._sub
        last = sub.last_publish_at if sub is not None else None
        if last is not None and time.monotonic() - last > self._stale_after:
            raise self._unavailable(
                f"no publish response or keepalive for {time.monotonic() - last:.1f} s")

    async def close(self) -> None:
        """End the session and every task asyncua started for it; never raises."""
        client, sub = self._client, self._sub
        self._client, self._sub = None, None
        self._latest.clear()
        if client is None:
            return
        try:
            async with asyncio.timeout(self._cfg.timeout_s + 1):
                await client.disconnect()
        except Exception as exc:  # closing a dead session fails in many ways; none matters
            _log.debug("source %s: disconnect: %r", self.id, exc)
            client.disconnect_socket()
        # asyncua cancels its publish loop without awaiting it, and runs each handler call
        # in a task of its own: reap both so nothing outlives the session
        leftovers = {t for t in (client.uaclient.session._publish_task, client._renew_channel_task,
                                 client._supervisor_task, client._stale_watchdog_task)
                     if t is not None and not t.done()}
        if sub is not None:
            leftovers |= {t for t in sub._dispatch_tasks if not t.done()}
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=1.0)
