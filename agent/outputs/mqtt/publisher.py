"""MQTT publishing: paho-mqtt driven from the asyncio loop, with awaitable acknowledgements.

paho runs in its "external loop" mode: the client's socket is watched with
``loop.add_reader``/``add_writer`` and a small task calls ``loop_misc`` for keepalives;
no paho thread runs. Only the blocking TCP connect and TLS handshake happen in a worker
thread, before the socket is handed to the loop.

Reconnection is owned by one layer, :class:`~agent.outputs.mqtt.session.Session` (capped
full-jitter backoff). Every connection uses a fresh paho client: paho re-sends
unacknowledged QoS 1 messages on reconnect, and a message whose acknowledgement was lost
must come back from the durable outbox instead, so a ``publish()`` awaiting an
acknowledgement across a disconnect fails with :class:`PublishError`.

MQTT 5 by default: the PUBACK reason code is returned by :meth:`Publisher.publish`
(0x10 "no matching subscribers" is counted) and a failure code (>= 0x80) raises
:class:`PublishRefused`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig
from agent.contract.errors import PublishError, PublishRefused
from agent.outputs.mqtt.loop import (
    new_client,
)
from agent.outputs.mqtt.session import Session
from agent.outputs.mqtt.slots import Slots

__all__ = ["NO_MATCHING_SUBSCRIBERS", "Publisher"]

log = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 0x10


@dataclass
class _Pending:
    topic: str
    future: asyncio.Future[Any]  # publish: the reason code; (un)subscribe: the codes
    counted: bool  # holds an in-flight slot (QoS > 0)


class Publisher(Session):
    """One MQTT connection to the broker, kept up until :meth:`stop`. No I/O in here."""

    def __init__(self, cfg: MqttConfig, *, client_id: str, will_topic: str,
                 will_payload: bytes, password: str | None = None,
                 backoff_max_s: float = 30.0,
                 on_connect: Callable[[], Awaitable[None]] | None = None,
                 connect_timeout_s: float = 10.0, will_retain: bool = True,
                 prepare_will: Callable[[], Awaitable[tuple[str, bytes]]] | None = None,
                 on_message: Callable[[str, bytes], None] | None = None) -> None:
        super().__init__(cfg, client_id=client_id, will_topic=will_topic,
                         will_payload=will_payload, password=password,
                         backoff_max_s=backoff_max_s, on_connect=on_connect,
                         connect_timeout_s=connect_timeout_s, will_retain=will_retain,
                         prepare_will=prepare_will)
        self._on_message_hook = on_message
        self.no_subscribers = 0
        self.refused = 0
        self._slots = Slots(cfg.max_inflight)
        self._pending: dict[int, _Pending] = {}

    @property
    def inflight(self) -> int:
        """QoS > 0 messages handed to the broker and not yet acknowledged."""
        return self._slots.used

    # --- public API -----------------------------------------------------------------------

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
                    await self._slots.acquire()
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
                self._slots.release(1)

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
                        await self._slots.acquire()
                    client = self._client
                    if client is None or not self.connected.is_set():
                        if qos > 0:
                            self._slots.release(1)
                        results[i] = PublishError("connection to the broker lost")
                        continue
                    try:
                        info = client.publish(topic, payload, qos=qos, retain=retain)
                    except BaseException:
                        if qos > 0:
                            self._slots.release(1)
                        raise
                    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        if qos > 0:
                            self._slots.release(1)
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

    def _session_up(self, receive_max: int | None) -> None:
        self._slots.set_limit(min(self._cfg.max_inflight, receive_max or self._cfg.max_inflight))

    def _make_client(self) -> mqtt.Client:
        client = new_client(self._cfg, client_id=self._client_id, will=self._will,
                            will_retain=self._will_retain, password=self._password,
                            connect_timeout_s=self._connect_timeout_s)
        client.on_connect = self._on_connack
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_suback
        client.on_unsubscribe = self._on_suback
        if self._on_message_hook is not None:
            hook = self._on_message_hook
            client.on_message = lambda _c, _u, msg: hook(msg.topic, bytes(msg.payload))
        return client

    def _fail_pending(self, error: PublishError) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(error)
                entry.future.exception()  # retrieved: nobody may be awaiting any more
        self._slots.release(sum(1 for entry in pending.values() if entry.counted))

    # --- paho callbacks (run on the loop thread, from loop_read/loop_write/loop_misc) ----

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
            self._slots.release(1)
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
