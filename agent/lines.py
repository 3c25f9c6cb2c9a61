"""Per-line live state: the trackers that count, and the retained ``R/lines/<line>/state`` topic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from agent.config import Config, LineConfig
from agent.core.report import LineTotals
from agent.core.tracker import LineTracker, WindowResult
from agent.payloads import LineStatePayload, SourceInfo, encode
from agent.publisher import Publisher
from agent.readings import Reading, SourceHealth
from agent.store import StoredState

__all__ = ["LineBoard"]

log = logging.getLogger("plantfloor.lines")


def _sources_of(line: LineConfig) -> set[str]:
    return {t.source for t in (line.counter, line.state) if t is not None}


class LineBoard:
    """Routes readings and source health to each line's tracker and publishes state changes."""

    def __init__(self, cfg: Config, publisher: Publisher, stored: StoredState, *,
                 mono: Callable[[], float], wall: Callable[[], datetime]) -> None:
        self.cfg = cfg
        self.publisher = publisher
        self.root = cfg.topic_root
        self.wall = wall
        self.health: dict[str, SourceHealth] = {
            s.id: SourceHealth(source=s.id, connected=False, last_ok_mono=None, error="not yet connected")
            for s in cfg.sources}
        self.last_ok_wall: dict[str, datetime | None] = {s.id: None for s in cfg.sources}
        self.trackers: dict[str, LineTracker] = {}
        now_mono, now_wall = mono(), wall()
        for line in cfg.lines:
            row = stored.lines.get(line.id)
            totals = LineTotals.from_json(row.totals_json) if row and row.totals_json else LineTotals()
            baseline_mono = None
            if totals.last_window_end is not None:
                baseline_mono = now_mono - max(0.0, (now_wall - totals.last_window_end).total_seconds())
            self.trackers[line.id] = LineTracker(
                line_id=line.id, configured_modulus=line.counter.rollover,
                max_rate_per_hour=line.max_rate_per_hour, state_map=line.state_map,
                has_state_tag=line.state is not None, baseline=row.counter if row else None,
                baseline_mono=baseline_mono, start_mono=now_mono, tag_names=list(line.tags))
        self._lines_of: dict[str, list[str]] = {s.id: [] for s in cfg.sources}
        for line in cfg.lines:
            for src in _sources_of(line):
                self._lines_of[src].append(line.id)
        self._counter_source = {line.id: line.counter.source for line in cfg.lines}
        self._dirty: set[str] = set(self.trackers)
        self._wake = asyncio.Event()

    def on_readings(self, source: str, readings: Sequence[Reading]) -> None:
        if any(r.quality == "good" for r in readings):
            self.last_ok_wall[source] = self.wall()
        for r in readings:
            tracker = self.trackers.get(r.line)
            if tracker is not None and tracker.on_reading(r):
                self._mark(r.line)

    def on_health(self, health: SourceHealth, mono: float) -> None:
        self.health[health.source] = health
        for line_id in self._lines_of.get(health.source, ()):
            if not health.connected:
                self.trackers[line_id].on_source_down(mono, health.error or "unreachable")
            self._mark(line_id)

    def close_windows(self, mono: float) -> dict[str, WindowResult]:
        return {line_id: t.close_window(mono) for line_id, t in self.trackers.items()}

    def _mark(self, line_id: str) -> None:
        self._dirty.add(line_id)
        self._wake.set()

    def republish_all(self) -> None:
        self._dirty.update(self.trackers)
        self._wake.set()

    def state_payload(self, line_id: str) -> LineStatePayload:
        src = self._counter_source[line_id]
        h = self.health[src]
        last_ok = self.last_ok_wall.get(src)
        return LineStatePayload(
            line=line_id, state=self.trackers[line_id].state,
            source=SourceInfo(id=src, connected=h.connected, last_ok=last_ok, error=h.error),
            ts=self.wall().astimezone(UTC))

    async def run(self) -> None:
        """Publish retained state for lines that changed; on reconnect everything again."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.publisher.connected.is_set():
                continue  # the birth after reconnecting republishes every line
            dirty, self._dirty = self._dirty, set()
            for line_id in sorted(dirty):
                try:
                    await self.publisher.publish(f"{self.root}/lines/{line_id}/state",
                                                 encode(self.state_payload(line_id)), qos=1, retain=True)
                except Exception as exc:
                    log.debug("state of %s not published: %s", line_id, exc)
                    self._dirty.add(line_id)
