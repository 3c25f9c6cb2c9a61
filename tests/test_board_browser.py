"""The board in a real browser: Debian's Chromium driven by Playwright, against the board
running as its own process on a state file the agent's window machinery wrote.

Figures are read off the page as a person would and compared with what the agent
published; screenshots are saved as evidence (``PLANTFLOOR_SCREENSHOTS``, default
``build/screenshots``), never as the assertion.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.board.server import BoardProcess, start_board
from agent.config import Config
from tests.board_rig import (
    FAULT,
    RUNNING,
    STARVED,
    Production,
    aligned,
    board_config,
    free_port,
    write_config,
)
from tests.waiting import wait_until

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = "/usr/bin/chromium"
# as root, in a closed network: no sandbox, no background connections (machine notes)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("PLANTFLOOR_SCREENSHOTS", "build/screenshots"))

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Chromium is not installed (apt-get install chromium)")


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = await browser.new_context(viewport={"width": 1600, "height": 1000})
            yield await context.new_page()
        finally:
            await browser.close()


def last_payloads(cfg: Config) -> dict[str, dict[str, Any]]:
    """Each line's latest payload in the outbox: what the agent published last."""
    conn = sqlite3.connect(cfg.storage.path)
    try:
        out: dict[str, dict[str, Any]] = {}
        for line, payload in conn.execute("SELECT line, payload FROM outbox WHERE line IS NOT NULL"
                                          " AND format = 'json' ORDER BY id"):
            out[line] = json.loads(payload)
        return out
    finally:
        conn.close()


def last_plant(cfg: Config) -> dict[str, Any]:
    """The plant's latest payload in the outbox."""
    conn = sqlite3.connect(cfg.storage.path)
    try:
        row = conn.execute("SELECT payload FROM outbox WHERE line IS NULL AND format = 'json'"
                           " AND topic LIKE '%/plant/output' ORDER BY id DESC LIMIT 1").fetchone()
        return dict(json.loads(row[0]))
    finally:
        conn.close()


async def number(page: Any, key: str) -> float:
    text = await page.locator(f'[data-k="{key}"]').first.text_content()
    return float(text.replace(",", "").replace("+", "").replace("±", "").replace("%", ""))


def shots_dir() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


async def shot(page: Any, name: str) -> None:
    await page.screenshot(path=str(shots_dir() / f"{name}.png"), full_page=True)


async def started(cfg: Config, tmp_path: Path, port: int | None = None) -> BoardProcess:
    return start_board(write_config(cfg, tmp_path), port or free_port())


