"""The production year's figures of the plant: utilisation and the projected year, from one
rate (the formulas: :mod:`agent.core.report`). The site service uses them too."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from agent.config import PlantConfig
from agent.core.calendar import ShiftCalendar

__all__ = ["year_figures"]


def year_figures(cal: ShiftCalendar, plant: PlantConfig, ytd: int, since: datetime,
                 end: datetime, year: int, *, opening_units: int = 0,
                 through: date | None = None) -> tuple[float, float]:
    """``utilization`` and ``projected_year`` of the production year ``year`` at ``end``.

    ``ytd`` units were counted from ``since``; an opening balance of ``opening_units``
    covers the production days up to ``through``. Both figures use one rate: the units
    known over the planned time they cover (``K``); see the module docstring.
    """
    year_s = cal.year_planned_seconds(year)
    elapsed = min(cal.year_planned_elapsed(end, year=year), year_s)
    before = min(cal.year_planned_elapsed(since, year=year), elapsed)
    counted = elapsed - before
    if through is not None:
        # the opening's planned time, up to where counting began (never counted twice)
        upto = cal.midnight(through + timedelta(days=1))
        counted += min(cal.year_planned_elapsed(upto, year=year), before)
    known = ytd + opening_units
    if counted <= 0:
        return 0.0, plant.capacity_per_year * plant.planned_utilization
    return (known / (plant.capacity_per_year * counted / year_s),
            known + known / counted * (year_s - elapsed))
