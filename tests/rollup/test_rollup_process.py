"""``plantfloor rollup`` as processes: kill -9 of the leader, SIGTERM."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from tests.fixtures.postgres import PostgresDatabase
from tests.rollup.rig import (
    ReplicaProcess,
    WindowPublisher,
    prepare_site,
    query,
    rollup_config,
    write_yaml,
)
from tests.rollup.synth import window
from tests.rollup.test_rollup_service import (
    GATEWAYS,
    LINES,
    PLANT_TOPIC,
    latest_figures,
    row_count,
    topic,
)
from tests.waiting import wait_until

STATUS = "test/site/rollup/+/status"


def statuses(messages: list[Any]) -> dict[str, dict[str, Any]]:
    """The latest status of each replica."""
    out: dict[str, dict[str, Any]] = {}
    for m in messages:
        if m.topic.startswith("test/site/rollup/"):
            p = m.json()
            out[p["replica"]] = p
    return out


async def test_kill_9_of_the_leader_hands_over_and_its_session_is_drained(
        tmp_path: Path, mosquitto: Any, postgres_db: PostgresDatabase, mqtt_subscriber: Callable[..., Any]) -> None:
    data = rollup_config(mosquitto.url, postgres_db.url, GATEWAYS, grace_s=0.5)
    origin = await prepare_site(data, back_s=40)
    config = write_yaml(tmp_path / "rollup.yaml", data)
    sub = mqtt_subscriber(mosquitto, [STATUS, PLANT_TOPIC])
    replicas = {name: ReplicaProcess(config, name, tmp_path) for name in ("r1", "r2")}
    try:
        def online_with_a_leader() -> bool:
            s = statuses(sub.messages)
            return (all(s.get(n, {}).get("ready") is True for n in replicas)
                    and any(p["leader"] for p in s.values()))
        await wait_until(online_with_a_leader, 30, "both replicas subscribed, one leading")
        leader = next(n for n, p in statuses(sub.messages).items() if p["leader"])
        survivor = next(n for n in replicas if n != leader)
        replicas[leader].kill9()
        # the broker routes part of these to the dead replica's session: they wait there
        pub = WindowPublisher(mosquitto.host, mosquitto.port)
        n = 20
        pub.publish_many([(topic(gw, line), window(line, k + 1, origin + timedelta(seconds=k), units=1 + k % 3))
                          for k in range(n) for gw, line in LINES])
        pub.close()
        await wait_until(lambda: row_count(postgres_db.url), 1, "the database answers")

        async def all_rows() -> bool:
            return await row_count(postgres_db.url) == 3 * n
        await wait_until(all_rows, 30, "every window in the database")
        await wait_until(lambda: statuses(sub.messages).get(survivor, {}).get("leader") is True, 15,
                         f"{survivor} leads")
        await wait_until(lambda: f"drained the session of replica rollup-{leader}" in replicas[survivor].log(),
                         15, "the survivor drained the dead replica's session")
        left = await query(postgres_db.url, "SELECT client_id FROM plantfloor.replica")
        assert left == [(f"rollup-{survivor}",)]
        sums = dict(await query(postgres_db.url,
                                "SELECT period_start, sum(units)::int FROM plantfloor.line_window GROUP BY 1"))

        def figures_match() -> bool:
            got = {datetime.fromisoformat(p["window_start"]): p["units"] for p in latest_figures(sub.messages).values()}
            return all(got.get(p) == u for p, u in sums.items())
        await wait_until(figures_match, 20, "the survivor's figures equal the rows")
        replicas[survivor].terminate()
        assert await replicas[survivor].wait_exit(15) == 0
    finally:
        for r in replicas.values():
            r.ensure_stopped()
    seqs = sorted(seq for _, seq in latest_figures(sub.messages))
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_sigterm_commits_what_it_received_exits_0_and_leaves_offline_status(
        tmp_path: Path, mosquitto: Any, postgres_db: PostgresDatabase, mqtt_subscriber: Callable[..., Any]) -> None:
    data = rollup_config(mosquitto.url, postgres_db.url, GATEWAYS)
    origin = await prepare_site(data, back_s=20)
    config = write_yaml(tmp_path / "rollup.yaml", data)
    sub = mqtt_subscriber(mosquitto, STATUS)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    got: list[str] = []

    def notes() -> list[str]:
        with contextlib.suppress(BlockingIOError):
            while True:
                got.append(notify.recv(4096).decode())
        return got

    replica = ReplicaProcess(config, "r1", tmp_path, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                                           "WATCHDOG_USEC": "4000000"})
    try:
        await wait_until(lambda: statuses(sub.messages).get("r1", {}).get("ready") is True, 30, "subscribed")
        await wait_until(lambda: any("READY=1" in m for m in notes()), 10, "READY=1")
        assert "broker up" in next(m for m in got if "READY=1" in m)
        await wait_until(lambda: sum("WATCHDOG=1" in m for m in notes()) >= 2, 10, "watchdog pings")
        pub = WindowPublisher(mosquitto.host, mosquitto.port)
        pub.publish_many([(topic(gw, line), window(line, k + 1, origin + timedelta(seconds=k)))
                          for k in range(10) for gw, line in LINES])
        pub.close()
        replica.terminate()
        assert await replica.wait_exit(15) == 0, replica.log()[-2000:]
    finally:
        replica.ensure_stopped()
        notes()
        notify.close()
    assert any("STOPPING=1" in m for m in got)
    assert await row_count(postgres_db.url) == 30
    late = mqtt_subscriber(mosquitto, STATUS)
    await wait_until(lambda: bool(late.messages), 5, "retained status")
    status = late.messages[-1].json()
    assert late.messages[-1].retain
    assert (status["state"], status["leader"]) == ("offline", False)
    assert "Traceback" not in replica.log()


def test_check_connect_reaches_the_database_and_the_broker_once(
        tmp_path: Path, mosquitto: Any, postgres_db: PostgresDatabase, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_yaml(tmp_path / "rollup.yaml", rollup_config(mosquitto.url, postgres_db.url, GATEWAYS))
    assert main(["rollup", str(config), "--check", "--connect", "--replica", "a"]) == 0
    out = capsys.readouterr().out
    assert "database: PostgreSQL 1" in out
    assert "plantfloor schema none yet" in out
    assert f"broker: {mosquitto.url} accepted an MQTT 5 connection" in out
    mosquitto.stop()
    assert main(["rollup", str(config), "--check", "--connect", "--replica", "a"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"plantfloor: broker {mosquitto.url}")
    assert "\n" not in err
