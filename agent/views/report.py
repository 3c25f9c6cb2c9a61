"""The shift reports of a production day rendered for people: text, CSV or JSON.

The reports come from a reader (the gateway's state store or the roll-up's database),
exactly as they were published on ``R/lines/<line>/shift`` and ``R/plant/shift``. The day's figures (per line and for the plant) are computed from the
summed times and counts of its shift reports, never from averaged percentages.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from agent.config import Config
from agent.contract.errors import ConfigError
from agent.contract.payloads import ShiftReport
from agent.core.calendar import ShiftCalendar
from agent.core.oee import COVERAGE_THRESHOLD
from agent.core.totals import YearOpening

__all__ = ["Reader", "day_totals", "report", "reports_csv"]

#: the stored reports of a production date (and shift name): the gateway's state store or
#: the roll-up's database
Reader = Callable[[date, str | None], list[ShiftReport]]

_CSV_FIELDS = [
    "date", "shift", "start", "end", "line", "units", "rejects", "total", "target", "attainment",
    "calendar_s", "planned_s", "planned_stop_s", "planned_busy_s", "run_s", "minor_stop_s", "down_s",
    "unknown_s", "covered_s", "ideal_run_s", "fully_productive_s", "coverage", "partial",
    "minor_stops",
    "availability", "performance",
    "quality", "oee", "quality_measured", "top_loss",
]


def day_totals(reports: Sequence[ShiftReport]) -> list[dict[str, Any]]:
    """Per line and for the plant, the day's figures from the summed shift reports."""
    by: dict[str | None, list[ShiftReport]] = {}
    for r in reports:
        by.setdefault(r.line, []).append(r)
    out = []
    for line in sorted(by, key=lambda x: (x is None, x or "")):
        rs = by[line]
        t = {k: round(sum(getattr(r.time, k) for r in rs), 3) for k in (
            "calendar_s", "planned_s", "planned_stop_s", "planned_busy_s", "run_s", "minor_stop_s", "down_s",
            "unknown_s", "covered_s", "ideal_run_s")}
        units = sum(r.units for r in rs)
        total = sum(r.total for r in rs)
        target = sum(r.target for r in rs)
        measured = all(r.quality_measured for r in rs)
        counted = any(r.rejects is not None for r in rs)
        timed = all(r.availability is not None
                    or r.time.planned_busy_s - r.time.unknown_s <= 0 for r in rs)
        # over the observed busy time: unobserved time is neither run time nor downtime
        observed = t["planned_busy_s"] - t["unknown_s"]
        availability = t["run_s"] / observed if timed and observed > 0 else None
        performance = t["ideal_run_s"] / t["run_s"] if timed and t["run_s"] else None
        quality = (units / total if total else None) if counted else 1.0
        oee = None
        if availability is not None and performance is not None and quality is not None:
            oee = availability * performance * quality
        out.append({
            "line": line, "shifts": len(rs), "units": units,
            "rejects": sum(r.rejects or 0 for r in rs) if counted else None, "total": total,
            "target": round(target, 3), "attainment": _r4(units / target if target else None),
            **t, "availability": _r4(availability), "performance": _r4(performance),
            "quality": _r4(quality), "oee": _r4(oee), "quality_measured": measured,
        })
    return out


