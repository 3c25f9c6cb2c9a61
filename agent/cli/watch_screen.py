"""The live terminal view of ``plantfloor watch`` and ``plantfloor demo``: fits the terminal.

It renders a :class:`~agent.cli.watch_view.WatchModel` for a console of a given width:
at 80 columns the few figures a plant manager reads first (what each line does now, the
last window's units, this shift and today against target, OEE), and as the terminal
widens the rates, data quality, projections, OEE's parts and downtime. Columns never
truncate a figure: the narrow layout leaves columns out instead, and what cannot fit
wraps at a space. Every figure says its unit and period ("last 60 s", "this shift",
"today", "year to date"); counts have thousands separators; times are plant local
time with their zone, by the plant clock (a demo's runs faster than real time).

Data quality (could the agent read the PLC) and OEE quality (good units among all
built) are different things and are worded apart: "data" and "OEE quality".
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from agent.cli.watch_view import LineView, WatchModel, line_reason, line_state
from agent.contract.payloads import ShiftReport
from agent.core.clock import Clock, SystemClock, describe

__all__ = ["MEDIUM", "WIDE", "rich_view"]

#: from this many columns the lines table adds rates and data quality
MEDIUM = 110
#: and from this many, the product, projections, OEE's parts and downtime
WIDE = 150

_STYLES = {
    "running": "green", "stopped": "yellow", "faulted": "bold red", "unknown": "dim",
    "good": "green", "uncertain": "yellow", "bad": "bold red",
    "online": "green", "offline": "bold red", "STALE": "bold red",
}
#: how events read in the summary
_EVENT_WORDS = {
    "agent_offline": "agent not counting",
    "counter_reset": "counter reset",
    "implausible_jump": "implausible jump refused",
    "rollover": "counter rolled over",
    "rebaselined": "counter re-baselined",
    "clock_step": "clock stepped",
}


def count(n: float) -> str:
    """A count: a whole number with thousands separators."""
    return f"{round(n):,}"


def pct(x: float | None, decimals: int = 0) -> str:
    """A ratio as a percentage ("82 %"), "-" when not known."""
    return "-" if x is None else f"{x * 100:.{decimals}f} %"


def minutes(seconds: float) -> str:
    """A duration for people: "25 min", "1 h 05 min"."""
    m = round(seconds / 60)
    return f"{m} min" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class _Clock:
    """Plant time for the view: now, and instants shown as local HH:MM with the zone."""

    def __init__(self, clock: Clock, tz: tzinfo | None) -> None:
        self.clock = clock
        self.tz = tz or datetime.now().astimezone().tzinfo
        self.now = clock.wall()

    def hhmm(self, when: datetime) -> str:
        return f"{when.astimezone(self.tz):%H:%M}"

    def header(self) -> str:
        return describe(self.clock, self.tz) if self.tz is not None else self.clock.wall().isoformat()


def _window_s(view: LineView) -> float:
    return view.window_s or 60.0


def stale_since(view: LineView, model: WatchModel, now: datetime) -> datetime | None:
    """When a line's figures stopped being current: the agent offline, or the last window
    older than two window lengths; None while they are current."""
    o = view.latest
    if o is None:
        return None
    if model.status is not None and model.status.state == "offline":
        return o.window_end
    if now - o.window_end > timedelta(seconds=2 * _window_s(view)):
        return o.window_end
    return None


def _state_cell(view: LineView, model: WatchModel, clock: _Clock) -> Text:
    since = stale_since(view, model, clock.now)
    if since is not None:
        return Text(f"STALE since {clock.hhmm(since)}", style=_STYLES["STALE"])
    reason = line_reason(view)
    state = line_state(view)
    return Text(reason if reason != "-" else state, style=_STYLES.get(state, ""))


def _lines_table(model: WatchModel, clock: _Clock, width: int) -> Table:
    views = [model.lines[name] for name in sorted(model.lines)]
    window = max((_window_s(v) for v in views), default=60.0)
    medium, wide = width >= MEDIUM, width >= WIDE
    # at 80 columns "units/target" without spaces keeps every row on one line; a cell that
    # still does not fit wraps at a space (overflow fold), it is never cut short
    sep = " / " if medium else "/"
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)

    def column(header: str, right: bool = True) -> None:
        table.add_column(header, justify="right" if right else "left", overflow="fold")

    column("line", right=False)
    if wide:
        column("product", right=False)
    column("now", right=False)
    column(f"last {window:g} s\nunits")
    if medium:
        column(f"rate /h\nlast{sep}target")
    column(f"this shift\nunits{sep}target")
    if wide:
        column("this shift\nprojected")
    column(f"today\nunits{sep}target")
    column("OEE\nthis shift")
    if wide:
        column("availability / perf. /\nOEE quality")
        column("downtime\nthis shift")
    if medium:
        column("data", right=False)
    for view in views:
        o = view.latest
        cells: list[str | Text] = [view.line]
        if wide:
            cells.append(o.product if o else "-")
        cells.append(_state_cell(view, model, clock))
        if o is None:
            cells += ["-"] * (len(table.columns) - len(cells))
            table.add_row(*cells)
            continue
        cells.append(count(o.units))
        if medium:
            cells.append(f"{count(o.rate_per_hour)}{sep}{count(o.target_per_hour)}")
        shift = o.shift
        name = f"{shift.name or 'off shift'} " if medium else ""
        cells.append(f"{name}{count(shift.units)}{sep}{count(shift.target)}")
        if wide:
            cells.append(count(shift.projected))
        cells.append(f"{count(o.day.units)}{sep}{count(o.day.target)}")
        cells.append(pct(shift.oee))
        if wide:
            cells.append(f"{pct(shift.availability)} / {pct(shift.performance)} / {pct(shift.quality)}")
            # off shift nothing is planned: a line standing still then loses nothing
            cells.append(minutes(shift.downtime_s) if shift.name else "-")
        if medium:
            cells.append(Text(o.quality, style=_STYLES.get(o.quality, "")))
        table.add_row(*cells)
    return table


def _plant_text(model: WatchModel, clock: _Clock, width: int) -> Text:
    p = model.plant.latest
    text = Text.assemble(("Plant ", "bold"))
    if p is None:
        return text.append("no window yet", style="dim")
    text.append(f"today {count(p.units_today)} / {count(p.target_today)} units · "
                f"year to date {count(p.units_year_to_date)} units · ")
    text.append(f"utilisation {pct(p.utilization, 1)} of capacity", style="bold")
    text.append(f" (plan {pct(p.planned_utilization, 1)})")
    text.append(f"\ncapacity {count(p.capacity_per_year)} a year · "
                f"projected year {count(p.projected_year)} units")
    if p.year_counted_since is not None:  # a projection from part of the year says so
        text.append(f" (counted since {p.year_counted_since.astimezone(clock.tz):%Y-%m-%d})")
    if width >= MEDIUM:
        window = (p.window_end - p.window_start).total_seconds()
        text.append(f" · last {window:g} s {count(p.units)} unit{'' if p.units == 1 else 's'} · data ")
        text.append(p.quality, style=_STYLES.get(p.quality, ""))
    return text


def _downtime(report: ShiftReport, limit: int) -> str:
    reasons = sorted(report.downtime.items(), key=lambda kv: -kv[1].seconds)[:limit]
    parts = [f"{name} {minutes(r.seconds)}" + (f" ({r.stops} stops)" if r.stops > 1 else "")
             for name, r in reasons if r.seconds >= 30]
    return ", ".join(parts) or "none"


def _reports_text(model: WatchModel, clock: _Clock, width: int) -> Text | None:
    """The last shift report of every line and the plant: units, OEE, downtime by reason."""
    # only the reports of the epoch on show: a broker may retain another state store's
    epoch = model.plant.latest.epoch if model.plant.latest is not None else None

    def current(r: ShiftReport | None) -> ShiftReport | None:
        return r if r is not None and (epoch is None or r.epoch == epoch) else None

    plant = current(model.plant.last_shift)
    lines = [(name, r) for name, v in sorted(model.lines.items()) if (r := current(v.last_shift)) is not None]
    if plant is None and not lines:
        return None
    ref = (plant or lines[0][1]).shift
    text = Text.assemble(("Last shift ", "bold"),
                         f"{ref.name} {ref.date:%Y-%m-%d} {clock.hhmm(ref.start)}-{clock.hhmm(ref.end)}")
    if plant is not None:
        text.append(f": plant {count(plant.units)} / {count(plant.target)} units, ")
        text.append(f"OEE {pct(plant.oee)}", style="bold")
    wide = width >= WIDE
    for name, r in lines:
        if r is None:
            continue
        text.append(f"\n  {name} {count(r.units)} / {count(r.target)} units, OEE {pct(r.oee)}")
        if wide:
            text.append(f" (availability {pct(r.availability)}, performance {pct(r.performance)}, "
                        f"OEE quality {pct(r.quality)})")
        if r.coverage < 1:
            text.append(f", seen {pct(r.coverage)}")
        text.append(f"; downtime {_downtime(r, 4 if wide else 2)}")
    return text


def _events_text(model: WatchModel, clock: _Clock, width: int) -> Text:
    """Events summarised: each kind once, with its lines and latest plant time."""
    text = Text.assemble(("Events ", "bold"))
    items: list[tuple[datetime, str]] = []
    s = model.status
    if s is not None and s.started_at is not None:
        items.append((s.started_at, f"agent started {clock.hhmm(s.started_at)}"))
    latest: dict[str, tuple[datetime, set[str]]] = {}
    for name, view in model.lines.items():
        for when, event in view.events:
            seen = latest.get(event)
            latest[event] = (max(when, seen[0]) if seen else when, (seen[1] if seen else set()) | {name})
    for event, (when, names) in latest.items():
        items.append((when, f"{_EVENT_WORDS.get(event, event.replace('_', ' '))} "
                            f"{', '.join(sorted(names))} {clock.hhmm(when)}"))
    items.sort(key=lambda item: item[0], reverse=True)
    if not items:
        return text.append("none", style="dim")
    text.append(" · ".join(label for _, label in items[:3 if width < MEDIUM else 6]))
    down = [(name, v.state.source) for name, v in sorted(model.lines.items())
            if v.state is not None and not v.state.source.connected]
    if down:
        text.append("\nPLC unreachable: ", style="bold red")
        text.append("; ".join(f"{name} via {src.id} ({src.error or 'disconnected'})" for name, src in down))
    return text


def _status_text(model: WatchModel, connection: str, clock: _Clock, width: int) -> Text:
    site = model.plant.latest.site if model.plant.latest is not None else ""
    shifts = {v.latest.shift.name for v in model.lines.values() if v.latest is not None}
    shift = next(iter(shifts)) if len(shifts) == 1 else None
    text = Text.assemble(("plantfloor ", "bold"), (f"{site} · " if site else "", "bold"),
                         (clock.header(), "bold cyan"),
                         f" · {shift} shift" if shift else " · off shift" if shifts == {None} else "",
                         "\n")
    s = model.status
    if s is None:
        text.append("agent: waiting for its status", style="dim")
    else:
        text.append(f"agent {s.agent} ")
        text.append(s.state, style=_STYLES.get(s.state, ""))
        text.append(f" · backlog {count(s.backlog)}")
        if s.dropped or width >= MEDIUM:  # "dropped 0" only where there is room
            text.append(f" · dropped {count(s.dropped)}", style="bold red" if s.dropped else "")
        text.append(" · alarms ")
        if s.alarms:
            text.append("; ".join(f"{a.kind}: {a.message}" for a in s.alarms), style="bold red")
        else:
            text.append("none", style="green")
    if width < MEDIUM:  # the broker's address only where it fits on the line
        connection = connection.rsplit(" ", 1)[-1]
    text.append(f" · broker {connection}", style="dim")
    if model.invalid:
        text.append(f"\ninvalid payloads: {model.invalid} (last: {model.last_invalid})", style="yellow")
    return text


def rich_view(model: WatchModel, connection: str, *, clock: Clock | None = None,
              tz: tzinfo | None = None, width: int = 80) -> RenderableType:
    """The live view for a terminal ``width`` columns wide, by the plant ``clock`` (the
    machine's by default) in the zone ``tz`` (default the machine's)."""
    view_clock = _Clock(clock or SystemClock(), tz)
    parts: list[RenderableType] = [_status_text(model, connection, view_clock, width), Text(),
                                   _lines_table(model, view_clock, width), Text(),
                                   _plant_text(model, view_clock, width)]
    reports = _reports_text(model, view_clock, width)
    if reports is not None:
        parts.append(reports)
    parts.append(_events_text(model, view_clock, width))
    return Group(*parts)

