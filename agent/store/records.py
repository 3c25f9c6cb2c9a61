"""What the state store persists besides the outbox's bytes: a window's new outbox records,
the stored records, each line's counter memory and totals, the shift reports, and what
:meth:`agent.store.Store.load` returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

__all__ = ["LineState", "NewRecord", "OutboxRecord", "StoredReport", "StoredState",
           "iso", "opt_dt", "opt_float", "opt_int", "opt_iso", "opt_str", "opt_text"]


@dataclass(frozen=True)
class NewRecord:
    """An MQTT message to be kept until the broker acknowledges it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    line: str | None
    seq: int | None
    window_end: datetime
    #: the output format that encoded it (agent.outputs), which also gives its wire bytes
    format: str = "json"


@dataclass(frozen=True, kw_only=True)
class OutboxRecord(NewRecord):
    """A record as stored, with its outbox id (ascending in commit order)."""

    id: int


@dataclass(frozen=True)
class LineState:
    """A line's persisted state: the pipeline's totals (opaque JSON) and the counter's memory.

    ``baseline`` belongs to the counter named by ``identity`` and is bounded from
    ``anchor`` (the wall-clock time, and the monotonic time on the boot ``boot_id``);
    ``last_*`` is the last good reading; ``rebaseline`` is a pending re-baseline's reason.
    ``second_json`` is the same for the line's total or reject counter, as JSON (see
    :mod:`agent.runtime.lines`), or None.
    """

    line: str
    totals_json: str
    identity: str | None = None
    state_identity: str | None = None
    baseline: int | None = None
    modulus: int | None = None
    anchor_wall: datetime | None = None
    anchor_mono: float | None = None
    last_wall: datetime | None = None
    last_mono: float | None = None
    boot_id: str | None = None
    rebaseline: str | None = None
    second_json: str | None = None

    def row(self) -> tuple[object, ...]:
        return (self.line, self.totals_json, self.identity, self.state_identity,
                opt_text(self.baseline), opt_text(self.modulus), opt_iso(self.anchor_wall),
                self.anchor_mono, opt_iso(self.last_wall), self.last_mono, self.boot_id,
                self.rebaseline, self.second_json)

    @classmethod
    def from_row(cls, row: tuple[object, ...]) -> LineState:
        (line, totals, identity, state_identity, baseline, modulus, anchor_wall, anchor_mono,
         last_wall, last_mono, boot_id, rebaseline, second_json) = row
        return cls(str(line), str(totals), opt_str(identity), opt_str(state_identity),
                   opt_int(baseline), opt_int(modulus), opt_dt(anchor_wall),
                   opt_float(anchor_mono), opt_dt(last_wall), opt_float(last_mono),
                   opt_str(boot_id), opt_str(rebaseline), opt_str(second_json))


@dataclass(frozen=True)
class StoredReport:
    """A shift instance's report as published, kept for ``plantfloor report``.

    ``line`` is '' for the plant's report; ``key`` names the shift instance (name@start).
    """

    line: str
    key: str
    date: date
    shift: str
    start: datetime
    payload: bytes

    def row(self) -> tuple[object, ...]:
        return (self.line, self.key, self.date.isoformat(), self.shift, iso(self.start),
                self.payload.decode())


@dataclass(frozen=True)
class StoredState:
    """What :meth:`Store.load` found.

    ``epoch`` names the file's lifetime; ``created`` is true when the file was created by
    this open (first start, or a lost or corrupt file); ``recovered_from`` is where a
    corrupt file was moved.
    """

    lines: dict[str, LineState]
    plant_json: str | None
    recovered_from: Path | None
    epoch: int = 0
    created: bool = False


def opt_text(v: int | None) -> str | None:
    return None if v is None else str(v)


def opt_iso(v: datetime | None) -> str | None:
    return None if v is None else iso(v)


def opt_str(v: object) -> str | None:
    return None if v is None else str(v)


def opt_int(v: object) -> int | None:
    return None if v is None else int(str(v))


def opt_float(v: object) -> float | None:
    return None if v is None else float(str(v))


def opt_dt(v: object) -> datetime | None:
    return None if v is None else datetime.fromisoformat(str(v))


def iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError("window_end must be timezone-aware")
    return ts.astimezone(UTC).isoformat()


