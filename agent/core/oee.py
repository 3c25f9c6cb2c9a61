"""OEE by ISO 22400: the times and counts of a shift instance or a day, and their figures.

Times are integer milliseconds, so that every identity holds exactly:

* planned time ``P``: the shift less its breaks (the calendar), as far as the agent has
  published windows for it (all of it, unless its state store began during the shift);
  windows of an outage (``agent_offline``) count, their time is unknown
* ``P = run + minor stops + downtime by reason (planned stops included) + unknown``
* planned busy time ``PBT = P - planned stops = run + minor + downtime of unplanned and
  idle reasons + unknown``
* observed busy time ``OBT = PBT - unknown``: time the agent did not observe (it was not
  running, the gateway was off, the state was unreadable or unmapped) is neither run
  time nor downtime, so a restart never lowers the availability of a line that kept
  running; how much was observed is always published beside the figures (coverage)
* availability ``A = run / OBT``; performance ``Pf = ideal cycle x total count / run``;
  quality ``Q = good / total``, where total = good + rejects from the line's second
  counter (without one Q is 1 and ``quality_measured`` is false); ``OEE = A x Pf x Q``
* losses, in seconds of PBT: downtime of each unplanned or idle reason, minor stops,
  unknown time, speed (``run - ideal cycle x total``) and quality (``ideal cycle x
  rejects``); they add up to ``PBT - ideal cycle x good`` (the fully productive time)

A line without a state tag has no run time to measure: its A, Pf and OEE are null. The
plant's and the day's figures come from summed times and counts, never from averaged
percentages; the plant's times (A, Pf) sum the lines with a state tag, its counts (Q) all
lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from agent.contract.payloads import Loss, ReasonTime, ShiftRef, ShiftReport, ShiftTime
from agent.core.timesplit import TimeSplit

__all__ = ["COVERAGE_THRESHOLD", "Acc", "Figures", "ReportSubject", "counts", "figures", "losses", "shift_report"]

#: how many losses a shift report names
TOP_LOSSES = 5
#: a shift report whose coverage is below this share of its planned time is marked
#: ``partial``: its figures describe the part the agent observed, not the whole shift
COVERAGE_THRESHOLD = 0.9
_LOST_COUNTS = frozenset({"counter_reset", "rebaselined", "implausible_jump"})


def _plus(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


@dataclass
class Acc:
    """A line's (or the plant's) times in milliseconds and counts over a shift or a day."""

    planned_ms: int = 0
    run_ms: int = 0
    minor_ms: int = 0
    unknown_ms: int = 0
    covered_ms: int = 0
    minor_stops: int = 0
    down_ms: dict[str, int] = field(default_factory=dict)
    stops: dict[str, int] = field(default_factory=dict)
    unknown_values: dict[str, int] = field(default_factory=dict)
    good: int = 0
    rejects: int = 0
    #: ideal cycle x total units, and x good units (seconds)
    ideal_s: float = 0.0
    ideal_good_s: float = 0.0

    @property
    def total(self) -> int:
        return self.good + self.rejects

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Acc:
        return cls(**raw) if raw else cls()

    def plus_window(self, split: TimeSplit, *, covered: bool, good: int, rejects: int,
                    ideal_cycle_s: float) -> Acc:
        """This accumulator with one window added (``self`` is not changed).

        Minor-stop time that became downtime of a reason (``reclassified_ms``) moves from
        minor stops to the reason, never more than this accumulator holds as minor.
        """
        # the dicts are never changed in place: one without news is shared, not copied
        down = self.down_ms
        if split.down_ms or split.reclassified_ms:
            down = _plus(down, split.down_ms)
        minor = self.minor_ms + split.minor_ms
        for reason, ms in split.reclassified_ms.items():
            move = min(ms, minor)
            minor -= move
            down[reason] = down.get(reason, 0) + move
        total = good + rejects
        return Acc(
            planned_ms=self.planned_ms + split.planned_ms, run_ms=self.run_ms + split.run_ms,
            minor_ms=minor, unknown_ms=self.unknown_ms + split.unknown_ms,
            covered_ms=self.covered_ms + (split.planned_ms if covered else 0),
            minor_stops=self.minor_stops + split.minor_stops, down_ms=down,
            stops=_plus(self.stops, split.stops) if split.stops else self.stops,
            unknown_values=(_plus(self.unknown_values,
                                  {str(k): v for k, v in split.unknown_values.items()})
                            if split.unknown_values else self.unknown_values),
            good=self.good + good, rejects=self.rejects + rejects,
            ideal_s=self.ideal_s + ideal_cycle_s * total,
            ideal_good_s=self.ideal_good_s + ideal_cycle_s * good)

    def plus(self, other: Acc, *, times: bool = True) -> Acc:
        """The sum of two accumulators; with ``times`` False only the counts are added."""
        if not times:
            return Acc(**{**self.to_dict(), "good": self.good + other.good,
                          "rejects": self.rejects + other.rejects})
        return Acc(
            planned_ms=self.planned_ms + other.planned_ms, run_ms=self.run_ms + other.run_ms,
            minor_ms=self.minor_ms + other.minor_ms, unknown_ms=self.unknown_ms + other.unknown_ms,
            covered_ms=self.covered_ms + other.covered_ms,
            minor_stops=self.minor_stops + other.minor_stops,
            down_ms=_plus(self.down_ms, other.down_ms), stops=_plus(self.stops, other.stops),
            unknown_values=_plus(self.unknown_values, other.unknown_values),
            good=self.good + other.good, rejects=self.rejects + other.rejects,
            ideal_s=self.ideal_s + other.ideal_s, ideal_good_s=self.ideal_good_s + other.ideal_good_s)


def counts(role: str | None, good: int, second_units: int, second_events: Iterable[str],
           carry: int) -> tuple[int, int]:
    """(rejects, carry) of one window from the second counter.

    A reject counter's units are the rejects. With a total counter, ``rejects = total -
    good`` is never negative: good units the total counter has not shown yet (read a
    moment earlier than it) are owed, ``carry``, and taken from the total of the next
    windows; a total counter that lost counts (reset, re-baselined, jump) clears the debt.
    """
    if role == "rejects":
        return second_units, 0
    if role != "total":
        return 0, 0
    if _LOST_COUNTS.intersection(second_events):
        carry = 0
    spare = second_units - carry - good
    return max(0, spare), max(0, -spare)


@dataclass(frozen=True, slots=True)
class Figures:
    """The ISO 22400 times (ms) and the OEE figures of an accumulator."""

    planned_ms: int
    planned_stop_ms: int
    busy_ms: int
    run_ms: int
    minor_ms: int
    down_ms: int            # unplanned and idle reasons
    unknown_ms: int         # including planned time in no published window
    covered_ms: int
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    quality_measured: bool

    @property
    def observed_busy_ms(self) -> int:
        """Planned busy time the agent observed: availability's denominator."""
        return self.busy_ms - self.unknown_ms


