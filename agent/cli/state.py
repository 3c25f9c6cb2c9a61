"""``plantfloor state show`` and ``plantfloor state rebaseline``: operators see and mend state.

``show`` reads the state database without writing to it (a running agent is fine); its
times are the plant's local time with its zone. ``opening`` records units a line (or the
plant) built earlier in the production year: an audited entry, never changed (a
correction is a new entry), read by the agent when it starts, so it takes the lock too.
Every action takes the state file or its folder explicitly (``--state``); without it,
``storage.path`` of the config (a relative one read against the config file's folder).
``rebaseline`` takes the store's lock, so it is refused while an agent runs on the file;
the next reading of the line's counter then becomes its baseline without counting, and
that window carries ``rebaselined``. A line's second counter (``total_counter`` or
``reject_counter``) is shown and re-baselined with it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.contract.errors import ConfigError, StoreError
from agent.core.report import LineTotals, PlantTotals
from agent.core.totals import year_openings
from agent.runtime.lines import second_row
from agent.runtime.restore import restart_epoch
from agent.store import LineState
from agent.store.file import offline_transaction, open_readonly
from agent.store.openings import OpeningEntry, read_openings, record_opening

__all__ = ["opening", "rebaseline", "restore", "show", "state_path"]

_COLUMNS = ("line, totals_json, identity, state_identity, baseline, modulus, anchor_wall,"
            " anchor_mono, last_wall, last_mono, boot_id, rebaseline")
#: added to schema version 2 before its release: absent from files of development builds
_SECOND = "second_json"


@dataclass(frozen=True)
class _Snapshot:
    epoch: int | None
    lines: dict[str, LineState]
    plant: PlantTotals | None


def _read(path: Path) -> _Snapshot:
    conn = open_readonly(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < 2:
            lines = {row[0]: LineState(row[0], row[2]) for row in conn.execute(
                "SELECT line, counter, totals_json FROM line_state")}
            epoch = None
        else:
            have = {r[1] for r in conn.execute("PRAGMA table_info(line_state)")}
            second = _SECOND if _SECOND in have else "NULL"
            lines = {row[0]: LineState.from_row(row) for row in conn.execute(
                f"SELECT {_COLUMNS}, {second} FROM line_state")}
            found = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            epoch = int(found[0]) if found else None
        row = conn.execute("SELECT plant_json FROM plant_state WHERE id = 1").fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the state database {path}: {exc}") from exc
    finally:
        conn.close()
    return _Snapshot(epoch, lines, PlantTotals.from_json(row[0]) if row else None)


def state_path(cfg: Config, given: Path | None) -> Path:
    """The state file: ``given`` (a folder holds the file named as ``storage.path``'s),
    else ``storage.path``."""
    if given is None:
        return cfg.storage.path
    return given / cfg.storage.path.name if given.is_dir() else given


def _time(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat(timespec="seconds")


def _local(cfg: Config, t: datetime | None) -> str:
    """A time for people: the plant's local time with its zone's abbreviation."""
    return "-" if t is None else f"{t.astimezone(cfg.tz):%Y-%m-%d %H:%M:%S %Z}"


def _line_view(cfg: Config, line_id: str, row: LineState | None) -> dict[str, Any]:
    line = next((ln for ln in cfg.lines if ln.id == line_id), None)
    configured = cfg.point_identity(line.counter) if line is not None else None
    totals = LineTotals.from_json(row.totals_json) if row else LineTotals()
    view: dict[str, Any] = {
        "line": line_id,
        "in_config": line is not None,
        "seq": totals.seq,
        "baseline": row.baseline if row else None,
        "counter_identity": row.identity if row else None,
        "identity_matches_config": (row.identity == configured) if row and row.identity else None,
        "configured_identity": configured,
        "last_reading": _time(row.last_wall) if row else None,
        "rebaseline_pending": row.rebaseline if row else None,
        "last_window_end": _time(totals.last_window_end),
        "second_counter": _second_view(cfg, line, row),
        "shift": {"key": totals.shift_key, "units": totals.shift_units,
                  "name": totals.shift_name, "start": _time(totals.shift_start)},
        "day": {"date": totals.day.isoformat() if totals.day else None, "units": totals.day_units},
        "year": {"year": totals.year, "units": totals.year_units},
    }
    return view


def _second_view(cfg: Config, line: Any, row: LineState | None) -> dict[str, Any] | None:
    """The line's total or reject counter: what is stored of it and whether it matches."""
    second = line.second_counter if line is not None else None
    stored = second_row(row)
    if second is None and stored is None:
        return None
    configured = cfg.point_identity(second[1]) if second is not None else None
    role = second[0] if second is not None else None
    if row is not None and row.second_json:
        role = json.loads(row.second_json).get("role", role)
    return {
        "role": role,
        "baseline": stored.baseline if stored else None,
        "counter_identity": stored.identity if stored else None,
        "identity_matches_config": (stored.identity == configured)
        if stored and stored.identity else None,
        "configured_identity": configured,
        "last_reading": _time(stored.last_wall) if stored else None,
        "rebaseline_pending": stored.rebaseline if stored else None,
    }


def show(cfg: Config, *, fmt: str = "text", path: Path | None = None) -> str:
    """What the store holds, per line and for the plant, as text (local times) or JSON (UTC)."""
    path = path or cfg.storage.path
    snap = _read(path)
    entries = read_openings(path)
    ids = [ln.id for ln in cfg.lines] + sorted(set(snap.lines) - {ln.id for ln in cfg.lines})
    lines = [_line_view(cfg, line_id, snap.lines.get(line_id)) for line_id in ids]
    plant = snap.plant or PlantTotals()
    p: dict[str, Any] = {
        "seq": plant.seq, "day": plant.day.isoformat() if plant.day else None,
        "units_today": plant.day_units, "year": plant.year,
        "units_year_to_date": plant.year_units, "last_window_end": _time(plant.last_window_end)}
    doc: dict[str, Any] = {"path": str(path), "epoch": snap.epoch, "lines": lines,
                           "plant": p, "opening_balance": [_entry_view(e) for e in entries]}
    if fmt == "json":
        return json.dumps(doc, indent=2)
    out = [f"state database {doc['path']}", f"epoch {snap.epoch}; times in {cfg.timezone}"]
    for v in lines:
        match = {True: "matches the config", False: "DIFFERS from the config: the next reading "
                 "re-baselines", None: "none stored"}[v["identity_matches_config"]]
        out += [
            f"line {v['line']}{'' if v['in_config'] else ' (not in the config)'}",
            f"  seq {v['seq']}, last window ended {_local_iso(cfg, v['last_window_end'])}",
            f"  counter baseline {v['baseline'] if v['baseline'] is not None else '-'}, "
            f"last good reading {_local_iso(cfg, v['last_reading'])}",
            f"  counter identity {v['counter_identity'] or '-'} ({match})",
            f"  shift {_shift_text(cfg, v['shift'])}: {v['shift']['units']} units; "
            f"day {v['day']['date'] or '-'}: {v['day']['units']} units; "
            f"year {v['year']['year'] or '-'}: {v['year']['units']} units",
        ]
        if v["rebaseline_pending"]:
            out.append(f"  re-baseline pending: {v['rebaseline_pending']}")
        sc = v["second_counter"]
        if sc is not None:
            match = {True: "matches the config", False: "DIFFERS from the config: the next reading "
                     "re-baselines", None: "none stored"}[sc["identity_matches_config"]]
            base = sc["baseline"] if sc["baseline"] is not None else "-"
            out += [f"  {sc['role']} counter baseline {base}, last good reading "
                    f"{_local_iso(cfg, sc['last_reading'])}",
                    f"  {sc['role']} counter identity {sc['counter_identity'] or '-'} ({match})"]
            if sc["rebaseline_pending"]:
                out.append(f"  {sc['role']} counter re-baseline pending: {sc['rebaseline_pending']}")
    year = year_openings((e.year, e.line, e.units, e.through) for e in entries).get(plant.year or 0)
    opened = (f" counted, {year.units + plant.year_units} with the opening balance of "
              f"{year.units} through {year.through}") if year else ""
    out.append(f"plant seq {p['seq']}: {p['units_today']} units on {p['day'] or '-'}, "
               f"{p['units_year_to_date']} in {p['year'] or '-'}{opened}")
    if entries:
        out.append("opening balance (recorded; the latest entry per line counts):")
        out.extend(f"  #{e.id} {e.year} {e.line or 'plant'}: {e.units:,} units through "
                   f"{e.through}, recorded {_local(cfg, e.recorded_at)} by {e.recorded_by}: "
                   f"{e.note}" for e in entries)
    return "\n".join(out)


def _shift_text(cfg: Config, shift: dict[str, Any]) -> str:
    """The shift instance for people: its name and local start (off shift: since when)."""
    if shift["start"] is None:
        return shift["key"] or "-"
    return f"{shift['name'] or 'off shift'} from {_local_iso(cfg, shift['start'])}"


def _local_iso(cfg: Config, iso: str | None) -> str:
    return _local(cfg, datetime.fromisoformat(iso) if iso else None)


def _entry_view(e: OpeningEntry) -> dict[str, Any]:
    return {"id": e.id, "year": e.year, "line": e.line, "units": e.units,
            "through": e.through.isoformat(), "note": e.note,
            "recorded_at": e.recorded_at.isoformat(timespec="seconds"),
            "recorded_by": e.recorded_by}


def opening(cfg: Config, *, units: int, through: str, note: str, line: str | None = None,
            path: Path | None = None, now: datetime | None = None) -> str:
    """Record an opening balance entry: ``units`` built in the production year of
    ``through`` up to and including that production day; refused while an agent runs."""
    try:
        day = date.fromisoformat(through)
    except ValueError:
        raise ConfigError(f"{through!r} is not a date (YYYY-MM-DD)", key="--through") from None
    if line is not None and line not in {ln.id for ln in cfg.lines}:
        raise ConfigError(f"line {line!r} is not in the config "
                          f"({', '.join(ln.id for ln in cfg.lines)})", key="--line")
    entry = record_opening(path or cfg.storage.path, year=day.year, line=line, units=units,
                           through=day, note=note, lines=[ln.id for ln in cfg.lines], now=now)
    who = f"line {line}" if line else "the plant"
    return (f"recorded #{entry.id}: {who} built {units:,} units in {day.year} through {day} "
            f"({note}); counted in year to date from the agent's next start")





def rebaseline(cfg: Config, line_id: str, reason: str | None, *, path: Path | None = None) -> str:
    """Make the next reading of ``line_id``'s counter its baseline; refused while an agent runs."""
    if line_id not in {ln.id for ln in cfg.lines}:
        raise ConfigError(f"line {line_id!r} is not in the config "
                          f"({', '.join(ln.id for ln in cfg.lines)})", key="lines")
    path = path or cfg.storage.path
    if not path.exists():
        raise StoreError(f"there is no state database at {path} (storage.path): nothing to "
                         "re-baseline; the first reading becomes the baseline anyway")
    why = reason or "asked for by an operator"
    with offline_transaction(path) as conn:
        changed = conn.execute(
            "UPDATE line_state SET baseline = NULL, anchor_wall = NULL, anchor_mono = NULL,"
            " last_wall = NULL, last_mono = NULL, rebaseline = ? WHERE line = ?",
            (f"operator: {why}", line_id)).rowcount
        found = conn.execute("SELECT second_json FROM line_state WHERE line = ?",
                             (line_id,)).fetchone()
        if found is not None and found[0]:
            second = json.loads(found[0])
            second.update(baseline=None, anchor_wall=None, anchor_mono=None,
                          last_wall=None, last_mono=None, rebaseline=f"operator: {why}")
            conn.execute("UPDATE line_state SET second_json = ? WHERE line = ?",
                         (json.dumps(second, sort_keys=True), line_id))
    if not changed:
        return (f"line {line_id} has no stored baseline yet: its first reading becomes the "
                "baseline anyway")
    return (f"line {line_id}: the next reading of its counter becomes the baseline without "
            f"counting (event rebaselined; reason: {why})")


def restore(cfg: Config, *, path: Path | None = None) -> str:
    """A restored backup: a new epoch, ``seq`` and windows from now, counters re-baselined
    (:func:`agent.runtime.restore.restart_epoch`); refused while an agent runs."""
    path = path or cfg.storage.path
    if not path.exists():
        raise StoreError(f"there is no state database at {path} (storage.path): copy the "
                         "backup there first")
    with offline_transaction(path) as conn:
        epoch, lines = restart_epoch(conn)
    return (f"new epoch {epoch}: seq starts again at 1 with windows from the next start; "
            f"{lines} line(s) re-baselined at their next reading (event rebaselined)")
