"""The Sparkplug B 3.0 edge node session: bdSeq, births, seq, commands, the primary host.

The node has an MQTT connection of its own (a :class:`~agent.outputs.mqtt.publisher.Publisher`): its
will is the NDEATH, its first messages must be its births, and it disconnects when the
primary host goes offline, none of which may disturb the JSON output. Per connection:

1. before the CONNECT, :meth:`EdgeNode.prepare_will` commits the next bdSeq to the state
   store and returns the NDEATH carrying it (QoS 1, not retained): a restart, even after
   ``kill -9``, never reuses one;
2. after the CONNACK, :meth:`EdgeNode.on_connect` subscribes to NCMD, DCMD and the
   primary host's STATE (QoS 1); the births go out at once, or once that host's STATE
   says online;
3. the births: NBIRTH with ``seq`` 0, bdSeq, ``Node Control/Rebirth`` and every node
   metric; a DBIRTH per line; when the broker has them all, :attr:`EdgeNode.connected`
   is set and the outbox's DDATA/NDATA flow (the node is the forwarder's channel);
4. every message of the session but the NDEATH takes the next ``seq`` (255 wraps to 0)
   in the order it is written to the socket; a publish that fails consumes none.

A ``Node Control/Rebirth`` command stops the data at once and repeats step 3 with the same
bdSeq, once the primary host (if one is configured) is online. Every other command is refused and counted (``agent/commands_refused``): the agent
never writes to a PLC. A STATE offline from the primary host (not older than its last
online) ends the connection with the NDEATH; the publisher reconnects and step 1 follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.config import Config
from agent.contract.errors import PublishError
from agent.outputs.mqtt.publisher import Publisher
from agent.outputs.sparkplug.encoding import (
    birth,
    decode_commands,
    ndeath,
    stamp,
    template,
    to_data,
)
from agent.outputs.sparkplug.format import SparkplugFormat, Topics
from agent.outputs.sparkplug.metrics import REBIRTH, STATUS_METRICS
from agent.store import Store

__all__ = ["EdgeNode"]

log = logging.getLogger("plantfloor.sparkplug")


def _now_ms() -> int:
    return int(time.time() * 1000)


class EdgeNode:
    """One edge node session at a time; the forwarder's channel for Sparkplug records."""

    def __init__(self, cfg: Config, fmt: SparkplugFormat, store: Store, *,
                 status: Callable[[], Mapping[str, Any]]) -> None:
        sp = cfg.sparkplug
        assert sp is not None
        self._cfg = cfg
        self._fmt = fmt
        self._store = store
        self._status = status
        self.topics: Topics = fmt.topics
        self.host_id = sp.primary_host_id
        self._v5 = cfg.mqtt.version == "5"
        self.publisher = Publisher(
            cfg.mqtt, client_id=sp.client_id or f"{cfg.client_id}-sparkplug",
            will_topic=self.topics.node("NDEATH"), will_payload=b"", will_retain=False,
            password=cfg.mqtt.password(), prepare_will=self.prepare_will,
            on_connect=self.on_connect, on_message=self.on_message)
        #: set while births are out and data may flow (the forwarder waits on it)
        self.connected = asyncio.Event()
        self.bdseq: int | None = None
        self.commands_refused = 0
        self._seq = 0
        self._session = 0
        self._host_online = False
        self._host_ts: int | None = None      # timestamp of the host's last online STATE
        self._state_ts: int | None = None     # and of its last STATE accepted
        self._born = False                    # births started in this session
        self._birth: asyncio.Task[None] | None = None
        self._leaving: asyncio.Task[None] | None = None
        self._fence: asyncio.Future[None] | None = None
        self._announced: dict[str, Any] = {}
        self._status_wake = asyncio.Event()
        self._sending = asyncio.Lock()

    # --- session ---------------------------------------------------------------------

    async def prepare_will(self) -> tuple[str, bytes]:
        """Before each CONNECT: the next bdSeq, durable first, and the NDEATH carrying it."""
        self.bdseq = await self._store.next_bdseq(f"{self.topics.group_id}/{self.topics.edge_node_id}")
        return self.topics.node("NDEATH"), ndeath(self.bdseq, _now_ms())

    async def on_connect(self) -> None:
        """After each CONNACK: subscribe; births now, or when the primary host is online."""
        self._session += 1
        self._born = False
        self._host_online = False
        self.connected.clear()
        topics = [(self.topics.node("NCMD"), 1), (self.topics.device("DCMD", "+"), 1)]
        if self.host_id is not None:
            topics.append((Topics.state(self.host_id), 1))
        try:
            codes = await self.publisher.subscribe(topics)
        except PublishError as exc:
            log.warning("Sparkplug: cannot subscribe (%s); reconnecting", exc)
            await self._leave()
            return
        for (topic, _), code in zip(topics, codes, strict=False):
            if code >= 0x80:
                log.error("Sparkplug: the broker refused the subscription to %s (0x%02x)", topic, code)
        if self.host_id is None or self._host_online:
            self._start_births()
        else:
            log.info("Sparkplug: waiting for primary host %s to be online", self.host_id)

    def _start_births(self) -> None:
        """Births, unless they are out, the connection is down, or the configured primary
        host is not online (a rebirth command then waits for its STATE online too)."""
        if self.host_id is not None and not self._host_online:
            return
        if not self._born and self.publisher.connected.is_set():
            self._born = True
            self._birth = asyncio.ensure_future(self._births(self._session))

    async def _births(self, session: int) -> None:
        self.connected.clear()
        now = _now_ms()
        status = self._status_values()
        bodies = [(self.topics.node("NBIRTH"), birth(
            self._fmt.birth_metrics(None, now, extra=status), bdseq=self.bdseq, now_ms=now, seq=0))]
        for seq, device in enumerate(self._fmt.device_specs, start=1):
            bodies.append((self.topics.device("DBIRTH", device), birth(
                self._fmt.birth_metrics(device, now), bdseq=None, now_ms=now, seq=seq % 256)))
        try:
            for topic, body in bodies:
                await self.publisher.publish(topic, body, qos=0)
            self._seq = (len(bodies) - 1) % 256
            await self.publisher.fence()
        except PublishError as exc:
            log.warning("Sparkplug: births not published: %s", exc)
            return
        if session == self._session and self.publisher.connected.is_set():
            self._announced = status
            log.info("Sparkplug: node %s/%s born (bdSeq %s, %d devices)", self.topics.group_id,
                     self.topics.edge_node_id, self.bdseq, len(bodies) - 1)
            self.connected.set()

    def rebirth(self) -> None:
        """Stop the data now and send the whole birth sequence again, with the same bdSeq."""
        self.connected.clear()
        if self._birth is not None and not self._birth.done():
            return  # a complete birth sequence is on its way
        self._born = False
        self._start_births()

    async def _leave(self) -> None:
        """End the connection with the NDEATH (MQTT 5: the will; 3.1.1: published first)."""
        self.connected.clear()
        if self._v5:
            await self.publisher.drop(with_will=True)
        else:
            await self.publisher.drop(final_topic=self.topics.node("NDEATH"),
                                      final_payload=ndeath(self.bdseq or 0, _now_ms()))

    async def stop(self) -> None:
        """Clean shutdown: the NDEATH, then DISCONNECT."""
        self.connected.clear()
        for task in (self._birth, self._leaving):
            if task is not None:
                task.cancel()
        if self._v5:
            await self.publisher.stop(with_will=True)
        else:
            await self.publisher.stop(final_topic=self.topics.node("NDEATH"), final_retain=False,
                                      final_payload=ndeath(self.bdseq or 0, _now_ms()))

    # --- the forwarder's channel ----------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False,
                      timeout: float = 10.0) -> int:  # noqa: ASYNC109 - the channel's contract
        """Send a DDATA/NDATA body with the next ``seq``; return once the broker has it.

        Sparkplug requires QoS 0, which has no acknowledgement: the record is acknowledged
        by the broker's answer to a later :meth:`Publisher.fence` on the same connection.
        """
        # one message at a time: the seq order is the wire order, and a seq is consumed only
        # by a message that went out (a refused publish leaves no gap for hosts to see)
        async with self._sending:
            if not self.connected.is_set():
                raise PublishError("the Sparkplug session is not born")
            seq = (self._seq + 1) % 256
            code = await self.publisher.publish(topic, stamp(payload, seq=seq, now_ms=_now_ms()),
                                                qos=0, retain=False, timeout=timeout)
            self._seq = seq
        fence = self._fence
        if fence is None:
            fence = self._fence = asyncio.ensure_future(self._send_fence(within=timeout))
            # retrieved even when every waiter was cancelled (shutdown)
            fence.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.shield(fence)
        return code

    async def _send_fence(self, *, within: float) -> None:
        self._fence = None  # messages written from now on need a later fence
        await self.publisher.fence(timeout=within)

    # --- commands and the primary host's STATE (paho callbacks, on the loop) -------------

    def on_message(self, topic: str, payload: bytes) -> None:
        if self.host_id is not None and topic == Topics.state(self.host_id):
            self._on_state(payload)
        elif topic == self.topics.node("NCMD"):
            self._on_ncmd(payload)
        elif topic.startswith(self.topics.device("DCMD", "")):
            device = topic.rsplit("/", 1)[-1]
            self._refuse(f"DCMD to device {device!r}: the agent never writes to a PLC")

    def _on_ncmd(self, payload: bytes) -> None:
        try:
            commands = decode_commands(payload)
        except ValueError as exc:
            self._refuse(f"NCMD: {exc}")
            return
        for command in commands:
            if command.name == REBIRTH and command.value is True:
                log.info("Sparkplug: rebirth requested")
                self.rebirth()
            else:
                self._refuse(f"NCMD {command.name or command.alias!r}: only {REBIRTH} is accepted")

    def _refuse(self, what: str) -> None:
        self.commands_refused += 1
        log.warning("Sparkplug: refused %s", what)
        self._status_wake.set()

    def _on_state(self, payload: bytes) -> None:
        try:
            data = json.loads(payload)
            online, ts = data["online"], data["timestamp"]
            if not isinstance(online, bool) or not isinstance(ts, int):
                raise TypeError("online must be a boolean and timestamp an integer")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("Sparkplug: STATE of %s ignored: %s", self.host_id, exc)
            return
        if online:
            if self._state_ts is not None and ts < self._state_ts:
                return  # older than the host's last STATE: stale
            self._host_ts = self._state_ts = ts
            self._host_online = True
            self._start_births()
            return
        if self._host_ts is not None and ts < self._host_ts:
            return  # older than the last online: stale, and must not end the session
        self._state_ts = ts
        self._host_online = False
        if self._born and (self._leaving is None or self._leaving.done()):
            log.warning("Sparkplug: primary host %s is offline: disconnecting", self.host_id)
            self.connected.clear()
            self._leaving = asyncio.ensure_future(self._leave())

    # --- status ----------------------------------------------------------------------------

    def _status_values(self) -> dict[str, Any]:
        return {**self._status(), "agent/commands_refused": self.commands_refused}

    async def run(self, interval_s: float) -> None:
        """Until cancelled: data stops with the connection; the status goes out as NDATA."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow_connection(), name="sparkplug-connection")
            tg.create_task(self._status_loop(interval_s), name="sparkplug-status")

    async def _follow_connection(self) -> None:
        while True:
            await self.publisher.disconnected.wait()
            self.connected.clear()
            await self.publisher.connected.wait()

    async def _status_loop(self, interval_s: float) -> None:
        """The agent's status (backlog, dropped, alarms, refused commands) when it changed."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await self._status_wake.wait()
            self._status_wake.clear()
            if self.connected.is_set():
                await self._publish_status()

    async def _publish_status(self) -> None:
        values = self._status_values()
        changed = {k: v for k, v in values.items() if self._announced.get(k) != v}
        if not changed:
            return
        specs = [s for s in STATUS_METRICS if s.name in changed]
        now = _now_ms()
        body = to_data(template(specs, changed, now), self._fmt.aliases[None], historical=False,
                       datatypes=self._fmt.data_datatypes)
        try:
            await self.publish(self.topics.node("NDATA"), body, qos=0)
        except PublishError as exc:
            log.debug("Sparkplug status not published: %s", exc)
            return
        self._announced.update(changed)
