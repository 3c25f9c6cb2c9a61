"""Store and forward: drains the durable outbox into the MQTT publisher.

One forwarder runs per channel (:class:`Channel`): the JSON publisher, and the Sparkplug
edge node when that output is on, each draining the records of its own formats.

A record leaves the outbox only after the broker acknowledged it with a success reason
code. Order of service on each pass:

1. live records first: those whose ``window_end`` is within one window of now, but for
   retained ones (shift reports), which always go in commit order, so that after an
   outage spanning two shift ends the newer report is the one the broker retains;
2. then the backlog in id order (commit order, hence ``seq`` order per line), one batch
   (100 records) at a time, checking for new live records between batches, so a long
   replay never holds the current windows back by more than one small batch (a batch is
   handed to the connection at once, and a live window queues behind it). The replay is
   paced at ``publish.replay_per_s`` records a second (3,000 by default), so that the
   broker and the subscribers have room for the live windows while it lasts.

Publishes are pipelined: a whole batch is handed to the publisher at once, which keeps
up to its in-flight cap outstanding and awaits the acknowledgements concurrently; the
acknowledged ids are marked sent in one store transaction per batch.

A record sent later than one window after its ``window_end`` is sent as historical: the
record's output format gives the bytes (:meth:`agent.outputs.base.OutputFormat.wire`; the
JSON format rewrites the payload's final ``"historical":false}``, never re-serialising).

A refusal (:class:`PublishRefused`, e.g. a topic the broker's ACL denies) keeps the
record and parks its topic: the topic's records are held back while the others flow, and
one of them is sent alone as a probe after a pause that doubles up to one window. Parking
matters because a broker may close the connection after a refusal (Mosquitto 2.0 does),
which would otherwise stall every other topic behind the refused one. The alarm
``publish_refused`` is raised on the transition and cleared (empty message) once a pass
completes with no topic parked. Any other :class:`PublishError` waits for the
connection and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Protocol

from agent.contract.errors import PublishError, PublishRefused, StoreError
from agent.outputs.base import OutputFormat
from agent.outputs.json import JsonFormat
from agent.store import OutboxRecord, Store

__all__ = ["Channel", "Forwarder"]

log = logging.getLogger(__name__)
#: pause after a publish failure while the publisher still reports a connection
_ERROR_PAUSE_S = 1.0
#: first pause before a refused topic is probed again (doubles up to one window)
_FIRST_PROBE_S = 0.5
#: the longest wait of a paced replay before live windows are looked for again
_PACE_SLICE_S = 0.05



@dataclass
class _Parked:
    """A topic the broker refused: held back until ``probe_at`` (loop time)."""

    probe_at: float
    pause: float


class Channel(Protocol):
    """Where records go: the publisher, or a session on top of it (the Sparkplug edge node)."""

    #: set while records may be sent
    connected: asyncio.Event

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False,
                      timeout: float = 10.0) -> int:  # noqa: ASYNC109 - the publisher's contract
        """Send and return once the broker acknowledged it (the reason code)."""
        ...


def _unconfigured(row: OutboxRecord) -> PublishRefused:
    # records of a format no longer configured stay, parked and alarmed, never dropped
    return PublishRefused(row.topic, 0x80, f"output format {row.format!r} is not configured")


class _Outcome(Enum):
    EMPTY = "empty"
    REFUSED = "refused"
    ERROR = "error"


class Forwarder:
    """Publishes outbox records until cancelled. No I/O in the constructor."""

    def __init__(self, store: Store, publisher: Channel, *, interval_s: float,
                 on_alarm: Callable[[str, str], None],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 batch: int = 100, publish_timeout_s: float = 30.0, live_limit: int = 1_000,
                 replay_per_s: int = 0,
                 formats: Mapping[str, OutputFormat] | None = None,
                 only: Sequence[str] | None = None, exclude: Sequence[str] = (),
                 on_sent: Callable[[Sequence[OutboxRecord]], Awaitable[None]] | None = None) -> None:
        self._store = store
        # told of acknowledged records before they leave the outbox (the site hold, siteack.py)
        self._on_sent = on_sent
        # the records of the formats this forwarder serves (one forwarder per channel)
        self._only = only
        self._exclude = exclude
        self._formats: Mapping[str, OutputFormat] = formats or {"json": JsonFormat()}
        self._publisher = publisher
        self._interval = timedelta(seconds=interval_s)
        self._interval_s = interval_s
        self._on_alarm = on_alarm
        self._clock = clock
        self._batch = batch
        # the newest records looked at for live ones: a window's records in one read
        self._live_limit = live_limit
        self._replay_per_s = replay_per_s  # 0: unpaced
        self._publish_timeout_s = publish_timeout_s
        self._wake = asyncio.Event()
        self._refusal: str | None = None  # message of the active publish_refused alarm
        self._parked: dict[str, _Parked] = {}
        self.sent = 0
        self._store_failed = False

    def wake(self) -> None:
        """New records were committed: look at the outbox now."""
        self._wake.set()

    async def run(self) -> None:
        """Forward until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await self._publisher.connected.wait()
            self._wake.clear()
            try:
                outcome = await self._drain()
            except StoreError as exc:
                # the outbox cannot be read or updated (disk full, I/O): keep the records,
                # retry later; an acknowledged record may be sent again (subscribers dedupe)
                self._on_alarm("outbox_error", f"outbox unavailable: {exc}")
                self._store_failed = True
                await self._wait_wake(_ERROR_PAUSE_S)
                continue
            if self._store_failed:
                self._store_failed = False
                self._on_alarm("outbox_error", "")
            if outcome is _Outcome.EMPTY:
                await self._wait_wake(self._interval_s)
            elif outcome is _Outcome.REFUSED and self._parked:
                next_probe = min(p.probe_at for p in self._parked.values()) - loop.time()
                await self._wait_wake(max(0.0, min(next_probe, self._interval_s)))
            elif outcome is _Outcome.REFUSED:
                continue  # a probe succeeded: the rest of its topic goes in the next pass
            else:
                await self._wait_wake(_ERROR_PAUSE_S)

    async def _wait_wake(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: wait_for of Python 3.11 can lose a cancellation
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _drain(self) -> _Outcome:
        """One pass over the outbox; refused records are skipped for the rest of the pass."""
        skip: set[int] = set()
        cursor: int | None = None
        loop = asyncio.get_running_loop()
        paced_since, paced = loop.time(), 0
        while True:
            live = await self._live(skip)
            if live and not await self._send(live, skip):
                return _Outcome.ERROR
            ahead = (paced / self._replay_per_s - (loop.time() - paced_since)
                     if self._replay_per_s else 0.0)
            if ahead > 0:
                # the replay's pace, in short waits: live windows are looked for after each
                # (a commit meanwhile ends the wait at once)
                self._wake.clear()
                await self._wait_wake(min(ahead, _PACE_SLICE_S))
                continue
            raw = await self._store.pending(self._batch, newer_than_id=cursor, only=self._only,
                                             exclude=self._exclude)
            if not raw:
                break
            cursor = raw[-1].id
            rows = [r for r in raw if r.id not in skip]
            if rows and not await self._send(rows, skip):
                return _Outcome.ERROR
            paced += len(rows)
        if skip or self._parked:
            return _Outcome.REFUSED
        if self._refusal is not None:
            log.info("publishing accepted again after refusals")
            self._refusal = None
            self._on_alarm("publish_refused", "")
        return _Outcome.EMPTY

    async def _live(self, skip: set[int]) -> list[OutboxRecord]:
        now = self._clock()
        newest = await self._store.pending(self._live_limit, oldest_first=False, only=self._only,
                                             exclude=self._exclude, ending_since=now - self._interval)
        # retained records (shift reports) keep commit order per topic: one sent ahead of an
        # older one of its topic would let the older become the retained message
        live = [r for r in newest
                if r.id not in skip and not r.retain and now - r.window_end <= self._interval]
        live.reverse()
        return live

    async def _send(self, rows: Sequence[OutboxRecord], skip: set[int]) -> bool:
        """Publish ``rows`` pipelined; mark the acknowledged ones sent.

        Rows of parked topics and refused rows are added to ``skip``; a parked topic due
        for a probe has its first row sent alone first. Returns False when a publish
        failed for any other reason (the caller waits for the connection).
        """
        now = self._clock()
        mono = asyncio.get_running_loop().time()
        probes: dict[str, OutboxRecord] = {}
        ready: list[OutboxRecord] = []
        for row in rows:
            parked = self._parked.get(row.topic)
            if parked is None:
                ready.append(row)
            elif parked.probe_at <= mono and row.topic not in probes:
                probes[row.topic] = row
            else:
                skip.add(row.id)
        results = await self._publish_rows(ready, now)
        acked: list[int] = []
        failed: BaseException | None = None
        for row, result in zip(ready, results, strict=True):
            if isinstance(result, PublishRefused):
                skip.add(row.id)
                self._refused(row.topic, result)
            elif isinstance(result, BaseException):
                if not isinstance(result, PublishError):
                    raise result
                failed = failed or result
            else:
                acked.append(row.id)
        if acked:
            if self._on_sent is not None:
                done = set(acked)
                await self._on_sent([r for r in ready if r.id in done])
            await self._store.mark_sent(acked)
            self.sent += len(acked)
        if failed is not None:
            log.debug("publishing paused: %s", failed)
            return False
        # probes go last: a broker may drop the connection after refusing one
        for row in probes.values():
            try:
                await self._publish(row, now)
            except PublishRefused as exc:
                skip.add(row.id)
                self._refused(row.topic, exc)
                continue
            except PublishError:
                return False
            del self._parked[row.topic]
            log.info("broker accepts %s again", row.topic)
            if self._on_sent is not None:
                await self._on_sent([row])
            await self._store.mark_sent([row.id])
            self.sent += 1
        return True

    async def _publish_rows(self, rows: Sequence[OutboxRecord],
                            now: datetime) -> Sequence[int | BaseException]:
        """Publish ``rows`` pipelined; each one's reason code or exception, in order."""
        many = getattr(self._publisher, "publish_many", None)
        if many is None:  # a channel without batches (the Sparkplug edge node)
            return await asyncio.gather(*(self._publish(row, now) for row in rows),
                                        return_exceptions=True)
        messages: list[tuple[str, bytes, int, bool]] = []
        unknown: dict[int, PublishRefused] = {}
        for i, row in enumerate(rows):
            fmt = self._formats.get(row.format)
            if fmt is None:
                unknown[i] = _unconfigured(row)
                continue
            payload = fmt.wire(row, historical=now - row.window_end > self._interval)
            messages.append((row.topic, payload, row.qos, row.retain))
        results: list[int | BaseException] = await many(messages, timeout=self._publish_timeout_s)
        for i, exc in sorted(unknown.items()):
            results.insert(i, exc)
        return results

    async def _publish(self, row: OutboxRecord, now: datetime) -> int:
        fmt = self._formats.get(row.format)
        if fmt is None:
            raise _unconfigured(row)
        payload = fmt.wire(row, historical=now - row.window_end > self._interval)
        return await self._publisher.publish(row.topic, payload, qos=row.qos, retain=row.retain,
                                             timeout=self._publish_timeout_s)

    def _refused(self, topic: str, exc: PublishRefused) -> None:
        mono = asyncio.get_running_loop().time()
        parked = self._parked.get(topic)
        pause = min(_FIRST_PROBE_S, self._interval_s) if parked is None else \
            min(parked.pause * 2, self._interval_s)
        self._parked[topic] = _Parked(probe_at=mono + pause, pause=pause)
        if self._refusal is None:
            self._refusal = str(exc)
            log.error("%s; the record stays in the outbox", exc)
            self._on_alarm("publish_refused", str(exc))
