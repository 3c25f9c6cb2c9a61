"""The agent: wires sources -> trackers -> windows -> store -> publisher, and shuts down cleanly.

This is the only module that knows every stage. Readings are handled synchronously as
they arrive (no queue to lose); windows close on wall-clock boundaries in their own task,
so a stalled PLC never delays another line's window.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from agent import __version__
from agent.config import Config
from agent.contract.errors import ConfigError, PlantfloorError
from agent.contract.payloads import StatusPayload, encode
from agent.contract.readings import Reading, SourceHealth
from agent.core.calendar import ShiftCalendar
from agent.core.clock import Clock, SystemClock
from agent.core.report import Reporter
from agent.core.totals import PlantTotals, year_openings
from agent.outputs import OutputFormat, make_formats
from agent.outputs.forwarder import Forwarder
from agent.outputs.json import JsonFormat
from agent.outputs.mqtt.publisher import Publisher
from agent.outputs.siteack import SiteAcks
from agent.runtime.lines import LineBoard
from agent.runtime.metrics import Metrics
from agent.runtime.notify import Notifier
from agent.runtime.restore import restored_backup
from agent.runtime.status import Alarms
from agent.runtime.windows import WindowCloser
from agent.sources.base import make_source
from agent.sources.supervisor import SourceSupervisor, poll_phase
from agent.store import Store

if TYPE_CHECKING:
    from agent.outputs.sparkplug.node import EdgeNode

__all__ = ["Agent"]

log = logging.getLogger("plantfloor.agent")

#: how long a clean stop waits for the lines' retained ``unknown`` state to be acknowledged
STOPPED_STATE_S = 2.0
DRAIN_S = 10.0         # how long shutdown waits for the outbox to reach the broker (the unit: TimeoutStopSec=20)
READY_TIMEOUT_S = 30.0  # READY=1 waits this long for every source and the broker, then goes degraded


class Agent:
    """One plant gateway's agent. ``run(stop)`` returns after a clean shutdown."""

    def __init__(self, cfg: Config, *, config_sha256: str, notifier: Notifier | None = None,
                 metrics: Metrics | None = None, wall: Callable[[], datetime] | None = None,
                 mono: Callable[[], float] | None = None, clock: Clock | None = None,
                 simulated_ok: bool = False) -> None:
        """``clock`` is the plant clock (the machine's by default); ``wall`` or ``mono``
        replace one of its two readings (tests). A simulated clock is refused unless
        ``simulated_ok`` (the demo, the tests): a production agent runs on real time."""
        clock = clock or SystemClock()
        if clock.simulated and not simulated_ok:
            raise ConfigError("plantfloor run keeps the plant's real time: a simulated plant "
                              "clock is for plantfloor demo and the tests only")
        self.clock = clock
        self.cfg = cfg
        self.sha = config_sha256
        self.notifier = notifier or Notifier()
        self.metrics = metrics
        self.wall: Callable[[], datetime] = wall or clock.wall
        self.mono: Callable[[], float] = mono or clock.mono
        self.started_at = self.wall()
        self.alarms = Alarms(self.wall)
        self.calendar = ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)
        self.reporter = Reporter(cfg, self.calendar)
        self.root = cfg.topic_root
        self.store: Store | None = None
        self.epoch: int | None = None
        #: the plant seq the store held at start (the status before the first window)
        self.stored_seq: int | None = None
        self.publisher: Publisher | None = None
        self.forwarder: Forwarder | None = None
        self.site_acks: SiteAcks | None = None
        self.sparkplug: EdgeNode | None = None
        self.sparkplug_forwarder: Forwarder | None = None
        self.board: LineBoard | None = None
        self.closer: WindowCloser | None = None
        self.supervisors: list[SourceSupervisor] = []
        self.supervisor_of: dict[str, SourceSupervisor] = {}
        self._overruns_seen: dict[str, int] = {}
        self._ever_up: dict[str, bool] = {}
        self._metrics_seen = (0, 0)
        self.source_up: dict[str, bool] = {s.id: False for s in cfg.sources}
        self.source_seen: dict[str, asyncio.Event] = {s.id: asyncio.Event() for s in cfg.sources}
        self.ready = asyncio.Event()
        self.metrics_port: int | None = None

    # --- status --------------------------------------------------------------------

    def status_payload(self, state: str) -> bytes:
        store = self.store
        return encode(StatusPayload(
            state=state,
            agent=self.cfg.client_id, version=__version__,
            started_at=self.started_at, config_sha256=self.sha, epoch=self.epoch,
            seq=self.closer.committed_seq if self.closer is not None else self.stored_seq,
            backlog=store.backlog if store else 0,
            dropped=(store.dropped if store else 0) + (self.closer.dropped_in_memory if self.closer else 0),
            alarms=self.alarms.active(), ts=self.wall(),
            site_backlog=self.site_acks.backlog if self.site_acks else None,
            site_oldest_unacknowledged=self.site_acks.oldest if self.site_acks else None,
        ))

    async def _publish_status(self, state: str = "online") -> None:
        assert self.publisher is not None
        try:
            await self.publisher.publish(f"{self.root}/status", self.status_payload(state), qos=1, retain=True)
        except Exception as exc:
            log.debug("status not published: %s", exc)

    async def _on_connect(self) -> None:
        """Birth: online status and every line's retained state, after each (re)connect."""
        await self._publish_status("online")
        if self.site_acks is not None:
            await self.site_acks.on_connect()
        if self.board is not None:
            self.board.republish_all()
        if self.forwarder is not None:
            self.forwarder.wake()

    def _on_message(self, topic: str, payload: bytes) -> None:
        if self.site_acks is not None:
            self.site_acks.on_message(topic, payload)

    # --- stages ----------------------------------------------------------------------

    def _on_readings(self, source: str, readings: Sequence[Reading]) -> None:
        assert self.board is not None
        self.source_seen[source].set()
        self.board.on_readings(source, readings)
        if self.metrics is not None:
            sup = self.supervisor_of[source]
            if sup.last_poll_latency_s is not None:
                self.metrics.poll(source, sup.last_poll_latency_s)
            for _ in range(sup.overruns - self._overruns_seen.get(source, 0)):
                self.metrics.overrun(source)
            self._overruns_seen[source] = sup.overruns
            for r in readings:
                if r.quality == "good":
                    self.metrics.last_good_read(r.line, self.wall().timestamp())
                elif r.quality == "bad":
                    self.metrics.read_error(source, str(r.code) if r.code is not None else "no_answer")

    def _on_health(self, health: SourceHealth) -> None:
        assert self.board is not None
        self.source_seen[health.source].set()
        self.source_up[health.source] = health.connected
        self.board.on_health(health, self.mono())
        if self.metrics is not None and health.connected and self._ever_up.get(health.source):
            self.metrics.reconnect(health.source)
        if health.connected:
            self._ever_up[health.source] = True

    async def _open(self) -> None:
        cfg = self.cfg
        self.store = await Store.open(cfg.storage.path, max_bytes=int(cfg.storage.max_mb * 1_000_000))
        stored = await self.store.load()
        if not stored.created and stored.recovered_from is None:
            stored = await restored_backup(cfg, self.store, stored, root=self.root,
                                           alarms=self.alarms)
        self.epoch = stored.epoch
        # the year-to-date opening balance (plantfloor state opening, recorded while no
        # agent runs on the file): counted in units_year_to_date from the first window
        self.reporter.openings = year_openings(
            (e.year, e.line, e.units, e.through) for e in await self.store.openings())
        self.stored_seq = PlantTotals.from_json(stored.plant_json).seq if stored.plant_json else 0
        if stored.recovered_from is not None:
            self.alarms.raise_("store_corrupt",
                               f"state database was unreadable and moved to {stored.recovered_from}; "
                               f"a new epoch {stored.epoch} began, counters re-baselined without counting")
        elif stored.created:
            log.info("new state database %s: epoch %d", cfg.storage.path, stored.epoch)
        self.publisher = Publisher(
            cfg.mqtt, client_id=cfg.client_id, will_topic=f"{self.root}/status",
            will_payload=self.status_payload("offline"), password=cfg.mqtt.password(),
            on_connect=self._on_connect, on_message=self._on_message if cfg.site_ack else None)
        self.board = LineBoard(cfg, self.publisher, stored, mono=self.mono, wall=self.wall)
        formats = make_formats(cfg)
        self._open_sparkplug(formats)
        # the JSON channel drains every format but Sparkplug's (which has its own session)
        plain = {name: fmt for name, fmt in formats.items() if name != "sparkplug"}
        plain = plain or {"json": JsonFormat.from_config(cfg)}
        if cfg.site_ack is not None:
            self.site_acks = SiteAcks(self.store, self.publisher, cfg.site_ack, root=self.root,
                                      lines=[line.id for line in cfg.lines], epoch=stored.epoch, formats=plain,
                                      max_bytes=self.store.max_bytes, on_alarm=self.alarms.on_alarm, wall=self.wall)
        self.forwarder = Forwarder(self.store, self.publisher, interval_s=cfg.publish.interval_s,
                                   on_alarm=self.alarms.on_alarm, clock=self.wall,
                                   live_limit=_live_limit(cfg), replay_per_s=cfg.publish.replay_per_s,
                                   formats=plain, exclude=("sparkplug",) if self.sparkplug else (),
                                   on_sent=self.site_acks.on_sent if self.site_acks else None)
        self.closer = WindowCloser(cfg, self.calendar, self.reporter, self.board, self.store,
                                   stored, wall=self.wall, mono=self.mono, real_s=self.clock.real_s,
                                   alarms=self.alarms,
                                   on_committed=self._on_committed, formats=formats)
        for src_cfg in cfg.sources:
            self.supervisor_of[src_cfg.id] = SourceSupervisor(
                make_source(cfg, src_cfg), poll_interval_s=src_cfg.poll_interval_s,
                backoff_max_s=src_cfg.backoff_max_s,
                on_readings=functools.partial(self._on_readings, src_cfg.id),
                on_health=self._on_health, phase_s=poll_phase(src_cfg.poll_interval_s),
                stamp=self.mono if self.clock.simulated else None)
            self.supervisors.append(self.supervisor_of[src_cfg.id])

    def _open_sparkplug(self, formats: dict[str, OutputFormat]) -> None:
        """The Sparkplug edge node, its own connection and forwarder (output sparkplug/both)."""
        fmt = formats.get("sparkplug")
        if fmt is None:
            return
        from agent.outputs.sparkplug.format import SparkplugFormat
        from agent.outputs.sparkplug.node import EdgeNode

        assert isinstance(fmt, SparkplugFormat)
        assert self.store is not None
        self.sparkplug = EdgeNode(self.cfg, fmt, self.store, status=self._sparkplug_status)
        self.sparkplug_forwarder = Forwarder(
            self.store, self.sparkplug, interval_s=self.cfg.publish.interval_s,
            on_alarm=self.alarms.on_alarm, clock=self.wall, formats={"sparkplug": fmt},
            replay_per_s=self.cfg.publish.replay_per_s,
            live_limit=_live_limit(self.cfg),
            only=("sparkplug",))

    def _sparkplug_status(self) -> dict[str, object]:
        store = self.store
        dropped = (store.dropped if store else 0) + (self.closer.dropped_in_memory if self.closer else 0)
        return {"agent/version": __version__, "agent/backlog": store.backlog if store else 0,
                "agent/dropped": dropped,
                "agent/alarms": ",".join(a.kind for a in self.alarms.active())}

    def _on_committed(self) -> None:
        assert self.forwarder is not None
        assert self.store is not None
        self.forwarder.wake()
        if self.sparkplug_forwarder is not None:
            self.sparkplug_forwarder.wake()
        if self.metrics is not None:
            self.metrics.backlog(self.store.backlog)

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then drain, publish offline status and return."""
        log.info("plantfloor %s on the %s event loop", __version__,
                 type(asyncio.get_running_loop()).__module__.split(".")[0])
        await self._open()
        # what start-up built (the config's models, the trackers) lives as long as the
        # agent: out of the collector's sight, a full collection no longer walks it (at
        # 500 PLCs, some 300,000 objects every few seconds otherwise)
        gc.collect()
        gc.freeze()
        assert self.publisher
        assert self.forwarder
        assert self.closer
        assert self.board
        assert self.store
        if self.metrics is None and self.cfg.metrics is not None:
            self.metrics = Metrics()
            self.metrics_port = self.metrics.serve(self.cfg.metrics.host, self.cfg.metrics.port)
            log.info("metrics on http://%s:%d/metrics", self.cfg.metrics.host, self.metrics_port)
        await self.publisher.start()
        if self.sparkplug is not None:
            await self.sparkplug.publisher.start()
        try:
            async with asyncio.TaskGroup() as tg:
                work = [tg.create_task(s.run(), name=f"source-{c.id}")
                        for s, c in zip(self.supervisors, self.cfg.sources, strict=True)]
                windows = tg.create_task(self.closer.run(), name="windows")
                work.append(tg.create_task(self.board.run(), name="line-states"))
                work.append(tg.create_task(self._status_loop(), name="status"))
                work.append(tg.create_task(self._readiness(), name="readiness"))
                if self.site_acks is not None:
                    work.append(tg.create_task(self.site_acks.run(), name="site-acks"))
                fwd = tg.create_task(self.forwarder.run(), name="forwarder")
                forwarders = [fwd]
                if self.sparkplug is not None and self.sparkplug_forwarder is not None:
                    work.append(tg.create_task(self.sparkplug.run(self.cfg.publish.status_interval_s),
                                               name="sparkplug"))
                    forwarders.append(tg.create_task(self.sparkplug_forwarder.run(),
                                                     name="sparkplug-forwarder"))
                await stop.wait()
                log.info("stopping: draining the outbox for up to %.0f s", DRAIN_S)
                self.notifier.stopping()
                for t in work:
                    t.cancel()
                # finish the window in progress (never cancel a commit half-way)
                self.closer.stop()
                await windows
                await self._drain()
                for t in forwarders:
                    t.cancel()
        finally:
            await self._shutdown()

    async def _drain(self) -> None:
        assert self.store is not None
        assert self.publisher is not None
        # the drain waits on the network: real time, whatever the plant clock
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_S
        # the backlog is a counter the store keeps; polling it with a deadline bounds the drain
        while self.store.backlog and self.publisher.connected.is_set() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def _shutdown(self) -> None:
        if self.sparkplug is not None:
            await self.sparkplug.stop()  # NDEATH, then DISCONNECT
        if self.publisher is not None and self.board is not None and self.publisher.connected.is_set():
            try:
                async with asyncio.timeout(STOPPED_STATE_S):
                    await self.board.publish_stopped()
            except (TimeoutError, PlantfloorError, OSError) as exc:
                log.warning("the lines' stopped state was not published: %s", exc or "timed out")
        if self.publisher is not None:
            # bounded inside: 3 s for the offline status, 1 s for the disconnect
            await self.publisher.stop(final_topic=f"{self.root}/status",
                                      final_payload=self.status_payload("offline"))
        if self.store is not None:
            await self.store.close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        log.info("stopped")

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.publish.status_interval_s)
            if self.publisher is not None and self.publisher.connected.is_set():
                await self._publish_status("online")
            self.notifier.status(self.health_line())
            self._metrics_tick()

    def _metrics_tick(self) -> None:
        if self.metrics is None or self.store is None or self.forwarder is None:
            return
        sent = self.forwarder.sent + (self.sparkplug_forwarder.sent if self.sparkplug_forwarder else 0)
        dropped = self.store.dropped
        last_sent, last_dropped = self._metrics_seen
        if sent > last_sent:
            self.metrics.published(sent - last_sent)
        if dropped > last_dropped:
            self.metrics.dropped(dropped - last_dropped)
        self._metrics_seen = (sent, dropped)
        self.metrics.backlog(self.store.backlog)
        if self.site_acks is not None:
            oldest = self.site_acks.oldest
            self.metrics.site_backlog(self.site_acks.backlog,
                                      (self.wall() - oldest).total_seconds() if oldest is not None else 0.0)

    def health_line(self) -> str:
        store = self.store
        up = sum(self.source_up.values())
        parts = [f"sources {up}/{len(self.supervisors)} up",
                 "broker up" if self.publisher and self.publisher.connected.is_set() else "broker DOWN",
                 f"backlog {store.backlog if store else 0}", f"dropped {store.dropped if store else 0}"]
        if self.site_acks is not None:
            parts.append(f"site unacknowledged {self.site_acks.backlog}")
        if self.closer is not None:
            parts.append(f"windows {self.closer.windows_closed}")
        alarms = self.alarms.active()
        if alarms:
            parts.append("alarms " + ",".join(a.kind for a in alarms))
        return "; ".join(parts)

    async def _readiness(self) -> None:
        """READY=1 once every source gave a good reading and the broker accepted the connection.

        A gateway whose PLC or broker is away at boot must still start (it buffers and
        retries): after READY_TIMEOUT_S it reports READY with a degraded STATUS line.
        """
        assert self.publisher is not None
        waits = [asyncio.ensure_future(s.first_ok.wait()) for s in self.supervisors]
        waits.append(asyncio.ensure_future(self.publisher.connected.wait()))
        try:
            _, pending = await asyncio.wait(waits, timeout=READY_TIMEOUT_S)
        finally:
            for w in waits:
                w.cancel()
        self.ready.set()
        status = self.health_line()
        if pending:
            status = f"degraded: {status}"
            log.warning("ready without every source and the broker: %s", status)
        self.notifier.ready(status)
        interval = self.notifier.watchdog_interval_s
        while True:
            await asyncio.sleep(interval or 10.0)
            self.notifier.status(self.health_line())
            if interval is not None and self._heartbeat_ok():
                self.notifier.watchdog()

    def _heartbeat_ok(self) -> bool:
        """The pipeline's own heartbeat: the window task is alive and not overdue."""
        closer = self.closer
        if closer is None:
            return False
        overdue = self.clock.real_s(self.mono() - closer.last_tick_mono)
        return overdue < self.clock.real_s(self.cfg.publish.interval_s * 2) + 30


def _live_limit(cfg: Config) -> int:
    """The newest records (of every format) among which a forwarder looks for live ones: a
    window's records of both formats with their shift reports, and room to spare."""
    return max(1_000, 4 * (len(cfg.lines) + 1) + 50)
