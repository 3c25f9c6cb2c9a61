"""The board's web application (FastAPI): the page, the JSON API under ``/api/v1/`` with its
OpenAPI document, and the live stream of states (Server-Sent Events).

GET (and HEAD) only; every response carries a strict Content-Security-Policy (scripts and
styles from the package only, no inline script); with a token configured every request
must carry it (bearer, basic-auth password, or the cookie set by ``?token=``). The page's
first paint is rendered here with the full current state; its script applies updates.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, PlainTextResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from agent import __version__
from agent.board.figures import (
    BoardState,
    HistoryPoint,
    LineView,
    PlantView,
    ShiftSummary,
    shift_summary,
)
from agent.board.hub import FigureSource, Hub
from agent.board.i18n import LABELS, Lang, labels
from agent.config.board import BoardConfig
from agent.contract.errors import PlantfloorError
from agent.views.report import reports_csv

__all__ = ["CSP", "create_app"]

HERE = Path(__file__).parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
COOKIE = "plantfloor_board"
#: a page waits this long for a new state before the stream's own keep-alive
WAIT_S = 10.0


def create_app(board: BoardConfig, gateway: FigureSource, hub: Hub, *, token: str | None
               ) -> FastAPI:
    """The application of one board (the hub is run by the server's lifespan)."""
    app = FastAPI(title="plantfloor board", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/v1/openapi.json",
                  description="Read-only figures of a plantfloor gateway: lines, plant, "
                              "history and shift reports (docs/board.md).")
    templates = Jinja2Templates(directory=HERE / "templates")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    names = set(gateway.site.lines)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                    ) -> Response:
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("the board is read-only: GET only\n", status_code=405,
                                     headers={"Allow": "GET, HEAD", **_headers()})
        query_token = request.query_params.get("token")
        if token is not None and not _authorized(request, token):
            return PlainTextResponse("an access token is needed (board.credential_file)\n",
                                     status_code=401, headers={
                                         "WWW-Authenticate": 'Basic realm="plantfloor board"',
                                         **_headers()})
        response = await call_next(request)
        response.headers.update(_headers())
        if token is not None and query_token is not None:
            # a kiosk opened with ?token= keeps it for its live stream and reloads
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    def _lang(lang: str | None) -> Lang:
        return "ja" if lang == "ja" else "en"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(request: Request, lang: str | None = None, kiosk: str | None = None,
                   rotate: Annotated[int | None, Query(ge=5, le=3600)] = None) -> Response:
        snap = hub.current or await hub.refresh()
        lg = _lang(lang)
        return templates.TemplateResponse(request, "board.html", {
            "s": snap.state, "state_json": snap.json.replace("</", "<\\/"), "t": labels(lg), "lang": lg,
            "kiosk": kiosk not in (None, "0", "false"), "rotate": rotate,
            "labels_json": _labels_json(lg)})

    @app.get("/api/v1/state", response_model=BoardState, summary="Everything the board shows")
    async def state() -> Response:
        snap = hub.current or await hub.refresh()
        return Response(snap.json, media_type="application/json")

    @app.get("/api/v1/lines", summary="Every line: units against target, state, freshness, OEE")
    async def lines() -> list[LineView]:
        snap = hub.current or await hub.refresh()
        return snap.state.lines

    @app.get("/api/v1/plant", summary="The plant: today, this shift, the year against the plan")
    async def plant() -> PlantView | None:
        snap = hub.current or await hub.refresh()
        return snap.state.plant

    @app.get("/api/v1/history", summary="Units and target by hour, day or week")
    async def history(
            bucket: Literal["hour", "day", "week"] = "hour",
            days: Annotated[int, Query(ge=1, le=400, description="how far back")] = 2,
            line: Annotated[str | None, Query(max_length=64, description="one line (default: every line summed)")] = None,
    ) -> list[HistoryPoint]:
        if line is not None and line not in names:
            raise HTTPException(404, f"there is no line {line!r}")
        return await gateway.history(bucket, min(days, gateway.site.history_days), line)

    @app.get("/api/v1/shift-reports", summary="The shift reports of a production date")
    async def shift_reports(day: Annotated[date | None, Query(alias="date")] = None,
                            ) -> list[ShiftSummary]:
        reports = await gateway.reports(day or gateway.calendar.production_date(gateway.now()))
        return [shift_summary(r) for r in reports]

    @app.get("/api/v1/shift-reports.csv", response_class=PlainTextResponse,
             summary="The shift reports of a production date as CSV (as plantfloor report)")
    async def shift_reports_csv(day: Annotated[date | None, Query(alias="date")] = None
                                ) -> Response:
        d = day or gateway.calendar.production_date(gateway.now())
        body = reports_csv(await gateway.reports(d))
        return Response(body + "\n", media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="shift-reports-{d.isoformat()}.csv"'})

    def room_for_a_page() -> None:
        # checked before the stream starts: once it has, its status is sent
        if hub.clients >= board.max_event_clients:
            raise HTTPException(503, "too many live pages", headers={"Retry-After": "10"})

    @app.get("/api/v1/events", response_class=EventSourceResponse,
             dependencies=[Depends(room_for_a_page)],
             responses={503: {"description": "board.max_event_clients live pages are open; "
                                             "retry after the seconds in Retry-After"}},
             summary="Live states (Server-Sent Events, event 'state', and the board's time, event "
                     "'clock'; reconnect with Last-Event-ID)")
    async def events(request: Request,
                     last_event_id: Annotated[str | None, Header(max_length=100)] = None,
                     ) -> AsyncIterator[ServerSentEvent]:
        hub.clients += 1
        try:
            # the board's time for the page's clock (a TV's own clock may be wrong, and the
            # demo's plant runs on a simulated one), then the current state unless the page
            # already has it; the time again with every state and at least every WAIT_S
            seen = last_event_id
            yield ServerSentEvent(comment="plantfloor board", retry=2000)
            yield ServerSentEvent(raw_data=hub.now().isoformat(), event="clock")
            while not await request.is_disconnected():
                snap = await hub.wait_newer(seen, WAIT_S)
                if snap is not None:
                    seen = snap.id
                    yield ServerSentEvent(raw_data=snap.json, event="state", id=snap.id)
                yield ServerSentEvent(raw_data=hub.now().isoformat(), event="clock")
        finally:
            hub.clients -= 1

    @app.get("/healthz", include_in_schema=False)
    async def health() -> Response:
        if hub.error is not None:
            return PlainTextResponse(hub.error + "\n", status_code=503)
        return PlainTextResponse("ok\n")

    @app.exception_handler(PlantfloorError)
    async def unreadable(_request: Request, exc: PlantfloorError) -> Response:
        return PlainTextResponse(f"{exc}\n", status_code=503, headers=_headers())

    return app


def _headers() -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
            "Cache-Control": "no-store"}


def _authorized(request: Request, token: str) -> bool:
    given: list[str] = []
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        given.append(value.strip())
    elif scheme.lower() == "basic":
        with contextlib.suppress(binascii.Error, UnicodeDecodeError):
            given.append(base64.b64decode(value.strip(), validate=True).decode().partition(":")[2])
    for candidate in (request.cookies.get(COOKIE), request.query_params.get("token")):
        if candidate:
            given.append(candidate)
    return any(hmac.compare_digest(g.encode(), token.encode()) for g in given)


def _labels_json(lang: Lang) -> str:
    import json

    return json.dumps({k: v[lang] for k, v in LABELS.items()}, ensure_ascii=False)
