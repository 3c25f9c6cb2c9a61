"""What ``plantfloor watch`` knows about the plant, and how it shows it.

:class:`WatchModel` is fed every message received under the topic root. Window
results are delivered at least once, so each line's (and the plant's) windows are kept
once per ``seq``: running totals are sums over distinct windows, and a late
(``historical``) window adds to the totals without replacing the newest one on show.

Two renderings: :func:`plain_lines` here, a stable ``key=value`` text for pipes and logs,
and :func:`agent.cli.watch_screen.rich_view`, the live terminal view.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from agent.contract.payloads import (
    LineOutput,
    LineStatePayload,
    PlantOutput,
    ShiftReport,
    StatusPayload,
)

__all__ = ["LineView", "PlantView", "WatchModel", "decode_payload", "line_reason", "line_state",
           "plain_lines"]

M = TypeVar("M", bound=BaseModel)

_RECENT_EVENTS = 50


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
    #: the latest events, with the end of the window they came in
    events: deque[tuple[datetime, str]] = field(default_factory=lambda: deque(maxlen=_RECENT_EVENTS))
    #: the line's window length: the longest window seen (a window cut by a stop is shorter)
    window_s: float = 0.0

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
        self.window_s = max(self.window_s, (out.window_end - out.window_start).total_seconds())
        for event in out.events:
            self.events.append((out.window_end, event))
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
                last = holder.last_shift
                # a late (replayed) older report of the same epoch does not win; one of
                # another epoch (another state store, a demo started afresh) does
                if last is None or report.epoch != last.epoch or report.shift.start >= last.shift.start:
                    holder.last_shift = report
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


def line_state(view: LineView) -> str:
    """The line's state from its retained state topic ("unknown" before one arrives)."""
    return view.state.state if view.state is not None else "unknown"


def line_reason(view: LineView) -> str:
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
                f"oee={_pct(o.shift.oee, 1)}", f"state={line_state(view)}",
                f"reason={line_reason(view)}", f"quality={o.quality}", f"events={events}",
                f"windows={len(view.seqs)}", f"dup={view.duplicates}", f"missing={view.missing}",
            ]
        else:
            parts += [f"state={line_state(view)}", f"reason={line_reason(view)}"]
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


