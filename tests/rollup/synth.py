"""Synthetic line windows, as an agent publishes them, for tests that need no PLC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.contract.payloads import (
    DayTotals,
    LineOutput,
    Loss,
    ReasonTime,
    ShiftRef,
    ShiftReport,
    ShiftTime,
    ShiftTotals,
    StateSeconds,
    encode,
)

__all__ = ["grid_start", "shift_report", "window"]


def grid_start(now: datetime | None = None, interval_s: int = 1) -> datetime:
    """The start of the site window containing ``now`` (UTC grid; Asia/Tokyo has no DST)."""
    t = (now or datetime.now(UTC)).replace(microsecond=0)
    return t - timedelta(seconds=int(t.timestamp()) % interval_s)


def window(line: str, seq: int, start: datetime, *, units: int = 1, epoch: int = 1000, interval_s: int = 1,
           end: datetime | None = None, site: str = "test", quality: str = "good", day_target: float = 100.0,
           historical: bool = False, events: tuple[str, ...] = ()) -> bytes:
    """The JSON of one ``R/lines/<line>/output`` window."""
    end = end or start + timedelta(seconds=interval_s)
    return encode(LineOutput(
        site=site, line=line, product="P", epoch=epoch, seq=seq, window_start=start, window_end=end,
        units=units, rate_per_hour=units * 3600 / interval_s, target_per_hour=3600.0, attainment=None,
        shift=ShiftTotals(name="a", units=units, target=43200.0, projected=0.0, downtime_s=0.0),
        day=DayTotals(date=start.date(), units=units, target=day_target), state_seconds=StateSeconds(),
        quality=quality,  # type: ignore[arg-type]
        events=list(events), historical=historical))  # type: ignore[arg-type]


def shift_report(line: str, name: str, start: datetime, end: datetime, *, units: int, epoch: int = 1000,
                 run_s: float = 3000.0, site: str = "test") -> bytes:
    """The JSON of one ``R/lines/<line>/shift`` report (no rejects counter, one downtime reason)."""
    planned = (end - start).total_seconds()
    down = planned - run_s
    ideal = units * 30.0
    return encode(ShiftReport(
        site=site, line=line, product="P", epoch=epoch,
        shift=ShiftRef(name=name, start=start, end=end, date=(start + timedelta(hours=9)).date()),
        units=units, rejects=None, total=units, target=100.0, attainment=units / 100.0,
        time=ShiftTime.model_validate({
            "planned_s": planned, "planned_stop_s": 0.0, "planned_busy_s": planned, "run_s": run_s,
            "minor_stop_s": 0.0, "down_s": down, "unknown_s": 0.0, "covered_s": planned, "ideal_run_s": ideal,
            "fully_productive_s": ideal,
            # fields the OEE work adds as it goes: the whole shift was planned and seen
            **{k: planned for k in ("calendar_s",) if k in ShiftTime.model_fields}}),
        minor_stops=0, downtime={"breakdown": ReasonTime(category="unplanned", seconds=down, stops=1)},
        ideal_cycle_s=30.0, availability=round(run_s / planned, 4), performance=round(ideal / run_s, 4),
        quality=1.0, oee=round(run_s / planned * ideal / run_s, 4), quality_measured=False,
        top_losses=[Loss(cause="breakdown", kind="downtime", seconds=down)], coverage=1.0))
