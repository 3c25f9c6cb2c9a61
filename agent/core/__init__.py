"""The pure core: counters, shift calendar, per-line windows and report payloads.

Nothing here does I/O, imports a protocol library or touches the event loop; every time
is an argument (an injected clock), so the rules are tested directly and with hypothesis.
Where a reading becomes a unit: :mod:`agent.core.counter`; where units become a window's
figures: :mod:`agent.core.tracker` and :mod:`agent.core.report`.

May import: :mod:`agent.config`, :mod:`agent.contract`.
"""

from __future__ import annotations

from agent.core.calendar import Period, ShiftCalendar
from agent.core.counter import CounterDelta, CounterEngine
from agent.core.report import LineTotals, PlantTotals, Reporter
from agent.core.tracker import LineTracker, WindowResult

__all__ = [
    "CounterDelta",
    "CounterEngine",
    "LineTotals",
    "LineTracker",
    "Period",
    "PlantTotals",
    "Reporter",
    "ShiftCalendar",
    "WindowResult",
]
