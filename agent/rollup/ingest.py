"""From deliveries to committed rows: batched inserts, acknowledgement after the commit.

Line windows go to ``line_window``, the lines' shift reports to ``shift_report``.

A batch is what arrived while the previous one was being committed, up to
``ingest.batch_size``, or what arrives within ``ingest.batch_delay_s`` of its first window
when the stream is slow. Each batch is one transaction (one ``INSERT ... SELECT FROM
unnest(...) ON CONFLICT DO NOTHING``); only after it commits is each message acknowledged
to the broker. A lost database keeps the batch and retries it with capped backoff: the
messages stay unacknowledged meanwhile, and the broker's receive maximum stops the flow.

After the commit, each line's acknowledged progress moves (:mod:`agent.rollup.ack`), then
the broker gets its acknowledgements.

A batch the database refuses for its data (SQLSTATE classes 22, 23, 54, or a value psycopg
cannot send) is split into single messages: each refused one is kept in
``rejected_message`` and acknowledged, so one poison message never holds the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from agent.contract.errors import StoreError
from agent.rollup.consumer import Delivery
from agent.rollup.database import BatchRefused, Database, DatabaseUnavailable
from agent.rollup.rows import Rejected, RowBuilder, ShiftRow, WindowRow

__all__ = ["Ingest"]

log = logging.getLogger("plantfloor.rollup.ingest")

_BACKOFF_BASE_S = 0.2
_BACKOFF_MAX_S = 10.0


class Ingest:
    """The replica's writer: one batch at a time, acknowledged in arrival order."""

    def __init__(self, db: Database, builder: RowBuilder, *, batch_size: int, batch_delay_s: float,
                 max_queued: int = 10_000, on_commit: Callable[[set[str]], None] = lambda _gateways: None) -> None:
        self._db = db
        self._on_commit = on_commit
        self._builder = builder
        self._batch_size = batch_size
        self._batch_delay_s = batch_delay_s
        self.max_queued = max_queued
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self.windows = 0          # new rows committed
        self.duplicates = 0       # windows the database already held
        self.reports = 0          # shift reports received (stored once by their key)
        self.rejected = 0         # messages kept in rejected_message
        self.dropped = 0          # QoS 0 messages that found the queue full
        self.last_error: str | None = None
        self.batches = 0
        self.last_commit = time.monotonic()
        self._warned: set[str] = set()
        self._failing = False

    def deliver(self, delivery: Delivery) -> None:
        """Called by a consumer for every message (on the loop's thread).

        The queue is bounded: QoS 1 deliveries are bounded by each session's receive
        maximum (the broker sends no more until some are acknowledged, after their commit);
        a QoS 0 message, which nothing bounds and nobody re-sends, is dropped and counted
        when the queue holds ``max_queued`` already."""
        if delivery.qos == 0 and self._queue.qsize() >= self.max_queued:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("the ingest queue is full (%d): QoS 0 messages are dropped and counted "
                            "(a gateway's windows are QoS 1)", self.max_queued)
            return
        self._idle.clear()
        self._queue.put_nowait(delivery)

    @property
    def failing(self) -> bool:
        """True while the batch in hand cannot be committed (the database is away)."""
        return self._failing

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bounded drain
        """Wait until everything delivered so far is committed and acknowledged."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return self._idle.is_set()

    async def run(self) -> None:
        """Commit batches until cancelled (cancel after :meth:`flush` for a clean stop)."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self._batch_delay_s
            while len(batch) < self._batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        batch.append(await self._queue.get())
                except TimeoutError:
                    break
            await self._commit(batch)
            if self._queue.empty():
                self._idle.set()

    async def _commit(self, batch: list[Delivery]) -> None:
        rows: list[WindowRow] = []
        reports: list[ShiftRow] = []
        rejected: list[Rejected] = []
        for d in batch:
            built = self._builder.build(d.topic, d.payload)
            if isinstance(built, WindowRow):
                rows.append(built)
            elif isinstance(built, ShiftRow):
                reports.append(built)
            else:
                rejected.append(built)
                if d.topic not in self._warned:
                    self._warned.add(d.topic)
                    log.warning("a message on %s is not a line window or shift report this site can store "
                                "(%s): kept in plantfloor.rejected_message", d.topic, built.error)
        inserted = await self._insert(rows, reports, rejected)
        if rows:
            # the lines' acknowledged progress, before the broker's acknowledgement: a replica
            # that dies in between gets the window again, and moves the progress then
            try:
                await self._db.advance(rows)
                # every gateway of the batch, moved or not: a re-published window the site
                # already had is answered too, so its agent stops holding it
                self._on_commit({r.gateway for r in rows})
            except StoreError as exc:
                log.warning("the lines' progress was not moved (it moves with their next window): %s", exc)
        for d in batch:
            d.ack()
        self.windows += inserted
        self.duplicates += len(rows) - inserted
        self.reports += len(reports)
        self.rejected += len(rejected)
        self.batches += 1
        self.last_commit = time.monotonic()

    async def _insert(self, rows: list[WindowRow], reports: list[ShiftRow], rejected: list[Rejected]) -> int:
        """Insert a batch; one the database refuses (a value it cannot store) is inserted row
        by row and each refused row is kept as rejected, so one bad value never blocks the
        stream, nor is dropped silently. Returns the number of new windows."""
        try:
            return await self._retrying(rows, rejected, reports)
        except BatchRefused as exc:
            log.warning("the database refused a batch (%s): inserting it row by row", exc)
        inserted = 0
        items: list[WindowRow | ShiftRow] = [*rows, *reports]
        for item in items:
            try:
                if isinstance(item, WindowRow):
                    inserted += await self._retrying([item], [])
                else:
                    await self._retrying([], [], [item])
            except BatchRefused as refused:
                topic = item.topic if isinstance(item, WindowRow) else f"{item.gateway}/lines/{item.line}/shift"
                rejected.append(Rejected(item.gateway, topic, item.payload.encode(),
                                         f"the database refused it: {refused}"))
        try:
            await self._retrying([], rejected)
        except BatchRefused:
            for one in rejected:
                try:
                    await self._retrying([], [one])
                except BatchRefused as exc:   # not even its record can be stored: say so, go on
                    log.error("a rejected message on %s could not be recorded: %s", one.topic[:200], exc)
        return inserted

    async def _retrying(self, rows: list[WindowRow], rejected: list[Rejected],
                        reports: list[ShiftRow] | None = None) -> int:
        """One insert transaction, retried with capped backoff while the database is away."""
        attempt = 0
        while True:
            try:
                inserted = await self._db.insert(rows, rejected, reports or ())
                break
            except BatchRefused:
                raise
            except DatabaseUnavailable as exc:
                attempt += 1
                self.last_error = str(exc)
                if not self._failing:
                    log.warning("cannot commit %d window(s): %s; retrying", len(rows) + len(rejected), exc)
                    self._failing = True
                await asyncio.sleep(random.uniform(0, min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2 ** min(attempt, 10))))
            except Exception as exc:  # a value psycopg cannot send: about this data, never retried
                raise BatchRefused(f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]) from exc
        if self._failing:
            log.info("committing windows again")
            self._failing = False
        return inserted
