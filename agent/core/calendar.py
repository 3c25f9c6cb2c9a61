"""The plant calendar: publish windows, shift instances, breaks, planned time, production day.

Shift times are local wall-clock times in the site time zone. Each is resolved on the
right local date with zoneinfo, and everything after that works in absolute time (UTC),
so a night shift across a DST change is an hour shorter or longer in real seconds.
Local times that do not exist (the spring-forward gap) resolve to the instant the gap
ends; ambiguous ones (fall-back) resolve to their first occurrence. That mapping never
goes backwards, so no interval is ever negative; an interval DST leaves empty is dropped.

Every datetime returned is aware and in UTC (subtracting two aware datetimes that share a
``ZoneInfo`` gives wall-clock, not elapsed, time; UTC avoids that trap).

Definitions:

* A shift instance starts on each of the shift's ``days`` that is not a plant holiday;
  its planned production intervals are the shift less its breaks.
* Between two shift instances lies an off-shift :class:`Period` (``name`` None). Where no
  shift instance exists within ``SEARCH_DAYS`` either side, off-shift periods are cut at
  local midnights.
* The production date of a shift instance is the local date it starts; of an off-shift
  period, the local calendar date of its start. The production year is the year of the
  production date.
* Windows are aligned to multiples of ``interval_s`` elapsed from local midnight and cut at
  the next local midnight, so a window never spans two local dates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from agent.config import Config, Shift

__all__ = ["SEARCH_DAYS", "Interval", "Period", "ShiftCalendar"]

Interval = tuple[datetime, datetime]
#: how far period_at looks for the neighbouring shift instances of an off-shift period
SEARCH_DAYS = 400
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@functools.lru_cache(maxsize=64)
def _period_key(name: str | None, start: datetime) -> str:
    # asked for by every line every window: formatted once per period
    return f"{name or 'off'}@{start.isoformat()}"


@dataclass(frozen=True, slots=True)
class Period:
    """A shift instance, or the off-shift gap between two (``name`` None)."""

    name: str | None
    start: datetime
    end: datetime
    production_date: date
    planned: tuple[Interval, ...] = ()

    @property
    def key(self) -> str:
        """Stable identity of this period (shift totals reset when it changes)."""
        return _period_key(self.name, self.start)

    @property
    def planned_seconds(self) -> float:
        """Planned production seconds of the whole period."""
        return sum((b - a).total_seconds() for a, b in self.planned)

    def planned_before(self, t: datetime) -> float:
        """Planned production seconds of this period before ``t``."""
        return _overlap(self.planned, self.start, _aware(t))


class ShiftCalendar:
    """Shift instances and planned time of one site; pure and cached."""

    def __init__(self, shifts: Sequence[Shift], tz: ZoneInfo, holidays: Collection[date] = ()) -> None:
        self.shifts = tuple(shifts)
        self.tz = tz
        self.holidays = frozenset(holidays)
        self._by_date: dict[date, tuple[Period, ...]] = {}
        self._year_total: dict[int, float] = {}
        self._whole_days: dict[tuple[int, date], float] = {}

    @classmethod
    def from_config(cls, cfg: Config) -> ShiftCalendar:
        """The calendar of a configuration: its shifts, time zone and plant holidays."""
        return cls(cfg.shifts, cfg.tz, cfg.plant.holidays)

    # --- local time -----------------------------------------------------------------

    def resolve(self, d: date, minutes: int) -> datetime:
        """The instant (UTC) of local wall time ``minutes`` after midnight starting date ``d``.

        ``minutes`` may exceed a day (a shift ending after midnight). A time in a DST gap
        maps to the end of the gap; an ambiguous time to its first occurrence.
        """
        d = d + timedelta(days=minutes // 1440)
        m = minutes % 1440
        wall = datetime.combine(d, time(m // 60, m % 60))
        early = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        if early.astimezone(self.tz).replace(tzinfo=None) == wall:
            return early
        # a gap: fold=0 reads it with the offset before the change (too late), fold=1
        # with the offset after it (too early); the gap ends at the offset change between
        late = early
        early = wall.replace(tzinfo=self.tz, fold=1).astimezone(UTC)
        early, late = min(early, late), max(early, late)
        off = late.astimezone(self.tz).utcoffset()
        while (late - early) > timedelta(seconds=1):
            mid = early + (late - early) / 2
            if mid.astimezone(self.tz).utcoffset() == off:
                late = mid
            else:
                early = mid
        return late.replace(microsecond=0) if late.microsecond else late

    def local_date(self, t: datetime) -> date:
        """The local calendar date of an instant."""
        return _aware(t).astimezone(self.tz).date()

    def midnight(self, d: date) -> datetime:
        """The instant local date ``d`` begins."""
        return self.resolve(d, 0)

    def window_bounds(self, t: datetime, interval_s: int) -> tuple[datetime, datetime]:
        """The publish window containing ``t``: ``[start, end)`` in UTC."""
        if interval_s <= 0 or 3600 % interval_s:
            raise ValueError(f"interval_s must divide 3600, not {interval_s}")
        t = _aware(t).astimezone(UTC)
        d = self.local_date(t)
        day_start = self.midnight(d)
        while day_start > t:  # an ambiguous midnight read as its first occurrence
            d -= timedelta(days=1)
            day_start = self.midnight(d)
        day_end = self.midnight(d + timedelta(days=1))
        while day_end <= t:
            d += timedelta(days=1)
            day_start, day_end = day_end, self.midnight(d + timedelta(days=1))
        k = int((t - day_start).total_seconds() // interval_s)
        start = day_start + timedelta(seconds=k * interval_s)
        return start, min(start + timedelta(seconds=interval_s), day_end)

    # --- shift instances ----------------------------------------------------------------

    def shifts_on(self, d: date) -> tuple[Period, ...]:
        """Shift instances starting on local date ``d`` (none on a holiday), by start."""
        got = self._by_date.get(d)
        if got is None:
            got = tuple(sorted(self._build(d), key=lambda p: p.start))
            self._by_date[d] = got
        return got

    def _build(self, d: date) -> Iterable[Period]:
        if d in self.holidays:
            return
        day = _WEEKDAYS[d.weekday()]
        for s in self.shifts:
            if day not in s.days:
                continue
            first = _minutes(s.start)
            start = self.resolve(d, first)
            end = self.resolve(d, first + s.span_minutes())
            if end <= start:
                continue
            breaks = [(self.resolve(d, first + s.offset_minutes(b.start)),
                       self.resolve(d, first + s.offset_minutes(b.end))) for b in s.breaks]
            yield Period(s.name, start, end, d, _subtract((start, end), breaks))

    def _instances(self, first: date, last: date) -> Iterable[Period]:
        d = first
        while d <= last:
            yield from self.shifts_on(d)
            d += timedelta(days=1)

    def period_at(self, t: datetime) -> Period:
        """The shift instance containing ``t``, or the off-shift period around it."""
        t = _aware(t).astimezone(UTC)
        ld = self.local_date(t)
        for p in self._instances(ld - timedelta(days=2), ld):
            if p.start <= t < p.end:
                return p
        prev_end: datetime | None = None
        for back in range(SEARCH_DAYS + 1):
            ends = [p.end for p in self.shifts_on(ld - timedelta(days=back)) if p.end <= t]
            if ends:
                prev_end = max(ends)
                break
        next_start: datetime | None = None
        for ahead in range(SEARCH_DAYS + 1):
            starts = [p.start for p in self.shifts_on(ld + timedelta(days=ahead)) if p.start > t]
            if starts:
                next_start = min(starts)
                break
        start = prev_end if prev_end is not None else self.midnight(ld)
        end = next_start if next_start is not None else self.midnight(ld + timedelta(days=1))
        return Period(None, start, end, self.local_date(start))

    def production_date(self, t: datetime) -> date:
        """The production date of the period containing ``t``."""
        return self.period_at(t).production_date

    # --- planned time -------------------------------------------------------------------

    def planned_seconds(self, start: datetime, end: datetime) -> float:
        """Real seconds of planned production within ``[start, end)``."""
        start, end = _aware(start).astimezone(UTC), _aware(end).astimezone(UTC)
        if end <= start:
            return 0.0
        total = 0.0
        for p in self._instances(self.local_date(start) - timedelta(days=2), self.local_date(end)):
            total += _overlap(p.planned, start, end)
        return total

    def day_planned_seconds(self, d: date) -> float:
        """Planned seconds of every shift instance starting on production date ``d``."""
        return sum(p.planned_seconds for p in self.shifts_on(d))

    def year_planned_seconds(self, year: int) -> float:
        """Planned seconds of every shift instance of production year ``year`` (cached)."""
        total = self._year_total.get(year)
        if total is None:
            total = sum(p.planned_seconds for p in self._instances(date(year, 1, 1), date(year, 12, 31)))
            self._year_total[year] = total
        return total

    def year_planned_share_seconds(self, year: int, share: Callable[[date], float]) -> float:
        """Planned seconds of production year ``year``, each shift instance's weighted by
        ``share`` of its production date (a line's own calendar: 0 before its start or on
        a day not planned, a ramp-up's share)."""
        return sum(p.planned_seconds * share(p.production_date)
                   for p in self._instances(date(year, 1, 1), date(year, 12, 31)))

    def year_planned_elapsed(self, t: datetime, year: int | None = None) -> float:
        """Planned seconds of a production year before ``t``.

        ``year`` defaults to the production year containing ``t``; for another year the
        result is 0 before it begins and its whole planned time after it ends.
        """
        t = _aware(t).astimezone(UTC)
        pd = self.production_date(t)
        if year is None:
            year = pd.year
        if year < pd.year:
            return self.year_planned_seconds(year)
        if year > pd.year:
            return 0.0
        # instances of earlier dates ended before t (shifts never overlap), except the
        # ones of the last two days, which are clipped exactly
        recent = max(date(year, 1, 1), pd - timedelta(days=2))
        total = self._whole_days.get((year, recent))
        if total is None:
            # asked for every window: the whole days so far are summed once a day
            total = sum(p.planned_seconds
                        for p in self._instances(date(year, 1, 1), recent - timedelta(days=1)))
            if len(self._whole_days) >= 16:
                self._whole_days.clear()
            self._whole_days[(year, recent)] = total
        end = min(pd + timedelta(days=1), date(year, 12, 31))
        for p in self._instances(recent, end):
            if p.production_date.year == year:
                total += _overlap(p.planned, p.start, t)
        return total


def _aware(t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{t!r} is a naive datetime; the calendar needs aware datetimes")
    return t


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def _overlap(intervals: Iterable[Interval], start: datetime, end: datetime) -> float:
    total = 0.0
    for a, b in intervals:
        lo, hi = max(a, start), min(b, end)
        if hi > lo:
            total += (hi - lo).total_seconds()
    return total


def _subtract(span: Interval, holes: Iterable[Interval]) -> tuple[Interval, ...]:
    """``span`` less ``holes``, as sorted non-empty intervals."""
    out: list[Interval] = []
    cur = span[0]
    for a, b in sorted(holes):
        a, b = max(a, span[0]), min(b, span[1])
        if b <= a:
            continue
        if a > cur:
            out.append((cur, a))
        cur = max(cur, b)
    if span[1] > cur:
        out.append((cur, span[1]))
    return tuple(out)
