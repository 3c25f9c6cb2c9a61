"""Every GET of the board's OpenAPI document, with any query: never a server error.

Hypothesis draws each documented parameter from values of its own schema and from values
that break it (any text, huge numbers, dates out of range), and adds undocumented ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.board.server import build
from tests.board_rig import RUNNING, Production, board_config

#: the live stream never ends by itself; its one header (Last-Event-ID) is tried in
#: test_board_api.test_any_last_event_id_gets_the_current_state
STREAMS = {"/api/v1/events"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = Path(tmp_path_factory.mktemp("board"))
    cfg = board_config(tmp)

    async def fill() -> None:
        prod = await Production.open(cfg, datetime(2026, 12, 3, 2, 50, tzinfo=UTC))
        await prod.run(20, lambda i, line: (1, RUNNING))
        await prod.close()

    asyncio.run(fill())
    app, _hub, _gateway = build(cfg)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def operations(client: TestClient) -> list[tuple[str, list[dict[str, Any]]]]:
    doc = client.get("/api/v1/openapi.json").json()
    return [(path, ops["get"].get("parameters", []))
            for path, ops in doc["paths"].items() if "get" in ops and path not in STREAMS]


def test_the_document_lists_the_api(client: TestClient) -> None:
    paths = {p for p, _ in operations(client)}
    assert {"/api/v1/state", "/api/v1/lines", "/api/v1/plant", "/api/v1/history",
            "/api/v1/shift-reports", "/api/v1/shift-reports.csv"} <= paths


def value(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    kinds = [s.get("type") for s in schema.get("anyOf", [schema])]
    good: list[st.SearchStrategy[str]] = []
    if "integer" in kinds:
        good.append(st.integers(schema.get("minimum", -10), schema.get("maximum", 10)).map(str))
    if ("string" in kinds and schema.get("format") == "date") or any(
            s.get("format") == "date" for s in schema.get("anyOf", [])):
        good.append(st.dates().map(lambda d: d.isoformat()))
    if "enum" in schema:
        good.append(st.sampled_from([str(v) for v in schema["enum"]]))
    bad = st.one_of(st.text(max_size=80), st.integers().map(str),
                    st.sampled_from(["", "-1", "0", "1e309", "9" * 40, "2026-02-30", "l0", "..%2F"]))
    return st.one_of(*good, bad) if good else bad


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_input_gets_a_server_error(client: TestClient, data: st.DataObject) -> None:
    path, params = data.draw(st.sampled_from(operations(client)))
    query: dict[str, str] = {}
    for p in params:
        if p["in"] == "query" and data.draw(st.booleans()):
            query[p["name"]] = data.draw(value(p.get("schema", {})))
    extra = data.draw(st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20),
                                      max_size=2))
    r = client.get(path, params={**extra, **query})
    assert r.status_code < 500, (path, query, r.status_code, r.text[:200])
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
