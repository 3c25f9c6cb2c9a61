"""A gateway's state file filled through the agent's own window machinery, with times
injected: readings go to the line trackers, windows are closed and committed by the
:class:`WindowCloser` as in the agent, so the board reads exactly what an agent writes."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.contract.readings import Quality, Reading
from agent.core.calendar import ShiftCalendar
from agent.core.report import Reporter
from agent.core.totals import year_openings
from agent.runtime.lines import LineBoard
from agent.runtime.status import Alarms
from agent.runtime.windows import WindowCloser
from agent.store import Store

ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
MAP = {0: "stopped", 1: "running", 2: "fault", 3: "changeover", 4: "blocked", 5: "starved"}
RUNNING, FAULT, STARVED = 1, 2, 5


def board_config(tmp_path: Path, *, lines: int = 2, interval_s: int = 60,
                 **board: Any) -> Config:
    """A site in Tokyo on two 12-hour shifts every day, the first with a break at 09:00."""
    return Config.model_validate({
        "site": "kyushu", "timezone": "Asia/Tokyo",
        "publish": {"interval_s": interval_s},
        "storage": {"path": str(tmp_path / "state.db")},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "00:00", "end": "12:00", "days": ALL_DAYS,
                    "breaks": [{"start": "09:00", "end": "09:10"}]},
                   {"name": "b", "start": "12:00", "end": "00:00", "days": ALL_DAYS}],
        "downtime": {"minor_stop_s": 30, "reasons": {
            "changeover": {"category": "planned"},
            "fault": {"category": "unplanned", "state": "faulted"},
            "blocked": {"category": "unplanned"}, "starved": {"category": "unplanned"}}},
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 1}],
        "lines": [{"id": f"l{i}", "product": "Sakura", "target_per_hour": 60 + 30 * i,
                   "counter": {"source": "plc", "address": 10 * i, "type": "uint32"},
                   "state": {"source": "plc", "address": 10 * i + 5, "type": "uint16",
                             "map": MAP}}
                  for i in range(lines)],
        "board": board,
    })


class Production:
    """Drives the agent's window closer over a store with an injected clock."""

    def __init__(self, cfg: Config, store: Store, closer: WindowCloser, board: LineBoard,
                 clock: list[datetime]) -> None:
        self.cfg = cfg
        self.store = store
        self.closer = closer
        self.board = board
        self._clock = clock
        self.counters = {ln.id: 1000 for ln in cfg.lines}
        self.built = {ln.id: 0 for ln in cfg.lines}

    @classmethod
    async def open(cls, cfg: Config, start: datetime) -> Production:
        store = await Store.open(cfg.storage.path, max_bytes=1 << 30)
        stored = await store.load()
        calendar = ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)
        clock = [start]
        t0 = start

        def wall() -> datetime:
            return clock[0]

        def mono() -> float:
            return 1000.0 + (clock[0] - t0).total_seconds()

        board = LineBoard(cfg, None, stored, mono=mono, wall=wall)  # type: ignore[arg-type]
        reporter = Reporter(cfg, calendar)
        # the recorded opening balances, as the agent's pipeline reads them at start
        reporter.openings = year_openings(
            (e.year, e.line, e.units, e.through) for e in await store.openings())
        closer = WindowCloser(cfg, calendar, reporter, board, store, stored,
                              wall=wall, mono=mono, alarms=Alarms(wall), on_committed=lambda: None)
        prod = cls(cfg, store, closer, board, clock)
        prod._read({ln.id: (0, RUNNING) for ln in cfg.lines})  # the baselines
        return prod

    @property
    def now(self) -> datetime:
        return self._clock[0]

    def _read(self, per_line: dict[str, tuple[int, int]]) -> None:
        mono = self.closer.mono()
        readings: list[Reading] = []
        for line, (units, state) in per_line.items():
            self.counters[line] += units
            self.built[line] += units
            readings.append(Reading(line, "counter", self.counters[line], Quality.GOOD, mono,
                                    modulus=2**32))
            readings.append(Reading(line, "state", state, Quality.GOOD, mono))
        self.board.on_readings("plc", readings)

    async def window(self, per_line: dict[str, tuple[int, int]]) -> None:
        """One window: each line builds ``units`` and ends it in ``state``; committed."""
        start = self.now
        end = start + timedelta(seconds=self.cfg.publish.interval_s)
        self._clock[0] = start + (end - start) / 2
        self._read(per_line)
        self._clock[0] = end
        await self.closer.close(start, end)

    async def run(self, windows: int,
                  plan: Callable[[int, str], tuple[int, int]]) -> None:
        """``windows`` windows; ``plan(i, line)`` gives the units and state of window i."""
        for i in range(windows):
            await self.window({ln.id: plan(i, ln.id) for ln in self.cfg.lines})

    async def close(self) -> None:
        await self.store.close()


def free_port() -> int:
    """A free TCP port of 127.0.0.1 (for a board that must come back on the same one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(cfg: Config, folder: Path) -> Path:
    """The config as a file (JSON is YAML 1.2) for ``plantfloor board``."""
    path = folder / "agent.json"
    path.write_text(cfg.model_dump_json(exclude_none=True))
    return path


def aligned(now: datetime, interval_s: int) -> datetime:
    """The last window boundary at or before ``now`` (UTC, whole seconds)."""
    s = int(now.timestamp()) // interval_s * interval_s
    return datetime.fromtimestamp(s, UTC)