async def test_the_page_shows_the_published_figures_and_updates_after_a_commit(
        page: Any, tmp_path: Path) -> None:
    cfg = board_config(tmp_path, lines=3, interval_s=60, poll_s=0.1, red_after_s=300)
    end = aligned(datetime.now(UTC), 60) + timedelta(seconds=60)
    prod = await Production.open(cfg, end - timedelta(hours=1))

    def plan(i: int, line: str) -> tuple[int, int]:
        if line == "l0":                          # 60 an hour: on target
            return (1, RUNNING) if i % 20 else (0, STARVED)
        if line == "l1":                          # 90 an hour, then a fault
            return ((1 + i % 2, RUNNING) if i < 50 else (0, FAULT))
        return (2, RUNNING) if i % 7 else (1, RUNNING)   # 120 an hour

    await prod.run(59, plan)
    board = await started(cfg, tmp_path)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        await page.goto(board.url)
        # the policy forbids inline script and foreign sources: a violation would be reported
        await page.evaluate("document.addEventListener('securitypolicyviolation',"
                            " (e) => console.error('CSP ' + e.violatedDirective))")
        await page.wait_for_selector("#chart .u-over")      # uPlot drew the history
        # its legend in the page's words: time, units, target
        legend = [await el.text_content() for el in await page.locator("#chart .u-legend .u-label").all()]
        assert legend == ["Time", "Units", "Target"], legend
        published = last_payloads(cfg)
        for line_id, p in published.items():
            assert await number(page, f"line:{line_id}.shift.units") == p["shift"]["units"]
            assert await number(page, f"line:{line_id}.day.units") == p["day"]["units"]
            for part in ("oee", "availability", "performance", "quality"):
                assert await number(page, f"line:{line_id}.oee.{part}") == pytest.approx(
                    p["shift"][part] * 100, abs=0.05), part
        api = {ln["line"]: ln for ln in (await (await page.request.get(
            board.url + "api/v1/lines")).json())}
        for line_id, ln in api.items():
            assert await number(page, f"line:{line_id}.hour.units") == ln["hour"]["units"]
            assert await number(page, f"line:{line_id}.hour.target") == round(ln["hour"]["target"])
            assert await number(page, f"line:{line_id}.shift.ahead") == round(ln["shift"]["ahead"])
        # ahead or behind reads +N, -N or ±0 (never +-0), coloured by its sign as shown
        for delta in await page.locator("[data-delta]").all():
            text = await delta.text_content() or ""
            assert re.fullmatch(r"±0|\+[1-9][\d,]*|-[1-9][\d,]*", text), text
            assert ("behind" in (await delta.get_attribute("class") or "")) == text.startswith("-")
        assert await page.locator('[data-k="line:l1.reason"]').text_content() == "fault"
        # l1 is down for 9 minutes, past red_after_s (5 min) unless the 09:00 break took
        # some of them (test_board_api checks the rule): a card is red exactly when its line is
        for line_id, ln in api.items():
            red = "red" in (await page.locator(f"#line-{line_id}").get_attribute("class") or "").split()
            assert red == ln["red"], line_id
        assert api["l1"]["red"] or datetime.now(cfg.tz).strftime("%H") == "09"
        assert api["l0"]["red"] is False
        # the plant's year: the projection the agent published
        assert await number(page, "plant.year.projected_year") == pytest.approx(
            last_plant(cfg)["projected_year"], abs=0.5)
        # the header's clock runs on the plant's zone (Tokyo), not the machine's
        async def ticking() -> bool:
            return bool(await page.locator("#clock").text_content())

        await wait_until(ticking, within=5, what="the header clock")
        clock = await page.locator("#clock").text_content() or ""
        tokyo = datetime.now(cfg.tz)
        assert clock[:5] in {(tokyo + timedelta(minutes=k)).strftime("%H:%M") for k in (-1, 0, 1)}, clock
        # the CSV link gives the day's shift reports as plantfloor report writes them
        href = await page.locator("#csv").get_attribute("href") or ""
        csv = await page.request.get(board.url + href.lstrip("/"))
        assert csv.status == 200
        assert csv.headers["content-type"].startswith("text/csv")
        assert (await csv.text()).startswith("date,")
        assert await page.locator("#offline").is_hidden()
        # dates read year first in the plant's zone, never a US month/day
        since = datetime.fromisoformat(last_plant(cfg)["year_counted_since"])
        assert await page.locator('[data-k="plant.year.counted_since"]').text_content() == \
            since.astimezone(cfg.tz).strftime("%Y-%m-%d")
        await shot(page, "board")
        # a window's commit reaches the open page
        before = published["l0"]["shift"]["units"]
        await prod.window({"l0": (2, RUNNING), "l1": (0, FAULT), "l2": (2, RUNNING)})
        want = last_payloads(cfg)["l0"]["shift"]["units"]
        assert want in (before + 2, 2)    # (a new shift restarts the count)

        async def updated() -> bool:
            return await number(page, "line:l0.shift.units") == want

        await wait_until(updated, within=5, what="the committed window on the page")
        assert errors == []
    finally:
        board.stop()
        await prod.close()