def category(categories: Mapping[str, str], reason: str) -> str:
    """A reason's category; a reason no longer configured counts as unplanned."""
    return categories.get(reason, "unplanned")


def figures(acc: Acc, categories: Mapping[str, str], *,
            time_measured: bool = True, quality_measured: bool = False,
            quality_counted: bool | None = None) -> Figures:
    """The figures of ``acc`` (a shift instance or a day, so far or whole).

    ``quality_counted`` (default ``quality_measured``): quality is good / total; the plant
    counts it when some of its lines measure it, but says measured only when all do.
    """
    counted = quality_measured if quality_counted is None else quality_counted
    planned = acc.planned_ms
    unknown = acc.unknown_ms
    planned_stop = sum(ms for r, ms in acc.down_ms.items() if category(categories, r) == "planned")
    down = sum(acc.down_ms.values()) - planned_stop
    busy = planned - planned_stop
    observed = busy - unknown  # unobserved time is neither run time nor downtime
    run_s = acc.run_ms / 1000
    availability = acc.run_ms / observed if time_measured and observed > 0 else None
    performance = acc.ideal_s / run_s if time_measured and acc.run_ms > 0 else None
    quality = (acc.good / acc.total if acc.total > 0 else None) if counted else 1.0
    oee = None
    if availability is not None and performance is not None and quality is not None:
        oee = availability * performance * quality
    return Figures(planned_ms=planned, planned_stop_ms=planned_stop, busy_ms=busy,
                   run_ms=acc.run_ms, minor_ms=acc.minor_ms, down_ms=down, unknown_ms=unknown,
                   covered_ms=acc.covered_ms, availability=availability, performance=performance,
                   quality=quality, oee=oee, quality_measured=quality_measured)


