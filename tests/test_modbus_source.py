"""ModbusTcpSource against real pymodbus TCP servers on loopback (port 0)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.config import Config, ModbusSource
from agent.contract.errors import SourceUnavailable
from agent.contract.readings import Quality, Reading
from agent.sources.decode import encode
from agent.sources.modbus import ModbusTcpSource, exception_text
from agent.sources.modbus_plan import PointRef

_FC_TABLE = {3: "holding", 4: "input"}


class StubPlc:
    """A pymodbus TCP server whose register store has fault knobs.

    ``mapped``: when set, only these (unit, table, address) registers exist and a read
    covering any other answers exception 2. ``silent`` units never answer.
    """

    def __init__(self) -> None:
        self.regs: dict[tuple[int, str, int], int] = {}
        self.mapped: set[tuple[int, str, int]] | None = None
        self.exceptions: dict[int | None, int] = {}
        self.silent: set[int] = set()
        self.delay_s = 0.0
        self.reads: list[tuple[int, str, int, int]] = []
        self.refused: list[tuple[int, str, int, int]] = []
        self.write_attempts = 0
        self.port = 0
        self._server: ModbusTcpServer | None = None
        self._release = asyncio.Event()

    def put(self, unit: int, table: str, address: int, type_: str, value: int, order: str = "big") -> None:
        for i, word in enumerate(encode(value, type_, order)):  # type: ignore[arg-type]
            self.regs[(unit, table, address + i)] = word

    # --- the store interface pymodbus' request handler calls ---------------------------
    def device_ids(self) -> list[int]:
        return sorted({k[0] for k in self.regs})

    async def async_getValues(self, dev_id: int, fc: int, address: int, count: int) -> Any:
        if dev_id in self.silent:
            raise NoSuchIdException("silent")  # with ignore_missing_devices: no answer at all
        if self.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), self.delay_s)
        table = _FC_TABLE.get(fc)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        code = self.exceptions.get(dev_id, self.exceptions.get(None))
        if code is not None:
            return ExcCodes(code)
        addrs = range(address, address + count)
        if self.mapped is not None and any((dev_id, table, a) not in self.mapped for a in addrs):
            self.refused.append((dev_id, table, address, count))
            return ExcCodes.ILLEGAL_ADDRESS
        self.reads.append((dev_id, table, address, count))
        return [self.regs.get((dev_id, table, a), 0) for a in addrs]

    async def async_setValues(self, dev_id: int, fc: int, address: int, values: Any) -> Any:
        self.write_attempts += 1
        return ExcCodes.ILLEGAL_FUNCTION

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._release = asyncio.Event()
        server = ModbusTcpServer(SimDevice(id=0, simdata=SimData(0, count=1, datatype=DataType.REGISTERS)),
                                 address=("127.0.0.1", self.port), ignore_missing_devices=True)
        server.context = self  # type: ignore[assignment]
        await server.serve_forever(background=True)
        self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._server = server

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            await self._server.shutdown()
            self._server = None


@pytest.fixture
async def stub_plc() -> AsyncIterator[Callable[[], Any]]:
    started: list[StubPlc] = []

    async def make() -> StubPlc:
        plc = StubPlc()
        await plc.start()
        started.append(plc)
        return plc

    yield make
    for plc in started:
        await plc.stop()


def modbus_cfg(port: int, **kw: Any) -> ModbusSource:
    base: dict[str, Any] = {"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": port,
                            "timeout_s": 0.3}
    base.update(kw)
    return ModbusSource.model_validate(base)


def by_line(readings: list[Reading]) -> dict[tuple[str, str], Reading]:
    return {(r.line, r.role): r for r in readings}


def config(port: int, lines: list[dict[str, Any]], **source_kw: Any) -> Config:
    src = {"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": port, "timeout_s": 0.3}
    src.update(source_kw)
    return Config.model_validate({
        "site": "test", "timezone": "UTC",
        "plant": {"capacity_per_year": 1000, "planned_utilization": 0.8},
        "shifts": [{"name": "day", "start": "06:00", "end": "14:00"}],
        "sources": [src, {"id": "other", "kind": "modbus", "host": "127.0.0.1", "port": 1}],
        "lines": lines,
    })


async def test_a_lines_tags_come_as_one_reading_per_request(stub_plc: Any) -> None:
    """Tags only report their last value: one reading carries them all, decoded like points."""
    plc = await stub_plc()
    plc.put(1, "holding", 100, "uint32", 42)
    plc.put(1, "holding", 102, "uint16", 7)
    plc.put(1, "holding", 103, "int16", -3)
    plc.put(1, "holding", 104, "float32", 21.5)
    plc.put(1, "holding", 106, "uint32", 70_000, "little")
    cfg = config(plc.port, [
        {"id": "a", "product": "A", "target_per_hour": 10,
         "counter": {"source": "plc", "address": 100, "type": "uint32"},
         "tags": {"buffer": {"source": "plc", "address": 102, "type": "uint16"},
                  "delta": {"source": "plc", "address": 103, "type": "int16"},
                  "temp": {"source": "plc", "address": 104, "type": "float32"},
                  "big": {"source": "plc", "address": 106, "type": "uint32", "word_order": "little"}}},
    ])
    src = ModbusTcpSource.from_config(cfg, cfg.source("plc"))  # type: ignore[arg-type]
    await src.connect()
    try:
        readings = await src.read()
    finally:
        await src.close()
    assert [(r.role, r.value) for r in readings if r.role != "tags"] == [("counter", 42)]
    tags = [r for r in readings if r.role == "tags"]
    assert len(tags) == 1
    assert tags[0].quality is Quality.GOOD
    assert tags[0].values == {"buffer": 7, "delta": -3, "temp": 21.5, "big": 70_000}
    assert sorted(plc.reads) == [(1, "holding", 100, 8)]


async def test_from_config_reads_every_type_order_table_and_unit(stub_plc: Any) -> None:
    plc = await stub_plc()
    plc.put(1, "holding", 100, "uint32", 123_456_789)
    plc.put(1, "holding", 110, "uint16", 1)
    plc.put(1, "input", 0, "uint32", 70_000, "little")
    plc.put(2, "holding", 10, "uint64", 2**40 + 5)
    plc.put(2, "holding", 20, "int32", -7)
    plc.put(2, "holding", 30, "int16", -2)
    plc.put(1, "holding", 200, "float32", 2)  # a state held as a float
    cfg = config(plc.port, [
        {"id": "a", "product": "A", "target_per_hour": 10,
         "counter": {"source": "plc", "address": 100, "type": "uint32"},
         "state": {"source": "plc", "address": 110, "type": "uint16"}},
        {"id": "b", "product": "B", "target_per_hour": 10,
         "counter": {"source": "plc", "address": 0, "table": "input", "type": "uint32", "word_order": "little"},
         "state": {"source": "plc", "address": 200, "type": "float32"}},
        {"id": "c", "product": "C", "target_per_hour": 10,
         "counter": {"source": "plc", "unit_id": 2, "address": 10, "type": "uint64"}},
        {"id": "d", "product": "D", "target_per_hour": 10,
         "counter": {"source": "plc", "unit_id": 2, "address": 20, "type": "int32"},
         "state": {"source": "plc", "unit_id": 2, "address": 30, "type": "int16"}},
        {"id": "e", "product": "E", "target_per_hour": 10, "max_rate_per_hour": 100,
         "counter": {"source": "other", "address": 0, "type": "uint16"}},
    ])
    src = ModbusTcpSource.from_config(cfg, cfg.source("plc"))  # type: ignore[arg-type]
    assert src.id == "plc"
    assert {p.line for p in src.points} == {"a", "b", "c", "d"}   # "e" is another source's
    await src.connect()
    try:
        t0 = time.monotonic()
        got = by_line(await src.read())
    finally:
        await src.close()
    assert {k: (r.value, r.quality, r.modulus) for k, r in got.items()} == {
        ("a", "counter"): (123_456_789, Quality.GOOD, 2**32),
        ("a", "state"): (1, Quality.GOOD, None),
        ("b", "counter"): (70_000, Quality.GOOD, 2**32),
        ("b", "state"): (2, Quality.GOOD, None),
        ("c", "counter"): (2**40 + 5, Quality.GOOD, 2**64),
        ("d", "counter"): (-7, Quality.GOOD, 2**32),  # a signed counter wraps at its full width
        ("d", "state"): (-2, Quality.GOOD, None),
    }
    assert all(t0 <= r.mono <= time.monotonic() for r in got.values())
    # 100..110 coalesced; 200 lies beyond max_gap; unit 2's gaps (6, 8) are spanned
    assert sorted(plc.reads) == sorted([(1, "holding", 100, 11), (1, "holding", 200, 2),
                                        (1, "input", 0, 2), (2, "holding", 10, 21)])
    assert plc.write_attempts == 0


def points(*specs: tuple[str, int, int, str]) -> list[PointRef]:
    return [PointRef(line, "counter", unit, "holding", addr, t) for line, unit, addr, t in specs]  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [2, 4, 6, 11])
async def test_exception_responses_become_bad_readings_with_the_code(stub_plc: Any, code: int) -> None:
    plc = await stub_plc()
    plc.exceptions[None] = code
    src = ModbusTcpSource(modbus_cfg(plc.port), points(("a", 1, 0, "uint32")))
    await src.connect()
    try:
        (r,) = await src.read()
        (again,) = await src.read()   # an answered exception is not a lost connection
    finally:
        await src.close()
    assert r.quality is Quality.BAD
    assert r.value is None
    assert r.code == code
    assert r.error == exception_text(code)
    assert again.code == code
    if code == 2:
        assert r.error == "modbus exception 2 (illegal data address)"


async def test_illegal_address_splits_the_read_and_remembers(stub_plc: Any) -> None:
    plc = await stub_plc()
    # registers 0, 2-3 and 6 exist; 1, 4 and 5 do not: the coalesced read 0..6 is refused
    plc.mapped = {(1, "holding", a) for a in (0, 2, 3, 6)}
    plc.put(1, "holding", 0, "uint16", 11)
    plc.put(1, "holding", 2, "uint32", 22)
    plc.put(1, "holding", 6, "uint16", 33)
    src = ModbusTcpSource(modbus_cfg(plc.port), points(("a", 1, 0, "uint16"), ("b", 1, 2, "uint32"),
                                                       ("c", 1, 6, "uint16")))
    assert [(r.address, r.count) for r in src.plan.requests] == [(0, 7)]
    await src.connect()
    try:
        first = by_line(await src.read())
        refused_after_first = len(plc.refused)
        second = by_line(await src.read())
    finally:
        await src.close()
    for got in (first, second):
        assert {k[0]: r.value for k, r in got.items()} == {"a": 11, "b": 22, "c": 33}
    assert refused_after_first >= 1
    assert len(plc.refused) == refused_after_first            # the split plan is remembered
    assert sorted((r.address, r.count) for r in src.plan.requests) == [(0, 1), (2, 2), (6, 1)]


async def test_single_value_refused_stays_bad_with_code_2(stub_plc: Any) -> None:
    plc = await stub_plc()
    plc.mapped = {(1, "holding", 0)}
    src = ModbusTcpSource(modbus_cfg(plc.port), points(("a", 1, 0, "uint16"), ("b", 1, 1, "uint16")))
    await src.connect()
    try:
        got = by_line(await src.read())
    finally:
        await src.close()
    assert got[("a", "counter")].quality is Quality.GOOD
    assert got[("b", "counter")].code == 2
    assert got[("b", "counter")].quality is Quality.BAD


async def test_silent_unit_is_skipped_while_the_other_unit_is_read_every_poll(stub_plc: Any) -> None:
    plc = await stub_plc()
    plc.put(1, "holding", 0, "uint16", 5)
    plc.put(2, "holding", 0, "uint16", 6)
    plc.silent.add(2)
    now = [0.0]
    src = ModbusTcpSource(modbus_cfg(plc.port, timeout_s=0.3),
                          points(("healthy", 1, 0, "uint16"), ("stalled", 2, 0, "uint16")),
                          unit_backoff_s=10.0, clock=lambda: now[0])
    await src.connect()
    try:
        first = by_line(await src.read())
        assert first[("healthy", "counter")].value == 5
        assert first[("stalled", "counter")].quality is Quality.BAD
        assert "unit 2 not answering" in (first[("stalled", "counter")].error or "")
        for i in range(5):                        # within the unit's back-off: not even asked
            now[0] = 1.0 + i
            t0 = time.monotonic()
            got = by_line(await src.read())
            assert time.monotonic() - t0 < 0.25   # no request waits for the silent unit
            assert got[("healthy", "counter")].value == 5
            assert got[("stalled", "counter")].error == "unit 2 not answering"
        assert not [r for r in plc.reads if r[0] == 2]
        plc.silent.clear()
        plc.put(2, "holding", 0, "uint16", 7)
        now[0] = 11.0                              # back-off over: probed again, answers
        got = by_line(await src.read())
        assert got[("stalled", "counter")].value == 7
        assert got[("healthy", "counter")].value == 5
    finally:
        await src.close()


async def test_nothing_answering_closes_and_raises_after_n_polls(stub_plc: Any) -> None:
    plc = await stub_plc()
    plc.silent.add(1)
    src = ModbusTcpSource(modbus_cfg(plc.port, timeout_s=0.2), points(("a", 1, 0, "uint16")),
                          failures_before_reset=2)
    await src.connect()
    try:
        (r,) = await src.read()
        assert r.quality is Quality.BAD
        assert src.connected
        with pytest.raises(SourceUnavailable, match="no answer"):
            await src.read()
        assert not src.connected
        with pytest.raises(SourceUnavailable, match="not connected"):
            await src.read()
        plc.silent.clear()
        await src.connect()                        # recreated: reads work again
        (r,) = await src.read()
        assert r.quality is Quality.GOOD
    finally:
        await src.close()


async def _read_until_failure(src: ModbusTcpSource) -> None:
    for _ in range(3):   # a read may still be in flight when the peer closes
        await src.read()


def _reconnect_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if "reconnect" in t.get_name()]


async def test_lost_connection_raises_and_leaves_no_library_reconnect(stub_plc: Any) -> None:
    plc = await stub_plc()
    src = ModbusTcpSource(modbus_cfg(plc.port, timeout_s=0.3), points(("a", 1, 0, "uint16")))
    await src.connect()
    try:
        assert (await src.read())[0].quality is Quality.GOOD
        await plc.stop()
        with pytest.raises(SourceUnavailable):
            await _read_until_failure(src)
        assert not src.connected
        assert _reconnect_tasks() == []
        with pytest.raises(SourceUnavailable, match="cannot connect"):
            await src.connect()
        assert _reconnect_tasks() == []
    finally:
        await src.close()
    assert _reconnect_tasks() == []


async def test_connect_refused_is_source_unavailable() -> None:
    src = ModbusTcpSource(modbus_cfg(1, timeout_s=0.5), points(("a", 1, 0, "uint16")))
    with pytest.raises(SourceUnavailable, match=r"cannot connect to 127\.0\.0\.1:1"):
        await src.connect()
    assert not src.connected
    await src.close()   # idempotent, never raises


async def test_reads_are_serialised_on_the_connection(stub_plc: Any) -> None:
    plc = await stub_plc()
    plc.put(1, "holding", 0, "uint16", 1)
    plc.delay_s = 0.05
    src = ModbusTcpSource(modbus_cfg(plc.port), points(("a", 1, 0, "uint16")))
    await src.connect()
    try:
        results = await asyncio.gather(*(src.read() for _ in range(4)))
    finally:
        await src.close()
    assert [r[0].value for r in results] == [1, 1, 1, 1]
    assert len(plc.reads) == 4


# --- against the software PLC of the simulators -------------------------------------------

def _sim_points(*lines: tuple[str, int]) -> list[PointRef]:
    """Counter at 100 (uint32) and state at 110 (uint16) of each (line, unit) served."""
    out: list[PointRef] = []
    for line, unit in lines:
        out.append(PointRef(line, "counter", unit, "holding", 100, "uint32"))
        out.append(PointRef(line, "state", unit, "holding", 110, "uint16"))
    return out


@pytest.mark.parametrize("code", [2, 4, 6, 11])
async def test_simulated_plc_exception_codes(modbus_plc: Any, code: int) -> None:
    plc = await modbus_plc()
    src = ModbusTcpSource(modbus_cfg(plc.port), _sim_points(("line-a", 1)))
    assert len(src.plan.requests) == 1
    await src.connect()
    try:
        plc.lines["line-a"].produce(3)
        good = by_line(await src.read())
        plc.set_exception(code)
        bad = by_line(await src.read())
        plc.set_exception(None)
        plc.lines["line-a"].produce(2)
        again = by_line(await src.read())
    finally:
        await src.close()
    assert good[("line-a", "counter")].value == 3
    assert {(r.quality, r.code, r.error) for r in bad.values()} == {
        (Quality.BAD, code, exception_text(code))}
    assert again[("line-a", "counter")].value == 5
    # only exception 2 splits the read (down to one read per value), and the split stays
    assert len(src.plan.requests) == (2 if code == 2 else 1)
    assert plc.write_attempts == 0


async def test_simulated_gateway_silent_unit_beside_healthy_unit(modbus_plc: Any) -> None:
    from tests.fixtures.simulators import make_modbus_cfg, modbus_line

    plc = await modbus_plc(make_modbus_cfg([modbus_line("line-a", unit_id=1),
                                            modbus_line("line-b", unit_id=2)]))
    plc.set_silent(True, unit_id=2)
    src = ModbusTcpSource(modbus_cfg(plc.port, timeout_s=0.3),
                          _sim_points(("line-a", 1), ("line-b", 2)), unit_backoff_s=30.0)
    await src.connect()
    try:
        for n in range(1, 9):
            plc.lines["line-a"].produce(1)
            t0 = time.monotonic()
            got = by_line(await src.read())
            took = time.monotonic() - t0
            assert got[("line-a", "counter")].value == n          # read on every poll
            assert got[("line-b", "counter")].quality is Quality.BAD
            assert "unit 2 not answering" in (got[("line-b", "counter")].error or "")
            if n > 1:
                assert took < 0.25                                 # unit 2 is not waited for
        assert src.connected
    finally:
        await src.close()
