"""The edge node's session rules against a real Mosquitto, read by an independent decoder."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.agentrig import Run, two_plcs, wait_until
from tests.sparkplug_rig import (
    HOST,
    Host,
    births,
    node,
    sessions,
    sparkplug_config,
    wait_node,
)
from tests.sparkplug_wire import DATATYPES


def _ddata(n: Any) -> int:
    return len(n.of("DDATA"))


async def test_births_come_first_and_the_death_carries_the_births_bdseq(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(two_plcs(), auto=False)
    sub = mqtt_subscriber(mosquitto, "spBv1.0/#")
    cfg = sparkplug_config(tmp_path, mosquitto.url, sims)
    async with Run(cfg):
        await wait_node(sub, lambda n: _ddata(n) >= 2, 20, "the first DDATA")
        sims.lines["line-a"].produce(2)
        await wait_node(sub, lambda n: n.units("kei") == 2, 20, "DDATA with 2 units")
    n = await wait_node(sub, lambda n: bool(n.of("NDEATH")), 10, "NDEATH after the stop")
    first, second = n.messages[0], n.messages[1]
    assert (first.verb, first.seq) == ("NBIRTH", 0)
    assert (second.verb, second.device, second.seq) == ("DBIRTH", "kei", 1)
    assert first.value("bdSeq") == 0  # a new state store: the first session's bdSeq
    assert first.metrics["bdSeq"]["datatype"] == DATATYPES["Int64"]
    rebirth = first.metrics["Node Control/Rebirth"]
    assert rebirth["datatype"] == DATATYPES["Boolean"]
    assert rebirth["boolean_value"] is False
    assert "alias" not in rebirth
    assert "timestamp" in first.payload
    # the birth announces every metric the node and the device will publish, with an alias
    announced = {m["alias"]: m for b in (first, second) for m in b.payload["metrics"] if "alias" in m}
    assert all({"name", "datatype", "timestamp"} <= m.keys() for m in announced.values())
    assert len({m["name"] for m in announced.values()}) == len(announced)
    for m in n.of("DDATA", "NDATA"):
        assert "timestamp" in m.payload
        for metric in m.payload["metrics"]:
            assert "name" not in metric
            assert "datatype" not in metric
            assert metric["alias"] in announced
            assert "timestamp" in metric
    # seq counts every message of the session from the NBIRTH on, without a gap
    seqs = n.seqs()
    assert seqs == list(range(len(seqs)))
    death = n.of("NDEATH")[0]
    assert death is n.messages[-1]
    assert death.seq is None
    assert list(death.metrics) == ["bdSeq"]
    assert death.value("bdSeq") == first.value("bdSeq")
    ddata = n.of("DDATA")[0]
    assert ddata.device == "kei"
    assert ddata.metrics["units"]["timestamp"] == ddata.value("window_end")
    # QoS 0 and no retain for all but the will (QoS 1, not retained); received by a QoS 1
    # subscription, a message keeps the QoS it was published with
    flags = {(m.topic.split("/")[2], m.qos, m.retain) for m in sub.messages}
    assert flags == {("NBIRTH", 0, False), ("DBIRTH", 0, False), ("DDATA", 0, False),
                     ("NDATA", 0, False), ("NDEATH", 1, False)}
    # a clean session (MQTT 5 Clean Start 1, no session expiry): the broker logs "c1"
    assert re.search(rf"as {re.escape(cfg.client_id)}-sparkplug \(p5, c1,", mosquitto.log_text())


async def test_bdseq_advances_on_restart_and_reconnect_and_a_rebirth_keeps_it(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(two_plcs(), auto=False)
    sub = mqtt_subscriber(mosquitto, "spBv1.0/#")
    host = Host(mosquitto)
    # the primary host is how a subscriber makes sure it sees the births after a broker
    # restart: the node waits for the host's STATE online, published once it is subscribed
    cfg = sparkplug_config(tmp_path, mosquitto.url, sims, host=HOST)
    try:
        host.state(True)
        async with Run(cfg):
            await wait_node(sub, lambda n: _ddata(n) >= 1, 20, "a first DDATA")
        async with Run(cfg):  # a restart: a new MQTT session, a new bdSeq
            await wait_node(sub, lambda n: len(births(n)) == 2 and _ddata(n) >= 2, 20, "a second birth")
            mosquitto.stop()   # the retained STATE goes with it (no persistence)
            mosquitto.start()
            await sub.wait_subscribed(15)
            await host.wait_connected()
            host.state(True)
            n = await wait_node(sub, lambda n: len(births(n)) == 3, 30, "a birth after the reconnect")
            before = _ddata(n)
            await wait_node(sub, lambda n: _ddata(n) > before, 20, "data after the reconnect")
            host.rebirth()
            n = await wait_node(sub, lambda n: len(births(n)) == 4 and _ddata(n) > before + 1, 20,
                                "a rebirth and data after it")
    finally:
        host.close()
    bdseqs = [n.messages[i].value("bdSeq") for i in births(n)]
    assert bdseqs == [0, 1, 2, 2]
    assert n.of("NDEATH")[0].value("bdSeq") == 0
    rebirth, before_rebirth = sessions(n)[-1], sessions(n)[-2]
    assert [m.verb for m in rebirth[:2]] == ["NBIRTH", "DBIRTH"]
    assert [m.seq for m in rebirth] == list(range(len(rebirth)))
    # the session ran without a gap up to the rebirth
    assert [m.seq for m in before_rebirth] == list(range(len(before_rebirth)))
    # a complete rebirth: the same metrics, names, aliases and datatypes as the birth before
    def announced(session: list[Any]) -> set[tuple[Any, ...]]:
        return {(m.device, k, v.get("alias"), v["datatype"]) for m in session[:2]
                for k, v in m.metrics.items()}
    assert announced(rebirth) == announced(before_rebirth)


async def test_the_primary_host_gates_births_and_its_offline_state_ends_the_session(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(two_plcs(), auto=False)
    sub = mqtt_subscriber(mosquitto, "spBv1.0/#")
    host = Host(mosquitto)
    cfg = sparkplug_config(tmp_path, mosquitto.url, sims, host=HOST)
    try:
        async with Run(cfg) as run:
            sp = run.agent
            # connected, windows waiting in the outbox, and still no birth: the host is unknown
            await wait_until(lambda: sp.sparkplug is not None and sp.sparkplug.publisher.connected.is_set()
                             and sp.store is not None and sp.store.backlog >= 2, 20, "windows waiting")
            assert births(node(sub)) == []
            online = host.state(True)
            await wait_node(sub, lambda n: len(births(n)) == 1 and _ddata(n) >= 2, 20, "the birth")
            # an offline STATE older than the last online one is stale: the session goes on
            host.state(False, online - 1000)
            host.rebirth()
            await wait_node(sub, lambda n: len(births(n)) == 2, 20, "a rebirth in the same session")
            # commands that would write are refused and counted; nothing reaches a PLC
            host.dcmd("kei", [{"name": "units", "datatype": DATATYPES["UInt64"], "long_value": 5}])
            host.ncmd([{"name": "plant/units", "datatype": DATATYPES["UInt64"], "long_value": 1}])
            await wait_node(sub, lambda n: any(
                m.metrics.get("agent/commands_refused", {}).get("long_value") == 2
                for m in n.of("NDATA")), 20, "the refusals reported")
            assert all(plc.write_attempts == 0 for plc in sims.plcs.values())
            host.state(False)
            await wait_node(sub, lambda n: bool(n.of("NDEATH")), 20, "NDEATH after the host went offline")
            await wait_until(lambda: sp.sparkplug is not None and sp.sparkplug.bdseq == 1
                             and sp.sparkplug.publisher.connected.is_set(), 20, "a new session")
            count = len(node(sub).messages)
            host.state(True)
            n = await wait_node(sub, lambda n: len(births(n)) == 3, 20, "a birth once online again")
    finally:
        host.close()
    assert [n.messages[i].value("bdSeq") for i in births(n)] == [0, 0, 1]
    deaths = n.of("NDEATH")
    assert [d.value("bdSeq") for d in deaths] == [0]
    assert births(n)[1] < n.messages.index(deaths[0]) < births(n)[2]
    assert births(n)[2] >= count, "the new session waited for the host's online STATE"
