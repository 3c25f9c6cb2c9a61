"""Random and hostile messages published into running replicas beside genuine gateways.

The replicas stay up, every genuine window lands exactly once (the database equals the
ledger), and every hostile message is counted as rejected and kept in rejected_message.
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.postgres import PostgresDatabase
from tests.rollup.rig import InProcessReplica, WindowPublisher, prepare_site, query, rollup_config
from tests.rollup.synth import window
from tests.waiting import wait_until

GATEWAYS = {"gw1": ["l1", "l2"], "gw2": ["l3"]}
LINES = [("gw1", "l1"), ("gw1", "l2"), ("gw2", "l3")]
WINDOWS_PER_LINE = 4
#: the default bound (3,600 an hour) over a 1 s window plus a day
MOST_UNITS = 86_401

_epochs = itertools.count(7000)

Recipe = tuple[str, Any]


def topic(gw: str, line: str, kind: str = "output") -> str:
    return f"test/site/{gw}/lines/{line}/{kind}"


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4), max_leaves=12)

#: one hostile message each, as (kind, parameter); rendered against the example's genuine windows
hostile_recipes: st.SearchStrategy[Recipe] = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=300)),
    st.tuples(st.just("json"), _json),
    st.tuples(st.just("shift"), _json),
    st.tuples(st.just("time"), st.sampled_from(["0001-01-01T00:00:00.000Z", "9999-12-31T23:59:59.000Z",
                                                "1970-01-01T00:00:00.000Z", "2150-06-01T00:00:00.000Z"])),
    st.tuples(st.just("units"), st.integers(min_value=MOST_UNITS + 1, max_value=2**80)),
    st.tuples(st.just("negative"), st.sampled_from(["units", "seq", "epoch"])),
    st.tuples(st.just("target"), st.sampled_from(["1e400", "-1e400", "1e308", "-1"])),
    st.tuples(st.just("long"), st.tuples(st.sampled_from(["site", "product", "reason"]),
                                         st.text(min_size=257, max_size=3000))),
    st.tuples(st.just("nul"), st.text(max_size=10)),
    st.tuples(st.just("foreign"), st.sampled_from(["l3", "zz", "l1-b"])),
    st.tuples(st.just("mismatch"), st.just("l2")),
    st.tuples(st.just("backwards"), st.just(0)),
)


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def render(recipe: Recipe, origin: datetime, epoch: int) -> tuple[str, bytes]:
    """A hostile message under gateway gw1's root (the roll-up subscribes to it)."""
    kind, param = recipe
    base = json.loads(window("l1", 1, origin, epoch=epoch))
    out_topic = topic("gw1", "l1")
    if kind == "bytes":
        return out_topic, b"\xff" + param           # never valid JSON
    if kind in ("json", "shift"):
        return topic("gw1", "l1", "shift" if kind == "shift" else "output"), dumps({"x": param})
    if kind == "time":
        base["window_start"] = param
        base["window_end"] = param.replace(":00.000Z", ":30.000Z")
    elif kind == "units":
        base["units"] = param
    elif kind == "negative":
        base[param] = -1
    elif kind == "target":
        return out_topic, dumps(base).replace(b'"target":100.0', f'"target":{param}'.encode(), 1)
    elif kind == "long":
        base[param[0]] = param[1]
    elif kind == "nul":
        base["product"] = param + "\0"
    elif kind == "foreign":
        # another gateway's line (or none), with the epoch and seq its genuine window will have
        base["line"] = param
        return topic("gw1", param), dumps(base)
    elif kind == "mismatch":
        base["line"] = param
    elif kind == "backwards":
        base["window_end"] = base["window_start"]
    return out_topic, dumps(base)


async def rejected_rows(url: str) -> int:
    return int((await query(url, "SELECT count(*) FROM plantfloor.rejected_message"))[0][0])


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(hostile=st.lists(hostile_recipes, min_size=8, max_size=30), units=st.lists(
    st.integers(min_value=0, max_value=30), min_size=WINDOWS_PER_LINE * len(LINES),
    max_size=WINDOWS_PER_LINE * len(LINES)))
async def test_hostile_messages_are_rejected_and_genuine_windows_land_exactly_once(
        mosquitto: Any, postgres_db: PostgresDatabase, hostile: list[Recipe], units: list[int]) -> None:
    cfg = rollup_config(mosquitto.url, postgres_db.url, GATEWAYS, grace_s=1)
    origin = await prepare_site(cfg, back_s=30)
    epoch = next(_epochs)
    ledger: dict[tuple[str, int], int] = {}
    genuine: list[tuple[str, bytes]] = []
    for k, (gw, line) in enumerate(gl for _ in range(WINDOWS_PER_LINE) for gl in LINES):
        seq = k // len(LINES) + 1
        ledger[(line, seq)] = units[k]
        genuine.append((topic(gw, line), window(line, seq, origin + timedelta(seconds=seq), units=units[k],
                                                epoch=epoch)))
    bad = [render(r, origin, epoch) for r in hostile]
    # hostile first (a foreign window tries to pre-empt the genuine one's key), then interleaved
    mixed = bad[: len(bad) // 2] + [m for pair in itertools.zip_longest(genuine, bad[len(bad) // 2:])
                                     for m in pair if m is not None]
    rejected_before = await rejected_rows(postgres_db.url)
    pub = WindowPublisher(mosquitto.host, mosquitto.port)
    try:
        async with InProcessReplica(cfg, "a") as a, InProcessReplica(cfg, "b") as b:
            await wait_until(lambda: a.service.ready.is_set() and b.service.ready.is_set(), 20, "replicas ready")
            pub.publish_many(mixed)

            def rejected() -> int:
                return sum(r.service.ingest.rejected for r in (a, b) if r.service.ingest is not None)

            async def landed() -> bool:
                rows = await query(postgres_db.url, "SELECT count(*) FROM plantfloor.line_window WHERE epoch = %(e)s",
                                   {"e": epoch})
                return int(rows[0][0]) == len(genuine) and rejected() == len(bad)

            await wait_until(landed, 30, f"{len(genuine)} windows stored and {len(bad)} rejected")
            for r in (a, b):
                assert r.task is not None
                assert not r.task.done(), "a replica stopped"
                assert r.service.alarms() == []
    finally:
        pub.close()
    stored = await query(postgres_db.url, "SELECT line, seq, units, gateway FROM plantfloor.line_window "
                                          "WHERE epoch = %(e)s", {"e": epoch})
    assert {(line, seq): u for line, seq, u, _ in stored} == ledger
    assert {(line, gw) for line, _, _, gw in stored} == {(line, gw) for gw, line in LINES}
    assert await rejected_rows(postgres_db.url) - rejected_before == len(bad)
