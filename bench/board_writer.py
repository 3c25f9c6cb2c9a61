"""``python -m bench.board_writer CONFIG LOG SECONDS``: the agent's window clock over its store,
fed readings in memory, for the board's benchmark.

The agent's own :class:`~agent.runtime.windows.WindowCloser` closes every line's window on
the wall-clock grid and commits it to the state file (outbox, state and the board's rows,
one transaction), as ``plantfloor run`` does; the PLCs are replaced by readings handed to
the line trackers twice a second (every line builds about one unit a second), so what this
process spends is the window path and the commit, which the board's readers could slow.
Each commit's end is logged as ``window_end committed_at`` (Unix seconds) to LOG.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from agent.config.load import load_config
from agent.contract.readings import Quality, Reading
from agent.core.calendar import ShiftCalendar
from agent.core.report import Reporter
from agent.runtime.lines import LineBoard
from agent.runtime.status import Alarms
from agent.runtime.windows import WindowCloser
from agent.store import Store

__all__ = ["main"]


async def run(config: Path, seconds: float) -> list[str]:
    """Run the window clock for ``seconds``; the commit log's lines."""
    cfg = load_config(config).config
    store = await Store.open(cfg.storage.path, max_bytes=int(cfg.storage.max_mb * 1e6))
    stored = await store.load()
    calendar = ShiftCalendar(cfg.shifts, cfg.tz, cfg.plant.holidays)

    def wall() -> datetime:
        return datetime.now(UTC)

    board = LineBoard(cfg, None, stored, mono=time.monotonic, wall=wall)  # type: ignore[arg-type]
    commits: list[str] = []
    closer: WindowCloser

    def committed() -> None:
        end = closer.resume_point()
        commits.append(f"{end.timestamp() if end else 0:.3f} {time.time():.6f}\n")

    closer = WindowCloser(cfg, calendar, Reporter(cfg, calendar), board, store, stored,
                          wall=wall, mono=time.monotonic, alarms=Alarms(wall),
                          on_committed=committed)
    counters = {ln.id: 1_000 for ln in cfg.lines}

    async def feed() -> None:
        tick = 0
        while True:
            tick += 1
            mono = time.monotonic()
            readings: list[Reading] = []
            for i, line in enumerate(cfg.lines):
                counters[line.id] += (tick + i) % 2
                readings.append(Reading(line.id, "counter", counters[line.id], Quality.GOOD, mono,
                                        modulus=2**32))
                readings.append(Reading(line.id, "state", 1 if (tick // 60 + i) % 9 else 2,
                                        Quality.GOOD, mono))
            board.on_readings(cfg.sources[0].id, readings)
            await asyncio.sleep(0.5)

    feeder = asyncio.create_task(feed())
    task = asyncio.create_task(closer.run())
    try:
        await asyncio.sleep(seconds)
    finally:
        closer.stop()
        await task
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        await store.close()
    return commits


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    commits = asyncio.run(run(Path(args[0]), float(args[2])))
    Path(args[1]).write_text("".join(commits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
