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
from agent.store.file import SCHEMA_VERSION, connect, open_readonly
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


def published_plant(cfg: Config) -> list[dict[str, Any]]:
    """Every plant window payload in the outbox, oldest first."""
    conn = sqlite3.connect(cfg.storage.path)
    try:
        payloads = [json.loads(p) for (p,) in conn.execute(
            "SELECT payload FROM outbox WHERE line IS NULL AND format = 'json' ORDER BY id")]
    finally:
        conn.close()
    return [p for p in payloads if "units_today" in p and "projected_year" in p]


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
        for part in ("availability", "performance", "quality"):
            assert view["oee"][part] == mine[-1]["shift"][part]
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
    # the projected year is the plant payload's, opening balance included
    last_plant = published_plant(cfg)[-1]
    assert plant["year"]["projected_year"] == last_plant["projected_year"]
    assert plant["year"]["projected_year"] > plant["year"]["year_to_date"]
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


async def test_a_line_standing_through_its_break_does_not_turn_red(tmp_path: Path) -> None:
    """l0 faults at 08:56 and stands through the 09:00-09:10 break: at 09:08 it has been
    down 12 minutes but only 4 of them planned, under red_after_s (10 min); by 09:18 it has
    lost 12 planned minutes and is red."""
    cfg = board_config(tmp_path, red_after_s=600)
    prod = await Production.open(cfg, datetime(2026, 12, 2, 23, 0, tzinfo=UTC))   # 08:00 Tokyo

    def plan(i: int, line: str) -> tuple[int, int]:
        return (1, RUNNING) if line == "l1" or i < 55 else (0, FAULT)

    await prod.run(68, plan)
    at_0908 = prod.now
    async with served(cfg, now=lambda: at_0908) as url, httpx.AsyncClient(base_url=url) as client:
        in_break = {ln["line"]: ln for ln in (await client.get("/api/v1/lines")).json()}
    await prod.run(10, lambda i, line: plan(68 + i, line))
    at_0918 = prod.now
    async with served(cfg, now=lambda: at_0918) as url, httpx.AsyncClient(base_url=url) as client:
        after = {ln["line"]: ln for ln in (await client.get("/api/v1/lines")).json()}
    await prod.close()
    assert at_0908.astimezone(cfg.tz).strftime("%H:%M") == "09:08"
    assert (in_break["l0"]["state"], in_break["l0"]["reason"]) == ("down", "fault")
    assert in_break["l0"]["for_s"] > 600        # down longer than red_after_s by the wall clock
    assert in_break["l0"]["red"] is False       # but not of planned time
    assert (after["l0"]["reason"], after["l0"]["red"]) == ("fault", True)
    assert after["l1"]["red"] is False


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


async def test_the_live_stream_tells_the_boards_time(tmp_path: Path) -> None:
    """The page's clock shows the board's time, not the browser's (a TV's clock may be
    wrong; the demo's plant runs on a simulated clock): a ``clock`` event at the start and
    with every state, without an id (Last-Event-ID stays the state's)."""
    cfg = board_config(tmp_path, poll_s=0.05)
    prod = await Production.open(cfg, START)
    await prod.window({"l0": (1, RUNNING), "l1": (1, RUNNING)})
    plant_now = datetime(2028, 4, 3, 7, 12, 30, tzinfo=UTC)
    async with served(cfg, now=lambda: plant_now) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as client, \
            client.stream("GET", "/api/v1/events") as r:
        events: list[dict[str, str]] = []
        event: dict[str, str] = {}
        async for line in r.aiter_lines():
            if line:
                key, _, value = line.partition(":")
                event[key] = value.removeprefix(" ")
                continue
            if "event" in event:
                events.append(event)
            event = {}
            if len(events) == 3:
                break
    assert [e["event"] for e in events] == ["clock", "state", "clock"]
    assert [datetime.fromisoformat(e["data"]) for e in events if e["event"] == "clock"] == [plant_now] * 2
    assert "id" not in events[0]
    assert "id" not in events[2]
    assert events[1]["id"]
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
    conn.execute("DROP TABLE opening_balance")
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
    assert conn.execute("SELECT count(*) FROM opening_balance").fetchone()[0] == 0
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


async def test_the_token_comes_from_systemds_credentials_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``board.credential_file: board-token`` under ``LoadCredential=board-token:…``: the
    relative name is read from ``$CREDENTIALS_DIRECTORY``, not from the working folder."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "board-token").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = board_config(tmp_path, credential_file="board-token")
    assert cfg.board.token() == "from-systemd"
    prod = await an_hour(cfg)
    await prod.close()
    async with served(cfg) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/api/v1/lines")).status_code == 401
        ok = await client.get("/api/v1/lines", headers={"Authorization": "Bearer from-systemd"})
        assert ok.status_code == 200