def _r4(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _hm(seconds: float) -> str:
    m = round(seconds / 60)
    return f"{m // 60}h{m % 60:02d}" if m >= 60 else f"{seconds / 60:.1f}min"


def _unmeasured(r: ShiftReport) -> str:
    if r.quality_measured:
        return ""
    return " (not measured on every line)" if r.rejects is not None else " (not measured)"


def _opening(cfg: Config, opening: YearOpening | None) -> list[str]:
    if opening is None:
        return []
    return [f"year {opening.year} to date includes an opening balance of {opening.units:,} "
            f"units recorded through {opening.through} (plantfloor state opening)"]


def _text(cfg: Config, day: date, reports: Sequence[ShiftReport],
          opening: YearOpening | None = None) -> str:
    tz = cfg.tz
    out = [f"{cfg.site}: shift reports of production day {day.isoformat()} (times in "
           f"{cfg.timezone})", *_opening(cfg, opening)]
    if not reports:
        out.append("no shift report stored for this day")
        return "\n".join(out)
    current = None
    for r in reports:
        ref = r.shift
        if current != (ref.name, ref.start):
            current = (ref.name, ref.start)
            start, end = ref.start.astimezone(tz), ref.end.astimezone(tz)
            out.append(f"\nshift {ref.name} {start:%Y-%m-%d %H:%M}-{end:%H:%M} {start:%Z} "
                       f"({cfg.timezone})")
        t = r.time
        who = f"line {r.line}" if r.line else f"plant ({', '.join(r.lines or [])})"
        rej = f", {r.rejects} rejects" if r.rejects is not None else ""
        cover = "" if r.coverage >= 1 else f"; covered {r.coverage * 100:.0f}% of it"
        if r.partial:
            cover += (f" (PARTIAL: below {COVERAGE_THRESHOLD * 100:.0f}%, the figures "
                      "describe the part observed)")
        out += [
            f"  {who}: {r.units} units{rej} of {r.target:g} planned ({_pct(r.attainment)}){cover}",
            f"    OEE {_pct(r.oee)} = availability {_pct(r.availability)} x performance "
            f"{_pct(r.performance)} x quality {_pct(r.quality)}"
            f"{_unmeasured(r)}",
            f"    planned {_hm(t.planned_s)}, planned stops {_hm(t.planned_stop_s)}, busy "
            f"{_hm(t.planned_busy_s)}: run {_hm(t.run_s)}, down {_hm(t.down_s)}, minor stops "
            f"{_hm(t.minor_stop_s)} ({r.minor_stops}), unknown {_hm(t.unknown_s)}",
        ]
        for reason, rt in r.downtime.items():
            out.append(f"    {reason} ({rt.category}): {_hm(rt.seconds)} in {rt.stops} stop(s)")
        if r.top_losses:
            out.append("    top losses: " + ", ".join(f"{loss.cause} {_hm(loss.seconds)}"
                                                    for loss in r.top_losses))
    out.append("\nday")
    for d in day_totals(reports):
        who = f"line {d['line']}" if d["line"] else "plant"
        out.append(f"  {who}: {d['units']} units of {d['target']:g} ({_pct(d['attainment'])}), "
                   f"OEE {_pct(d['oee'])} = {_pct(d['availability'])} x "
                   f"{_pct(d['performance'])} x {_pct(d['quality'])} over {d['shifts']} shift(s)")
    return "\n".join(out)


def reports_csv(reports: Sequence[ShiftReport]) -> str:
    """Shift reports as CSV (header first), as ``plantfloor report --format csv`` writes them."""
    return _csv(reports)


def _csv(reports: Sequence[ShiftReport]) -> str:
    reasons = sorted({reason for r in reports for reason in r.downtime})
    fields = _CSV_FIELDS + [f"{p}_{reason}" for reason in reasons for p in ("down_s", "stops")]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in reports:
        row: dict[str, Any] = {
            "date": r.shift.date.isoformat(), "shift": r.shift.name,
            "start": r.shift.start.isoformat(), "end": r.shift.end.isoformat(),
            "line": r.line or "plant", "units": r.units, "rejects": r.rejects, "total": r.total,
            "target": r.target, "attainment": r.attainment, **r.time.model_dump(),
            "coverage": r.coverage, "partial": r.partial, "minor_stops": r.minor_stops, "availability": r.availability,
            "performance": r.performance, "quality": r.quality, "oee": r.oee,
            "quality_measured": r.quality_measured,
            "top_loss": r.top_losses[0].cause if r.top_losses else None}
        for reason in reasons:
            rt = r.downtime.get(reason)
            row[f"down_s_{reason}"] = rt.seconds if rt else 0.0
            row[f"stops_{reason}"] = rt.stops if rt else 0
        writer.writerow({k: v for k, v in row.items() if k in fields})
    return buf.getvalue().rstrip("\n")


def report(cfg: Config, *, day: str | None = None, shift: str | None = None,
           fmt: str = "text", now: datetime | None = None,
           read: Reader, openings: Mapping[int, YearOpening] | None = None) -> str:
    """The shift reports of a production day (default: the current production day, so a
    night shift after midnight belongs to the day it started).

    ``read`` gives the stored reports of a date (and shift name): the gateway's state store
    (``plantfloor report``) or the roll-up's database (``report --database``); ``openings``
    the year-to-date opening balances recorded in the state store.
    """
    if day is None:
        when = now or datetime.now(UTC)
        d = ShiftCalendar.from_config(cfg).production_date(when.astimezone(UTC))
    else:
        try:
            d = date.fromisoformat(day)
        except ValueError:
            raise ConfigError(f"{day!r} is not a date (YYYY-MM-DD)", key="--date") from None
    if shift is not None and shift not in {s.name for s in cfg.shifts}:
        raise ConfigError(f"shift {shift!r} is not in the config "
                          f"({', '.join(s.name for s in cfg.shifts)})", key="--shift")
    reports = read(d, shift)
    opening = (openings or {}).get(d.year)
    if fmt == "json":
        return json.dumps({"date": d.isoformat(), "site": cfg.site,
                           "reports": [json.loads(r.model_dump_json(by_alias=True)) for r in reports],
                           "day": day_totals(reports) if shift is None else None,
                           "year_opening": None if opening is None else {
                               "year": opening.year, "units": opening.units,
                               "through": opening.through.isoformat()}}, indent=2)
    if fmt == "csv":
        return _csv(reports)
    return _text(cfg, d, reports, opening)
