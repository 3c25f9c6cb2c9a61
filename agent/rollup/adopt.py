"""Draining a dead replica's MQTT session, so that no window waits in it for ever.

A broker routes a shared subscription's messages to every member's session, connected or
not: while a replica is away, its share of the windows queues in its persistent session
(Mosquitto does this; the MQTT 5 specification allows it). A replica that comes back picks
them up; one that never does would strand them until the session expires.

So every ``leadership.adopt_interval_s`` each replica looks at the replicas recorded in
``plantfloor.replica``. One whose identity lock it can take is not running (its database
session ended with it): the living replica connects *as* that client id with
``clean_start=False``, unsubscribes it, commits and acknowledges every window the session
holds, ends the session (DISCONNECT with session expiry 0), forgets the replica and lets
the lock go. A replica restarting meanwhile waits for its own lock, so the client id is
never used twice at once; an adopter that fails half-way leaves the session to the next
scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from agent.contract.errors import PublishError
from agent.rollup import sql
from agent.rollup.config import RollupConfig
from agent.rollup.consumer import Consumer
from agent.rollup.ingest import Ingest
from agent.rollup.session import ReplicaSession, identity_key

__all__ = ["Adopter"]

log = logging.getLogger("plantfloor.rollup.adopt")


class Adopter:
    """Scans for dead replicas and drains their sessions through this replica's writer."""

    def __init__(self, cfg: RollupConfig, session: ReplicaSession, ingest: Ingest, *,
                 client_id: str, password: str | None,
                 broker_up: Callable[[], bool] = lambda: True) -> None:
        self.cfg = cfg
        self.session = session
        self.ingest = ingest
        self.client_id = client_id
        self.password = password
        self.broker_up = broker_up
        self.drained_sessions = 0
        self.drained_windows = 0
        self._told: set[str] = set()

    async def run(self) -> None:
        """Until cancelled: wait ``adopt_interval_s`` (peers starting together get their own
        sessions first), then scan."""
        while True:
            await asyncio.sleep(self.cfg.leadership.adopt_interval_s)
            if self.broker_up():     # nothing to take over while this replica cannot reach the broker
                await self.scan()

    async def scan(self) -> list[str]:
        """Drain every dead replica's session now; returns the client ids drained."""
        done: list[str] = []
        rows = await self.session.fetch(sql.OTHER_REPLICAS, {"site": self.cfg.site, "client_id": self.client_id})
        for (client_id,) in rows:
            key = identity_key(self.cfg.site, str(client_id))
            if not await self.session.try_lock(key):
                continue  # alive (or being drained by another replica)
            try:
                if await self.drain(str(client_id)):
                    await self.session.fetch(sql.FORGET_REPLICA, {"site": self.cfg.site, "client_id": client_id})
                    done.append(str(client_id))
            finally:
                await self.session.unlock(key)
        return done

    async def drain(self, client_id: str) -> bool:
        """Take over ``client_id``'s session, commit what it holds, end it; True when done."""
        opts = self.cfg.ingest
        consumer = Consumer(self.cfg.mqtt, client_id=client_id, filters=self.cfg.filters(),
                            deliver=self.ingest.deliver, password=self.password,
                            receive_maximum=opts.receive_maximum, session_expiry_s=opts.session_expiry_s,
                            max_packet_bytes=opts.max_packet_bytes,
                            subscribe=False, reconnect=False)
        task = asyncio.create_task(consumer.run(), name=f"adopt-{client_id}")
        try:
            connected = asyncio.ensure_future(consumer.connected.wait())
            try:
                await asyncio.wait([connected, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
            finally:
                connected.cancel()
            if not consumer.connected.is_set():
                if client_id not in self._told:      # said once until it works
                    self._told.add(client_id)
                    log.warning("cannot take over the session of replica %s, which is not running, yet: %s",
                                client_id, consumer.last_error or "no connection")
                return False
            self._told.discard(client_id)
            if consumer.session_present:
                await consumer.unsubscribe()
                within = max(60.0, 30 * opts.drain_idle_s)
                if not await consumer.drained(opts.drain_idle_s, within):
                    log.warning("the session of dead replica %s was not drained within %.0f s: "
                                "trying again later", client_id, within)
                    return False
            got = consumer.received
            await consumer.stop(end_session=True)
            self.drained_sessions += 1
            self.drained_windows += got
            log.info("drained the session of replica %s, which is not running: %d window(s)", client_id, got)
            return True
        finally:
            await consumer.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, PublishError):
                await task
