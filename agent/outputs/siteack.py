"""End-to-end acknowledgement: a gateway's line windows stay until the site service has them.

A broker's PUBACK says the broker took a window, not that anybody has it: Mosquitto 2.0
keeps no shared subscription across its own restart, and answers 0x00 when some other
client subscribes to the same topic. With ``site_ack`` configured, the agent therefore
keeps every line window (``R/lines/<line>/output``, JSON format) after the broker's
acknowledgement, in the state file's ``site_hold`` (:mod:`agent.store.hold`), until the
site's retained ``S/rollup/ack/<gateway>`` says it has committed it: for each line, the
epoch and the run ``first..seq`` of windows it has without a gap. What the site has not
acknowledged ``timeout_s`` after the broker took it is published again, in id order
(hence seq order per line), as historical, and again after twice as long, up to
``backoff_max_s``; the site's key absorbs the duplicates. A site service that is down
for a day is a longer outage, bounded by ``storage.max_mb`` like a broker outage.

What is held is reported: ``site_backlog`` and ``site_oldest_unacknowledged`` in
``R/status``, the metrics ``plantfloor_site_backlog`` and
``plantfloor_site_oldest_unacknowledged_seconds``, and the ``site_unacknowledged`` alarm
while a window has waited longer than the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import orjson

from agent.config import SiteAckConfig
from agent.outputs.base import OutputFormat
from agent.store import OutboxRecord, Store
from agent.store.hold import held_due, held_totals, hold, mark_republished, next_due, release

__all__ = ["SiteAcks"]

log = logging.getLogger(__name__)

#: held records re-published per round at most
_BATCH = 100


class AckChannel(Protocol):
    """The agent's publisher: it publishes in batches and subscribes."""

    connected: asyncio.Event

    async def publish_many(self, messages: Sequence[tuple[str, bytes, int, bool]], *,
                           timeout: float = 10.0) -> list[int | BaseException]:  # noqa: ASYNC109
        ...

    async def subscribe(self, topics: Sequence[tuple[str, int]], *,
                        timeout: float = 10.0) -> list[int]:  # noqa: ASYNC109
        ...


class SiteAcks:
    """Holds the gateway's line windows until the site acknowledges them. No I/O here."""

    def __init__(self, store: Store, channel: AckChannel, cfg: SiteAckConfig, *, root: str,
                 lines: Sequence[str], epoch: int, formats: Mapping[str, OutputFormat], max_bytes: int,
                 on_alarm: Callable[[str, str], None], wall: Callable[[], datetime],
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._channel = channel
        self.cfg = cfg
        self._topics = {f"{root}/lines/{line}/output": line for line in lines}
        self._lines = frozenset(lines)
        self.epoch = epoch
        self._formats = formats
        self._max_bytes = max_bytes
        self._on_alarm = on_alarm
        self._wall = wall
        self._clock = clock
        # the site's latest word per line of this epoch: the run (first, seq) it has without a gap
        self._acked: dict[str, tuple[int, int]] = {}
        self._to_release: dict[str, tuple[int, int]] = {}
        self._wake = asyncio.Event()
        self._alarmed = False
        self._bad_ack_logged = False
        self.backlog = 0
        self.oldest: datetime | None = None
        self.dropped = 0
        self.republished = 0

    # --- hooks ------------------------------------------------------------------------------

    async def on_sent(self, rows: Sequence[OutboxRecord]) -> None:
        """The broker took these records (called before they leave the outbox): keep the line
        windows the site has not acknowledged yet."""
        keep = [r for r in rows if r.format == "json" and r.seq is not None and r.topic in self._topics
                and not self._covered(self._topics[r.topic], r.seq)]
        if not keep:
            return
        dropped = await self._store.call(functools.partial(hold, records=keep, now=self._clock(),
                                                           max_bytes=self._max_bytes))
        if dropped:
            self.dropped += dropped
            log.warning("the site hold is full (%d bytes): dropped the %d oldest windows", self._max_bytes, dropped)
        self._wake.set()

    def on_message(self, topic: str, payload: bytes) -> None:
        """A message on the publisher's connection: the site's acknowledgement, when it is one."""
        if topic != self.cfg.topic:
            return
        try:
            doc: Any = orjson.loads(payload)
            lines = doc["lines"] if payload else {}
            for line, got in lines.items():
                first, seq = got["first"], got["seq"]
                if not (line in self._lines and got["epoch"] == self.epoch and isinstance(first, int)
                        and isinstance(seq, int) and seq >= first):
                    continue
                # a run only grows (replicas may answer out of order): keep the widest
                old_first, old_seq = self._acked.get(line, (first, seq))
                run = (min(first, old_first), max(seq, old_seq))
                if line not in self._acked or run != self._acked[line]:
                    self._acked[line] = run
                    self._to_release[line] = run
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            if not self._bad_ack_logged:
                log.warning("%s is not a site acknowledgement (%s): ignored", topic, exc)
                self._bad_ack_logged = True
            return
        if self._to_release:
            self._wake.set()

    async def on_connect(self) -> None:
        """Subscribe to the acknowledgement (after every connection: the retained one comes)."""
        try:
            await self._channel.subscribe([(self.cfg.topic, 1)])
        except Exception as exc:  # the next connection subscribes again
            log.warning("cannot subscribe to the site's acknowledgement %s: %s", self.cfg.topic, exc)

    def _covered(self, line: str, seq: int) -> bool:
        got = self._acked.get(line)
        return got is not None and got[0] <= seq <= got[1]

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: forget what the site acknowledged, re-publish what is overdue."""
        await self._refresh()
        while True:
            self._wake.clear()
            if self._to_release:
                acked, self._to_release = self._to_release, {}
                await self._store.call(functools.partial(release, acked=acked))
            if self._channel.connected.is_set():
                await self._republish()
            await self._refresh()
            due = await self._store.call(functools.partial(next_due, timeout_s=self.cfg.timeout_s,
                                                           backoff_max_s=self.cfg.backoff_max_s))
            wait = self.cfg.timeout_s if due is None else max(0.05, due - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _republish(self) -> None:
        due = await self._store.call(functools.partial(held_due, now=self._clock(), timeout_s=self.cfg.timeout_s,
                                                       backoff_max_s=self.cfg.backoff_max_s, limit=_BATCH))
        if not due:
            return
        rows = [r for r, _ in due if r.format in self._formats]
        log.info("publishing again %d window(s) the site has not acknowledged (oldest %s seq %s)",
                 len(rows), rows[0].line if rows else "-", rows[0].seq if rows else "-")
        messages = [(r.topic, self._formats[r.format].wire(r, historical=True), r.qos, r.retain) for r in rows]
        results = await self._channel.publish_many(messages)
        ok = [r.id for r, res in zip(rows, results, strict=True) if not isinstance(res, BaseException)]
        if ok:
            await self._store.call(functools.partial(mark_republished, ids=ok, now=self._clock()))
            self.republished += len(ok)

    async def _refresh(self) -> None:
        self.backlog, self.oldest = await self._store.call(held_totals)
        behind = self.oldest is not None and (self._wall() - self.oldest).total_seconds() > self.cfg.timeout_s
        if behind and not self._alarmed:
            self._alarmed = True
            self._on_alarm("site_unacknowledged",
                           f"{self.backlog} window(s) not acknowledged by the site after {self.cfg.timeout_s:g} s "
                           f"({self.cfg.topic}); they stay in the state file and are published again")
        elif not behind and self._alarmed:
            self._alarmed = False
            self._on_alarm("site_unacknowledged", "")
