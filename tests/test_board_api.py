"""The board's API against a real state file written by the agent's own window machinery:
the figures it serves are the ones the agent published (read back from the outbox)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from agent.board.server import build
from agent.config import Config
from agent.core.hourly import attainment
from agent.rollup.config import RollupConfig
from agent.store import Store
from agent.store.file import SCHEMA_VERSION, connect
from agent.store.openings import record_opening
from agent.views.report import report
from tests.board_rig import FAULT, RUNNING, STARVED, Production, board_config
from tests.waiting import wait_until

#: 10:00 in Tokyo (shift a, after its break)
START = datetime(2026, 12, 3, 1, 0, tzinfo=UTC)


@contextlib.asynccontextmanager
async def served(cfg: Config | RollupConfig, now: Any = None,
                 sources: list[Any] | None = None) -> AsyncIterator[str]:
    """The board on a free port in this event loop (uvicorn, as ``plantfloor board``);
    its figure source is appended to ``sources``."""
    app, hub, gateway = build(cfg)
    if sources is not None:
        sources.append(gateway)
    if now is not None:
        gateway.now = hub.now = now
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None,
                                           access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, what="the board listens")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def an_hour(cfg: Config) -> Production:
    """An hour of 60 s windows: l0 runs 50 minutes then faults for 10; l1 is starved for 5
    minutes in the middle and runs otherwise; units vary by window."""
    prod = await Production.open(cfg, START)

    def plan(i: int, line: str) -> tuple[int, int]:
        if line == "l0":
            return (1 + i % 2, RUNNING) if i < 50 else (0, FAULT)
        return (0, STARVED) if 20 <= i < 25 else (2 if i % 3 else 1, RUNNING)

    await prod.run(60, plan)
    return prod


def published(cfg: Config) -> list[dict[str, Any]]:
    """Every line payload in the outbox, as the agent will publish it."""
    conn = sqlite3.connect(cfg.storage.path)
    try:
        return [json.loads(p) for (p,) in conn.execute(
            "SELECT payload FROM outbox WHERE line IS NOT NULL AND format = 'json' ORDER BY id")]
    finally:
        conn.close()


async def test_the_figures_are_the_published_ones_after_an_hour(tmp_path: Path) -> None:
    cfg = board_config(tmp_path, red_after_s=300)
    # an operator's opening balance for the year (plantfloor state opening), then the hour
    await (await Store.open(cfg.storage.path, max_bytes=1 << 30)).close()
    record_opening(cfg.storage.path, year=2026, line=None, units=120_000,
                   through=date(2026, 11, 30), note="plant records",
                   lines=[ln.id for ln in cfg.lines])
    prod = await an_hour(cfg)
    await prod.close()
    end = START + timedelta(hours=1)
    sent = published(cfg)
    now = end - timedelta(milliseconds=1)
    async with served(cfg, now=lambda: now) as url, httpx.AsyncClient(base_url=url) as client:
        lines = {ln["line"]: ln for ln in (await client.get("/api/v1/lines")).json()}
        plant = (await client.get("/api/v1/plant")).json()
        state = (await client.get("/api/v1/state")).json()
    for line_id, view in lines.items():
        mine = [p for p in sent if p["line"] == line_id]
        units = sum(p["units"] for p in mine)
        target = sum(p["target_per_hour"] for p in mine) / 60
        assert units == prod.built[line_id]
        assert units > 0
        assert view["hour"]["units"] == units
        assert view["hour"]["target"] == pytest.approx(target, abs=0.05)
        assert view["hour"]["attainment"] == attainment(units, target)
        assert view["shift"]["units"] == mine[-1]["shift"]["units"] == units
        assert view["shift_name"] == "a"
        assert view["day"]["units"] == mine[-1]["day"]["units"]
        assert view["oee"]["oee"] == mine[-1]["shift"]["oee"]
        assert view["oee"]["coverage"] == 1.0
        assert view["stale"] is False
    l0, l1 = lines["l0"], lines["l1"]
    assert l0["hour"]["ahead"] == round(l0["hour"]["units"] - 60, 1)
    # l0 faulted since the end of its 51st window: ten minutes, past red_after_s (300 s)
    assert (l0["state"], l0["reason"]) == ("down", "fault")
    assert datetime.fromisoformat(l0["since"]) == START + timedelta(minutes=51)
    assert l0["red"] is True
    assert (l1["state"], l1["reason"], l1["red"]) == ("running", "running", False)
    assert plant["today"]["units"] == sum(prod.built.values())
    # the year: what was measured, and the recorded opening balance marked as such
    assert plant["year"]["measured"] == sum(prod.built.values())
    assert plant["year"]["recorded"] == 120_000
    assert plant["year"]["recorded_through"] == "2026-11-30"
    assert plant["year"]["year_to_date"] == 120_000 + sum(prod.built.values())
    assert plant["year"]["plan"] == 400_000
    assert plant["year"]["gap"] == 400_000 - plant["year"]["year_to_date"]
    # downtime this shift, by reason: the published windows' seconds summed
    down: dict[str, float] = {}
    for p in sent:
        for reason, s in p["time"]["down_s"].items():
            down[reason] = down.get(reason, 0.0) + s
    assert {r["reason"]: r["minutes"] for r in state["pareto"]} == {
        r: round(s / 60, 1) for r, s in down.items() if s > 0}
    assert state["pareto"][0]["reason"] == "fault"
    # the current shift hour by hour: 00:00..12:00 local, the 09:00 hour with its break
    hours = state["shift"]["hours"]
    assert len(hours) == 12
    assert [h["break_min"] for h in hours][9] == 10.0
    assert hours[10]["figure"]["units"] == sum(prod.built.values())
    assert state["offline"] is False


async def test_stale_when_the_windows_stop_and_history_by_hour_day_week(tmp_path: Path) -> None:
    cfg = board_config(tmp_path)
    prod = await an_hour(cfg)
    await prod.close()
    later = START + timedelta(hours=1, minutes=3)
    async with served(cfg, now=lambda: later) as url, httpx.AsyncClient(base_url=url) as client:
        state = (await client.get("/api/v1/state")).json()
        assert all(ln["stale"] for ln in state["lines"])
        assert state["offline"] is True
        by_hour = (await client.get("/api/v1/history", params={"bucket": "hour"})).json()
        by_day = (await client.get("/api/v1/history", params={"bucket": "day"})).json()
        by_week = (await client.get("/api/v1/history", params={"bucket": "week", "line": "l1"})).json()
        missing = await client.get("/api/v1/history", params={"line": "nope"})
    total = sum(prod.built.values())
    assert [(p["label"], p["figure"]["units"]) for p in by_hour] == [("2026-12-03 10:00", total)]
    assert [(p["label"], p["figure"]["units"]) for p in by_day] == [("2026-12-03", total)]
    assert [(p["label"], p["figure"]["units"]) for p in by_week] == [("2026-W49", prod.built["l1"])]
    assert by_day[0]["figure"]["target"] == pytest.approx(150, abs=0.05)
    assert missing.status_code == 404


async def test_shift_reports_as_csv_are_plantfloor_reports(tmp_path: Path) -> None:
    """Across the end of shift a (12:00 local): its reports are kept and exported as CSV."""
    cfg = board_config(tmp_path)
    prod = await Production.open(cfg, datetime(2026, 12, 3, 2, 50, tzinfo=UTC))
    await prod.run(20, lambda i, line: (1, RUNNING))
    await prod.close()
    now = prod.now
    async with served(cfg, now=lambda: now) as url, httpx.AsyncClient(base_url=url) as client:
        csv = await client.get("/api/v1/shift-reports.csv", params={"date": "2026-12-03"})
        listed = (await client.get("/api/v1/shift-reports", params={"date": "2026-12-03"})).json()
        state = (await client.get("/api/v1/state")).json()
    from agent.store.reports import read_reports

    expected = report(cfg, day="2026-12-03", fmt="csv",
                      read=lambda d, s: read_reports(cfg.storage.path, d, s))
    assert csv.status_code == 200
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text == expected + "\n"
    assert len(csv.text.splitlines()) == 1 + 3           # header, two lines and the plant
    assert [(r["line"], r["shift"], r["units"]) for r in listed] == [
        ("l0", "a", 10), ("l1", "a", 10), (None, "a", 20)]
    assert state["previous_shifts"][0]["units"] == 20
    assert state["shift"]["name"] == "b"


async def test_live_updates_with_event_ids_and_replay(tmp_path: Path) -> None:
    """A commit reaches an open stream as a new state; a stream that reconnects with the id
    it last saw gets nothing it has, and the newest state at once when it missed one."""
    cfg = board_config(tmp_path, poll_s=0.05)
    prod = await Production.open(cfg, START)
    await prod.window({"l0": (3, RUNNING), "l1": (1, RUNNING)})
    now = [prod.now]
    async with served(cfg, now=lambda: now[0]) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as client:
        first = await next_state(client, None)
        assert {ln["line"]: ln["shift"]["units"] for ln in first[1]["lines"]} == {"l0": 3, "l1": 1}
        await prod.window({"l0": (4, RUNNING), "l1": (0, FAULT)})
        now[0] = prod.now
        second = await next_state(client, first[0])        # replay: the state missed
        assert second[0] != first[0]
        assert {ln["line"]: ln["shift"]["units"] for ln in second[1]["lines"]} == {"l0": 7, "l1": 1}
        assert {ln["line"]: ln["reason"] for ln in second[1]["lines"]}["l1"] == "fault"
        # a page that has the newest state gets no event until the next commit
        waiting = asyncio.create_task(next_state(client, second[0]))
        await asyncio.sleep(0)
        assert not waiting.done()
        await prod.window({"l0": (1, RUNNING), "l1": (0, FAULT)})
        now[0] = prod.now
        third = await asyncio.wait_for(waiting, 10)
        assert {ln["line"]: ln["shift"]["units"] for ln in third[1]["lines"]}["l0"] == 8
    await prod.close()


async def next_state(client: httpx.AsyncClient, last: str | None) -> tuple[str, dict[str, Any]]:
    """The first ``state`` event of a new stream (sent with Last-Event-ID ``last``)."""
    headers = {"Last-Event-ID": last} if last else {}
    async with client.stream("GET", "/api/v1/events", headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        event: dict[str, str] = {}
        async for line in r.aiter_lines():
            if not line:
                if event.get("event") == "state":
                    return event["id"], json.loads(event["data"])
                event = {}
                continue
            key, _, value = line.partition(":")
            event[key] = value.removeprefix(" ")
    raise AssertionError("the stream ended")


async def test_read_only_headers_and_the_access_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-token\n")
    cfg = board_config(tmp_path, credential_file=str(tmp_path / "token"))
    prod = await an_hour(cfg)
    await prod.close()
    async with served(cfg) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/api/v1/state")).status_code == 401
        assert (await client.get("/api/v1/state", headers={"Authorization": "Bearer nope"})
                ).status_code == 401
        ok = await client.get("/api/v1/state", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
        basic = base64.b64encode(b"plant:s3cret-token").decode()
        assert (await client.get("/", headers={"Authorization": f"Basic {basic}"})).status_code == 200
        kiosk = await client.get("/", params={"token": "s3cret-token", "kiosk": "1"})
        assert kiosk.status_code == 200
        assert "plantfloor_board" in kiosk.headers["set-cookie"]
        assert (await client.get("/api/v1/lines")).status_code == 200   # the cookie now
        posted = await client.post("/api/v1/state", headers={"Authorization": "Bearer s3cret-token"})
        assert posted.status_code == 405
        csp = ok.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        page = kiosk.text
        assert "<script>" not in page
        assert 'type="application/json"' in page


async def test_an_older_state_file_opens_and_the_board_shows_no_data(tmp_path: Path) -> None:
    """A version-2 file (no board tables): the board is empty and offline, not an error;
    the agent's next open adds the tables (schema 3)."""
    cfg = board_config(tmp_path)
    path = cfg.storage.path
    conn, _ = connect(path)
    conn.execute("DROP TABLE board_latest")
    conn.execute("PRAGMA user_version=2")
    conn.close()
    async with served(cfg) as url, httpx.AsyncClient(base_url=url) as client:
        state = (await client.get("/api/v1/state")).json()
        page = await client.get("/")
    assert state["lines"] == []
    assert state["plant"] is None
    assert state["offline"] is True
    assert page.status_code == 200
    assert "No window committed yet" in page.text
    conn, _ = connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert conn.execute("SELECT count(*) FROM board_latest").fetchone()[0] == 0
    conn.close()


def test_a_board_before_the_agent_ran_says_why_and_a_bad_token_file_is_refused(
        tmp_path: Path) -> None:
    """``plantfloor board`` as a process: with no state file yet it answers 503 naming the
    file (and recovers once there is one); a credential file it cannot read is a
    configuration error (exit 2, one sentence naming the key)."""
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from agent.board.server import start_board
    from tests.board_rig import free_port, write_config

    cfg = board_config(tmp_path)
    board = start_board(write_config(cfg, tmp_path), free_port())
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(board.url + "api/v1/state", timeout=5)
        assert err.value.code == 503
        assert f"there is no state database at {cfg.storage.path}" in err.value.read().decode()
    finally:
        assert board.stop() == 0
    bad = board_config(tmp_path, credential_file=str(tmp_path / "missing-token"))
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "board", str(write_config(bad, tmp_path))],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("plantfloor: ")
    assert "board.credential_file" in proc.stderr
    assert "credential file" in proc.stderr
