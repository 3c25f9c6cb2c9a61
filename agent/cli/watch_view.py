"""What ``plantfloor watch`` knows about the plant, and how it shows it.

:class:`WatchModel` is fed every message received under the topic root. Window
results are delivered at least once, so each line's (and the plant's) windows are kept
once per ``seq``: running totals are sums over distinct windows, and a late
(``historical``) window adds to the totals without replacing the newest one on show.

Two renderings: :func:`plain_lines`, a stable ``key=value`` text for pipes and logs,
and :func:`rich_view`, the tables of the live terminal view.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from agent.contract.payloads import (
    LineOutput,
    LineStatePayload,
    PlantOutput,
    ShiftReport,
    StatusPayload,
)

__all__ = ["LineView", "PlantView", "WatchModel", "decode_payload", "plain_lines", "rich_view"]

M = TypeVar("M", bound=BaseModel)

_RECENT_EVENTS = 4


def decode_payload(model: type[M], payload: bytes) -> M:
    """Validate ``payload`` as ``model``, ignoring what this version does not know.

    The payload models forbid extra fields (they define what the agent may send), but
    within a schema version a newer agent may add fields and event names: a subscriber
    must accept them. Unknown fields and unknown event names are dropped; anything else
    raises ``ValueError`` (``ValidationError`` and ``JSONDecodeError`` are ValueErrors).
    """
    data: Any = json.loads(payload)
    for _ in range(8):  # each pass strips what pydantic reported; nesting is shallow
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
            extras = [e["loc"] for e in errors if e["type"] == "extra_forbidden"]
            events = [e["loc"][1] for e in errors if e["type"] == "literal_error"
                      and len(e["loc"]) == 2 and e["loc"][0] == "events"]
            if not errors or len(extras) + len(events) != len(errors):
                raise
            for loc in extras:
                _drop(data, loc)
            for index in sorted((i for i in events if isinstance(i, int)), reverse=True):
                del data["events"][index]
    return model.model_validate(data)


def _drop(data: Any, loc: tuple[int | str, ...]) -> None:
    for key in loc[:-1]:
        data = data[key]
    del data[loc[-1]]


@dataclass
class LineView:
    """One line as seen by the subscriber since it started."""

    line: str
    latest: LineOutput | None = None
    state: LineStatePayload | None = None
    #: the report of the last shift instance that ended (retained)
    last_shift: ShiftReport | None = None
    seqs: set[tuple[int, int]] = field(default_factory=set)
    total: int = 0
    duplicates: int = 0
    historical: int = 0
    events: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=_RECENT_EVENTS))

    def add(self, out: LineOutput) -> bool:
        """Count a window once; False for a repeat of an (``epoch``, ``seq``) already seen."""
        key = (out.epoch, out.seq)
        if key in self.seqs:
            self.duplicates += 1
            return False
        self.seqs.add(key)
        self.total += out.units
        self.historical += out.historical
        if self.latest is None or out.window_end >= self.latest.window_end:
            self.latest = out
        for event in out.events:
            self.events.append((out.seq, event))
        return True

    @property
    def missing(self) -> int:
        """Windows between the first and last ``seq`` seen of each epoch that have not arrived."""
        return _missing(self.seqs)


@dataclass
class PlantView:
    """The plant's windows, kept once per ``seq``."""

    latest: PlantOutput | None = None
    last_shift: ShiftReport | None = None
    seqs: set[tuple[int, int]] = field(default_factory=set)
    total: int = 0
    duplicates: int = 0

    def add(self, out: PlantOutput) -> bool:
        """Count a window once; False for a repeat of an (``epoch``, ``seq``)."""
        key = (out.epoch, out.seq)
        if key in self.seqs:
            self.duplicates += 1
            return False
        self.seqs.add(key)
        self.total += out.units
        if self.latest is None or out.window_end >= self.latest.window_end:
            self.latest = out
        return True


def _missing(keys: set[tuple[int, int]]) -> int:
    by_epoch: dict[int, list[int]] = {}
    for epoch, seq in keys:
        by_epoch.setdefault(epoch, []).append(seq)
    return sum(max(s) - min(s) + 1 - len(s) for s in by_epoch.values())


