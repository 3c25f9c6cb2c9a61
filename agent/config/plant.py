"""Windows, storage, the plant's capacity, the shift calendar and the reasons of downtime."""

from __future__ import annotations

import itertools
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from agent.config.types import HHMM, Identifier, ReasonCategory, Weekday, _Model, _to_time

# --- windows, storage, plant, shifts ---------------------------------------------------

class PublishConfig(_Model):
    interval_s: int = Field(60, ge=1, le=3600, description="window length in seconds; must divide 3600; windows align to wall-clock multiples from local midnight")
    status_interval_s: int = Field(60, ge=1, le=3600, description="how often R/status is republished")
    replay_per_s: int = Field(3000, ge=0, le=1_000_000, description="at most this many backlog records a second while replaying the outbox (live windows go first and are not counted), so that a replay leaves the broker and the subscribers room for the live windows; 0: as fast as the broker acknowledges")

    @field_validator("interval_s")
    @classmethod
    def _divides_day(cls, v: int) -> int:
        if 3600 % v:
            raise ValueError(f"{v} does not divide an hour (3600 s) into whole windows")
        return v


class StorageConfig(_Model):
    path: Path = Field(Path("/var/lib/plantfloor/state.db"), description="SQLite file: durable outbox and counter state")
    max_mb: float = Field(512, gt=0, description="bound of the outbox; the oldest windows are dropped first beyond it")
    history_days: int = Field(35, ge=1, le=3660, description="days of per line and hour figures kept for the board (plantfloor board)")
    max_outage_days: float = Field(30, gt=0, description=(
        "after a reboot, a wall clock further than this past the last stored counter reading "
        "(or behind it) is not trusted: the first delta is held (event clock_unsynced) until "
        "the clock is plausible or seen synchronised"))


class PlantConfig(_Model):
    capacity_per_year: int = Field(..., gt=0, description="vehicles per year the plant can build")
    planned_utilization: float = Field(..., gt=0, le=1, description="share of capacity planned to be used (0..1]")
    holidays: tuple[date, ...] = Field((), description="dates with no production (plant calendar)")


class Break(_Model):
    start: HHMM
    end: HHMM


class Shift(_Model):
    """A shift: planned production time is start..end less breaks; it may cross midnight."""

    name: Identifier
    start: HHMM
    end: HHMM = Field(..., description='"00:00" means midnight; an end before the start crosses midnight')
    breaks: tuple[Break, ...] = Field((), description="planned breaks inside the shift (no target)")
    days: tuple[Weekday, ...] = Field(("mon", "tue", "wed", "thu", "fri"), description="weekdays on which the shift starts")

    @model_validator(mode="after")
    def _check(self) -> Shift:
        if self.start == self.end:
            raise ValueError("a shift cannot start and end at the same time")
        span = self.span_minutes()
        for b in self.breaks:
            bs, be = self.offset_minutes(b.start), self.offset_minutes(b.end)
            if not (0 <= bs < be <= span):
                raise ValueError(f"break {b.start}-{b.end} is not inside the shift {self.start}-{self.end}")
        offs = sorted((self.offset_minutes(b.start), self.offset_minutes(b.end)) for b in self.breaks)
        for (_, e1), (s2, _) in itertools.pairwise(offs):
            if s2 < e1:
                raise ValueError("breaks overlap")
        return self

    def _minutes(self, hhmm: str) -> int:
        t = _to_time(hhmm)
        return t.hour * 60 + t.minute

    def span_minutes(self) -> int:
        """Length of the shift in minutes (wall-clock, before DST)."""
        return (self._minutes(self.end) - self._minutes(self.start)) % 1440 or 1440

    def offset_minutes(self, hhmm: str) -> int:
        """Minutes from the shift's start to a time of day inside it."""
        return (self._minutes(hhmm) - self._minutes(self.start)) % 1440

    def planned_minutes(self) -> int:
        return self.span_minutes() - sum(
            self.offset_minutes(b.end) - self.offset_minutes(b.start) for b in self.breaks)


# --- downtime reasons -------------------------------------------------------------------

class ReasonConfig(_Model):
    """Why a line is not running: the reason's OEE category and the line state it reports."""

    category: ReasonCategory = Field(
        ..., description="planned: a planned stop (changeover, maintenance), not part of planned "
                         "busy time; unplanned: downtime that lowers availability (fault, blocked, "
                         "starved); idle: the line could run but has nothing to do (no orders), "
                         "downtime too")
    state: Literal["stopped", "faulted"] = Field(
        "stopped", description="the line state reported while in this reason (state topic, "
                               "state_seconds): stopped or faulted")


#: reasons every configuration has; downtime.reasons may redefine their category
BUILTIN_REASONS: dict[str, ReasonConfig] = {
    "stopped": ReasonConfig(category="unplanned", state="stopped"),
    "faulted": ReasonConfig(category="unplanned", state="faulted"),
}


class DowntimeConfig(_Model):
    """Reason codes of stops and the minor-stop threshold (docs/mqtt.md, "The time model")."""

    minor_stop_s: float = Field(
        60.0, ge=0, le=3600,
        description="a stop shorter than this is a minor stop (a performance loss), not downtime "
                    "of its reason; a stop reaching it is downtime of its reason from its start; "
                    "0 makes every stop downtime")
    reasons: dict[Identifier, ReasonConfig] = Field(
        default_factory=dict,
        description="reasons a state map may name besides the built-in stopped and faulted "
                    "(both unplanned), e.g. changeover: {category: planned}")

    @field_validator("reasons")
    @classmethod
    def _not_states(cls, v: dict[str, ReasonConfig]) -> dict[str, ReasonConfig]:
        for name in v:
            if name in ("running", "unknown"):
                raise ValueError(f"{name!r} is a line state, not a reason of a stop")
        return v

    def all_reasons(self) -> dict[str, ReasonConfig]:
        """The built-in reasons and the configured ones."""
        return {**BUILTIN_REASONS, **self.reasons}
