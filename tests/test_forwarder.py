"""Store and forward against a real Mosquitto: outages, freezes, ACL refusals, replay."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.config import MqttConfig
from agent.outputs.forwarder import Forwarder
from agent.outputs.json import mark_historical
from agent.outputs.mqtt.publisher import Publisher
from agent.store import NewRecord, Store
from tests.fixtures.mosquitto import MosquittoBroker, MqttSubscriber, ReceivedMessage
from tests.waiting import wait_until

BrokerFactory = Callable[..., MosquittoBroker]
SubscriberFactory = Callable[..., MqttSubscriber]
LINES = ("kei-ev", "rogue")


def test_mark_historical_rewrites_only_the_suffix() -> None:
    assert mark_historical(b'{"a":1,"historical":false}') == b'{"a":1,"historical":true}'
    assert mark_historical(b'{"historical":true}') == b'{"historical":true}'
    assert mark_historical(b'{"x":"historical":false}}') == b'{"x":"historical":false}}'


@dataclass
class Rig:
    """Store + publisher + forwarder, with a controllable wall clock for window ends."""

    broker: MosquittoBroker
    store: Store
    publisher: Publisher
    forwarder: Forwarder
    interval_s: float
    now: datetime
    alarms: list[tuple[str, str]] = field(default_factory=list)
    seqs: dict[str, int] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.publisher.start()
        self.task = asyncio.create_task(self.forwarder.run())

    def clock(self) -> datetime:
        return self.now

    async def commit(self, *, lines: tuple[str, ...] = LINES, topic: str | None = None,
                     window_end: datetime | None = None) -> None:
        """One window for every line, ending now (or at ``window_end``)."""
        end = window_end or self.now
        records = []
        for line in lines:
            seq = self.seqs[line] = self.seqs.get(line, 0) + 1
            payload = json.dumps({"line": line, "seq": seq, "window_end": end.isoformat(),
                                  "historical": False}, separators=(",", ":")).encode()
            records.append(NewRecord(topic=topic or f"plant/lines/{line}/output",
                                     payload=payload, qos=1, retain=False, line=line, seq=seq,
                                     window_end=end))
        await self.store.commit_window(records, [], None)
        self.forwarder.wake()

    def tick(self) -> None:
        self.now += timedelta(seconds=self.interval_s)


def seen(msgs: list[ReceivedMessage]) -> dict[tuple[str, int], dict[str, object]]:
    out: dict[tuple[str, int], dict[str, object]] = {}
    for m in msgs:
        body = m.json()
        out.setdefault((body["line"], body["seq"]), body)
    return out


def all_seen(rig: Rig) -> Callable[[list[ReceivedMessage]], bool]:
    expected = {(line, s) for line, n in rig.seqs.items() for s in range(1, n + 1)}
    return lambda msgs: len(msgs) >= len(expected) and expected <= set(seen(msgs))


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    rigs: list[Rig] = []

    async def make(broker: MosquittoBroker, *, interval_s: float = 60.0,
                   clock_now: datetime | None = None, batch: int = 500,
                   start: bool = True, replay_per_s: int = 0) -> Rig:
        store = await Store.open(tmp_path / f"state-{len(rigs)}.db", max_bytes=100_000_000)
        publisher = Publisher(MqttConfig(url=broker.url), client_id=f"fwd-{len(rigs)}",
                              will_topic="plant/status", will_payload=b"offline",
                              backoff_max_s=0.5)
        rig = Rig(broker, store, publisher, None, interval_s,  # type: ignore[arg-type]
                  clock_now or datetime.now(UTC))
        rig.forwarder = Forwarder(store, publisher, interval_s=interval_s,
                                  on_alarm=lambda k, m: rig.alarms.append((k, m)),
                                  clock=rig.clock, batch=batch, replay_per_s=replay_per_s)
        rigs.append(rig)
        if start:
            await rig.start()
        return rig

    yield make
    for rig in rigs:
        if rig.task is not None:
            rig.task.cancel()
            await asyncio.wait([rig.task], timeout=5)
            assert rig.task.done(), "the forwarder did not stop when cancelled"
        await rig.publisher.stop()
        await rig.store.close()


async def test_broker_outage_then_restart_loses_nothing(
        mosquitto_factory: BrokerFactory, mqtt_subscriber: SubscriberFactory,
        make_rig: Callable[..., object]) -> None:
    broker = mosquitto_factory(persistence=True)
    sub = mqtt_subscriber(broker, "plant/lines/#", persistent=True, client_id="outage-sub")
    rig: Rig = await make_rig(broker)  # type: ignore[misc]
    await asyncio.wait_for(rig.publisher.connected.wait(), 10)
    for _ in range(5):
        await rig.commit()
        await sub.wait_for(all_seen(rig))
        rig.tick()
    await wait_until(lambda: rig.store.backlog == 0)

    broker.stop()
    await wait_until(lambda: not rig.publisher.connected.is_set())
    for _ in range(20):  # twenty windows close while the broker is away
        await rig.commit()
        rig.tick()
    await asyncio.sleep(0.3)  # a wrongly-behaving forwarder would now be dropping rows
    assert rig.store.backlog == 40
    broker.start()
    await rig.commit()  # the live window after the outage

    msgs = await sub.wait_for(all_seen(rig), timeout=30)
    await wait_until(lambda: rig.store.backlog == 0)
    assert rig.store.dropped == 0
    got = seen(msgs)
    assert len(got) == 2 * 26
    # windows sent later than one interval after their end are historical; live ones not
    # (seq 25 ended exactly one interval before seq 26, which is not "later than")
    for (line, seq), body in got.items():
        assert body["historical"] is (6 <= seq <= 24), (line, seq, body)
    assert rig.publisher.reconnects >= 1
    assert rig.alarms == []


async def test_frozen_broker_loses_nothing(
        mosquitto: MosquittoBroker, mqtt_subscriber: SubscriberFactory,
        make_rig: Callable[..., object]) -> None:
    sub = mqtt_subscriber(mosquitto, "plant/lines/#")
    rig: Rig = await make_rig(mosquitto)  # type: ignore[misc]
    await asyncio.wait_for(rig.publisher.connected.wait(), 10)
    await rig.commit()
    await sub.wait_for(all_seen(rig))
    mosquitto.freeze()
    try:
        frozen_at = time.monotonic()
        for _ in range(10):
            await rig.commit()
        await wait_until(lambda: rig.publisher.inflight > 0)
        # stay frozen for three seconds, committing as windows close
        while time.monotonic() - frozen_at < 3:
            await rig.commit()
            await asyncio.sleep(0.25)
        assert rig.store.backlog > 0
    finally:
        mosquitto.thaw()
    await sub.wait_for(all_seen(rig), timeout=30)
    await wait_until(lambda: rig.store.backlog == 0)
    assert rig.store.dropped == 0


async def test_acl_denied_topic_keeps_its_rows_until_allowed(
        mosquitto_factory: BrokerFactory, mqtt_subscriber: SubscriberFactory,
        make_rig: Callable[..., object]) -> None:
    broker = mosquitto_factory(acl="topic read #\ntopic readwrite plant/lines/#\n")
    sub = mqtt_subscriber(broker, "plant/#")
    rig: Rig = await make_rig(broker, interval_s=1.0)  # type: ignore[misc]
    await asyncio.wait_for(rig.publisher.connected.wait(), 10)
    for _ in range(3):
        await rig.commit(lines=("kei-ev",))
        await rig.commit(lines=("plant",), topic="plant/plant/output")
    await sub.wait_for(lambda m: len({x.json()["seq"] for x in m if "lines" in x.topic}) == 3)
    await wait_until(lambda: rig.alarms != [])
    assert rig.alarms[0][0] == "publish_refused"
    assert "0x87" in rig.alarms[0][1]
    await wait_until(lambda: rig.store.backlog == 3)
    pending = await rig.store.pending(10)
    assert {r.topic for r in pending} == {"plant/plant/output"}
    # the parked topic is probed again and again: the alarm is raised once, not per refusal
    await wait_until(lambda: rig.publisher.refused >= 3)
    assert len(rig.alarms) == 1
    # other topics keep flowing while one is refused
    await rig.commit(lines=("kei-ev",))
    await sub.wait_for(lambda m: len({x.json()["seq"] for x in m if "lines" in x.topic}) == 4)

    broker.set_acl("topic read #\ntopic readwrite plant/#\n")
    msgs = await sub.wait_for(lambda m: sum(1 for x in m if x.topic == "plant/plant/output") >= 3)
    assert sorted(x.json()["seq"] for x in msgs if x.topic == "plant/plant/output") == [1, 2, 3]
    await wait_until(lambda: rig.store.backlog == 0)
    await wait_until(lambda: len(rig.alarms) == 2)
    assert rig.alarms[1] == ("publish_refused", "")


async def test_live_windows_overtake_the_backlog(
        mosquitto: MosquittoBroker, mqtt_subscriber: SubscriberFactory,
        make_rig: Callable[..., object]) -> None:
    sub = mqtt_subscriber(mosquitto, "plant/lines/#")
    rig: Rig = await make_rig(mosquitto, batch=100, start=False)  # type: ignore[misc]
    old = rig.now - timedelta(hours=2)
    for i in range(1500):
        await rig.commit(lines=("kei-ev",), window_end=old + timedelta(seconds=i))
    await rig.start()
    await wait_until(lambda: rig.forwarder.sent >= 200)
    await rig.commit(lines=("rogue",))
    msgs = await sub.wait_for(all_seen(rig), timeout=60)
    order = [(x.json()["line"], x.json()["seq"]) for x in msgs]
    live_at = order.index(("rogue", 1))
    last_backlog = max(i for i, key in enumerate(order) if key[0] == "kei-ev")
    assert live_at < last_backlog
    assert msgs[live_at].json()["historical"] is False
    assert all(x.json()["historical"] is True for x in msgs if x.json()["line"] == "kei-ev")


async def test_a_paced_replay_lets_live_windows_through_and_finishes(
        mosquitto: MosquittoBroker, mqtt_subscriber: SubscriberFactory,
        make_rig: Callable[..., object]) -> None:
    """publish.replay_per_s: the backlog goes at its pace, a live window committed during it
    is sent at once, and the replay still ends with every record acknowledged."""
    sub = mqtt_subscriber(mosquitto, "plant/lines/#")
    rig: Rig = await make_rig(mosquitto, batch=50, start=False, replay_per_s=500)  # type: ignore[misc]
    old = rig.now - timedelta(hours=2)
    for i in range(600):
        await rig.commit(lines=("kei-ev",), window_end=old + timedelta(seconds=i))
    await rig.start()
    await wait_until(lambda: rig.forwarder.sent >= 100)
    await rig.commit(lines=("rogue",))
    msgs = await sub.wait_for(all_seen(rig), timeout=60)
    order = [(x.json()["line"], x.json()["seq"]) for x in msgs]
    assert order.index(("rogue", 1)) < max(i for i, key in enumerate(order) if key[0] == "kei-ev")
    kei = [seq for line, seq in order if line == "kei-ev"]
    assert sorted(set(kei)) == list(range(1, 601))
    assert kei == sorted(kei)   # the backlog in order
    await wait_until(lambda: rig.store.backlog == 0)


async def test_backlog_replay_rate(mosquitto: MosquittoBroker,
                                   mqtt_subscriber: SubscriberFactory,
                                   make_rig: Callable[..., object]) -> None:
    sub = mqtt_subscriber(mosquitto, "plant/lines/#")
    rig: Rig = await make_rig(mosquitto, start=False)  # type: ignore[misc]
    old = rig.now - timedelta(days=1)
    records = []
    for seq in range(1, 5001):
        payload = b'{"line":"kei-ev","seq":%d,"historical":false}' % seq
        records.append(NewRecord(topic="plant/lines/kei-ev/output", payload=payload, qos=1,
                                 retain=False, line="kei-ev", seq=seq, window_end=old))
    await rig.store.commit_window(records, [], None)
    rig.seqs["kei-ev"] = 5000
    await rig.start()
    await asyncio.wait_for(rig.publisher.connected.wait(), 10)
    started = time.monotonic()
    rig.forwarder.wake()
    await sub.wait_for(all_seen(rig), timeout=90)
    elapsed = time.monotonic() - started
    await wait_until(lambda: rig.store.backlog == 0)
    print(f"\nbacklog replay: 5000 rows in {elapsed:.2f} s = {5000 / elapsed:.0f} rows/s")
    assert rig.forwarder.sent >= 5000


def test_historical_is_the_last_key_of_every_window_payload() -> None:
    """mark_historical rewrites the payload's tail: the models must keep `historical` last."""
    from agent.contract.payloads import LineOutput, PlantOutput

    for model in (LineOutput, PlantOutput):
        assert list(model.model_fields)[-1] == "historical", model.__name__


async def test_an_older_shift_report_never_becomes_the_retained_one(
        mosquitto: MosquittoBroker, mqtt_subscriber: SubscriberFactory,
        make_rig: Callable[..., object]) -> None:
    """After an outage spanning two shift ends both reports wait in the outbox: the
    newer (live) one must not overtake the older, or the older would be retained."""
    rig: Rig = await make_rig(mosquitto, start=False)  # type: ignore[misc]
    topic = "plant/lines/kei-ev/shift"
    older, newer = rig.now - timedelta(hours=8), rig.now
    await rig.store.commit_window([
        NewRecord(topic=topic, payload=json.dumps({"shift": "a"}).encode(), qos=1, retain=True,
                  line="kei-ev", seq=None, window_end=older),
        NewRecord(topic=topic, payload=json.dumps({"shift": "b"}).encode(), qos=1, retain=True,
                  line="kei-ev", seq=None, window_end=newer)], [], None)
    await rig.start()
    await wait_until(lambda: rig.store.backlog == 0)
    late = mqtt_subscriber(mosquitto, topic)
    msgs = await late.wait_for(lambda m: len(m) >= 1)
    assert msgs[0].retain
    assert msgs[0].json() == {"shift": "b"}
