"""The year-to-date opening balance, end to end: recorded with ``plantfloor state opening``
(audited, a correction is a new entry), counted by the agent in ``units_year_to_date`` and
flagged in the plant payload, shown by ``state show`` and ``report``; ``state`` and
``report`` find the state file from a relative ``storage.path`` or ``--state``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.cli import main
from agent.config.load import load_config
from tests.agentrig import (
    ROOT_TOPIC,
    Run,
    Windows,
    one_line_config,
    two_plcs,
    wait_until,
    windows_after,
)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_an_opening_balance_is_audited_counted_flagged_and_shown(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, year to date began when the agent did: a July install read a few thousand."""
    sims = await simulator_set(two_plcs(), auto=False)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    data = one_line_config(tmp_path, mosquitto.url, sims).model_dump(mode="json", exclude_none=True)
    data["storage"]["path"] = "state/agent.db"      # relative: to the config file's folder
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "agent.yaml"
    path.write_text(json.dumps(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                     # commands run from another folder
    db = folder / "state" / "agent.db"

    year = datetime.now(ZoneInfo("Asia/Tokyo")).year
    through = f"{year}-01-01"
    code, out, err = _run(capsys, "state", "opening", str(path), "--units", "1000",
                          "--through", through, "--note", "ERP export", "--line", "kei")
    assert code == 0, err
    assert out.startswith("recorded #1: line kei built 1,000 units")
    assert db.exists()
    assert not (elsewhere / "state").exists()
    code, out, err = _run(capsys, "state", "opening", str(path), "--units", "1200",
                          "--through", through, "--note", "ERP export, corrected",
                          "--line", "kei", "--state", str(folder / "state"))
    assert code == 0, err
    # an entry is never changed nor removed
    conn = sqlite3.connect(db)
    try:
        for sql in ("UPDATE opening_balance SET units = 5", "DELETE FROM opening_balance"):
            with pytest.raises(sqlite3.DatabaseError, match="correction as a new entry"):
                conn.execute(sql)
    finally:
        conn.close()
    code, _, err = _run(capsys, "state", "opening", str(path), "--units", "5", "--through",
                        "yesterday", "--note", "x")
    assert (code, err.count("\n")) == (2, 1)
    assert "--through" in err

    cfg = load_config(path).config
    assert cfg.storage.path == db
    async with Run(cfg):
        await windows_after(sub, 2)                  # the counter has its baseline
        sims.lines["line-a"].produce(3)
        await wait_until(lambda: Windows(sub.messages).units("kei") == 3, 15, "3 units")
        await wait_until(lambda: any(p["units_year_to_date"] == 1203
                                     for p in Windows(sub.messages).plant.values()), 15,
                         "year to date with the opening balance")
    plant = list(Windows(sub.messages).plant.values())
    assert all(p["year_opening_units"] == 1200 for p in plant)
    assert all(p["year_opening_through"] == through for p in plant)
    assert all(p["units_year_to_date"] >= 1200 for p in plant)

    code, out, err = _run(capsys, "state", "show", str(path))
    assert code == 0, err
    assert "3 in" in out
    assert "1203 with the opening balance of 1200" in out
    assert "#1 " in out
    assert "#2 " in out
    assert "ERP export, corrected" in out
    assert "+00:00" not in out                      # people read the plant's local time
    assert "JST" in out
    assert "times in Asia/Tokyo" in out
    code, out, err = _run(capsys, "state", "show", str(path), "--format", "json")
    assert [e["units"] for e in json.loads(out)["opening_balance"]] == [1000, 1200]
    code, out, err = _run(capsys, "report", str(path), "--state", str(db), "--format", "json")
    assert code == 0, err
    assert json.loads(out)["year_opening"] == {"year": year, "units": 1200, "through": through}


def test_report_defaults_to_the_current_production_day(tmp_path: Path) -> None:
    """Before, at 01:00 in Japan during the night shift of the 3rd it read the 4th's."""
    from agent.config import Config
    from agent.views.report import report

    cfg = Config.model_validate({
        "site": "kyushu", "timezone": "Asia/Tokyo",
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "night", "start": "16:30", "end": "01:15"}],
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 5020}],
        "lines": [{"id": "kei-ev", "product": "Sakura", "target_per_hour": 40,
                   "counter": {"source": "plc", "address": 100}}],
    })
    asked: list[Any] = []
    at = datetime(2026, 12, 3, 16, 0, tzinfo=UTC)    # 01:00 on the 4th in Tokyo (a Friday)
    report(cfg, now=at, read=lambda d, s: asked.append(d) or [])
    assert [d.isoformat() for d in asked] == ["2026-12-03"]