async def test_the_stale_badge_appears_when_the_agent_stops_and_clears_when_it_returns(
        page: Any, tmp_path: Path) -> None:
    cfg = board_config(tmp_path, interval_s=2, poll_s=0.1)
    prod = await Production.open(cfg, aligned(datetime.now(UTC), 2))
    await prod.window({"l0": (1, RUNNING), "l1": (1, RUNNING)})
    board = await started(cfg, tmp_path)
    try:
        await page.goto(board.url)
        badge = page.locator('[data-k="line:l0.stale"]')
        # no window for two intervals: stale, and the agent shown offline
        await wait_until(badge.is_visible, within=10, what="the stale badge")
        assert await page.locator("#offline").is_visible()
        await shot(page, "board-stale")
        # the agent is back: a window ending now
        prod._clock[0] = aligned(datetime.now(UTC), 2) - timedelta(seconds=2)
        await prod.window({"l0": (2, RUNNING), "l1": (1, RUNNING)})
        await wait_until(badge.is_hidden, within=5, what="the stale badge clears")
        assert await page.locator("#offline").is_hidden()
    finally:
        board.stop()
        await prod.close()


async def test_kiosk_mode_in_japanese(page: Any, tmp_path: Path) -> None:
    cfg = board_config(tmp_path, interval_s=60)
    prod = await Production.open(cfg, aligned(datetime.now(UTC), 60) - timedelta(minutes=5))
    await prod.run(6, lambda i, line: (2, RUNNING))
    board = await started(cfg, tmp_path)
    try:
        await page.goto(board.url + "?kiosk=1&lang=ja")
        assert await page.evaluate("document.body.classList.contains('kiosk')")
        assert await page.locator("html").get_attribute("lang") == "ja"
        assert "生産ボード" in (await page.locator("h1").text_content() or "")
        assert await page.locator('[data-k="line:l0.reason"]').text_content() == "稼働"
        assert await page.locator("#history").is_hidden()        # no chrome on a TV
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(13, 17, 23)"                    # the dark theme
        assert await number(page, "line:l0.shift.units") == last_payloads(cfg)["l0"]["shift"]["units"]
        since = datetime.fromisoformat(last_plant(cfg)["year_counted_since"])
        assert await page.locator('[data-k="plant.year.counted_since"]').text_content() == \
            since.astimezone(cfg.tz).strftime("%Y/%m/%d")
        await shot(page, "board-kiosk-ja")
        # rotation: after 5 s the first line alone fills the screen, the plant panels hidden
        await page.goto(board.url + "?kiosk=1&rotate=5")
        await wait_until(lambda: page.evaluate("document.body.classList.contains('one-line')"),
                         within=10, what="the kiosk rotates to the first line")
        assert await page.locator("#line-l0").is_visible()
        assert await page.locator("#line-l1").is_hidden()
        assert await page.locator("#plant").is_hidden()
    finally:
        board.stop()
        await prod.close()


async def test_an_open_page_recovers_across_a_board_restart(page: Any, tmp_path: Path) -> None:
    cfg = board_config(tmp_path, interval_s=60, poll_s=0.1)
    prod = await Production.open(cfg, aligned(datetime.now(UTC), 60) - timedelta(minutes=3))
    await prod.run(3, lambda i, line: (1, RUNNING))
    port = free_port()
    board = await started(cfg, tmp_path, port)
    try:
        await page.goto(board.url)
        await wait_until(lambda: page.evaluate("document.body.dataset.live === '1'"), within=5,
                         what="the live stream")
        board.stop()
        await wait_until(lambda: page.evaluate("document.body.dataset.live === '0'"), within=10,
                         what="the page notices the board is gone")
        await prod.window({"l0": (2, RUNNING), "l1": (1, RUNNING)})
        want = last_payloads(cfg)["l0"]["shift"]["units"]
        board = await started(cfg, tmp_path, port)

        async def caught_up() -> bool:
            return await number(page, "line:l0.shift.units") == want

        await wait_until(caught_up, within=15, what="the page resynchronised after the restart")
        assert await page.evaluate("document.body.dataset.live") == "1"
    finally:
        board.stop()
        await prod.close()
