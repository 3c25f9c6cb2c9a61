"""The OPC UA source against real asyncua servers on 127.0.0.1 (port 0).

Faults (bad and uncertain values, restarts, security) run against the software PLC of
``simulators/opcua_plc.py``. Data types, node id forms and user names run against
``MiniPlc`` below, which serves every integer type and a numeric node id.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

from agent.config import OpcUaSecurity, OpcUaSource
from agent.contract.errors import SourceUnavailable
from agent.contract.readings import Quality, Reading
from agent.sources.opcua import OpcUaClientSource, OpcUaPoint, _Handler, parse_node_id, to_reading
from simulators.opcua_plc import OpcUaPlc
from tests.fixtures.opcua_certs import OpcUaCerts

StartPlc = Callable[..., Awaitable[OpcUaPlc]]

NS_URI = "urn:plantfloor:test:lines"
NUMERIC_NODE = 1001  # ns=2;i=1001, an Int32 PackML-style counter
#: string node -> (initial value, variant type)
NODES: dict[str, tuple[int, ua.VariantType]] = {
    "Rogue.GoodCount": (4_000_000_000, ua.VariantType.UInt32),
    "Rogue.State": (1, ua.VariantType.Int16),
    "Kei.GoodCount": (65_000, ua.VariantType.UInt16),
    "Leaf.GoodCount": (2**40, ua.VariantType.UInt64),
    "Note.GoodCount": (-5, ua.VariantType.Int32),
    "Ariya.GoodCount": (-(2**40), ua.VariantType.Int64),
}
ALL_POINTS = [
    OpcUaPoint("rogue", "counter", "ns=2;s=Rogue.GoodCount"),
    OpcUaPoint("rogue", "state", "ns=2;s=Rogue.State"),
    OpcUaPoint("kei", "counter", "ns=2;s=Kei.GoodCount"),
    OpcUaPoint("leaf", "counter", "ns=2;s=Leaf.GoodCount"),
    OpcUaPoint("note", "counter", "ns=2;s=Note.GoodCount"),
    OpcUaPoint("ariya", "counter", "ns=2;s=Ariya.GoodCount"),
    OpcUaPoint("packml", "counter", f"ns=2;i={NUMERIC_NODE}"),
]


async def wait_for(pred: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll ``pred`` every 30 ms until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.03)


def source_cfg(endpoint: str, mode: str = "poll", **kw: Any) -> OpcUaSource:
    base: dict[str, Any] = {"id": "plc-rogue", "kind": "opcua", "endpoint": endpoint, "mode": mode,
                            "poll_interval_s": 0.1, "timeout_s": 1.0}
    return OpcUaSource.model_validate(base | kw)


def make_source(endpoint: str, points: Sequence[OpcUaPoint], mode: str = "poll",
                **kw: Any) -> OpcUaClientSource:
    return OpcUaClientSource(source_cfg(endpoint, mode, **kw), points)


def by_line(readings: Sequence[Reading]) -> dict[tuple[str, str], Reading]:
    return {(r.line, r.role): r for r in readings}


async def unavailable(source: OpcUaClientSource) -> bool:
    try:
        await source.read()
    except SourceUnavailable:
        return True
    return False


# --- a small server of every integer type -------------------------------------------------

class _Users:
    """Anonymous users, and plantfloor with the right password."""

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is None:
            return User(role=UserRole.User)
        if username == "plantfloor" and password == "s3cret":
            return User(role=UserRole.User, name=username)
        return None


class MiniPlc:
    """An asyncua server holding ``NODES`` and ``ns=2;i=1001`` in namespace ``NS_URI``."""

    def __init__(self) -> None:
        self.port = 0
        self.server: Server | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/mini"

    async def start(self) -> None:
        srv = Server(user_manager=_Users())
        await srv.init()
        srv.disable_clock()
        srv.set_endpoint(self.endpoint)
        srv.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        srv.set_identity_tokens([ua.AnonymousIdentityToken, ua.UserNameIdentityToken])
        assert await srv.register_namespace(NS_URI) == 2
        folder = await srv.nodes.objects.add_object(ua.NodeId("Lines", 2), "Lines")
        for name, (value, vtype) in NODES.items():
            await folder.add_variable(ua.NodeId(name, 2), name, ua.Variant(value, vtype))
        await folder.add_variable(ua.NodeId(NUMERIC_NODE, 2), "Numeric", ua.Variant(7, ua.VariantType.Int32))
        await srv.start()
        assert srv.bserver is not None
        self.port = srv.bserver.port
        self.server = srv

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def set(self, name: str, value: int) -> None:
        assert self.server is not None
        await self.server.write_attribute_value(ua.NodeId(name, 2), ua.DataValue(ua.Variant(value, NODES[name][1])))


class PlcThread:
    """A MiniPlc on an event loop of its own in a thread, so that one server (building an
    asyncua address space takes seconds) serves the whole module while each test has its
    own loop."""

    def __init__(self, plc: MiniPlc) -> None:
        self.plc = plc
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="opcua-mini-plc", daemon=True)

    def __enter__(self) -> PlcThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.plc.start(), self.loop).result(60)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _shutdown(self) -> None:
        await self.plc.stop()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    async def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the server's loop, from a test's loop, without blocking it."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    @property
    def endpoint(self) -> str:
        return self.plc.endpoint


@pytest.fixture(scope="module")
def mini() -> Iterator[PlcThread]:
    with PlcThread(MiniPlc()) as runner:
        yield runner


# --- pure decoding ------------------------------------------------------------------------

def test_to_reading_decides_on_the_status_code() -> None:
    point = OpcUaPoint("l", "counter", "ns=2;s=X")
    good = to_reading(point, ua.DataValue(ua.Variant(5, ua.VariantType.UInt32)), 1.0)
    assert (good.value, good.quality, good.modulus, good.error, good.code) == (5, Quality.GOOD, 2**32, None, None)
    uncertain = ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue)
    unc = to_reading(point, ua.DataValue(ua.Variant(6, ua.VariantType.UInt32), StatusCode=uncertain), 1.0)
    assert (unc.value, unc.quality, unc.error) == (6, Quality.UNCERTAIN, "UncertainLastUsableValue")
    assert unc.code == ua.StatusCodes.UncertainLastUsableValue
    bad = ua.StatusCode(ua.StatusCodes.BadSensorFailure)
    worse = to_reading(point, ua.DataValue(ua.Variant(7, ua.VariantType.UInt32), StatusCode=bad), 1.0)
    assert (worse.value, worse.quality, worse.error, worse.code) == (
        None, Quality.BAD, "BadSensorFailure", ua.StatusCodes.BadSensorFailure)
    text = to_reading(point, ua.DataValue(ua.Variant("x", ua.VariantType.String)), 1.0)
    assert (text.quality, text.code) == (Quality.BAD, ua.StatusCodes.BadTypeMismatch)
    # the Overflow info bit on a good value leaves it good
    ovf = to_reading(point, ua.DataValue(ua.Variant(8, ua.VariantType.UInt32),
                                         StatusCode=ua.StatusCode(ua.UInt32(0x480))), 1.0)
    assert (ovf.quality, ovf.value) == (Quality.GOOD, 8)
    state = to_reading(OpcUaPoint("l", "state", "ns=2;s=S"), ua.DataValue(ua.Variant(True)), 1.0)
    assert (state.value, state.modulus) == (1, None)


@pytest.mark.parametrize(("value", "vtype"), [
    (1234.0, ua.VariantType.Double), (12.0, ua.VariantType.Float), (True, ua.VariantType.Boolean),
    ("1234", ua.VariantType.String), (None, ua.VariantType.Null)])
def test_a_counter_node_that_is_not_an_integer_is_bad_with_its_type(value: object,
                                                                      vtype: ua.VariantType) -> None:
    """A bad download serves the counter as Double or Boolean: never taken for a count."""
    r = to_reading(OpcUaPoint("l", "counter", "ns=2;s=X"), ua.DataValue(ua.Variant(value, vtype)), 1.0)
    assert (r.value, r.quality, r.code) == (None, Quality.BAD, ua.StatusCodes.BadTypeMismatch)
    assert r.error is not None
    assert vtype.name in r.error
    assert "not an integer count" in r.error


def test_parse_node_id_resolves_namespace_uris() -> None:
    assert parse_node_id("ns=2;s=A.B") == ua.NodeId("A.B", 2)
    assert parse_node_id("ns=3;i=1001") == ua.NodeId(1001, 3)
    table = ["http://opcfoundation.org/UA/", "urn:a", NS_URI]
    assert parse_node_id(f"nsu={NS_URI};s=X", table) == ua.NodeId("X", 2)
    with pytest.raises(ValueError, match="not on the server"):
        parse_node_id("nsu=urn:nope;i=1", table)


# --- data types and node ids (MiniPlc) ----------------------------------------------------

@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_reads_every_integer_type_with_its_modulus(mini: PlcThread, mode: str) -> None:
    await mini.call(mini.plc.set("Rogue.GoodCount", 4_000_000_000))
    source = make_source(mini.endpoint, ALL_POINTS, mode)
    await source.connect()
    try:
        got = by_line(await source.read())
        assert len(got) == len(ALL_POINTS)
        assert all(r.quality is Quality.GOOD for r in got.values()), got
        assert (got["rogue", "counter"].value, got["rogue", "counter"].modulus) == (4_000_000_000, 2**32)
        assert (got["rogue", "state"].value, got["rogue", "state"].modulus) == (1, None)
        assert (got["kei", "counter"].value, got["kei", "counter"].modulus) == (65_000, 2**16)
        assert (got["leaf", "counter"].value, got["leaf", "counter"].modulus) == (2**40, 2**64)
        # signed counters count on through their negative half: the full width is the modulus
        assert (got["note", "counter"].value, got["note", "counter"].modulus) == (-5, 2**32)
        assert (got["ariya", "counter"].value, got["ariya", "counter"].modulus) == (-(2**40), 2**64)
        assert (got["packml", "counter"].value, got["packml", "counter"].modulus) == (7, 2**32)

        await mini.call(mini.plc.set("Rogue.GoodCount", 4_000_000_005))

        async def moved() -> bool:
            return by_line(await source.read())["rogue", "counter"].value == 4_000_000_005

        await wait_for(moved, 5)
    finally:
        await source.close()


async def test_namespace_uri_node_ids_are_resolved(mini: PlcThread) -> None:
    points = [OpcUaPoint("rogue", "state", f"nsu={NS_URI};s=Rogue.State"),
              OpcUaPoint("packml", "counter", f"nsu={NS_URI};i={NUMERIC_NODE}"),
              OpcUaPoint("lost", "counter", "nsu=urn:not:there;s=Rogue.GoodCount")]
    for mode in ("poll", "subscribe"):
        source = make_source(mini.endpoint, points, mode)
        await source.connect()
        try:
            got = by_line(await source.read())
            assert got["rogue", "state"].value == 1
            assert got["packml", "counter"].value == 7
            lost = got["lost", "counter"]
            assert (lost.quality, lost.code) == (Quality.BAD, ua.StatusCodes.BadNodeIdUnknown)
            assert "urn:not:there" in (lost.error or "")
        finally:
            await source.close()


async def test_user_name_and_password(mini: PlcThread, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANTFLOOR_OPCUA_PASSWORD", "s3cret")
    from_env = make_source(mini.endpoint, ALL_POINTS[:1], username="plantfloor")
    await from_env.connect()
    try:
        assert (await from_env.read())[0].quality is Quality.GOOD
    finally:
        await from_env.close()
    secret = tmp_path / "opcua-password"
    secret.write_text("guess\n")  # the file wins over the environment
    wrong = make_source(mini.endpoint, ALL_POINTS[:1], username="plantfloor", password_file=secret)
    with pytest.raises(SourceUnavailable, match=r"cannot connect: Bad"):
        await wrong.connect()


async def test_close_leaves_no_client_tasks(mini: PlcThread) -> None:
    source = make_source(mini.endpoint, ALL_POINTS, "subscribe")
    await source.connect()
    await source.read()

    def client_tasks() -> list[str]:
        names = [getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks() if not t.done()]
        return [n for n in names if n.split(".")[0] in ("Client", "UaClient", "UaSession", "Subscription")]

    assert client_tasks()  # the session runs a publish loop and watchdogs
    await source.close()
    assert client_tasks() == []
    await source.close()  # idempotent


async def test_subscription_notifications_drive_liveness_and_drops(mini: PlcThread) -> None:
    source = make_source(mini.endpoint, ALL_POINTS[:1], "subscribe")
    await source.connect()
    try:
        handler = _Handler(source)  # what asyncua calls for each notification
        node = type("N", (), {"nodeid": ua.NodeId("Rogue.GoodCount", 2)})()
        item = ua.MonitoredItemNotification(Value=ua.DataValue(
            ua.Variant(4_000_000_009, ua.VariantType.UInt32), StatusCode=ua.StatusCode(ua.UInt32(0x480))))
        handler.datachange_notification(node, None, type("D", (), {"monitored_item": item})())
        assert source.dropped == 1  # the server said its item queue overflowed
        assert (await source.read())[0].value == 4_000_000_009
        handler.status_change_notification(ua.StatusChangeNotification(
            Status=ua.StatusCode(ua.StatusCodes.BadTimeout)))
        with pytest.raises(SourceUnavailable, match="subscription ended"):
            await source.read()
    finally:
        await source.close()


async def test_nothing_listening_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = make_source(f"opc.tcp://127.0.0.1:{port}/none", ALL_POINTS[:1])
    with pytest.raises(SourceUnavailable, match="connection refused"):
        await source.connect()
    with pytest.raises(SourceUnavailable, match="not connected"):
        await source.read()
    await source.close()


# --- faults (the software PLC) ------------------------------------------------------------

async def power_off(plc: OpcUaPlc) -> None:
    """Stop the software PLC, sessions included, as a power cycle does."""
    await plc.stop()


def sim_points(plc: OpcUaPlc, line: str = "line-a") -> list[OpcUaPoint]:
    return [OpcUaPoint(line, "counter", plc.node_id(line, "counter")),
            OpcUaPoint(line, "state", plc.node_id(line, "state"))]


@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_bad_and_uncertain_values_are_flagged(opcua_plc: StartPlc, mode: str) -> None:
    plc = await opcua_plc(start=1000)
    points = [*sim_points(plc), OpcUaPoint("ghost", "counter", "ns=2;s=No.Such.Node")]
    source = make_source(plc.endpoint, points, mode)
    await source.connect()
    try:
        first = by_line(await source.read())
        assert (first["line-a", "counter"].quality, first["line-a", "counter"].value) == (Quality.GOOD, 1000)
        ghost = first["ghost", "counter"]
        assert (ghost.quality, ghost.value, ghost.error) == (Quality.BAD, None, "BadNodeIdUnknown")
        assert ghost.code == ua.StatusCodes.BadNodeIdUnknown

        plc.lines["line-a"].produce(3)
        plc.set_status("line-a", "counter", "bad")
        plc.set_status("line-a", "state", "uncertain")

        async def flagged() -> bool:
            now = by_line(await source.read())
            return (now["line-a", "counter"].quality is Quality.BAD
                    and now["line-a", "state"].quality is Quality.UNCERTAIN)

        await wait_for(flagged, 5)
        now = by_line(await source.read())
        counter, state = now["line-a", "counter"], now["line-a", "state"]
        assert (counter.value, counter.error, counter.code) == (
            None, "BadSensorFailure", ua.StatusCodes.BadSensorFailure)
        assert (state.error, state.code) == ("UncertainLastUsableValue", ua.StatusCodes.UncertainLastUsableValue)
        assert state.value is not None

        plc.set_status("line-a", "counter", "good")

        async def recovered() -> bool:
            r = by_line(await source.read())["line-a", "counter"]
            return (r.quality, r.value) == (Quality.GOOD, 1003)

        await wait_for(recovered, 5)
        assert plc.write_attempts == 0  # the agent never writes to a PLC
    finally:
        await source.close()


async def test_server_restart_recovers_within_ten_seconds(opcua_plc: StartPlc) -> None:
    plc = await opcua_plc(start=4_000_000_000)
    sub = make_source(plc.endpoint, sim_points(plc), "subscribe")
    poll = make_source(plc.endpoint, sim_points(plc), "poll")
    try:
        for source in (sub, poll):
            await source.connect()
            assert by_line(await source.read())["line-a", "counter"].value == 4_000_000_000

        await power_off(plc)
        for source in (sub, poll):
            await wait_for(lambda s=source: unavailable(s), 5)
            await source.close()
            with pytest.raises(SourceUnavailable, match=r"opc\.tcp://127\.0\.0\.1:\d+/plantfloor"):
                await source.connect()  # still down

        plc.lines["line-a"].produce(123)  # the line kept building while the server was away
        await plc.start()  # same port, counters kept
        back = time.monotonic()
        for source in (sub, poll):
            while True:  # what the supervisor does, with a short back-off
                try:
                    await source.connect()
                    break
                except SourceUnavailable:
                    assert time.monotonic() - back < 10, "not reconnected within 10 s"
                    await asyncio.sleep(0.2)
            first = by_line(await source.read())["line-a", "counter"]
            assert (first.quality, first.value) == (Quality.GOOD, 4_000_000_123)  # the real value, not 0
        assert time.monotonic() - back < 10

        plc.lines["line-a"].produce(1)  # the re-created subscription delivers changes

        async def flows() -> bool:
            return by_line(await sub.read())["line-a", "counter"].value == 4_000_000_124

        await wait_for(flows, 5)
    finally:
        await sub.close()
        await poll.close()


# --- security (the software PLC with certificates) ----------------------------------------

def secured(certs: OpcUaCerts, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt",
                            "certificate": certs.client_cert, "private_key": certs.client_key,
                            "server_certificate": certs.server_cert}
    return OpcUaSecurity.model_validate(base | kw).model_dump()


async def test_secured_session_with_pinned_or_trusted_certificate(opcua_plc: StartPlc,
                                                                   opcua_certs: OpcUaCerts) -> None:
    plc = await opcua_plc(start=42, certificate=opcua_certs.server_cert, private_key=opcua_certs.server_key,
                          security_policies=["Basic256Sha256_SignAndEncrypt"],
                          trusted_client_certs=[opcua_certs.client_cert])
    variants = [
        ("subscribe", secured(opcua_certs)),
        ("poll", secured(opcua_certs, server_certificate=opcua_certs.server_cert_pem)),
        ("poll", secured(opcua_certs, server_certificate=None, trust_dir=opcua_certs.trust_dir)),
        ("poll", secured(opcua_certs, server_certificate=None, trust_dir=opcua_certs.server_trust_dir)),
    ]
    for mode, security in variants:
        source = make_source(plc.endpoint, sim_points(plc), mode, security=security)
        await source.connect()
        try:
            got = by_line(await source.read())
            assert (got["line-a", "counter"].quality, got["line-a", "counter"].value) == (Quality.GOOD, 42)
        finally:
            await source.close()


async def test_untrusted_server_is_refused_without_fallback(opcua_plc: StartPlc,
                                                            opcua_certs: OpcUaCerts) -> None:
    # another certificate under the same name, and policy None on offer as well
    plc = await opcua_plc(certificate=opcua_certs.impostor_cert, private_key=opcua_certs.impostor_key,
                          security_policies=["Basic256Sha256_SignAndEncrypt", "NoSecurity"])
    pinned = make_source(plc.endpoint, sim_points(plc), "subscribe", security=secured(opcua_certs))
    with pytest.raises(SourceUnavailable) as refused:
        await pinned.connect()
    assert plc.endpoint in str(refused.value)
    assert "not the pinned one" in str(refused.value)
    with pytest.raises(SourceUnavailable, match="not connected"):
        await pinned.read()

    listed = make_source(plc.endpoint, sim_points(plc), "subscribe",
                         security=secured(opcua_certs, server_certificate=None, trust_dir=opcua_certs.trust_dir))
    with pytest.raises(SourceUnavailable, match="not in the trust folder"):
        await listed.connect()

    empty = make_source(plc.endpoint, sim_points(plc), "subscribe",
                        security=secured(opcua_certs, server_certificate=None,
                                         trust_dir=opcua_certs.empty_trust_dir))
    with pytest.raises(SourceUnavailable, match="not in the trust folder"):
        await empty.connect()
    assert plc.reads == 0  # no session read anything, secured or not


async def test_missing_policy_on_server_is_refused(opcua_plc: StartPlc, opcua_certs: OpcUaCerts) -> None:
    plc = await opcua_plc(certificate=opcua_certs.server_cert, private_key=opcua_certs.server_key,
                          security_policies=["Basic256Sha256_Sign"])
    source = make_source(plc.endpoint, sim_points(plc), "poll", security=secured(opcua_certs))
    with pytest.raises(SourceUnavailable, match="offers no Basic256Sha256/SignAndEncrypt endpoint"):
        await source.connect()
    assert plc.reads == 0