@dataclass
class WatchModel:
    """Everything received under the topic root, deduplicated."""

    lines: dict[str, LineView] = field(default_factory=dict)
    plant: PlantView = field(default_factory=PlantView)
    status: StatusPayload | None = None
    invalid: int = 0
    last_invalid: str | None = None

    def line(self, line: str) -> LineView:
        """The view of ``line``, created on first mention."""
        if line not in self.lines:
            self.lines[line] = LineView(line)
        return self.lines[line]

    def apply(self, subtopic: str, payload: bytes) -> bool:
        """Take one message (topic relative to the root); True if the view changed.

        Payloads that do not validate are counted in ``invalid`` and otherwise ignored;
        topics outside the contract are ignored.
        """
        parts = subtopic.split("/")
        try:
            if parts == ["status"]:
                if not payload:  # a cleared retained message
                    return False
                self.status = decode_payload(StatusPayload, payload)
                return True
            if parts == ["plant", "output"]:
                return self.plant.add(decode_payload(PlantOutput, payload))
            if parts == ["plant", "shift"] or (len(parts) == 3 and parts[0] == "lines"
                                               and parts[2] == "shift"):
                if not payload:
                    return False
                report = decode_payload(ShiftReport, payload)
                holder = self.plant if parts[0] == "plant" else self.line(report.line or parts[1])
                if holder.last_shift is None or report.shift.start >= holder.last_shift.shift.start:
                    holder.last_shift = report  # a late (replayed) older report does not win
                return True
            if len(parts) == 3 and parts[0] == "lines" and parts[2] == "output":
                out = decode_payload(LineOutput, payload)
                return self.line(out.line).add(out)
            if len(parts) == 3 and parts[0] == "lines" and parts[2] == "state":
                if not payload:
                    return False
                st = decode_payload(LineStatePayload, payload)
                self.line(st.line).state = st
                return True
        except ValueError as exc:  # ValidationError and JSONDecodeError are ValueErrors
            self.invalid += 1
            self.last_invalid = f"{subtopic}: {str(exc).splitlines()[0]}"
            return True
        return False


def _num(value: float) -> str:
    return f"{value:.0f}"


def _pct(value: float | None, decimals: int = 0) -> str:
    return "-" if value is None else f"{value * 100:.{decimals}f}%"


def _line_state(view: LineView) -> str:
    return view.state.state if view.state is not None else "unknown"


def _reason(view: LineView) -> str:
    """The current reason: from the retained state topic, else the newest window."""
    if view.state is not None and view.state.reason is not None:
        return view.state.reason
    if view.latest is not None and view.latest.reason is not None:
        return view.latest.reason
    return "-"


def plain_lines(model: WatchModel) -> list[str]:
    """One ``key=value`` line per line (sorted by id), then the plant, then the status.

    The format is stable: a first token ``line=<id>``, ``plant`` or ``status``, then
    space-separated ``key=value`` pairs; ``-`` stands for "not known" or "none".
    """
    out: list[str] = []
    for name in sorted(model.lines):
        view = model.lines[name]
        parts = [f"line={name}"]
        o = view.latest
        if o is not None:
            shift = o.shift.name or "-"
            events = ",".join(o.events) or "-"
            parts += [
                f"seq={o.seq}", f"units={o.units}", f"total={view.total}",
                f"rate={o.rate_per_hour:.1f}/h", f"target={o.target_per_hour:.1f}/h",
                f"attainment={_pct(o.attainment)}",
                f"shift={shift}:{o.shift.units}/{_num(o.shift.target)}",
                f"proj={_num(o.shift.projected)}", f"day={o.day.units}/{_num(o.day.target)}",
                f"oee={_pct(o.shift.oee, 1)}", f"state={_line_state(view)}",
                f"reason={_reason(view)}", f"quality={o.quality}", f"events={events}",
                f"windows={len(view.seqs)}", f"dup={view.duplicates}", f"missing={view.missing}",
            ]
        else:
            parts += [f"state={_line_state(view)}", f"reason={_reason(view)}"]
        if view.state is not None and not view.state.source.connected:
            parts.append(f"source={view.state.source.id}:disconnected")
        out.append(" ".join(parts))
    p = model.plant.latest
    if p is not None:
        out.append(" ".join([
            "plant", f"seq={p.seq}", f"units={p.units}", f"total={model.plant.total}",
            f"today={p.units_today}/{_num(p.target_today)}", f"ytd={p.units_year_to_date}",
            f"util={_pct(p.utilization, 1)}", f"planned={_pct(p.planned_utilization, 1)}",
            f"proj_year={_num(p.projected_year)}", f"capacity={p.capacity_per_year}",
            f"quality={p.quality}", f"dup={model.plant.duplicates}",
        ]))
    s = model.status
    if s is not None:
        alarms = ",".join(a.kind for a in s.alarms) or "-"
        out.append(" ".join([
            "status", f"state={s.state}", f"agent={s.agent}", f"version={s.version}",
            f"backlog={s.backlog}", f"dropped={s.dropped}", f"alarms={alarms}",
        ]))
    return out


_STYLES = {
    "running": "green", "stopped": "yellow", "faulted": "bold red", "unknown": "dim",
    "good": "green", "uncertain": "yellow", "bad": "bold red",
    "online": "green", "offline": "bold red",
}


def _styled(word: str) -> Text:
    return Text(word, style=_STYLES.get(word, ""))


