"""From a received message to the row that stores it (pure: no I/O, times from the payload).

A line window becomes a :class:`WindowRow`, a line's shift report a :class:`ShiftRow`,
anything else a :class:`Rejected` with the reason: a message that is not valid JSON of
the payload's schema, one outside the physical bounds (:mod:`agent.rollup.bounds`), or a
line that the roll-up's config does not list under the gateway whose root it came on.
``build`` never raises.

A window is attributed to the site window (``period_start``) that contains its
``window_start`` on the site's grid (``publish.interval_s`` from local midnight, the grid
every gateway uses), and to the production date and shift of the site's calendar at its
``window_start``: "attribute a window to its window_start, not to the time it arrived"
(docs/mqtt.md). A window cut short by an agent's stop and its continuation share a site
window; a window that spans several (an agent's gap fill after a very long stop) counts
in the one it starts in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime

from pydantic import ValidationError

from agent.core.calendar import Period, ShiftCalendar
from agent.rollup.bounds import max_units, out_of_bounds
from agent.rollup.config import RollupConfig
from agent.rollup.payloads import IncomingShiftReport, IncomingWindow

__all__ = ["Rejected", "RowBuilder", "ShiftRow", "WindowRow"]

log = logging.getLogger("plantfloor.rollup.rows")

_CACHE_MAX = 8192
_BIGINT = 2**63


@dataclass(frozen=True, slots=True)
class WindowRow:
    """One line window as stored in ``line_window`` (its identity: site, line, epoch, seq)."""

    site: str
    line: str
    epoch: int
    seq: int
    gateway: str
    window_start: datetime
    window_end: datetime
    period_start: datetime
    production_date: date
    shift_name: str | None
    shift_start: datetime
    units: int
    day_target: float
    quality: str
    historical: bool
    payload: str
    topic: str = ""          # where it arrived (not stored: the gateway and line say it)


@dataclass(frozen=True, slots=True)
class ShiftRow:
    """One line's shift report as stored in ``shift_report`` (identity: site, line, epoch,
    shift_start)."""

    site: str
    line: str
    epoch: int
    shift_start: datetime
    shift_end: datetime
    shift_name: str
    production_date: date
    gateway: str
    units: int
    payload: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that is not a line window this site can store (kept in ``rejected_message``)."""

    gateway: str | None
    topic: str
    payload: bytes
    error: str


