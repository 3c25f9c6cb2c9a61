"""One roll-up replica: wires the database, the consumer, the writer, the leader and the adopter.

This is the only module of the roll-up that knows every part. Lifecycle:

1. open the pool (waiting for PostgreSQL), apply the migrations, read (or create) the
   site's identity; start the publisher (status, and the figure when leading);
2. open the replica's session and take its identity lock (waiting while another process
   holds it), register, then run the writer, the consumer, the leader, the adopter and the
   heartbeat together; READY=1 once subscribed;
3. on SIGTERM: stop leading and adopting, unsubscribe, commit and acknowledge what was
   received, disconnect, close the session (leadership passes on), publish offline status.

A lost session (the database went away) ends step 2 with every lock gone; it starts again
after a backoff, without leaving the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Callable
from datetime import UTC, datetime

from agent import __version__
from agent.contract.errors import ConfigError
from agent.contract.payloads import encode
from agent.core.calendar import ShiftCalendar
from agent.outputs.mqtt.publisher import Publisher
from agent.rollup import sql
from agent.rollup.ack import AckPublisher
from agent.rollup.adopt import Adopter
from agent.rollup.config import RollupConfig
from agent.rollup.consumer import Consumer
from agent.rollup.database import Database, DatabaseUnavailable, SiteIdentity
from agent.rollup.ingest import Ingest
from agent.rollup.leader import Leader
from agent.rollup.payloads import RollupStatus
from agent.rollup.rows import RowBuilder
from agent.rollup.session import ReplicaSession, identity_key
from agent.runtime.notify import Notifier

__all__ = ["RollupService"]

log = logging.getLogger("plantfloor.rollup")

HEARTBEAT_S = 2.0        # how often the session is pinged (and the watchdog fed)
DRAIN_S = 10.0           # how long a stop waits for the last windows to commit
READY_TIMEOUT_S = 30.0   # READY=1 waits this long for the subscription, then goes degraded


class RollupService:
    """``run(stop)`` returns after a clean shutdown. Constructing it does no I/O."""

    def __init__(self, cfg: RollupConfig, *, replica: str, notifier: Notifier | None = None,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.cfg = cfg
        self.replica = replica
        self.client_id = cfg.client_id(replica)
        self.notifier = notifier or Notifier()
        self.wall = wall
        self.started_at = wall()
        self.calendar = ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)
        self.db = Database(cfg.database, application_name=f"plantfloor-rollup {replica}")
        self.password = cfg.mqtt.password()
        self.status_topic = f"{cfg.topic_root}/rollup/{replica}/status"
        self.publisher: Publisher | None = None
        self.site: SiteIdentity | None = None
        self.ingest: Ingest | None = None
        self.acks: AckPublisher | None = None
        self.consumer: Consumer | None = None
        self.leader: Leader | None = None
        self.adopter: Adopter | None = None
        self.ready = asyncio.Event()
        self._status_due = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then drain and return."""
        readiness = asyncio.create_task(self._announce_ready(), name="rollup-readiness")
        try:
            if not await self.db.open(stop, on_wait=self.notifier.watchdog):
                return
            applied = await self.db.migrate()
            if applied:
                log.info("database schema migrated to version %d", applied[-1])
            interval = self.cfg.publish.interval_s
            origin, _ = self.calendar.window_bounds(self.wall(), interval)
            self.site = await self.db.site(self.cfg.site, interval_s=interval, origin=origin)
            if self.site.interval_s != interval:
                raise ConfigError(f"{interval} differs from the {self.site.interval_s} s of site "
                                  f"{self.cfg.site!r} in the database: every gateway and the roll-up use "
                                  "the site's window", key="publish.interval_s")
            self.publisher = Publisher(self.cfg.mqtt, client_id=f"{self.client_id}-pub",
                                       will_topic=self.status_topic, will_payload=self.status_payload("offline"),
                                       password=self.password, on_connect=self._publish_status)
            await self.publisher.start()
            attempt = 0
            while not stop.is_set():
                try:
                    await self._replica(self.site, stop)
                except* DatabaseUnavailable as group:
                    attempt += 1
                    log.warning("%s: the replica starts again", group.exceptions[0])
                    self.notifier.watchdog()   # retrying is progress: the loop is alive
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(random.uniform(0, min(15.0, 0.5 * 2 ** attempt))):
                            await stop.wait()
        finally:
            readiness.cancel()
            await asyncio.wait([readiness])
            self.notifier.stopping()
            if self.publisher is not None:
                await self.publisher.stop(final_topic=self.status_topic, final_payload=self.status_payload("offline"))
            await self.db.close()
            log.info("stopped")

    async def _replica(self, site: SiteIdentity, stop: asyncio.Event) -> None:
        assert self.publisher is not None
        session = ReplicaSession(self.db)
        await session.open()
        try:
            if not await self._claim_identity(session, stop):
                return
            await session.fetch(sql.REGISTER_REPLICA, {"site": self.cfg.site, "client_id": self.client_id,
                                                       "host": socket.gethostname(), "pid": os.getpid()})
            opts = self.cfg.ingest
            self.acks = acks = AckPublisher(self.db, self.publisher, site=self.cfg.site,
                                            site_root=self.cfg.topic_root, wall=self.wall)
            self.ingest = ingest = Ingest(self.db, RowBuilder(self.cfg, self.calendar),
                                          batch_size=opts.batch_size, batch_delay_s=opts.batch_delay_s,
                                          # this session's and an adopted one's: each bounded by receive_maximum
                                          max_queued=2 * opts.receive_maximum + opts.batch_size,
                                          on_commit=acks.note)
            self.consumer = consumer = Consumer(
                self.cfg.mqtt, client_id=self.client_id, filters=self.cfg.filters(), deliver=ingest.deliver,
                password=self.password, receive_maximum=opts.receive_maximum,
                session_expiry_s=opts.session_expiry_s, max_packet_bytes=opts.max_packet_bytes)
            self.leader = leader = Leader(self.cfg, self.calendar, session, site, self.publisher, wall=self.wall,
                                          on_change=lambda _lead: self._status_due.set())
            self.adopter = Adopter(self.cfg, session, ingest, client_id=self.client_id, password=self.password,
                                   broker_up=consumer.connected.is_set)
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(ingest.run(), name="rollup-writer")
                receiving = tg.create_task(consumer.run(), name="rollup-consumer")
                work = [tg.create_task(leader.run(), name="rollup-leader"),
                        tg.create_task(self.adopter.run(), name="rollup-adopter"),
                        tg.create_task(self._heartbeat(session), name="rollup-heartbeat"),
                        tg.create_task(acks.run(), name="rollup-acks"),
                        tg.create_task(self._wake_when_subscribed(consumer), name="rollup-subscribed")]
                await stop.wait()
                log.info("stopping: handing over leadership, draining the subscription")
                self.notifier.stopping()
                for t in work:
                    t.cancel()
                await consumer.unsubscribe()
                await consumer.drained(opts.drain_idle_s / 4, DRAIN_S)
                if not await ingest.flush(DRAIN_S):
                    log.warning("%d window(s) not committed at stop: the broker keeps them for the next start",
                                ingest.queued)
                await consumer.stop()
                await receiving
                writer.cancel()
        finally:
            if self.leader is not None:
                self.leader.is_leader = False
            await session.close()

    async def _claim_identity(self, session: ReplicaSession, stop: asyncio.Event) -> bool:
        """Take this replica's identity lock (its MQTT client id); False if stopped first."""
        key = identity_key(self.cfg.site, self.client_id)
        told = False
        while not stop.is_set():
            if await session.try_lock(key):
                if told:
                    log.info("client id %s is free again", self.client_id)
                return True
            if not told:
                log.warning("client id %s is held by another process (a replica with the same name, or one "
                            "draining this replica's session): waiting", self.client_id)
                told = True
            self.notifier.watchdog()   # waiting for the lock is progress: the loop is alive
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.leadership.lock_poll_s):
                    await stop.wait()
        return False

    async def _announce_ready(self) -> None:
        """READY=1 once subscribed; after READY_TIMEOUT_S without, READY=1 all the same with a
        degraded STATUS (systemd would otherwise restart a replica that waits for its database
        or broker, which is what it must do)."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await self.ready.wait()
        except TimeoutError:
            status = f"degraded: {self.health_line()}"
            log.warning("ready without the database or the broker: %s", status)
            self.notifier.ready(status)
        else:
            self.notifier.ready(self.health_line())

    async def _wake_when_subscribed(self, consumer: Consumer) -> None:
        """Wake the heartbeat as soon as the consumer is subscribed: READY=1 (and the status
        saying so) go out then, not up to HEARTBEAT_S later."""
        await consumer.connected.wait()
        self._status_due.set()

    async def _heartbeat(self, session: ReplicaSession) -> None:
        """Ping the session (a lost one raises), announce readiness, status, watchdog."""
        assert self.consumer is not None
        loop = asyncio.get_running_loop()
        next_status = loop.time()
        while True:
            await session.ping()
            if not self.ready.is_set() and self.consumer.connected.is_set():
                self.ready.set()
                self._status_due.set()
            self.notifier.status(self.health_line())
            self.notifier.watchdog()
            if self._status_due.is_set() or loop.time() >= next_status:
                self._status_due.clear()
                next_status = loop.time() + self.cfg.publish.status_interval_s
                await self._publish_status()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_S):
                    await self._status_due.wait()

    # --- status -----------------------------------------------------------------------------

    def status_payload(self, state: str) -> bytes:
        ingest = self.ingest
        return encode(RollupStatus(
            state="online" if state == "online" else "offline", site=self.cfg.site, replica=self.replica,
            client_id=self.client_id, version=__version__,
            ready=self.ready.is_set() and state == "online",
            leader=bool(self.leader and self.leader.is_leader and state == "online"),
            started_at=self.started_at, windows=ingest.windows if ingest else 0,
            duplicates=ingest.duplicates if ingest else 0, rejected=ingest.rejected if ingest else 0,
            dropped=ingest.dropped if ingest else 0, alarms=self.alarms(), last_error=self.last_error(),
            ts=self.wall()))

    def alarms(self) -> list[str]:
        """What needs an operator now (``RollupStatus.alarms``)."""
        found: list[str] = []
        if self.leader is not None and self.leader.is_leader and self.leader.failing is not None:
            found.append("leader_failing")
        if self.ingest is not None and self.ingest.failing:
            found.append("writer_failing")
        return found

    def last_error(self) -> str | None:
        if self.leader is not None and self.leader.failing is not None:
            return self.leader.failing
        if self.ingest is not None and self.ingest.failing:
            return self.ingest.last_error
        return None

    async def _publish_status(self) -> None:
        if self.publisher is None:
            return
        try:
            await self.publisher.publish(self.status_topic, self.status_payload("online"), qos=1, retain=True)
        except Exception as exc:  # status is best effort; the next interval sends it again
            log.debug("status not published: %s", exc)

    def health_line(self) -> str:
        ingest, consumer = self.ingest, self.consumer
        parts = [
            "leader" if self.leader and self.leader.is_leader else "follower",
            "broker up" if consumer and consumer.connected.is_set() else "broker DOWN",
            f"windows {ingest.windows if ingest else 0}",
            f"duplicates {ingest.duplicates if ingest else 0}",
        ]
        if ingest and ingest.rejected:
            parts.append(f"rejected {ingest.rejected}")
        if ingest and ingest.dropped:
            parts.append(f"dropped {ingest.dropped}")
        parts += [f"ALARM {a}" for a in self.alarms()]
        return "; ".join(parts)