LossKind = Literal["downtime", "minor_stops", "unknown", "speed", "quality"]


def losses(acc: Acc, fig: Figures, categories: Mapping[str, str], *,
           time_measured: bool = True) -> list[tuple[str, LossKind, float]]:
    """Every loss of planned busy time in seconds (cause, kind, seconds), largest first.

    They add up to ``busy - ideal cycle x good`` (speed may be negative: a line faster
    than its ideal cycle).
    """
    out: list[tuple[str, LossKind, float]] = []
    if time_measured:
        out += [(r, "downtime", ms / 1000) for r, ms in acc.down_ms.items()
                if category(categories, r) != "planned"]
        out.append(("minor_stops", "minor_stops", acc.minor_ms / 1000))
        out.append(("unknown", "unknown", fig.unknown_ms / 1000))
        out.append(("speed", "speed", fig.run_ms / 1000 - acc.ideal_s))
    else:
        out.append(("unknown", "unknown", fig.busy_ms / 1000))
    out.append(("quality", "quality", acc.ideal_s - acc.ideal_good_s))
    return sorted(out, key=lambda x: (-x[2], x[0]))


def _s(ms: float) -> float:
    return round(ms / 1000, 3)


def _ratio(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


@dataclass(frozen=True, slots=True)
class ReportSubject:
    """Whose report it is: a line (``line`` and ``product``) or the plant (``lines``).

    ``quality_counted``: some of its counts come with rejects (the plant: some line has a
    second counter); ``quality_measured``: all do.
    """

    line: str | None
    product: str | None
    lines: list[str] | None
    ideal_cycle_s: float | None
    time_measured: bool
    quality_measured: bool
    quality_counted: bool | None = None

    @property
    def counted(self) -> bool:
        return self.quality_measured if self.quality_counted is None else self.quality_counted


def shift_report(subject: ReportSubject, *, site: str, epoch: int, ref: ShiftRef, acc: Acc,
                 calendar_ms: int, target: float, categories: Mapping[str, str],
                 counted_since: datetime | None = None) -> ShiftReport:
    """The ``plantfloor.shift/1`` payload of a shift instance that ended; ``calendar_ms`` is
    its whole planned time by the calendar."""
    fig = figures(acc, categories, time_measured=subject.time_measured,
                  quality_measured=subject.quality_measured, quality_counted=subject.counted)
    top = [Loss(cause=c, kind=k, seconds=round(s, 3))
           for c, k, s in losses(acc, fig, categories, time_measured=subject.time_measured)
           if s > 0][:TOP_LOSSES]
    coverage = round(min(1.0, fig.covered_ms / calendar_ms), 4) if calendar_ms else 1.0
    downtime = {r: ReasonTime(category=category(categories, r),
                              seconds=_s(ms), stops=acc.stops.get(r, 0))
                for r, ms in sorted(acc.down_ms.items())}
    return ShiftReport(
        site=site, line=subject.line, product=subject.product, lines=subject.lines, epoch=epoch,
        shift=ref, units=acc.good, rejects=acc.rejects if subject.counted else None,
        total=acc.total, target=round(target, 3),
        attainment=round(acc.good / target, 4) if target > 0 else None,
        time=ShiftTime(calendar_s=_s(calendar_ms), planned_s=_s(fig.planned_ms),
                       planned_stop_s=_s(fig.planned_stop_ms),
                       planned_busy_s=_s(fig.busy_ms), run_s=_s(fig.run_ms),
                       minor_stop_s=_s(fig.minor_ms), down_s=_s(fig.down_ms),
                       unknown_s=_s(fig.unknown_ms), covered_s=_s(fig.covered_ms),
                       ideal_run_s=round(acc.ideal_s, 3),
                       fully_productive_s=round(acc.ideal_good_s, 3)),
        minor_stops=acc.minor_stops, downtime=downtime,
        unknown_values={k: _s(v) for k, v in sorted(acc.unknown_values.items())},
        ideal_cycle_s=subject.ideal_cycle_s,
        availability=_ratio(fig.availability), performance=_ratio(fig.performance),
        quality=_ratio(fig.quality), oee=_ratio(fig.oee),
        quality_measured=subject.quality_measured, top_losses=top, coverage=coverage,
        partial=coverage < COVERAGE_THRESHOLD, counted_since=counted_since)