class RowBuilder:
    """Turns ``(topic, payload)`` into a :class:`WindowRow` or a :class:`Rejected`."""

    def __init__(self, cfg: RollupConfig, calendar: ShiftCalendar) -> None:
        self.cfg = cfg
        self.calendar = calendar
        self.interval = cfg.publish.interval_s
        self._gateway_of_root = {gw.topic_root: gw.id for gw in cfg.gateways}
        self._lines_of = {gw.id: frozenset(gw.lines) for gw in cfg.gateways}
        self._rate_of = {gw.id: gw.max_rate_per_hour for gw in cfg.gateways}
        self._cache: dict[datetime, tuple[tuple[datetime, datetime], Period]] = {}
        self._warned: set[tuple[str, str]] = set()

    def build(self, topic: str, payload: bytes) -> WindowRow | ShiftRow | Rejected:
        """The row of one message, or why it cannot be stored: never raises for any input
        (a message is data; a bug it triggers makes it a rejection, not a stopped site)."""
        try:
            return self._build(topic, payload)
        except Exception as exc:  # a message must never stop the service: it becomes a rejection
            log.exception("a message on %s could not be read", topic[:200])
            root, _, _ = topic.rpartition("/lines/")
            return Rejected(self._gateway_of_root.get(root), topic, payload,
                            f"could not be read: {type(exc).__name__}: {exc}"[:500])

    def _build(self, topic: str, payload: bytes) -> WindowRow | ShiftRow | Rejected:
        root, _, rest = topic.rpartition("/lines/")
        topic_line, _, tail = rest.partition("/")
        gateway = self._gateway_of_root.get(root)
        if gateway is None or tail not in ("output", "shift") or not topic_line:
            return Rejected(gateway, topic, payload, "not a configured gateway's R/lines/<line>/output "
                                                     "or R/lines/<line>/shift topic")
        if tail == "shift":
            return self._shift(gateway, topic_line, topic, payload)
        try:
            # fields a newer agent adds, at any depth, are ignored (docs/mqtt.md: consumers must)
            w = IncomingWindow.model_validate_json(payload, extra="ignore")
        except ValidationError as exc:
            return Rejected(gateway, topic, payload, _first_error(exc))
        bad = out_of_bounds(w)
        if bad is not None:
            return Rejected(gateway, topic, payload, bad)
        if w.line != topic_line:
            return Rejected(gateway, topic, payload, f"the payload's line {w.line!r} is not the topic's {topic_line!r}")
        if w.line not in self._lines_of[gateway]:
            # another gateway's line (or none): counting it would let one gateway's root write,
            # and pre-empt by its key, the windows of a line it does not have
            return Rejected(gateway, topic, payload, f"line {w.line!r} is not a line of gateway {gateway!r} "
                                                     "in the roll-up's config (gateways.*.lines)")
        if w.window_end <= w.window_start:
            return Rejected(gateway, topic, payload, "window_end is not after window_start")
        if max(w.epoch, w.seq, w.units) >= _BIGINT:
            return Rejected(gateway, topic, payload, "epoch, seq or units beyond a 64-bit integer")
        limit = max_units(self._rate_of[gateway], w.window_start, w.window_end)
        if w.units > limit:
            return Rejected(gateway, topic, payload, f"units {w.units} exceed the {limit} that line {w.line!r} "
                                                     "could build in the window (gateways.*.max_rate_per_hour)")
        (period_start, period_end), shift = self._calendar_of(w.window_start)
        self._notice(gateway, w, period_end)
        return WindowRow(
            site=w.site, line=w.line, epoch=w.epoch, seq=w.seq, gateway=gateway,
            window_start=w.window_start, window_end=w.window_end, period_start=period_start,
            production_date=shift.production_date, shift_name=shift.name, shift_start=shift.start,
            units=w.units, day_target=w.day.target, quality=w.quality, historical=w.historical,
            payload=payload.decode("utf-8"), topic=topic)

    def _shift(self, gateway: str, topic_line: str, topic: str, payload: bytes) -> ShiftRow | Rejected:
        try:
            r = IncomingShiftReport.model_validate_json(payload, extra="ignore")
        except ValidationError as exc:
            return Rejected(gateway, topic, payload, _first_error(exc))
        bad = out_of_bounds(r)
        if bad is not None:
            return Rejected(gateway, topic, payload, bad)
        if r.line != topic_line:
            return Rejected(gateway, topic, payload, f"the report's line {r.line!r} is not the topic's {topic_line!r}")
        if r.line not in self._lines_of[gateway]:
            return Rejected(gateway, topic, payload, f"line {r.line!r} is not a line of gateway {gateway!r} "
                                                     "in the roll-up's config (gateways.*.lines)")
        if r.shift.end <= r.shift.start:
            return Rejected(gateway, topic, payload, "shift.end is not after shift.start")
        if max(r.epoch, r.units) >= _BIGINT:
            return Rejected(gateway, topic, payload, "epoch or units beyond a 64-bit integer")
        limit = max_units(self._rate_of[gateway], r.shift.start, r.shift.end)
        if r.units > limit:
            return Rejected(gateway, topic, payload, f"units {r.units} exceed the {limit} that line {r.line!r} "
                                                     "could build in the shift (gateways.*.max_rate_per_hour)")
        return ShiftRow(site=r.site, line=topic_line, epoch=r.epoch, shift_start=r.shift.start,
                        shift_end=r.shift.end, shift_name=r.shift.name, production_date=r.shift.date,
                        gateway=gateway, units=r.units, payload=payload.decode("utf-8"))

    def _calendar_of(self, t: datetime) -> tuple[tuple[datetime, datetime], Period]:
        """The site window and the shift (or off-shift period) containing ``t``; cached,
        since the lines of a site share their window starts."""
        got = self._cache.get(t)
        if got is None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            got = (self.calendar.window_bounds(t, self.interval), self.calendar.period_at(t))
            self._cache[t] = got
        return got

    def _notice(self, gateway: str, w: IncomingWindow, period_end: datetime) -> None:
        """Say once per line what the operator should know (the row is stored all the same)."""
        notes: list[tuple[str, str]] = []
        if w.site != self.cfg.site:
            notes.append(("site", f"line {w.line!r} of gateway {gateway!r} says site {w.site!r}, not "
                                  f"{self.cfg.site!r}: stored, but not in the site's figure"))
        if w.window_end > period_end and "agent_offline" not in w.events:
            notes.append(("grid", f"line {w.line!r} of gateway {gateway!r} has windows longer than the site's "
                                  f"{self.interval} s: its publish.interval_s must equal the site's"))
        for kind, text in notes:
            if (kind, w.line) not in self._warned:
                self._warned.add((kind, w.line))
                log.warning("%s", text)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid"))
    return f"{where}: {msg}" if where else msg
