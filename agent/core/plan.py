"""The plant's year against its plan: what the board's plant panel shows.

Pure: from the plant payload's year to date (:mod:`agent.core.report` computes it, with
the projected year) and the shift calendar, the plan (capacity x planned utilisation),
the gap to it, and the units a production day must build from now on to reach it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from agent.core.calendar import ShiftCalendar

__all__ = ["YearPlan", "year_plan"]


@dataclass(frozen=True, slots=True)
class YearPlan:
    """The plan of the production year and what reaching it needs."""

    plan: float
    year_to_date: int
    measured: int
    recorded: int
    gap: float
    production_days_left: int
    rate_needed_per_day: float | None


def year_plan(capacity_per_year: int, planned_utilization: float, measured: int,
              calendar: ShiftCalendar, now: datetime, *, recorded: int = 0) -> YearPlan:
    """The plan and the daily rate needed, counting today while it has planned time left.

    ``measured`` is the year to date the agent counted; ``recorded`` the opening balance an
    operator recorded for this production year (``plantfloor state opening``).
    ``rate_needed_per_day`` is None when no production day is left this year.
    """
    plan = capacity_per_year * planned_utilization
    today = calendar.production_date(now)
    year_to_date = measured + recorded
    end = date(today.year, 12, 31)
    days = 0
    d = today
    while d <= end:
        if d == today:
            if any(p.end > now and p.planned_seconds > 0 for p in calendar.shifts_on(d)):
                days += 1
        elif calendar.day_planned_seconds(d) > 0:
            days += 1
        d += timedelta(days=1)
    gap = max(0.0, plan - year_to_date)
    return YearPlan(plan=round(plan, 1), year_to_date=year_to_date, measured=measured,
                    recorded=recorded, gap=round(gap, 1),
                    production_days_left=days,
                    rate_needed_per_day=round(gap / days, 1) if days else None)
