"""The live state: read once per commit, encoded once, handed to every open page.

:class:`Hub` polls its gateway for a commit (cheap), and also re-reads when a line turns
stale or fresh by the clock alone (the agent stopped: no commit says so). Each new state
gets a new id (the event id of the live stream); a page that reconnects with the id it
last saw gets the current state at once if anything changed meanwhile: the state is
complete, so the page has missed nothing after applying it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Literal, Protocol

from agent.board.figures import BoardSite, BoardState, HistoryPoint
from agent.contract.errors import PlantfloorError
from agent.contract.payloads import ShiftReport
from agent.core.calendar import ShiftCalendar

__all__ = ["FigureSource", "Hub", "Snapshot", "StateSource"]

log = logging.getLogger("plantfloor.board")


class StateSource(Protocol):
    """Where the figures come from: a gateway's state file, or the site's database."""

    async def changed(self) -> bool: ...
    async def state(self, state_id: str) -> BoardState: ...


class FigureSource(StateSource, Protocol):
    """Everything the board's API reads: :class:`agent.board.gateway.StoreGateway` (a
    gateway's state file) or :class:`agent.board.site.SiteGateway` (the site's database)."""

    site: BoardSite
    calendar: ShiftCalendar
    now: Callable[[], datetime]

    async def history(self, bucket: Literal["hour", "day", "week"], days: int,
                      line: str | None) -> list[HistoryPoint]: ...
    async def reports(self, day: date) -> list[ShiftReport]: ...
    async def close(self) -> None: ...


class Snapshot:
    """A state with its JSON, encoded once for every page."""

    __slots__ = ("id", "json", "state")

    def __init__(self, state: BoardState) -> None:
        self.state = state
        self.id = state.id
        self.json = state.model_dump_json()


class Hub:
    """Keeps the latest :class:`Snapshot` and wakes every waiting page when it changes."""

    def __init__(self, source: StateSource, *, poll_s: float, interval_s: int,
                 now: Callable[[], datetime]) -> None:
        self.source = source
        self.poll_s = poll_s
        self.stale_after = timedelta(seconds=2 * interval_s)
        self.now = now
        self.current: Snapshot | None = None
        self._changed = asyncio.Condition()
        self._count = 0
        self.error: str | None = None
        self.clients = 0

    def _next_id(self) -> str:
        # the process start keeps ids of a restarted board apart from its predecessor's
        self._count += 1
        return f"{self._boot}-{self._count}"

    _boot = format(int(datetime.now().timestamp() * 1000), "x")

    async def refresh(self) -> Snapshot:
        """Read the state now and publish it."""
        snap = Snapshot(await self.source.state(self._next_id()))
        self.current = snap
        async with self._changed:
            self._changed.notify_all()
        return snap

    def _stale_flags(self) -> tuple[bool, ...]:
        cur = self.current
        if cur is None:
            return ()
        now = self.now()
        return tuple(now - ln.window_end > self.stale_after for ln in cur.state.lines)

    async def run(self) -> None:
        """Poll for commits (and staleness) until cancelled."""
        while True:
            try:
                flags = tuple(ln.stale for ln in self.current.state.lines) if self.current else None
                if await self.source.changed() or self.current is None \
                        or self._stale_flags() != flags:
                    await self.refresh()
                if self.error is not None:
                    log.info("the figures can be read again")
                    self.error = None
            except PlantfloorError as exc:
                if self.error is None:
                    log.warning("cannot read the figures: %s", exc)
                self.error = str(exc)
            await asyncio.sleep(self.poll_s)

    async def wait_newer(self, seen: str | None, within: float) -> Snapshot | None:
        """The current snapshot once its id differs from ``seen``; None after ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(
                    lambda: self.current is not None and self.current.id != seen)
        cur = self.current
        return cur if cur is not None and cur.id != seen else None
