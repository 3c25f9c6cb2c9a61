"""Per-line live state: the trackers that count, and the retained ``R/lines/<line>/state`` topic."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.config import Config, LineConfig
from agent.contract.payloads import LineStatePayload, SourceInfo, encode
from agent.contract.readings import Reading, SourceHealth
from agent.core.counter import CounterMemory, untrusted_clock
from agent.core.tracker import DEFAULT_MODULUS, LineTracker, WindowResult
from agent.outputs.mqtt.publisher import Publisher
from agent.store import LineState, StoredState

__all__ = ["LineBoard"]

log = logging.getLogger("plantfloor.lines")


def _sources_of(line: LineConfig) -> set[str]:
    second = line.second_counter
    return {t.source for t in (line.counter, line.state, second[1] if second else None)
            if t is not None}


def boot_id() -> str | None:
    """This boot's id: monotonic times persisted under it can be compared with ours."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


#: adjtimex(2)'s answer when the kernel's clock is not synchronised (STA_UNSYNC)
_TIME_ERROR = 5
#: created by systemd-timesyncd once it has synchronised the clock
_TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


def clock_synchronised() -> bool:
    """True when systemd-timesyncd says so, or the kernel says an NTP client (chrony,
    ntpd) has synchronised the wall clock (adjtimex(2) does not answer TIME_ERROR; under
    the unit's ProtectClock= the call is refused, which counts as not known)."""
    if _TIMESYNCD_FLAG.exists():
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = ctypes.create_string_buffer(512)  # struct timex, modes 0: read only
        state = libc.adjtimex(timex)
    except (OSError, AttributeError):
        return False
    return isinstance(state, int) and 0 <= state < _TIME_ERROR


class CounterClock:
    """Converts a persisted instant (wall clock, and monotonic time of a boot) to ours and back.

    On the same boot the monotonic time is used as it is, so a wall-clock step while the
    agent was stopped changes nothing; after a reboot only the wall clock can tell how
    long ago it was (never less than no time at all).
    """

    def __init__(self, wall: datetime, mono: float, boot: str | None) -> None:
        self.wall, self.mono, self.boot = wall, mono, boot

    def to_mono(self, wall: datetime | None, mono: float | None, boot: str | None) -> float | None:
        if mono is not None and boot is not None and boot == self.boot:
            return mono
        if wall is None:
            return None
        return self.mono - max(0.0, (self.wall - wall).total_seconds())

    def to_wall(self, mono: float | None) -> datetime | None:
        return None if mono is None else self.wall - timedelta(seconds=self.mono - mono)


def restore_counter(line_id: str, row: LineState | None, identity: str,
                    clock: CounterClock) -> CounterMemory | None:
    """The counter memory to resume from, or why the first reading must re-baseline."""
    if row is None:
        return None
    modulus = row.modulus or DEFAULT_MODULUS
    if row.identity is not None and row.identity != identity:
        log.warning("line %s: the counter is now %s (the stored baseline belongs to %s): its "
                    "first reading becomes the baseline and nothing is counted until then",
                    line_id, identity, row.identity)
        return CounterMemory(None, modulus, None, None,
                             f"the counter changed from {row.identity} to {identity}")
    if row.rebaseline is not None:
        log.warning("line %s: re-baseline pending (%s): the first reading becomes the baseline",
                    line_id, row.rebaseline)
        return CounterMemory(None, modulus, None, None, row.rebaseline)
    if row.baseline is None:
        return None
    anchor = clock.to_mono(row.anchor_wall, row.anchor_mono, row.boot_id)
    last = clock.to_mono(row.last_wall, row.last_mono, row.boot_id)
    if anchor is None:
        return CounterMemory(None, modulus, None, None, "the stored baseline has no time")
    return CounterMemory(row.baseline, modulus, anchor, last)


def second_json(role: str, identity: str, memory: CounterMemory, clock: CounterClock) -> str:
    """The second counter's memory as stored in ``line_state.second_json`` (its own
    identity and baseline; the boot id is the line's)."""
    return json.dumps({
        "role": role, "identity": identity,
        "baseline": None if memory.baseline is None else str(memory.baseline),
        "modulus": str(memory.modulus), "rebaseline": memory.rebaseline,
        "anchor_wall": _iso(clock.to_wall(memory.anchor)), "anchor_mono": memory.anchor,
        "last_wall": _iso(clock.to_wall(memory.last)), "last_mono": memory.last,
    }, sort_keys=True)


def second_row(row: LineState | None) -> LineState | None:
    """The second counter's stored memory as a row :func:`restore_counter` reads, or None."""
    if row is None or not row.second_json:
        return None
    raw = json.loads(row.second_json)

    def dt(key: str) -> datetime | None:
        return None if raw.get(key) is None else datetime.fromisoformat(raw[key])

    def num(key: str) -> int | None:
        return None if raw.get(key) is None else int(raw[key])

    return LineState(line=row.line, totals_json="", identity=raw.get("identity"),
                     baseline=num("baseline"), modulus=num("modulus"),
                     anchor_wall=dt("anchor_wall"), anchor_mono=raw.get("anchor_mono"),
                     last_wall=dt("last_wall"), last_mono=raw.get("last_mono"),
                     boot_id=row.boot_id, rebaseline=raw.get("rebaseline"))


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat()


