"""Process CPU and memory from /proc, and latency percentiles.

CPU is the process's ``utime + stime`` (all threads) over an interval, as a percentage of
one core; peak RSS is the kernel's ``VmHWM`` (the high-water mark since the process
started), so an import or start-up peak counts as well as a steady-state one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CpuSample", "cpu_percent", "cpu_sample", "percentile", "rss_mb", "summary"]

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds a process has used (user + system, every thread) at a monotonic time."""

    mono: float
    cpu_s: float


def cpu_sample(pid: int) -> CpuSample:
    """Read ``/proc/<pid>/stat``: fields 14 and 15 are utime and stime in clock ticks."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        text = f.read()
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = text[text.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return CpuSample(time.monotonic(), (utime + stime) / _TICKS)


def cpu_percent(start: CpuSample, end: CpuSample) -> float:
    """CPU used between two samples, in % of one core."""
    wall = end.mono - start.mono
    return 100.0 * (end.cpu_s - start.cpu_s) / wall if wall > 0 else math.nan


def rss_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` (now) and ``VmHWM`` (peak) of a process in MB (10^6 bytes)."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024 / 1e6
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest-rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float], scale: float = 1000.0) -> dict[str, float | int]:
    """p50, p99 and max of ``values`` multiplied by ``scale`` (seconds to ms by default)."""
    return {
        "n": len(values),
        "p50": round(percentile(values, 50) * scale, 2),
        "p99": round(percentile(values, 99) * scale, 2),
        "max": round(max(values) * scale, 2) if values else math.nan,
    }
