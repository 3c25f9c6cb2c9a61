"""MQTT publishing: paho-mqtt driven from the asyncio loop, with awaitable acknowledgements.

paho runs in its "external loop" mode: the client's socket is watched with
``loop.add_reader``/``add_writer`` and a small task calls ``loop_misc`` for keepalives;
no paho thread runs. Only the blocking TCP connect and TLS handshake happen in a worker
thread, before the socket is handed to the loop.

This module alone owns reconnection (capped full-jitter backoff). Every connection uses a
fresh paho client: paho re-sends unacknowledged QoS 1 messages on reconnect, and a message
whose acknowledgement was lost must come back from the durable outbox instead, so a
``publish()`` awaiting an acknowledgement across a disconnect fails with
:class:`PublishError`.

MQTT 5 by default: the PUBACK reason code is returned by :meth:`Publisher.publish`
(0x10 "no matching subscribers" is counted) and a failure code (>= 0x80) raises
:class:`PublishRefused`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig
from agent.contract.errors import PublishError, PublishRefused
from agent.outputs.mqtt.loop import close_socket, describe, tls_context, unwatch

__all__ = ["NO_MATCHING_SUBSCRIBERS", "Publisher"]

log = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 0x10
_BACKOFF_BASE_S = 0.5
#: a connection that stayed up this long resets the backoff
_STABLE_S = 10.0
_MISC_INTERVAL_S = 1.0


@dataclass
class _Pending:
    topic: str
    future: asyncio.Future[Any]  # publish: the reason code; (un)subscribe: the codes
    counted: bool  # holds an in-flight slot (QoS > 0)


class Publisher:
    """One MQTT connection to the broker, kept up until :meth:`stop`. No I/O in here."""

    def __init__(self, cfg: MqttConfig, *, client_id: str, will_topic: str,
                 will_payload: bytes, password: str | None = None,
                 backoff_max_s: float = 30.0,
                 on_connect: Callable[[], Awaitable[None]] | None = None,
                 connect_timeout_s: float = 10.0, will_retain: bool = True,
                 prepare_will: Callable[[], Awaitable[tuple[str, bytes]]] | None = None,
                 on_message: Callable[[str, bytes], None] | None = None) -> None:
        self._cfg = cfg
        self._client_id = client_id
        self._will = (will_topic, will_payload)
        self._will_retain = will_retain
        # called before every CONNECT: a will that changes per session (Sparkplug's bdSeq)
        self._prepare_will = prepare_will
        self._on_message_hook = on_message
        self._password = password
        self._backoff_max_s = backoff_max_s
        self._on_connect_hook = on_connect
        self._connect_timeout_s = connect_timeout_s
        self.connected = asyncio.Event()
        #: the complement of ``connected``, for tasks that must act when the connection ends
        self.disconnected = asyncio.Event()
        self.disconnected.set()
        self.inflight = 0
        self.no_subscribers = 0
        self.refused = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self._limit = cfg.max_inflight
        # FIFO of publishers waiting for an in-flight slot: one wake-up per freed slot
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._pending: dict[int, _Pending] = {}
        self._client: mqtt.Client | None = None
        self._connack: asyncio.Future[tuple[ReasonCode, Any]] | None = None
        self._lost: asyncio.Future[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ever_connected = False

    # --- public API -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the connection task (connect, then reconnect with backoff); returns at once."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="mqtt-publisher")

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False,
                      timeout: float = 10.0) -> int:  # noqa: ASYNC109 - part of the contract
        """Publish and wait for the acknowledgement (QoS 1/2) or the write (QoS 0).

        Returns the reason code value (0, or 0x10 when no subscriber matched). Raises
        :class:`PublishRefused` on a failure reason code and :class:`PublishError` when
        not connected, when the connection drops before the acknowledgement or after
        ``timeout`` seconds (waiting for an in-flight slot included).
        """
        if not self.connected.is_set():
            raise PublishError(f"not connected to {self._cfg.host}:{self._cfg.port}")
        holding = False  # an in-flight slot not yet handed to a pending entry
        sent_on: mqtt.Client | None = None  # the client holding the message, once handed over
        try:
            async with asyncio.timeout(timeout):
                if qos > 0:
                    await self._acquire_slot()
                    holding = True
                client = self._client
                if client is None or not self.connected.is_set():
                    raise PublishError("connection to the broker lost")
                info = client.publish(topic, payload, qos=qos, retain=retain)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
                future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
                self._pending[info.mid] = _Pending(topic, future, counted=qos > 0)
                sent_on = client
                holding = False  # released when the ack arrives or the connection drops
                # shielded: a timed-out caller must not cancel the future the ack resolves
                return await asyncio.shield(future)
        except TimeoutError as exc:
            if sent_on is not None and sent_on is self._client:
                # paho would re-send the message on its own later while the caller retries
                # it as well: drop the connection, so the retry is the only copy
                log.warning("no acknowledgement for %s within %g s: reconnecting", topic, timeout)
                sent_on.disconnect()
            raise PublishError(f"no acknowledgement for {topic} within {timeout} s") from exc
        finally:
            if holding:
                self._release_slots(1)

    async def publish_many(self, messages: Sequence[tuple[str, bytes, int, bool]], *,
                           timeout: float = 10.0) -> list[int | BaseException]:  # noqa: ASYNC109
        """Publish ``(topic, payload, qos, retain)`` messages pipelined, in order.

        Each result is what :meth:`publish` would return or raise for that message (the
        reason code, or the :class:`PublishRefused` / :class:`PublishError`); one
        ``timeout`` bounds the whole batch, waiting for in-flight slots included. No task
        or timer per message: the forwarder hands a window's records over in one call.
        """
        results: list[int | BaseException | None] = [None] * len(messages)
        futures: dict[int, asyncio.Future[int]] = {}
        sent_on: mqtt.Client | None = None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                for i, (topic, payload, qos, retain) in enumerate(messages):
                    if not self.connected.is_set():
                        results[i] = PublishError(f"not connected to {self._cfg.host}:{self._cfg.port}")
                        continue
                    if qos > 0:
                        await self._acquire_slot()
                    client = self._client
                    if client is None or not self.connected.is_set():
                        if qos > 0:
                            self._release_slots(1)
                        results[i] = PublishError("connection to the broker lost")
                        continue
                    try:
                        info = client.publish(topic, payload, qos=qos, retain=retain)
                    except BaseException:
                        if qos > 0:
                            self._release_slots(1)
                        raise
                    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        if qos > 0:
                            self._release_slots(1)
                        results[i] = PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
                        continue
                    future: asyncio.Future[int] = loop.create_future()
                    self._pending[info.mid] = _Pending(topic, future, counted=qos > 0)
                    futures[i] = future
                    sent_on = client
                if futures:
                    # asyncio.wait never cancels the futures: a timeout leaves them to the
                    # acknowledgement or to the connection's end
                    await asyncio.wait(futures.values())
        except TimeoutError:
            late = [i for i, f in futures.items() if not f.done()]
            if late and sent_on is not None and sent_on is self._client:
                log.warning("no acknowledgement for %d message(s) within %g s: reconnecting",
                            len(late), timeout)
                sent_on.disconnect()
            for i, (topic, *_rest) in enumerate(messages):
                if results[i] is None and (i not in futures or not futures[i].done()):
                    results[i] = PublishError(f"no acknowledgement for {topic} within {timeout} s")
        out: list[int | BaseException] = []
        for i, result in enumerate(results):
            if result is None:
                future = futures[i]
                exc = future.exception()
                result = exc if exc is not None else future.result()
            out.append(result)
        return out

    async def _acquire_slot(self) -> None:
        if self.inflight < self._limit and not self._waiters:
            self.inflight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release_slots(1)  # the slot was handed over just as we were cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _release_slots(self, count: int) -> None:
        self.inflight -= count
        self._hand_over_slots()

    def _hand_over_slots(self) -> None:
        while self._waiters and self.inflight < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.inflight += 1
                waiter.set_result(None)

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

    async def subscribe(self, topics: Sequence[tuple[str, int]], *,
                        timeout: float = 10.0) -> list[int]:  # noqa: ASYNC109 - like publish
        """Subscribe on the current connection; the SUBACK's reason codes (>= 0x80: refused)."""
        return await self._request("subscribe", list(topics), within=timeout)

    async def fence(self, *, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - like publish
        """Return once the broker has processed every packet sent on this connection so far.

        An UNSUBSCRIBE of a filter never subscribed (no effect at the broker) is answered
        only after the packets before it on the connection: its UNSUBACK acknowledges the
        QoS 0 publishes sent before it, which have no acknowledgement of their own.
        """
        await self._request("unsubscribe", "plantfloor/fence", within=timeout)

    async def _request(self, kind: str, arg: Any, *, within: float) -> list[int]:
        client = self._client
        if client is None or not self.connected.is_set():
            raise PublishError(f"not connected to {self._cfg.host}:{self._cfg.port}")
        rc, mid = client.subscribe(arg) if kind == "subscribe" else client.unsubscribe(arg)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise PublishError(f"{kind} failed: {mqtt.error_string(rc)}")
        future: asyncio.Future[int | list[int]] = asyncio.get_running_loop().create_future()
        self._pending[mid] = _Pending(kind, future, counted=False)
        try:
            async with asyncio.timeout(within):
                codes = await asyncio.shield(future)
        except TimeoutError as exc:
            raise PublishError(f"no answer to {kind} within {within} s") from exc
        assert isinstance(codes, list)
        return codes

    # --- connection task ----------------------------------------------------------------

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
        self._attach(client)
        misc = asyncio.create_task(self._misc_loop(client), name="mqtt-keepalive")
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                reason, props = await self._connack
            if reason.is_failure:
                raise PublishError(f"broker {self._cfg.host}:{self._cfg.port} refused the "
                                   f"connection: {reason.getName()}")
            receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
            self._limit = min(self._cfg.max_inflight, receive_max or self._cfg.max_inflight)
            self._hand_over_slots()
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

    def _make_client(self) -> mqtt.Client:
        v5 = self._cfg.version == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self._client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True, reconnect_on_failure=False)
        client.connect_timeout = self._connect_timeout_s
        will_topic, will_payload = self._will
        client.will_set(will_topic, will_payload, qos=1, retain=self._will_retain)
        if self._cfg.username is not None:
            client.username_pw_set(self._cfg.username, self._password)
        # the publisher's own slots cap what is in flight (at the broker's Receive Maximum);
        # paho's cap would only make it walk every unacknowledged message on each PUBACK
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(self._cfg.max_inflight)
        client.on_connect = self._on_connack
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_suback
        client.on_unsubscribe = self._on_suback
        if self._on_message_hook is not None:
            hook = self._on_message_hook
            client.on_message = lambda _c, _u, msg: hook(msg.topic, bytes(msg.payload))
        return client

    def _blocking_connect(self, client: mqtt.Client) -> None:
        """Worker thread: TLS context (reads files), TCP connect, handshake, CONNECT sent."""
        if self._cfg.uses_tls:
            client.tls_set_context(tls_context(self._cfg))
        client.connect(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s)

    def _attach(self, client: mqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        sock = client.socket()
        if sock is None:
            raise PublishError(f"connection to {self._cfg.host}:{self._cfg.port} closed")
        client.on_socket_close = lambda _c, _u, s: unwatch(loop, s)
        client.on_socket_register_write = (
            lambda c, _u, s: loop.add_writer(s, self._writable, c))

        def unregister_write(_c: mqtt.Client, _u: Any, s: Any) -> None:
            loop.remove_writer(s)

        client.on_socket_unregister_write = unregister_write
        loop.add_reader(sock, self._readable, client)
        if client.want_write():
            loop.add_writer(sock, self._writable, client)

    def _readable(self, client: mqtt.Client) -> None:
        client.loop_read()
        sock = client.socket()
        # TLS may hold decrypted bytes the kernel no longer reports as readable
        while isinstance(sock, ssl.SSLSocket) and sock.pending() and client.socket() is sock:
            client.loop_read()

    def _writable(self, client: mqtt.Client) -> None:
        client.loop_write()

    async def _misc_loop(self, client: mqtt.Client) -> None:
        while True:
            await asyncio.sleep(_MISC_INTERVAL_S)
            client.loop_misc()

    def _teardown(self, client: mqtt.Client) -> None:
        self.connected.clear()
        self.disconnected.set()
        self._client = None
        self._fail_pending(PublishError("connection to the broker lost before the acknowledgement"))
        sock = client.socket()
        if sock is not None:
            unwatch(asyncio.get_running_loop(), sock)
            close_socket(client)

    def _fail_pending(self, error: PublishError) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(error)
                entry.future.exception()  # retrieved: nobody may be awaiting any more
        self._release_slots(sum(1 for entry in pending.values() if entry.counted))

    def _set_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("MQTT: %s", message)
        self.last_error = message

    # --- paho callbacks (run on the loop thread, from loop_read/loop_write/loop_misc) ----

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

    def _on_suback(self, _client: mqtt.Client, _userdata: Any, mid: int,
                   codes: list[ReasonCode], _properties: Any) -> None:
        entry = self._pending.pop(mid, None)
        if entry is not None and not entry.future.done():
            entry.future.set_result([int(c.value) for c in codes])

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int,
                    reason: ReasonCode, _properties: Any) -> None:
        entry = self._pending.pop(mid, None)
        if entry is None:
            return
        if entry.counted:
            self._release_slots(1)
        code = int(reason.value)
        if code >= 0x80:
            self.refused += 1
            if not entry.future.done():
                entry.future.set_exception(PublishRefused(entry.topic, code, reason.getName()))
                entry.future.exception()
            return
        if code == NO_MATCHING_SUBSCRIBERS:
            self.no_subscribers += 1
        if not entry.future.done():
            entry.future.set_result(code)
