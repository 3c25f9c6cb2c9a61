"""The MQTT publisher against a real Mosquitto: acks, reason codes, will, TLS, 3.1.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from agent.config import MqttConfig, TlsConfig
from agent.contract.errors import PublishError, PublishRefused
from agent.outputs.mqtt.publisher import Publisher
from tests.fixtures.certs import TlsCerts
from tests.fixtures.mosquitto import MosquittoBroker, MqttSubscriber, TlsListener
from tests.waiting import wait_until

BrokerFactory = Callable[..., MosquittoBroker]
SubscriberFactory = Callable[..., MqttSubscriber]


@pytest.fixture
async def publishers() -> AsyncIterator[Callable[..., Awaitable[Publisher]]]:
    """Start publishers; all are stopped at teardown."""
    made: list[Publisher] = []

    async def make(url: str, *, wait: bool = True, **kwargs: Any) -> Publisher:
        cfg_keys = {"version", "tls", "username", "max_inflight", "keepalive_s"}
        cfg = MqttConfig(url=url, **{k: v for k, v in kwargs.items() if k in cfg_keys})
        opts = {k: v for k, v in kwargs.items() if k not in cfg_keys}
        opts.setdefault("client_id", f"test-pub-{len(made)}")
        opts.setdefault("will_topic", "plant/status")
        opts.setdefault("will_payload", b"offline-will")
        opts.setdefault("backoff_max_s", 0.5)
        pub = Publisher(cfg, **opts)
        made.append(pub)
        await pub.start()
        if wait:
            await asyncio.wait_for(pub.connected.wait(), 10)
        return pub

    yield make
    for pub in made:
        await pub.stop()


async def test_publish_qos1_returns_after_ack(mosquitto: MosquittoBroker,
                                             mqtt_subscriber: SubscriberFactory,
                                             publishers: Any) -> None:
    sub = mqtt_subscriber(mosquitto, "plant/lines/#")
    pub = await publishers(mosquitto.url)
    assert await pub.publish("plant/lines/a/output", b'{"seq":1}', qos=1) == 0
    assert pub.inflight == 0
    msgs = await sub.wait_for(lambda m: len(m) >= 1)
    assert msgs[0].topic == "plant/lines/a/output"
    assert msgs[0].payload == b'{"seq":1}'
    # QoS 0 returns once written, QoS 2 after PUBCOMP
    assert await pub.publish("plant/lines/a/output", b"q0", qos=0) == 0
    assert await pub.publish("plant/lines/a/output", b"q2", qos=2) == 0
    await sub.wait_for(lambda m: {x.payload for x in m} >= {b"q0", b"q2"})


async def test_no_matching_subscribers_is_counted(mosquitto: MosquittoBroker,
                                                  publishers: Any) -> None:
    pub = await publishers(mosquitto.url)
    assert await pub.publish("nobody/listens", b"x", qos=1) == 0x10
    assert pub.no_subscribers == 1


async def test_publish_when_not_connected_fails_fast(publishers: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    pub = await publishers(f"mqtt://127.0.0.1:{port}", wait=False)
    await wait_until(lambda: pub.last_error is not None)
    assert "connection refused" in (pub.last_error or "")
    with pytest.raises(PublishError, match="not connected"):
        await pub.publish("a/b", b"x", qos=1)


async def test_will_on_abrupt_drop_then_birth_on_reconnect(
        mosquitto: MosquittoBroker, mqtt_subscriber: SubscriberFactory, publishers: Any) -> None:
    sub = mqtt_subscriber(mosquitto, "plant/status")
    births = 0
    holder: list[Publisher] = []

    async def birth() -> None:
        nonlocal births
        births += 1
        await holder[0].publish("plant/status", b"online", qos=1, retain=True)

    pub = await publishers(mosquitto.url, on_connect=birth, wait=False)
    holder.append(pub)
    await sub.wait_for(lambda m: any(x.payload == b"online" for x in m))
    # cut the TCP connection under paho's feet: no DISCONNECT packet is sent
    sock = pub._client.socket() if pub._client else None
    assert sock is not None
    sock.shutdown(socket.SHUT_RDWR)
    msgs = await sub.wait_for(lambda m: [x.payload for x in m][-2:] == [b"offline-will", b"online"])
    assert births == 2
    assert pub.reconnects == 1
    # the will was retained
    late = mqtt_subscriber(mosquitto, "plant/status")
    retained = await late.wait_for(lambda m: len(m) >= 1)
    assert retained[0].retain
    assert retained[0].payload == b"online"
    assert any(x.payload == b"offline-will" for x in msgs)


async def test_clean_stop_publishes_final_status_and_no_will(
        mosquitto: MosquittoBroker, mqtt_subscriber: SubscriberFactory, publishers: Any) -> None:
    sub = mqtt_subscriber(mosquitto, ["plant/status", "marker"])
    pub = await publishers(mosquitto.url)
    await pub.stop(final_topic="plant/status", final_payload=b"offline-clean")
    assert not pub.connected.is_set()
    other = await publishers(mosquitto.url, client_id="marker-pub")
    await other.publish("marker", b"m", qos=1)
    msgs = await sub.wait_for(lambda m: any(x.topic == "marker" for x in m))
    assert [x.payload for x in msgs if x.topic == "plant/status"] == [b"offline-clean"]
    late = mqtt_subscriber(mosquitto, "plant/status")
    retained = await late.wait_for(lambda m: len(m) >= 1)
    assert retained[0].retain
    assert retained[0].payload == b"offline-clean"


async def test_acl_denial_raises_publish_refused(mosquitto_factory: BrokerFactory,
                                                publishers: Any) -> None:
    broker = mosquitto_factory(acl="topic readwrite allowed/#\n")
    pub = await publishers(broker.url)
    with pytest.raises(PublishRefused) as info:
        await pub.publish("denied/x", b"x", qos=1)
    assert info.value.reason_code == 0x87
    assert info.value.topic == "denied/x"
    assert pub.refused == 1
    # Mosquitto 2.0 closes the connection after refusing: the publisher reconnects
    deadline = time.monotonic() + 10
    while True:
        await asyncio.wait_for(pub.connected.wait(), 10)
        try:
            assert await pub.publish("allowed/x", b"x", qos=1) in (0, 0x10)
            break
        except PublishError:
            if time.monotonic() > deadline:
                raise


async def test_mqtt_311(mosquitto: MosquittoBroker, mqtt_subscriber: SubscriberFactory,
                        publishers: Any) -> None:
    sub = mqtt_subscriber(mosquitto, "v311/#", version="3.1.1")
    pub = await publishers(mosquitto.url, version="3.1.1")
    assert await pub.publish("v311/a", b"hello", qos=1) == 0
    await sub.wait_for(lambda m: any(x.payload == b"hello" for x in m))
    assert "p2" in mosquitto.log_text()  # mosquitto logs protocol v3.1.1 as "p2"


async def test_username_password(mosquitto_factory: BrokerFactory, publishers: Any) -> None:
    broker = mosquitto_factory(users={"plantfloor": "s3cret"}, allow_anonymous=False)
    good = await publishers(broker.url, username="plantfloor", password="s3cret")
    assert await good.publish("a/b", b"x", qos=1) in (0, 0x10)
    bad = await publishers(broker.url, username="plantfloor", password="wrong",
                           client_id="bad", wait=False)
    await wait_until(lambda: bad.last_error is not None)
    assert "refused the connection" in (bad.last_error or "")
    assert not bad.connected.is_set()


async def test_disconnect_while_awaiting_ack_fails_the_publish(
        mosquitto: MosquittoBroker, publishers: Any) -> None:
    pub = await publishers(mosquitto.url)
    mosquitto.freeze()
    try:
        task = asyncio.create_task(pub.publish("a/b", b"x", qos=1, timeout=30))
        await wait_until(lambda: pub.inflight == 1)
        started = time.monotonic()
    finally:
        mosquitto.kill()  # the frozen broker dies: the socket is reset
    with pytest.raises(PublishError, match="lost"):
        await task
    assert time.monotonic() - started < 10
    assert pub.inflight == 0
    mosquitto.start()
    await asyncio.wait_for(pub.connected.wait(), 10)
    assert pub.reconnects == 1
    assert await pub.publish("a/b", b"y", qos=1) in (0, 0x10)


async def test_inflight_is_capped_and_publish_waits_for_room(
        mosquitto: MosquittoBroker, publishers: Any) -> None:
    pub = await publishers(mosquitto.url, max_inflight=5)
    mosquitto.freeze()
    try:
        tasks = [asyncio.create_task(pub.publish("a/b", b"%d" % i, qos=1)) for i in range(20)]
        await wait_until(lambda: pub.inflight == 5)
        await asyncio.sleep(0.2)  # give a wrongly uncapped publisher the chance to overshoot
        assert pub.inflight == 5
        assert not any(t.done() for t in tasks)
    finally:
        mosquitto.thaw()
    results = await asyncio.gather(*tasks)
    assert set(results) <= {0, 0x10}
    assert len(results) == 20
    assert pub.inflight == 0


async def test_timeout_raises_publish_error(mosquitto: MosquittoBroker,
                                            publishers: Any) -> None:
    pub = await publishers(mosquitto.url)
    mosquitto.freeze()
    try:
        with pytest.raises(PublishError, match=r"within 0\.3 s"):
            await pub.publish("a/b", b"x", qos=1, timeout=0.3)
    finally:
        mosquitto.thaw()
    # the late acknowledgement frees the slot
    await wait_until(lambda: pub.inflight == 0)


def tls_broker(factory: BrokerFactory, certs: TlsCerts, *, other_ca: bool = False) -> MosquittoBroker:
    return factory(tls=TlsListener(
        cafile=certs.ca_cert,
        certfile=certs.other_broker_cert if other_ca else certs.broker_cert,
        keyfile=certs.other_broker_key if other_ca else certs.broker_key,
        require_certificate=True, use_identity_as_username=True))


async def test_tls_with_client_certificate(mosquitto_factory: BrokerFactory,
                                           mqtt_subscriber: SubscriberFactory,
                                           tls_certs: TlsCerts, publishers: Any) -> None:
    broker = tls_broker(mosquitto_factory, tls_certs)
    assert broker.url.startswith("mqtts://")
    sub = mqtt_subscriber(broker, "tls/#", ca_file=tls_certs.ca_cert,
                          cert_file=tls_certs.client_cert, key_file=tls_certs.client_key)
    tls = TlsConfig(ca_file=tls_certs.ca_cert, cert_file=tls_certs.client_cert,
                    key_file=tls_certs.client_key)
    pub = await publishers(broker.url, tls=tls)
    assert await pub.publish("tls/a", b"secret", qos=1) == 0
    await sub.wait_for(lambda m: any(x.payload == b"secret" for x in m))
    assert f"u'{tls_certs.client_cn}'" in broker.log_text()


async def test_tls_broker_from_another_ca_is_refused(mosquitto_factory: BrokerFactory,
                                                     tls_certs: TlsCerts,
                                                     publishers: Any) -> None:
    broker = tls_broker(mosquitto_factory, tls_certs, other_ca=True)
    tls = TlsConfig(ca_file=tls_certs.ca_cert, cert_file=tls_certs.client_cert,
                    key_file=tls_certs.client_key)
    pub = await publishers(broker.url, tls=tls, wait=False)
    await wait_until(lambda: pub.last_error is not None)
    assert "TLS handshake" in (pub.last_error or "")
    assert "certificate" in (pub.last_error or "")
    assert not pub.connected.is_set()
    with pytest.raises(PublishError):
        await pub.publish("tls/a", b"x", qos=1)
    assert "New client connected" not in broker.log_text()


async def test_tls_without_client_certificate_is_refused_by_broker(
        mosquitto_factory: BrokerFactory, tls_certs: TlsCerts, publishers: Any) -> None:
    broker = tls_broker(mosquitto_factory, tls_certs)
    pub = await publishers(broker.url, tls=TlsConfig(ca_file=tls_certs.ca_cert), wait=False)
    await wait_until(lambda: pub.last_error is not None)
    assert not pub.connected.is_set()


async def test_publish_many_returns_each_result_in_order(mosquitto_factory: BrokerFactory,
                                                         mqtt_subscriber: SubscriberFactory,
                                                         publishers: Any) -> None:
    """A batch: every message's reason code or refusal, in the order given; slots respected."""
    broker = mosquitto_factory(acl="topic readwrite allowed/#\n")
    sub = mqtt_subscriber(broker, "allowed/#")
    pub = await publishers(broker.url, max_inflight=3)
    messages = [(f"allowed/{i}", b"%d" % i, 1, False) for i in range(10)]
    results = await pub.publish_many(messages)
    assert results == [0] * 10
    got = await sub.wait_for(lambda m: len(m) >= 10)
    assert [m.payload for m in got] == [b"%d" % i for i in range(10)]
    assert pub.inflight == 0
    # a refused message is reported in its place (Mosquitto then drops the connection:
    # what was sent after it fails as lost or is acknowledged, never silently dropped)
    results = await pub.publish_many([("allowed/a", b"a", 1, False), ("denied/x", b"x", 1, False)])
    assert results[0] == 0
    assert isinstance(results[1], PublishRefused)
    assert results[1].reason_code == 0x87
    await wait_until(lambda: pub.inflight == 0)


async def test_publish_many_times_out_as_a_batch(mosquitto: MosquittoBroker,
                                                publishers: Any) -> None:
    pub = await publishers(mosquitto.url)
    mosquitto.freeze()
    try:
        results = await pub.publish_many([("a/b", b"x", 1, False), ("a/c", b"y", 1, False)],
                                         timeout=0.3)
    finally:
        mosquitto.thaw()
    assert all(isinstance(r, PublishError) and "within 0.3 s" in str(r) for r in results)
    await wait_until(lambda: pub.inflight == 0)
    # the publisher dropped the connection rather than let paho re-send: it comes back
    await asyncio.wait_for(pub.connected.wait(), 10)
    assert await pub.publish("a/b", b"z", qos=1) in (0, 0x10)


async def test_publish_many_when_not_connected_fails_every_message(publishers: Any) -> None:
    pub = await publishers("mqtt://127.0.0.1:1", wait=False)
    results = await pub.publish_many([("a/b", b"x", 1, False), ("a/c", b"y", 0, False)])
    assert [type(r) for r in results] == [PublishError, PublishError]
    assert pub.inflight == 0
