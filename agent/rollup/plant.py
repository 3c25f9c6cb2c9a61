"""The site's plant figure from the rows (pure: the leader queries, this computes).

For a site window ``[start, end)`` the inputs are sums over ``line_window`` rows, never
counters kept in memory, so the figure is the same whoever computes it and however often
(``Y``, ``E``, ``K``, ``C`` as in docs/mqtt.md, from :class:`~agent.core.calendar.ShiftCalendar`):

* ``units``, ``lines``: the rows whose ``period_start`` is the window's start
* ``units_today``: rows of the window's production date up to and including the window;
  ``units_year_to_date``: that, plus the rows of the production year's earlier days (their
  sums kept in ``plant_day``, summed again from the rows whenever a row of the day arrives)
* ``year_counted_since``: the earliest ``window_start`` among those year rows
* ``target_today``: the sum of the lines' ``day.target`` for that production date
* ``utilization = units_year_to_date / (C * K / Y)`` (0 while ``K`` is 0);
  ``projected_year = units_year_to_date + units_year_to_date / K * (Y - E)``
  (``C * planned_utilization`` while ``K`` is 0): the agent's formulas
  (:meth:`agent.core.report.Reporter.plant_output`)
* ``quality``: the worst of the lines' windows; a configured line with no window is ``bad``
* ``gateways``: per gateway the lines that reported (units), those missing, and (from
  revision 1) those whose windows arrived after revision 0 was computed
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from agent.core.calendar import ShiftCalendar
from agent.core.year import year_figures
from agent.rollup.config import RollupConfig
from agent.rollup.payloads import GatewayReport, SitePlantOutput

__all__ = ["QUALITY", "LineAggregate", "PeriodTotals", "line_windows", "site_figure"]

QualityName = Literal["good", "uncertain", "bad"]
#: quality by rank, as the SQL ranks it (bad 0 < uncertain 1 < good 2)
QUALITY: tuple[QualityName, QualityName, QualityName] = ("bad", "uncertain", "good")


@dataclass(frozen=True, slots=True)
class LineAggregate:
    """One line's rows in a site window (grouped by the gateway they arrived from)."""

    line: str
    gateway: str
    units: int
    windows: int
    quality: int          # rank in QUALITY
    day_target: float


@dataclass(frozen=True, slots=True)
class PeriodTotals:
    """Sums over the day's and the year's rows up to and including the site window."""

    units_today: int
    units_year_to_date: int
    counted_since: datetime | None
    target_today: float


def site_figure(cfg: RollupConfig, calendar: ShiftCalendar, *, epoch: int, seq: int, revision: int,
                start: datetime, end: datetime, lines: Sequence[LineAggregate], totals: PeriodTotals,
                first_windows: Mapping[str, int] | None = None, historical: bool = False) -> SitePlantOutput:
    """The ``S/plant/output`` payload of one site window (revision ``revision``).

    ``first_windows`` is the rows counted per line by revision 0 (None for revision 0
    itself): a line with more rows now arrived late.
    """
    plant = cfg.plant
    day = calendar.production_date(start)
    ytd = totals.units_year_to_date
    since = totals.counted_since if totals.counted_since is not None else start
    utilization, projected = year_figures(calendar, plant, ytd, since, end, day.year)

    per_line: dict[str, int] = {}
    for agg in lines:
        per_line[agg.line] = per_line.get(agg.line, 0) + agg.units
    configured = cfg.line_gateway
    missing = [line for line in configured if line not in per_line]
    ranks = [agg.quality for agg in lines] + [0] * len(missing)
    quality = QUALITY[min(ranks, default=0)]

    return SitePlantOutput(
        site=cfg.site, epoch=epoch, seq=seq, window_start=start, window_end=end,
        units=sum(per_line.values()), units_today=totals.units_today, units_year_to_date=ytd,
        target_today=round(totals.target_today, 3),
        capacity_per_year=plant.capacity_per_year, planned_utilization=plant.planned_utilization,
        utilization=round(utilization, 4), projected_year=round(projected, 3),
        year_counted_since=since, lines=dict(sorted(per_line.items())), quality=quality,
        historical=historical, revision=revision,
        gateways=_gateways(cfg, lines, missing, first_windows),
    )


def _gateways(cfg: RollupConfig, lines: Sequence[LineAggregate], missing: Sequence[str],
              first_windows: Mapping[str, int] | None) -> dict[str, GatewayReport]:
    reported: dict[str, dict[str, int]] = {gw.id: {} for gw in cfg.gateways}
    windows: dict[str, int] = {}
    for agg in lines:
        by_line = reported.setdefault(agg.gateway, {})
        by_line[agg.line] = by_line.get(agg.line, 0) + agg.units
        windows[agg.line] = windows.get(agg.line, 0) + agg.windows
    configured = cfg.line_gateway
    out: dict[str, GatewayReport] = {}
    for gw, by_line in reported.items():
        late = ([] if first_windows is None else
                sorted(line for line in by_line if windows[line] > first_windows.get(line, 0)))
        out[gw] = GatewayReport(lines=dict(sorted(by_line.items())),
                                missing=sorted(line for line in missing if configured[line] == gw),
                                late=late)
    return out


def line_windows(lines: Sequence[LineAggregate]) -> dict[str, int]:
    """Rows counted per line (kept with each revision, to tell later which lines were late)."""
    out: dict[str, int] = {}
    for agg in lines:
        out[agg.line] = out.get(agg.line, 0) + agg.windows
    return out
