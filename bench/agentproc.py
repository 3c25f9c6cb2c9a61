"""The agent under test, run as its own process: ``python -m bench.agentproc CONFIG STATS.json [--profile FILE]``.

This runs exactly what ``plantfloor run CONFIG`` runs (:class:`agent.runtime.pipeline.Agent`),
with one addition for the measurement: every source the pipeline creates is wrapped so
that each ``read()`` (one poll cycle of that source) is timed. SIGUSR1 writes
``STATS.json`` (atomically) with every poll's wall-clock start and duration so far; it is
written again after a SIGTERM has stopped the agent the normal way. With ``--profile``,
the first SIGUSR2 starts cProfile and the second stops it and writes FILE, so only the
steady state between them is profiled (cProfile slows Python code: use the shares, not
the absolute times).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import agent.runtime.pipeline
from agent.cli.main import event_loop_factory
from agent.config import Config, ModbusSource, OpcUaSource
from agent.config.load import load_config
from agent.contract.readings import Reading
from agent.runtime.logconfig import configure_logging
from agent.sources.base import Source, make_source

__all__ = ["TimedSource", "main"]


class TimedSource:
    """A :class:`Source` recording the wall-clock start and duration of every ``read()``."""

    def __init__(self, inner: Source, polls: list[tuple[float, float]]) -> None:
        self._inner = inner
        self._polls = polls
        self.id = inner.id

    async def connect(self) -> None:
        await self._inner.connect()

    async def read(self) -> Sequence[Reading]:
        wall = time.time()
        start = time.monotonic()
        readings = await self._inner.read()
        self._polls.append((wall, time.monotonic() - start))
        return readings

    async def close(self) -> None:
        await self._inner.close()


class _Profiler:
    """cProfile toggled by SIGUSR2: on, then off and written to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.prof = cProfile.Profile()
        self.state = "idle"

    def toggle(self) -> None:
        if self.state == "idle":
            self.prof.enable()
            self.state = "on"
        elif self.state == "on":
            self.prof.disable()
            self.prof.dump_stats(str(self.path))
            self.state = "done"


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


async def _run(cfg: Config, sha: str, stats_path: Path, profiler: _Profiler | None) -> None:
    polls: dict[str, list[tuple[float, float]]] = {}

    def timed_factory(cfg: Config, source: ModbusSource | OpcUaSource) -> Source:
        return TimedSource(make_source(cfg, source), polls.setdefault(source.id, []))

    # the pipeline looks its factory up at run time: wrap every source it creates
    agent.runtime.pipeline.make_source = timed_factory  # type: ignore[attr-defined]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    the_agent = agent.runtime.pipeline.Agent(cfg, config_sha256=sha)

    def stats() -> dict[str, Any]:
        return {
            "ready_at": ready_at,
            "polls": {k: list(v) for k, v in polls.items()},
            "overruns": {s.source.id: s.overruns for s in the_agent.supervisors},
            "reconnects": {s.source.id: s.reconnects for s in the_agent.supervisors},
            "windows_closed": the_agent.closer.windows_closed if the_agent.closer else 0,
            "sent": the_agent.forwarder.sent if the_agent.forwarder else 0,
        }

    # a small file written on request; the measurement is paused for it anyway
    loop.add_signal_handler(signal.SIGUSR1, lambda: _write_atomic(stats_path, stats()))
    if profiler is not None:
        loop.add_signal_handler(signal.SIGUSR2, profiler.toggle)
    ready_at: float | None = None

    async def note_ready() -> None:
        nonlocal ready_at
        await the_agent.ready.wait()
        ready_at = time.time()

    watcher = asyncio.create_task(note_ready())
    try:
        await the_agent.run(stop)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    await asyncio.to_thread(_write_atomic, stats_path, stats())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.agentproc")
    p.add_argument("config", type=Path)
    p.add_argument("stats", type=Path)
    p.add_argument("--profile", type=Path, help="write cProfile statistics to this file")
    args = p.parse_args(argv)
    configure_logging(fmt="text", level=logging.WARNING)
    loaded = load_config(args.config)
    profiler = _Profiler(args.profile) if args.profile is not None else None
    # the loop `plantfloor run` uses: uvloop when installed, unless PLANTFLOOR_LOOP=asyncio
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_run(loaded.config, loaded.sha256, args.stats, profiler))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