def _lines_table(model: WatchModel) -> Table:
    # two-line cells and short headers keep the table within an 80-column terminal
    table = Table(title="Lines", box=box.SIMPLE_HEAD, expand=True)
    table.add_column("line\nproduct", no_wrap=True)
    table.add_column("reason\nquality", no_wrap=True)
    for header in ("units\nattain.", "rate/h\ntarget", "shift\nunits/tgt", "shift\nproj.",
                   "OEE\nshift", "day\nunits/tgt", "total\nseen"):
        table.add_column(header, justify="right", no_wrap=True)
    for name in sorted(model.lines):
        view = model.lines[name]
        o = view.latest
        # the reason (a stop's cause) in the colour of its state
        reason = _reason(view)
        state = Text(reason if reason != "-" else _line_state(view),
                     style=_STYLES.get(_line_state(view), ""))
        if o is None:
            table.add_row(name, state, "-", "-", "-", "-", "-", "-", "-")
            continue
        table.add_row(
            Text.assemble(name, "\n", (o.product, "dim")),
            Text.assemble(state, "\n", _styled(o.quality)),
            f"{o.units}\n{_pct(o.attainment)}",
            f"{o.rate_per_hour:.1f}\n{o.target_per_hour:.1f}",
            f"{o.shift.name or '-'}\n{o.shift.units}/{_num(o.shift.target)}",
            _num(o.shift.projected),
            f"{_pct(o.shift.oee)}\n{_apq(o)}",
            f"{o.day.units}/{_num(o.day.target)}",
            str(view.total),
        )
    return table


def _apq(o: LineOutput) -> str:
    """Availability, performance and quality, compactly: "A92 P88 Q99"."""
    s = o.shift

    def part(letter: str, x: float | None) -> str:
        return f"{letter}{'-' if x is None else f'{x * 100:.0f}'}"
    return " ".join((part("A", s.availability), part("P", s.performance), part("Q", s.quality)))


def _events_text(model: WatchModel) -> Text:
    text = Text.assemble(("recent events: ", "bold"))
    shown = [(name, seq, e) for name in sorted(model.lines)
             for seq, e in model.lines[name].events]
    if shown:
        text.append("; ".join(f"{name} {e} (window {seq})" for name, seq, e in shown))
    else:
        text.append("none", style="dim")
    ended = [(name, v.last_shift) for name, v in sorted(model.lines.items())
             if v.last_shift is not None]
    if model.plant.last_shift is not None:
        ended.append(("plant", model.plant.last_shift))
    if ended:
        text.append("\nlast shift: ", style="bold")
        text.append("; ".join(f"{name} {r.shift.name} {r.units}/{_num(r.target)} OEE {_pct(r.oee)}"
                              + (f" (saw {_pct(r.coverage)})" if r.coverage < 1 else "")
                              for name, r in ended))
    down = [(name, v.state.source) for name, v in sorted(model.lines.items())
            if v.state is not None and not v.state.source.connected]
    if down:
        text.append("\nPLC unreachable: ", style="bold red")
        text.append("; ".join(f"{name} via {src.id} ({src.error or 'disconnected'})"
                              for name, src in down))
    return text


def _plant_table(model: WatchModel) -> Table:
    table = Table(title="Plant", box=box.SIMPLE_HEAD, expand=True)
    for col in ("units", "today\nunits/tgt", "year\nto date", "utilis.\n(planned)",
                "projected\nyear", "capacity\nper year", "quality"):
        table.add_column(col, justify="right", no_wrap=True)
    p = model.plant.latest
    if p is not None:
        table.add_row(
            str(p.units), f"{p.units_today}/{_num(p.target_today)}", str(p.units_year_to_date),
            f"{_pct(p.utilization, 1)} ({_pct(p.planned_utilization, 1)})", _num(p.projected_year),
            str(p.capacity_per_year), _styled(p.quality),
        )
    return table


def _status_text(model: WatchModel, connection: str) -> Text:
    text = Text(f"broker {connection}  ")
    s = model.status
    if s is None:
        text.append("agent: no status yet", style="dim")
    else:
        text.append(f"agent {s.agent} {s.version} ")
        text.append_text(_styled(s.state))
        text.append(f"  backlog {s.backlog}  dropped {s.dropped}  alarms ")
        if s.alarms:
            text.append("; ".join(f"{a.kind}: {a.message}" for a in s.alarms), style="bold red")
        else:
            text.append("none", style="green")
    if model.invalid:
        text.append(f"\ninvalid payloads: {model.invalid} (last: {model.last_invalid})",
                    style="yellow")
    return text


def rich_view(model: WatchModel, connection: str) -> RenderableType:
    """The live view: the status line, the lines table, recent events, the plant table."""
    return Group(_status_text(model, connection), _lines_table(model), _events_text(model),
                 _plant_table(model))
