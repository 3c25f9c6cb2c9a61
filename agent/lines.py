"""Per-line live state: the trackers that count, and the retained ``R/lines/<line>/state`` topic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from agent.config import Config, LineConfig
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
        now_mono = mono()
        for line in cfg.lines:
            row = stored.lines.get(line.id)
            self.trackers[line.id] = LineTracker(
                line_id=line.id, configured_modulus=line.counter.rollover,
                max_rate_per_hour=line.max_rate_per_hour, state_map=line.state_map,
                has_state_tag=line.state is not None, baseline=row.counter if row else None,
                # the time since the baseline is unknown after a restart: no rate bound on the
                # first delta (the wall clock must never decide what counts)
                baseline_mono=None, start_mono=now_mono, tag_names=list(line.tags))
        self._lines_of: dict[str, list[str]] = {s.id: [] for s in cfg.sources}
        for line in cfg.lines:
            for src in _sources_of(line):
                self._lines_of[src].append(line.id)
        self._counter_source = {line.id: line.counter.source for line in cfg.lines}
        # the last point error of each line (Modbus exception, OPC UA status), for the state topic
        self.point_error: dict[str, tuple[str, int | None] | None] = {}
        self._dirty: set[str] = set(self.trackers)
        self._wake = asyncio.Event()

    def on_readings(self, source: str, readings: Sequence[Reading]) -> None:
        if any(r.quality == "good" for r in readings):
            self.last_ok_wall[source] = self.wall()
        problems: dict[str, tuple[str, int | None] | None] = {}
        for r in readings:
            tracker = self.trackers.get(r.line)
            if tracker is None:
                continue
            if tracker.on_reading(r):
                self._mark(r.line)
            if r.quality != "good" and problems.get(r.line) is None:
                problems[r.line] = (r.error or str(r.quality), r.code)
            else:
                problems.setdefault(r.line, None)
        for line_id, problem in problems.items():
            if self.point_error.get(line_id) != problem:
                self.point_error[line_id] = problem
                self._mark(line_id)

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
        problem = self.point_error.get(line_id) if h.connected else None
        error, code = problem if problem else (h.error, None)
        return LineStatePayload(
            line=line_id, state=self.trackers[line_id].state,
            source=SourceInfo(id=src, connected=h.connected, last_ok=last_ok, error=error, code=code),
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
