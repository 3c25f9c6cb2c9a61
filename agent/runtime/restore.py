"""A restored backup of the state database: a new epoch, counted afresh.

A backup's ``seq`` is behind what was published since it was taken, and its counter
baselines are as old. :func:`restart_epoch` gives the file a new epoch, restarts every
line's and the plant's ``seq`` (windows from the next start) and re-baselines every
counter, keeping the outbox and the shift reports. ``plantfloor state restore`` applies
it on an operator's word; the agent applies it itself when the broker's retained
``R/status`` of the same epoch has a ``seq`` ahead of the store's (:func:`restored_copy`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
from typing import Any

from agent.config import Config
from agent.core.totals import LineTotals, PlantTotals
from agent.outputs.mqtt.retained import read_retained
from agent.runtime.status import Alarms
from agent.store import Store, StoredState
from agent.store.file import new_epoch

__all__ = ["RESTORED", "RETAINED_STATUS_WAIT_S", "restart_epoch", "restored_backup", "restored_copy"]

log = logging.getLogger("plantfloor.agent")

#: at start, how long the broker may take to hand over the retained R/status
RETAINED_STATUS_WAIT_S = 3.0

#: the re-baseline reason of every counter of a restored backup
RESTORED = "the state database was restored from a backup"


def restored_copy(retained: bytes | None, epoch: int, plant_seq: int) -> str | None:
    """Why the store is a restored copy (the broker's retained status of its own epoch is
    ahead of it), or None."""
    if retained is None:
        return None
    try:
        status: Any = json.loads(retained)
    except ValueError:
        return None
    if not isinstance(status, dict) or status.get("epoch") != epoch:
        return None
    seq = status.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool) and seq > plant_seq:
        return (f"the broker's retained status of epoch {epoch} says window {seq} was "
                f"published, and this state database is at window {plant_seq}")
    return None


def restart_epoch(conn: sqlite3.Connection) -> tuple[int, int]:
    """In the caller's transaction: a new epoch; (the epoch, lines re-baselined)."""
    epoch = new_epoch()
    conn.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (str(epoch),))
    rows = conn.execute("SELECT line, totals_json, second_json FROM line_state").fetchall()
    for line, totals_json, second_json in rows:
        totals = LineTotals.from_json(totals_json) if totals_json else LineTotals()
        totals = dataclasses.replace(totals, seq=0, last_window_end=None)
        second = None
        if second_json:
            raw = json.loads(second_json)
            raw.update(baseline=None, anchor_wall=None, anchor_mono=None,
                       last_wall=None, last_mono=None, rebaseline=RESTORED)
            second = json.dumps(raw, sort_keys=True)
        conn.execute(
            "UPDATE line_state SET totals_json = ?, baseline = NULL, anchor_wall = NULL,"
            " anchor_mono = NULL, last_wall = NULL, last_mono = NULL, rebaseline = ?,"
            " second_json = ? WHERE line = ?", (totals.to_json(), RESTORED, second, line))
    found = conn.execute("SELECT plant_json FROM plant_state WHERE id = 1").fetchone()
    if found is not None and found[0]:
        plant = dataclasses.replace(PlantTotals.from_json(found[0]), seq=0, last_window_end=None)
        conn.execute("UPDATE plant_state SET plant_json = ? WHERE id = 1", (plant.to_json(),))
    return epoch, len(rows)


async def restored_backup(cfg: Config, store: Store, stored: StoredState, *, root: str,
                          alarms: Alarms) -> StoredState:
    """At start: a store behind the broker's retained status of its own epoch is a restored
    backup, and starts a new epoch (as ``plantfloor state restore`` does); the state as
    it is then. Without the broker (or its retained status) nothing changes."""
    try:
        password = cfg.mqtt.password()
    except OSError:
        return stored  # reported when the publisher starts
    retained = await asyncio.to_thread(
        read_retained, cfg.mqtt, f"{root}/status", client_id=f"{cfg.client_id}-probe",
        password=password, timeout_s=RETAINED_STATUS_WAIT_S)
    plant_seq = PlantTotals.from_json(stored.plant_json).seq if stored.plant_json else 0
    why = restored_copy(retained, stored.epoch, plant_seq)
    if why is None:
        return stored
    epoch, _ = await store.in_transaction(restart_epoch)
    log.warning("restored backup: %s; a new epoch %d begins, every counter re-baselined",
                why, epoch)
    alarms.raise_("store_restored", f"the state database is a restored backup ({why}): "
                  f"new epoch {epoch}, counters re-baselined")
    return await store.load()
