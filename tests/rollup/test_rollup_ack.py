"""The site acknowledges what it has committed: S/rollup/ack/<gateway>, each line's epoch and
the run of windows it has without a gap; and it subscribes again whenever the broker comes back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from agent.rollup.payloads import SiteAck
from tests.fixtures.postgres import PostgresDatabase
from tests.rollup.rig import InProcessReplica, WindowPublisher, prepare_site, query, rollup_config
from tests.rollup.synth import window
from tests.waiting import wait_until

GATEWAYS = {"gw1": ["l1", "l2"], "gw2": ["l3"]}


def topic(gw: str, line: str) -> str:
    return f"test/site/{gw}/lines/{line}/output"


def latest(sub: Any, gateway: str) -> dict[str, tuple[int, int]]:
    """The newest acknowledgement of a gateway received so far, as line -> (epoch, seq)."""
    acks = [SiteAck.model_validate_json(m.payload) for m in sub.messages if m.topic == f"test/site/rollup/ack/{gateway}"]
    return {line: (a.epoch, a.first, a.seq) for line, a in acks[-1].lines.items()} if acks else {}


async def test_each_lines_run_of_committed_windows_is_acknowledged_to_its_gateway(
        mosquitto: Any, postgres_db: PostgresDatabase, mqtt_subscriber: Callable[..., Any]) -> None:
    cfg = rollup_config(mosquitto.url, postgres_db.url, GATEWAYS)
    origin = await prepare_site(cfg, back_s=30)
    sub = mqtt_subscriber(mosquitto, "test/site/rollup/ack/+")
    pub = WindowPublisher(mosquitto.host, mosquitto.port)

    def w(gw: str, line: str, seq: int, epoch: int = 1000) -> tuple[str, bytes]:
        return topic(gw, line), window(line, seq, origin + timedelta(seconds=seq), epoch=epoch)

    try:
        async with InProcessReplica(cfg, "a") as a:
            await wait_until(lambda: a.service.ready.is_set(), 20, "replica ready")
            # l1's seq 3 is missing (lost on the way): the site acknowledges 1..2 only
            pub.publish_many([w("gw1", "l1", 1), w("gw1", "l1", 2), w("gw1", "l1", 4), w("gw1", "l2", 1),
                              w("gw2", "l3", 3), w("gw2", "l3", 4)])
            await wait_until(lambda: latest(sub, "gw1") == {"l1": (1000, 1, 2), "l2": (1000, 1, 1)}, 20,
                             "gw1's ack")
            # l3's first two windows never arrived: the run it has is 3..4, and 1, 2 are not acknowledged
            await wait_until(lambda: latest(sub, "gw2") == {"l3": (1000, 3, 4)}, 20, "gw2's ack")
            # the missing windows are re-published: the runs grow up and down
            pub.publish_many([w("gw1", "l1", 3), w("gw2", "l3", 2), w("gw2", "l3", 1)])
            await wait_until(lambda: latest(sub, "gw1") == {"l1": (1000, 1, 4), "l2": (1000, 1, 1)}, 20,
                             "l1 from 1 to 4")
            await wait_until(lambda: latest(sub, "gw2") == {"l3": (1000, 1, 4)}, 20, "l3 from 1 to 4")
            # a re-sent window the site already has is answered all the same
            sub.clear()
            pub.publish_many([w("gw1", "l2", 1)])
            await wait_until(lambda: latest(sub, "gw1") == {"l1": (1000, 1, 4), "l2": (1000, 1, 1)}, 20,
                             "the answer to a duplicate")
            # a new epoch of a line (its agent's state file was replaced) is acknowledged from its first window
            pub.publish_many([w("gw2", "l3", 7, epoch=2000), w("gw2", "l3", 8, epoch=2000)])
            await wait_until(lambda: latest(sub, "gw2") == {"l3": (2000, 7, 8)}, 20, "l3's new epoch")
    finally:
        pub.close()
    # retained: an agent that connects later reads where the site stands
    late = mqtt_subscriber(mosquitto, "test/site/rollup/ack/+")
    await wait_until(lambda: latest(late, "gw1") == {"l1": (1000, 1, 4), "l2": (1000, 1, 1)}, 20, "the retained ack")
    progress = await query(postgres_db.url, "SELECT line, epoch, first, seq FROM plantfloor.line_progress "
                                            "ORDER BY 1, 2")
    assert progress == [("l1", 1000, 1, 4), ("l2", 1000, 1, 1), ("l3", 1000, 1, 4), ("l3", 2000, 7, 8)]


async def test_the_replica_subscribes_again_when_the_broker_restarts(
        mosquitto: Any, postgres_db: PostgresDatabase) -> None:
    """Mosquitto 2.0 keeps no shared subscription across its restart: the replica subscribes
    again on every CONNACK, whatever the session-present flag says."""
    cfg = rollup_config(mosquitto.url, postgres_db.url, GATEWAYS)
    origin = await prepare_site(cfg, back_s=30)
    async with InProcessReplica(cfg, "a") as a:
        await wait_until(lambda: a.service.ready.is_set(), 20, "replica ready")
        consumer = a.service.consumer
        assert consumer is not None
        mosquitto.stop()
        await wait_until(lambda: not consumer.connected.is_set(), 20, "the replica saw the broker go")
        mosquitto.start()
        await wait_until(consumer.connected.is_set, 30, "the replica connected and subscribed again")
        pub = WindowPublisher(mosquitto.host, mosquitto.port)
        try:
            assert pub.reaches_a_subscriber(topic("gw1", "l1").replace("output", "shift"))
            pub.publish_many([(topic("gw1", "l1"), window("l1", 1, origin))])
            await wait_until(lambda: a.service.ingest is not None and a.service.ingest.windows == 1, 20,
                             "the window committed")
        finally:
            pub.close()
