"""`plantfloor run` after a reboot with its wall clock 5 min behind the store (libfaketime).

The agent is stopped, the state file made to look written on another boot, 5 units are
built meanwhile, and the agent starts with a wall clock 5 minutes behind the last stored
reading: its first delta is held (``clock_unsynced``, nothing counted, nothing refused).
When "NTP" steps the clock right, the 5 units are counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.lines import clock_synchronised
from tests.agentrig import ROOT_TOPIC, Run, Windows, one_line_config, two_plcs, windows_after

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@pytest.mark.skipif(not FAKETIME.exists(), reason="libfaketime is not installed (apt-get install faketime)")
async def test_a_boot_clock_behind_the_store_holds_the_first_delta(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    if clock_synchronised():
        pytest.skip("this machine's clock is synchronised: the agent rightly believes it")
    sims = await simulator_set(two_plcs(), auto=False)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    cfg = one_line_config(tmp_path, mosquitto.url, sims, max_rate=3600)
    async with Run(cfg):
        await windows_after(sub, 2)
    # the gateway reboots: the stored times belong to another boot now
    with sqlite3.connect(cfg.storage.path) as db:
        db.execute("UPDATE line_state SET boot_id = 'a boot before this one'")
    db.close()
    sims.lines["line-a"].produce(5)
    config = tmp_path / "agent.json"
    config.write_text(json.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    offset = tmp_path / "clock-offset"
    offset.write_text("-300\n")
    env = {**os.environ, "LD_PRELOAD": str(FAKETIME), "FAKETIME_DONT_FAKE_MONOTONIC": "1",
           "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_CACHE_DURATION": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "run", str(config), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        await windows_after(sub, 1, where=lambda p: "clock_unsynced" in p["events"], within=30)
        held = Windows(sub.messages)
        assert held.units("kei") == 0
        offset.write_text("+0\n")     # NTP steps the clock right
        await windows_after(sub, 1, where=lambda p: p["units"] > 0, within=30)
    finally:
        if proc.returncode is None:
            proc.terminate()
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    w = Windows(sub.messages)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert w.units("kei") == 5
    assert "implausible_jump" not in w.events("kei")
    assert "the first counter delta is held" in out.decode()
