"""The running totals of a line and of the plant, persisted as JSON with every window.

A line's totals hold its shift and production day so far, with their OEE accumulators
(:class:`~agent.core.oee.Acc`), and what its shift report needs should the shift end
unseen. Fields added in later versions have defaults, so totals stored by an older
version load.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

import orjson

from agent.core.oee import Acc

__all__ = ["LineTotals", "PlantTotals", "YearOpening", "year_openings"]


@dataclass
class LineTotals:
    """A line's running totals, persisted by the store as JSON with each window."""

    seq: int = 0
    shift_key: str | None = None
    shift_units: int = 0
    shift_downtime_s: float = 0.0
    day: date | None = None
    day_units: int = 0
    last_window_end: datetime | None = None
    year: int | None = None
    year_units: int = 0
    #: the current shift instance (or off-shift period), to report it if it ends unseen
    shift_name: str | None = None
    shift_start: datetime | None = None
    shift_end: datetime | None = None
    shift_date: date | None = None
    shift_planned_ms: int = 0
    shift_target: float = 0.0
    #: its report has been built (the window reaching its end)
    shift_reported: bool = False
    #: times and counts of the shift instance and of the production day so far
    shift_acc: Acc = field(default_factory=Acc)
    day_acc: Acc = field(default_factory=Acc)
    #: good units a total counter has not shown yet (agent.core.oee.counts)
    count_carry: int = 0
    #: start of the first window of the shift instance and of the production day in the books
    shift_since: datetime | None = None
    day_since: datetime | None = None
    #: planned seconds in which the shift's counted units were built (the projection's K),
    #: and those of an outage not yet known to be (until the counter is read again)
    shift_counted_s: float = 0.0
    shift_pending_s: float = 0.0

    def to_json(self) -> str:
        """Compact JSON; dates and datetimes as ISO 8601."""
        return _dumps(self)

    @classmethod
    def from_json(cls, text: str) -> LineTotals:
        """The inverse of :meth:`to_json` (totals stored by an older version load too)."""
        raw = json.loads(text)
        for key in ("day", "shift_date"):
            raw[key] = _date(raw.get(key))
        for key in ("last_window_end", "shift_start", "shift_end", "shift_since", "day_since"):
            raw[key] = _datetime(raw.get(key))
        for key in ("shift_acc", "day_acc"):
            raw[key] = Acc.from_dict(raw.get(key))
        return cls(**raw)


@dataclass(frozen=True, slots=True)
class YearOpening:
    """Units an operator recorded as built in a production year before the agent counted
    them, up to and including production day ``through`` (the plant's sum of the latest
    entry per line and for the plant itself)."""

    year: int
    units: int
    through: date


def year_openings(entries: Iterable[tuple[int, str | None, int, date]]) -> dict[int, YearOpening]:
    """Each production year's opening balance from the recorded entries ``(year, line,
    units, through)`` in the order recorded: the latest entry per line (``None``: the
    plant's own, units not attributed to a line) counts, a later one corrects an earlier
    one; the year's balance sums them, through the latest of their days."""
    latest: dict[tuple[int, str | None], tuple[int, date]] = {}
    for year, line, units, through in entries:
        latest.pop((year, line), None)  # re-inserted last: the order of the latest entries
        latest[(year, line)] = (units, through)
    out: dict[int, YearOpening] = {}
    for (year, _), (units, through) in latest.items():
        have = out.get(year)
        out[year] = YearOpening(year=year, units=(have.units if have else 0) + units,
                                through=max(have.through, through) if have else through)
    return out


@dataclass
class PlantTotals:
    """The plant's running totals, persisted by the store as JSON with each window."""

    seq: int = 0
    day: date | None = None
    day_units: int = 0
    year: int | None = None
    year_units: int = 0
    last_window_end: datetime | None = None
    counted_since: datetime | None = None
    #: planned seconds of the production year in windows some line observed
    year_covered_s: float = 0.0

    def to_json(self) -> str:
        """Compact JSON; dates and datetimes as ISO 8601."""
        return _dumps(self)

    @classmethod
    def from_json(cls, text: str) -> PlantTotals:
        """The inverse of :meth:`to_json`."""
        raw = json.loads(text)
        raw["day"] = _date(raw.get("day"))
        raw["last_window_end"] = _datetime(raw.get("last_window_end"))
        raw["counted_since"] = _datetime(raw.get("counted_since"))
        return cls(**raw)


def _dumps(totals: LineTotals | PlantTotals) -> str:
    # paid per line per window: orjson writes the dataclasses (Acc included), dates and
    # datetimes (ISO 8601, as fromisoformat reads them) natively, without a Python callback
    return orjson.dumps(totals, option=orjson.OPT_SORT_KEYS).decode()


def _date(v: str | None) -> date | None:
    return None if v is None else date.fromisoformat(v)


def _datetime(v: str | None) -> datetime | None:
    return None if v is None else datetime.fromisoformat(v)