class LineBoard:
    """Routes readings and source health to each line's tracker and publishes state changes."""

    def __init__(self, cfg: Config, publisher: Publisher, stored: StoredState, *,
                 mono: Callable[[], float], wall: Callable[[], datetime],
                 synced: Callable[[], bool] = clock_synchronised) -> None:
        self.cfg = cfg
        self.synced = synced
        self.max_outage_s = cfg.storage.max_outage_days * 86400.0
        self.publisher = publisher
        self.root = cfg.topic_root
        self.wall = wall
        self.health: dict[str, SourceHealth] = {
            s.id: SourceHealth(source=s.id, connected=False, last_ok_mono=None, error="not yet connected")
            for s in cfg.sources}
        self.last_ok_wall: dict[str, datetime | None] = {s.id: None for s in cfg.sources}
        self.trackers: dict[str, LineTracker] = {}
        self.mono = mono
        self.boot = boot_id()
        now_mono = mono()
        clock = CounterClock(wall(), now_mono, self.boot)
        self.identity = {line.id: cfg.point_identity(line.counter) for line in cfg.lines}
        self.state_identity = {line.id: cfg.point_identity(line.state, counter=False)
                               for line in cfg.lines if line.state is not None}
        self.second_identity = {line.id: (line.second_counter[0],
                                          cfg.point_identity(line.second_counter[1]))
                                for line in cfg.lines if line.second_counter is not None}
        #: lines whose first delta waits for a plausible wall clock: the stored row, kept as is
        self.held: dict[str, LineState] = {}
        reasons = {name: r.state for name, r in cfg.downtime.all_reasons().items()}
        self._category = {name: r.category for name, r in cfg.downtime.all_reasons().items()}
        for line in cfg.lines:
            row = stored.lines.get(line.id)
            state_ident = self.state_identity.get(line.id)
            if row is not None and row.state_identity not in (None, state_ident):
                log.warning("line %s: the state is now read from %s (it was %s)",
                            line.id, state_ident, row.state_identity)
            second = line.second_counter
            second_memory = None
            if second is not None:
                second_memory = restore_counter(f"{line.id} ({second[0]} counter)", second_row(row),
                                                self.second_identity[line.id][1], clock)
            self.trackers[line.id] = LineTracker(
                line_id=line.id, configured_modulus=line.counter.rollover,
                max_rate_per_hour=line.rate_bound, state_map=line.state_map,
                has_state_tag=line.state is not None, start_mono=now_mono,
                tag_names=list(line.tags),
                memory=restore_counter(line.id, row, self.identity[line.id], clock),
                reasons=reasons, minor_stop_s=cfg.downtime.minor_stop_s,
                second_role=second[0] if second else None,
                second_modulus=second[1].rollover if second else None,
                second_memory=second_memory)
            if row is not None and self._clock_doubt(line.id, row, clock.wall) is not None:
                self.held[line.id] = row
        self._lines_of: dict[str, list[str]] = {s.id: [] for s in cfg.sources}
        for line in cfg.lines:
            for src in _sources_of(line):
                self._lines_of[src].append(line.id)
        self._counter_source = {line.id: line.counter.source for line in cfg.lines}
        self._state_source = {line.id: line.state.source for line in cfg.lines
                              if line.state is not None}
        self._second_source = {line.id: line.second_counter[1].source
                               for line in cfg.lines if line.second_counter is not None}
        # the last point error of each line (Modbus exception, OPC UA status), for the state topic
        self.point_error: dict[str, tuple[str, int | None] | None] = {}
        self._dirty: set[str] = set(self.trackers)
        self._wake = asyncio.Event()

    def _clock_doubt(self, line_id: str, row: LineState, now: datetime) -> str | None:
        """Why the wall clock cannot date the time since ``row``'s last reading, or None.

        Only after a reboot (on the same boot the monotonic clock does it) and only for a
        baseline that is resumed; a clock seen synchronised is believed.
        """
        stored = row.last_wall or row.anchor_wall
        same_boot = row.boot_id is not None and row.boot_id == self.boot and row.last_mono is not None
        if (same_boot or stored is None or row.baseline is None or row.rebaseline is not None
                or row.identity not in (None, self.identity[line_id])):
            return None
        doubt = untrusted_clock(stored, now, self.max_outage_s)
        if doubt is None or self.synced():
            return None
        log.warning("line %s: %s: the first counter delta is held (clock_unsynced) until the "
                    "clock is plausible or synchronised", line_id, doubt)
        return doubt

    def _still_held(self, line_id: str) -> bool:
        """Whether the line's first delta must still wait; on release, re-date its baseline."""
        row = self.held[line_id]
        now = self.wall()
        stored = row.last_wall or row.anchor_wall
        assert stored is not None
        if untrusted_clock(stored, now, self.max_outage_s) is not None and not self.synced():
            return True
        del self.held[line_id]
        clock = CounterClock(now, self.mono(), self.boot)
        second = None
        if line_id in self.second_identity:
            second = restore_counter(line_id, second_row(row), self.second_identity[line_id][1], clock)
        self.trackers[line_id].restore(restore_counter(line_id, row, self.identity[line_id], clock),
                                       second)
        log.warning("line %s: the wall clock is now plausible: counting resumes from the stored "
                    "baseline", line_id)
        return False

    def on_readings(self, source: str, readings: Sequence[Reading]) -> None:
        if any(r.quality == "good" for r in readings):
            self.last_ok_wall[source] = self.wall()
        problems: dict[str, tuple[str, int | None] | None] = {}
        for r in readings:
            tracker = self.trackers.get(r.line)
            if tracker is None:
                continue
            if (r.line in self.held and r.role in ("counter", "total", "rejects")
                    and r.quality == "good" and isinstance(r.value, int)
                    and self._still_held(r.line)):
                tracker.hold_reading(r)
                problems.setdefault(r.line, None)
                continue
            if tracker.on_reading(r):
                self._mark(r.line)
            if r.quality != "good" and problems.get(r.line) is None:
                problems[r.line] = (r.error or str(r.quality), r.code)
            elif r.role == "counter" and tracker.value_error is not None:
                problems[r.line] = (tracker.value_error, None)
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
                self.trackers[line_id].on_source_down(
                    mono, health.error or "unreachable",
                    counter=health.source == self._counter_source[line_id],
                    second=self._second_source.get(line_id) == health.source,
                    state=health.source == self._state_source.get(line_id))
            self._mark(line_id)

    def close_windows(self, mono: float, *, planned_ms: int = 0,
                      period: str | None = None) -> dict[str, WindowResult]:
        """Close every line's window at ``mono``; ``planned_ms`` and ``period`` as for
        :meth:`~agent.core.tracker.LineTracker.close_window` (the same for every line)."""
        return {line_id: t.close_window(mono, planned_ms=planned_ms, period=period)
                for line_id, t in self.trackers.items()}

    def line_state(self, line_id: str, memory: CounterMemory | None, totals_json: str,
                   wall: datetime, mono: float,
                   second_memory: CounterMemory | None = None) -> LineState:
        """What the store keeps for a line after a window: totals and the counters' memory.

        While the line's first delta is held, the stored counter memory is kept as it was.
        """
        held = self.held.get(line_id)
        if held is not None:
            return dataclasses.replace(held, totals_json=totals_json,
                                       state_identity=self.state_identity.get(line_id))
        tracker = self.trackers[line_id]
        if memory is None:
            memory = tracker.engine.memory()
        clock = CounterClock(wall, mono, self.boot)
        second = None
        if line_id in self.second_identity:
            role, identity = self.second_identity[line_id]
            engine = tracker.second_engine
            if second_memory is None and engine is not None:
                second_memory = engine.memory()
            if second_memory is not None:
                second = second_json(role, identity, second_memory, clock)
        return LineState(
            line=line_id, totals_json=totals_json, identity=self.identity[line_id],
            state_identity=self.state_identity.get(line_id), baseline=memory.baseline,
            modulus=memory.modulus, anchor_wall=clock.to_wall(memory.anchor),
            anchor_mono=memory.anchor, last_wall=clock.to_wall(memory.last),
            last_mono=memory.last, boot_id=self.boot, rebaseline=memory.rebaseline,
            second_json=second)

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
        tracker = self.trackers[line_id]
        return LineStatePayload(
            line=line_id, state=tracker.state,
            source=SourceInfo(id=src, connected=h.connected, last_ok=last_ok, error=error, code=code),
            ts=self.wall().astimezone(UTC), reason=tracker.reason,
            category=self._category.get(tracker.reason),
            raw=tracker.raw)

    def stopped_payload(self, line_id: str) -> LineStatePayload:
        """The retained state a clean stop leaves: ``unknown``, the source disconnected
        (nobody reads it any more), its last good reading kept."""
        src = self._counter_source[line_id]
        return LineStatePayload(
            line=line_id, state="unknown",
            source=SourceInfo(id=src, connected=False, last_ok=self.last_ok_wall.get(src),
                              error="the agent stopped", code=None),
            ts=self.wall().astimezone(UTC), reason="unknown", category=None, raw=None)

    async def publish_stopped(self) -> None:
        """On a clean stop: every line's retained state says ``unknown``, so no subscriber
        reads a line as running while nothing watches it (after a crash the status topic's
        will says ``offline``: docs/mqtt.md)."""
        for line_id in sorted(self.trackers):
            await self.publisher.publish(f"{self.root}/lines/{line_id}/state",
                                         encode(self.stopped_payload(line_id)), qos=1, retain=True)

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
