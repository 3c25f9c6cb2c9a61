"""One MQTT connection kept up on the asyncio loop: connect in a worker thread, serve until
lost, reconnect with capped full-jitter backoff, end cleanly with a final message.

paho runs in its "external loop" mode (:mod:`agent.outputs.mqtt.loop`): no paho thread.
Every connection uses a fresh paho client: paho re-sends unacknowledged QoS 1 messages on
reconnect, and a message whose acknowledgement was lost must come back from the durable
outbox instead. This class alone owns reconnection; :class:`~agent.outputs.mqtt.publisher.Publisher`
adds publishing and subscribing on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig
from agent.contract.errors import PublishError
from agent.outputs.mqtt.loop import attach, close_socket, describe, keepalive, tls_context, unwatch

__all__ = ["Session"]

log = logging.getLogger(__name__)

_BACKOFF_BASE_S = 0.5
#: a connection that stayed up this long resets the backoff
_STABLE_S = 10.0


class Session:
    """The connection's lifecycle; subclasses make the client and own what is pending."""

    def __init__(self, cfg: MqttConfig, *, client_id: str, will_topic: str,
                 will_payload: bytes, password: str | None = None,
                 backoff_max_s: float = 30.0,
                 on_connect: Callable[[], Awaitable[None]] | None = None,
                 connect_timeout_s: float = 10.0, will_retain: bool = True,
                 prepare_will: Callable[[], Awaitable[tuple[str, bytes]]] | None = None) -> None:
        self._cfg = cfg
        self._client_id = client_id
        self._will = (will_topic, will_payload)
        self._will_retain = will_retain
        # called before every CONNECT: a will that changes per session (Sparkplug's bdSeq)
        self._prepare_will = prepare_will
        self._password = password
        self._backoff_max_s = backoff_max_s
        self._on_connect_hook = on_connect
        self._connect_timeout_s = connect_timeout_s
        self.connected = asyncio.Event()
        #: the complement of ``connected``, for tasks that must act when the connection ends
        self.disconnected = asyncio.Event()
        self.disconnected.set()
        self.reconnects = 0
        self.last_error: str | None = None
        self._client: mqtt.Client | None = None
        self._connack: asyncio.Future[tuple[ReasonCode, Any]] | None = None
        self._lost: asyncio.Future[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ever_connected = False

    # --- what a subclass provides ----------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        raise NotImplementedError

    def _fail_pending(self, error: PublishError) -> None:
        raise NotImplementedError

    def _session_up(self, receive_max: int | None) -> None:
        """The broker accepted the connection (its Receive Maximum, if it sent one)."""

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False,
                      timeout: float = 10.0) -> int:  # noqa: ASYNC109 - part of the contract
        raise NotImplementedError

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the connection task (connect, then reconnect with backoff); returns at once."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="mqtt-publisher")

    async def stop(self, *, final_topic: str | None = None, final_payload: bytes | None = None,
                   final_retain: bool = True, with_will: bool = False) -> None:
        """Publish the final (retained) message if connected, disconnect cleanly, stop.

        ``with_will`` (MQTT 5 only): the DISCONNECT asks the broker to publish the will.
        """
        self._stopping = True
        await self._end_connection(final_topic, final_payload, final_retain, with_will)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def drop(self, *, final_topic: str | None = None, final_payload: bytes | None = None,
                   with_will: bool = False) -> None:
        """End the current connection on purpose; a new session starts after the backoff."""
        await self._end_connection(final_topic, final_payload, False, with_will)

    async def _end_connection(self, final_topic: str | None, final_payload: bytes | None,
                              final_retain: bool, with_will: bool) -> None:
        client = self._client
        if client is None or not self.connected.is_set():
            return
        if final_topic is not None:
            try:
                await self.publish(final_topic, final_payload or b"", qos=1, retain=final_retain,
                                   timeout=3.0)
            except PublishError as exc:
                log.warning("final message to %s not acknowledged: %s", final_topic, exc)
        lost = self._lost
        # a DISCONNECT packet tells the broker not to publish the will, unless (MQTT 5)
        # its reason code asks for it
        client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
                          if with_will and self._cfg.version == "5" else None)
        if lost is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(lost)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while not self._stopping:
            started = loop.time()
            try:
                await self._session()
            except Exception as exc:  # supervised: every failure is retried with backoff
                self._set_error(describe(exc, self._cfg))
            if self._stopping:
                return
            attempt = 1 if loop.time() - started >= _STABLE_S else attempt + 1
            cap = min(self._backoff_max_s, _BACKOFF_BASE_S * 2 ** min(attempt, 20))
            await asyncio.sleep(random.uniform(0, cap))

    async def _session(self) -> None:
        """One connection: connect, serve until it is lost; always leaves nothing behind."""
        loop = asyncio.get_running_loop()
        if self._prepare_will is not None:
            self._will = await self._prepare_will()
        client = self._make_client()
        connect = loop.run_in_executor(None, self._blocking_connect, client)
        try:
            await asyncio.shield(connect)
        except asyncio.CancelledError:
            connect.add_done_callback(lambda _f: close_socket(client))
            raise
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        if not attach(client):
            raise PublishError(f"connection to {self._cfg.host}:{self._cfg.port} closed")
        misc = asyncio.create_task(keepalive(client), name="mqtt-keepalive")
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                reason, props = await self._connack
            if reason.is_failure:
                raise PublishError(f"broker {self._cfg.host}:{self._cfg.port} refused the "
                                   f"connection: {reason.getName()}")
            receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
            self._session_up(receive_max)
            self._client = client
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            if self.last_error is not None:
                log.info("connected to %s again", self._cfg.url)
            else:
                log.info("connected to %s", self._cfg.url)
            self.last_error = None
            self.disconnected.clear()
            self.connected.set()
            if self._on_connect_hook is not None:
                try:
                    await self._on_connect_hook()
                except PublishError as exc:
                    log.warning("on-connect publishing failed: %s", exc)
                except Exception:  # a failing hook must not tear the connection down
                    log.exception("on-connect hook failed")
            why = await self._lost
            if not self._stopping:
                self._set_error(f"connection to {self._cfg.host}:{self._cfg.port} lost: {why}")
        finally:
            self._teardown(client)
            misc.cancel()
            await asyncio.wait([misc])

    def _blocking_connect(self, client: mqtt.Client) -> None:
        """Worker thread: TLS context (reads files), TCP connect, handshake, CONNECT sent."""
        if self._cfg.uses_tls:
            client.tls_set_context(tls_context(self._cfg))
        client.connect(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s)

    def _teardown(self, client: mqtt.Client) -> None:
        self.connected.clear()
        self.disconnected.set()
        self._client = None
        self._fail_pending(PublishError("connection to the broker lost before the acknowledgement"))
        sock = client.socket()
        if sock is not None:
            unwatch(asyncio.get_running_loop(), sock)
            close_socket(client)

    def _set_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("MQTT: %s", message)
        self.last_error = message

    def _on_connack(self, _client: mqtt.Client, _userdata: Any, _flags: Any,
                    reason: ReasonCode, properties: Any) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((reason, properties))

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any,
                       reason: ReasonCode, _properties: Any) -> None:
        self.connected.clear()
        self.disconnected.set()
        self._fail_pending(PublishError("connection to the broker lost before the acknowledgement"))
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(reason.getName())
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(
                PublishError(f"broker {self._cfg.host}:{self._cfg.port} closed the connection "
                             f"before CONNACK: {reason.getName()}"))
