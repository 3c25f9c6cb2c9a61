"""The demo's plant time, seen from the board's own process.

The demo runs plant time faster than real time (:class:`agent.core.clock.SimulatedClock`)
and holds it while its PLCs and agent start. Its board is a separate process, as in
production, so it cannot share the clock object: the demo writes the clock's anchor to a
small JSON file (``{"speed": 60, "plant": <POSIX s>, "real": <POSIX s>}``; speed 0 while
plant time is held) each time it starts or releases plant time, and the board reads plant
time from it (re-reading the file only when it changes). ``plantfloor run`` and a board on
a real gateway never use one: the option is the demo's.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from agent.contract.errors import ConfigError
from agent.core.clock import Clock

__all__ = ["PlantClockFile", "write_plant_clock"]


def write_plant_clock(path: Path, clock: Clock) -> None:
    """Record where ``clock`` stands now and how fast it runs (atomically: write, rename)."""
    speed = clock.speed if getattr(clock, "running", True) else 0.0
    data = {"speed": speed, "plant": clock.wall().timestamp(), "real": time.time()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


class PlantClockFile:
    """Plant time from a file the demo keeps up to date; :meth:`wall` is the board's ``now``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: int | None = None
        self._anchor = (0.0, 0.0, 0.0)
        self._load()

    def _load(self) -> None:
        try:
            stamp = self.path.stat().st_mtime_ns
            if stamp == self._stamp:
                return
            data = json.loads(self.path.read_text(encoding="utf-8"))
            anchor = (float(data["speed"]), float(data["plant"]), float(data["real"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if self._stamp is None:
                raise ConfigError(f"cannot read the plant clock {self.path}: {exc}",
                                  key="--plant-clock") from exc
            return  # a file being replaced: keep the last anchor
        self._stamp, self._anchor = stamp, anchor

    def wall(self) -> datetime:
        """The demo's plant time now, aware and in UTC."""
        self._load()
        speed, plant, real = self._anchor
        return datetime.fromtimestamp(plant + (time.time() - real) * speed, UTC)
