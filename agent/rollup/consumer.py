"""Receiving the gateways' windows: an MQTT 5 persistent session, acknowledged after the commit.

paho-mqtt runs as the agent's publisher runs it (agent/outputs/mqtt/publisher.py): in its external-loop
mode, its socket watched by the asyncio loop, callbacks on the loop's thread, only the
blocking connect in a worker thread, a fresh client per connection, and reconnection with
capped full-jitter backoff owned here alone.

The client is created with ``manual_ack=True``: a QoS 1 window is acknowledged with
:meth:`Delivery.ack` only once its row is committed, so a replica killed between receipt
and commit leaves the window unacknowledged in its session, and the broker delivers it
again. The session is persistent (``clean_start=False``, ``session_expiry_s``): windows
routed to a replica while it is away wait in its session for it, or for the replica that
adopts it (:mod:`agent.rollup.adopt`). An acknowledgement for a delivery of an earlier
connection is not sent: the broker redelivers that window, and its primary key absorbs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.config import MqttConfig
from agent.contract.errors import PublishError
from agent.outputs.mqtt.loop import attach, close_socket, describe, keepalive, tls_context, unwatch

__all__ = ["Consumer", "Delivery"]

log = logging.getLogger("plantfloor.rollup.mqtt")

_BACKOFF_BASE_S = 0.5
_STABLE_S = 10.0


@dataclass(frozen=True, slots=True, eq=False)
class Delivery:
    """One received message; acknowledge it only after its row is committed."""

    consumer: Consumer
    client: mqtt.Client = field(repr=False)
    mid: int
    qos: int
    topic: str
    payload: bytes = field(repr=False)

    def ack(self) -> None:
        self.consumer.ack(self)


class Consumer:
    """One MQTT client id's session: subscribe (or drain), hand over deliveries, acknowledge."""

    def __init__(self, cfg: MqttConfig, *, client_id: str, filters: Sequence[str],
                 deliver: Callable[[Delivery], None], password: str | None,
                 receive_maximum: int, session_expiry_s: int, max_packet_bytes: int = 262_144,
                 subscribe: bool = True,
                 reconnect: bool = True, backoff_max_s: float = 30.0,
                 connect_timeout_s: float = 10.0) -> None:
        self._cfg = cfg
        self.client_id = client_id
        self.filters = list(filters)
        self._deliver = deliver
        self._password = password
        self._receive_maximum = receive_maximum
        self._session_expiry_s = session_expiry_s
        self._max_packet_bytes = max_packet_bytes
        self._subscribe = subscribe
        self._reconnect = reconnect
        self._backoff_max_s = backoff_max_s
        self._connect_timeout_s = connect_timeout_s
        self.connected = asyncio.Event()
        self.session_present: bool | None = None
        self.received = 0
        self.outstanding = 0           # delivered on this connection, not yet acknowledged
        self.last_delivery = time.monotonic()
        self.last_error: str | None = None
        self._client: mqtt.Client | None = None
        self._connack: asyncio.Future[tuple[ReasonCode, Any]] | None = None
        self._lost: asyncio.Future[str] | None = None
        self._requests: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._stopping = False
        self._stop_event = asyncio.Event()

    # --- public API ----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and keep connected (with backoff) until :meth:`stop`; without
        ``reconnect``, one connection only (its failure is raised)."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while not self._stopping:
            started = loop.time()
            try:
                await self._session()
            except Exception as exc:  # supervised: retried with backoff (or raised once)
                self._set_error(describe(exc, self._cfg))
                if not self._reconnect:
                    raise PublishError(self.last_error or str(exc)) from exc
            if self._stopping or not self._reconnect:
                return
            attempt = 1 if loop.time() - started >= _STABLE_S else attempt + 1
            delay = random.uniform(0, min(self._backoff_max_s, _BACKOFF_BASE_S * 2 ** min(attempt, 20)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop_event.wait()

    def ack(self, delivery: Delivery) -> None:
        """PUBACK a committed delivery, if its connection is still the current one."""
        if delivery.client is not self._client:
            return
        if delivery.qos > 0:
            delivery.client.ack(delivery.mid, delivery.qos)
            self.outstanding -= 1

    def idle_for(self) -> float:
        """Seconds since the last delivery."""
        return time.monotonic() - self.last_delivery

    async def drained(self, idle_s: float, within: float) -> bool:
        """Wait until every delivery is acknowledged and none came for ``idle_s``; False if
        that did not happen ``within`` seconds or the connection was lost."""
        deadline = time.monotonic() + within
        while self._client is not None and time.monotonic() < deadline:
            if self.outstanding <= 0 and self.idle_for() >= idle_s:
                return True
            # a counter the loop's own callbacks update: polled, bounded by the deadline
            await asyncio.sleep(min(0.05, idle_s))
        return False

    async def unsubscribe(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - bounded by contract
        """Stop the broker routing windows to this session (what is queued still comes)."""
        self._subscribe = False
        client = self._client
        if client is None or not self.connected.is_set():
            return
        rc, mid = client.unsubscribe(self.filters)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            log.warning("%s: could not unsubscribe: %s", self.client_id, mqtt.error_string(rc))
            return
        try:
            async with asyncio.timeout(timeout):
                await self._request(mid)
        except (TimeoutError, PublishError) as exc:
            log.warning("%s: no UNSUBACK: %s", self.client_id, exc or "timed out")

    async def stop(self, *, end_session: bool = False) -> None:
        """Disconnect cleanly (``end_session``: the broker discards the session); :meth:`run`
        then returns."""
        self._stopping = True
        self._stop_event.set()
        client = self._client
        if client is None:
            return
        props = None
        if end_session:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        lost = self._lost
        client.disconnect(properties=props)
        if lost is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(lost)

    # --- one connection ------------------------------------------------------------------

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._make_client()
        connect = loop.run_in_executor(None, self._blocking_connect, client)
        try:
            await asyncio.shield(connect)
        except asyncio.CancelledError:
            connect.add_done_callback(lambda _f: close_socket(client))
            raise
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        # deliveries of a resumed session may arrive with the CONNACK: they belong to this client
        self._client = client
        self.outstanding = 0
        misc = asyncio.create_task(keepalive(client), name=f"mqtt-keepalive-{self.client_id}")
        try:
            if not attach(client):
                raise PublishError(f"connection to {self._cfg.host}:{self._cfg.port} closed")
            async with asyncio.timeout(self._connect_timeout_s):
                reason, _props = await self._connack
            if reason.is_failure:
                raise PublishError(f"broker {self._cfg.host}:{self._cfg.port} refused {self.client_id}: "
                                   f"{reason.getName()}")
            if self._subscribe:
                rc, mid = client.subscribe([(f, SubscribeOptions(qos=1)) for f in self.filters])
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                    raise PublishError(f"subscribe failed: {mqtt.error_string(rc)}")
                async with asyncio.timeout(self._connect_timeout_s):
                    codes = await self._request(mid)
                refused = [f"{f} ({c.getName()})" for f, c in zip(self.filters, codes, strict=False)
                           if c.is_failure]
                if refused:
                    raise PublishError("the broker refused the subscription to " + ", ".join(refused))
            self.connected.set()
            if self.last_error is not None:
                log.info("%s: connected to %s again", self.client_id, self._cfg.url)
            self.last_error = None
            why = await self._lost
            if not self._stopping:
                self._set_error(f"connection to {self._cfg.host}:{self._cfg.port} lost: {why}")
        finally:
            self._teardown(client)
            misc.cancel()
            await asyncio.wait([misc])

    async def _request(self, mid: int) -> list[ReasonCode]:
        fut = self._requests.get(mid)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._requests[mid] = fut
        try:
            return await fut
        finally:
            self._requests.pop(mid, None)

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                             reconnect_on_failure=False, manual_ack=True)
        client.connect_timeout = self._connect_timeout_s
        if self._cfg.username is not None:
            client.username_pw_set(self._cfg.username, self._password)
        client.on_connect = self._on_connack
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_reply
        client.on_unsubscribe = self._on_reply
        return client

    def _blocking_connect(self, client: mqtt.Client) -> None:
        """Worker thread: TLS context (reads files), TCP connect, handshake, CONNECT sent."""
        if self._cfg.uses_tls:
            client.tls_set_context(tls_context(self._cfg))
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry_s
        props.ReceiveMaximum = self._receive_maximum
        # the broker drops a bigger message for this client rather than send it (MQTT 5, 3.1.2.11.4)
        props.MaximumPacketSize = self._max_packet_bytes
        client.connect(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s,
                       clean_start=False, properties=props)

    def _teardown(self, client: mqtt.Client) -> None:
        self.connected.clear()
        if self._client is client:
            self._client = None
        self.outstanding = 0
        for fut in self._requests.values():
            if not fut.done():
                fut.set_exception(PublishError("connection lost"))
                fut.exception()
        sock = client.socket()
        if sock is not None:
            unwatch(asyncio.get_running_loop(), sock)
            close_socket(client)

    def _set_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("MQTT %s: %s", self.client_id, message)
        self.last_error = message

    # --- paho callbacks (on the loop's thread) ----------------------------------------------

    def _on_connack(self, _c: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self.session_present = bool(getattr(flags, "session_present", False))
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((reason, props))

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connected.clear()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(reason.getName())
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(PublishError(f"closed before CONNACK: {reason.getName()}"))

    def _on_reply(self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        fut = self._requests.get(mid)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._requests[mid] = fut
        if not fut.done():
            fut.set_result(list(codes))

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        self.last_delivery = time.monotonic()
        if msg.qos > 0:
            self.outstanding += 1
        self._deliver(Delivery(self, client, msg.mid, msg.qos, msg.topic, bytes(msg.payload)))