async def test_live_pages_past_the_limit_are_told_to_retry(tmp_path: Path) -> None:
    """``board.max_event_clients`` live pages at most: one more gets 503 with Retry-After
    (EventSource retries), and a page that leaves makes room."""
    cfg = board_config(tmp_path, max_event_clients=1)
    prod = await Production.open(cfg, START)
    await prod.window({"l0": (1, RUNNING), "l1": (1, RUNNING)})
    now = prod.now
    async with served(cfg, now=lambda: now) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as client:
        async with client.stream("GET", "/api/v1/events") as first:
            assert first.status_code == 200
            async for line in first.aiter_lines():
                if line.startswith("event: state"):
                    break
            refused = await client.get("/api/v1/events")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "10"
            assert (await client.get("/api/v1/lines")).status_code == 200   # the API is not held

        async def room() -> bool:
            async with client.stream("GET", "/api/v1/events") as again:
                return again.status_code == 200

        await wait_until(room, what="a live page again once the first has left")
    await prod.close()


@pytest.mark.parametrize("last_event_id", [
    b"", b"0", b"-1", b"not-an-id", b"9" * 100, "üé".encode(), b"1:2:3", b"42 43"])
async def test_any_last_event_id_gets_the_current_state(tmp_path: Path, last_event_id: bytes) -> None:
    """A reconnecting page's Last-Event-ID is only compared, never parsed: whatever it holds,
    the stream opens and sends the current state (an id the board never gave is not its own);
    one longer than 100 characters is refused as a bad request, never a server error."""
    cfg = board_config(tmp_path)
    prod = await Production.open(cfg, START)
    await prod.window({"l0": (2, RUNNING), "l1": (1, RUNNING)})
    now = prod.now
    async with served(cfg, now=lambda: now) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as client:
        async with client.stream("GET", "/api/v1/events",
                                 headers={"Last-Event-ID": last_event_id}) as r:
            assert r.status_code == 200
            data, kind = None, ""
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    kind = line.removeprefix("event:").strip()
                elif line.startswith("data:") and kind == "state":
                    data = json.loads(line.removeprefix("data:"))
                    break
        too_long = await client.get("/api/v1/events", headers={"Last-Event-ID": "9" * 101})
    assert data is not None
    assert {ln["line"]: ln["shift"]["units"] for ln in data["lines"]} == {"l0": 2, "l1": 1}
    assert too_long.status_code == 422
    await prod.close()


async def test_a_reading_board_never_holds_up_the_agents_commit_and_cannot_write(
        tmp_path: Path) -> None:
    """WAL: a board in the middle of a read transaction keeps its snapshot while the agent
    commits the next window beside it (with a rollback journal that commit would wait for
    the reader and fail with 'database is locked'); the board's connection is read-only."""
    cfg = board_config(tmp_path)
    prod = await Production.open(cfg, START)
    await prod.window({"l0": (3, RUNNING), "l1": (1, RUNNING)})
    reader = open_readonly(cfg.storage.path)
    try:
        reader.execute("BEGIN")
        before = reader.execute("SELECT count(*) FROM board_latest").fetchone()[0]
        hours = reader.execute("SELECT sum(units) FROM line_hour").fetchone()[0]
        assert hours == 4
        await prod.window({"l0": (4, RUNNING), "l1": (2, RUNNING)})   # the agent commits
        assert reader.execute("SELECT sum(units) FROM line_hour").fetchone()[0] == hours
        reader.execute("COMMIT")
        assert reader.execute("SELECT sum(units) FROM line_hour").fetchone()[0] == 10
        assert reader.execute("SELECT count(*) FROM board_latest").fetchone()[0] == before
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("DELETE FROM line_hour")
    finally:
        reader.close()
    await prod.close()


def test_without_the_board_extra_plantfloor_board_says_how_to_install_it(tmp_path: Path) -> None:
    """An agent installed without ``plantfloor[board]``: one sentence and exit 2 (which the
    unit's RestartPreventExitStatus=2 does not restart), not an ImportError."""
    import subprocess
    import sys

    from tests.board_rig import write_config

    script = ("import sys\nsys.modules['fastapi'] = None\n"
              "from agent.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    cfg = board_config(tmp_path)
    proc = subprocess.run([sys.executable, "-c", script, "board", str(write_config(cfg, tmp_path))],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("plantfloor: plantfloor board needs the web board's packages, which "
                                   "are not installed: pip install 'plantfloor[board]'")
