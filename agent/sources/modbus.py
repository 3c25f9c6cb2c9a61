"""Modbus TCP source: the only module of the agent that talks to pymodbus.

One ``AsyncModbusTcpClient`` per endpoint, created in :meth:`ModbusTcpSource.connect`
(pymodbus binds it to the running loop) with ``retries=0``, a per-request timeout and
its own reconnection switched off (``reconnect_delay=0``: pymodbus 3.16 then starts no
reconnect task when the connection drops). The supervisor alone reconnects.

Only function codes 3 (holding registers) and 4 (input registers) are ever sent.

Failures come through two channels and both are handled: raised exceptions
(connection lost, no answer within the timeout) and exception responses
(``isError()``; the code travels on the readings). A unit id that stops answering is
skipped for a growing back-off period so that the other units behind the same gateway
keep being read every poll; its points come back bad meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from agent.config import (
    COUNTER_ROLES,
    TYPE_MODULUS,
    TYPE_WIDTH,
    Config,
    ModbusSource,
    ModbusTag,
    ModbusType,
    WordOrder,
)
from agent.contract.errors import SourceUnavailable
from agent.contract.readings import Quality, Reading
from agent.sources.decode import decode
from agent.sources.modbus_plan import PointRef, ReadPlan, ReadRequest

__all__ = ["EXCEPTION_NAMES", "ModbusTcpSource", "exception_text"]

log = logging.getLogger(__name__)

#: Modbus exception codes, as the specification names them
EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "server device failure", 5: "acknowledge", 6: "server device busy",
    7: "negative acknowledge", 8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
_ILLEGAL_ADDRESS = 2


def exception_text(code: int) -> str:
    """``"modbus exception 2 (illegal data address)"``."""
    return f"modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"


class _NoAnswer(Exception):
    """A request got no (usable) answer within the timeout; the connection is still up."""


@dataclass(slots=True)
class _UnitState:
    failures: int = 0
    skip_until: float = 0.0


@dataclass(slots=True)
class _PollStats:
    attempted: int = 0
    answered: int = 0


class ModbusTcpSource:
    """A Modbus TCP endpoint (a PLC or a gateway) and the points read from it.

    ``failures_before_reset``: consecutive polls in which nothing answered before the
    client is closed and ``read`` raises :class:`SourceUnavailable`. ``unit_backoff_s``
    and ``unit_backoff_max_s`` bound how long a silent unit id is skipped (doubling on
    every further silent probe).
    """

    def __init__(self, source: ModbusSource, points: Sequence[PointRef], *,
                 failures_before_reset: int = 3, unit_backoff_s: float = 5.0,
                 unit_backoff_max_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.id = source.id
        self.config = source
        self.points = tuple(points)
        self.plan = ReadPlan(self.points, max_registers=source.max_registers, max_gap=source.max_gap)
        self._failures_before_reset = max(1, failures_before_reset)
        self._unit_backoff_s = unit_backoff_s
        self._unit_backoff_max_s = unit_backoff_max_s
        self._clock = clock
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()  # one outstanding request per connection
        self._layouts: dict[int, tuple[ReadRequest, _Layout]] = {
            id(r): (r, _Layout.of(r)) for r in self.plan.requests}
        self._units: dict[int, _UnitState] = {}
        self._silent_polls = 0

    @classmethod
    def from_config(cls, cfg: Config, source: ModbusSource) -> ModbusTcpSource:
        """Every point (counter, state, tags) of every line that names this source."""
        points = [
            PointRef(line.id, role, source.unit_id if tag.unit_id is None else tag.unit_id,
                     tag.table, tag.address, tag.type, tag.word_order, name)
            for line, role, name, tag in cfg.points_of(source.id) if isinstance(tag, ModbusTag)]
        return cls(source, points)

    @property
    def endpoint(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open a new connection (closing any previous one); raises SourceUnavailable."""
        await self.close()
        client = AsyncModbusTcpClient(
            self.config.host, port=self.config.port, name=f"plantfloor:{self.id}",
            timeout=self.config.timeout_s, retries=0, reconnect_delay=0, reconnect_delay_max=0,
        )
        # pymodbus would close the connection by itself after a few unanswered requests;
        # a silent unit behind a gateway must not cost the other units their connection.
        client.set_max_no_responses(sys.maxsize)
        try:
            ok = await client.connect()
        except (OSError, TimeoutError, ModbusException) as exc:
            client.close()
            raise SourceUnavailable(self.id, f"cannot connect to {self.endpoint}: {exc}") from exc
        except BaseException:
            client.close()
            raise
        if not ok:
            client.close()
            raise SourceUnavailable(self.id, f"cannot connect to {self.endpoint}")
        self._client = client
        self._units.clear()
        self._silent_polls = 0

    async def close(self) -> None:
        """Close the connection; never raises."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # a failing close must not hide the reason we are closing
                log.debug("closing %s failed", self.endpoint, exc_info=True)

    async def read(self) -> list[Reading]:
        """One reading per point; raises SourceUnavailable when the endpoint is gone."""
        async with self._lock:
            client = self._client
            if client is None or not client.connected:
                await self.close()
                raise SourceUnavailable(self.id, f"not connected to {self.endpoint}")
            try:
                readings, stats = await self._poll(client)
            except SourceUnavailable:
                await self.close()
                raise
            if stats.attempted and not stats.answered:
                self._silent_polls += 1
                if self._silent_polls >= self._failures_before_reset:
                    await self.close()
                    raise SourceUnavailable(
                        self.id, f"no answer from {self.endpoint} in {self._silent_polls} consecutive polls")
            elif stats.answered:
                self._silent_polls = 0
            return readings

    async def _poll(self, client: AsyncModbusTcpClient) -> tuple[list[Reading], _PollStats]:
        stats = _PollStats()
        resting: set[int] = set()
        order: Sequence[ReadRequest] = self.plan.requests
        if self._units:  # some unit stopped answering
            now = self._clock()
            units = {r.unit_id for r in self.plan.requests}
            resting = {u for u in units if self._units.get(u, _UnitState()).skip_until > now}
            if resting == units:
                resting = set()  # nobody healthy to protect: probe them all
            # healthy units first, so probing a silent one delays nobody else's reading
            order = sorted(order, key=lambda r: self._units.get(r.unit_id, _UnitState()).failures > 0)
        silent: set[int] = set()
        out: list[Reading] = []
        for req in order:
            if req.unit_id in resting or req.unit_id in silent:
                out.extend(_bad(p, f"unit {req.unit_id} not answering") for p in req.points)
                continue
            stats.attempted += 1
            try:
                out.extend(await self._read_request(client, req))
            except _NoAnswer as exc:
                silent.add(req.unit_id)
                self._unit_failed(req.unit_id)
                out.extend(_bad(p, f"unit {req.unit_id} not answering: {exc}") for p in req.points)
                continue
            stats.answered += 1
            if self._units and self._units.pop(req.unit_id, None) is not None:
                log.info("%s: unit %d answering again", self.id, req.unit_id)
        return out, stats

    def _unit_failed(self, unit: int) -> None:
        st = self._units.setdefault(unit, _UnitState())
        st.failures += 1
        delay = min(self._unit_backoff_max_s, self._unit_backoff_s * 2 ** (st.failures - 1))
        st.skip_until = self._clock() + delay
        if st.failures == 1:
            log.warning("%s: unit %d not answering; skipped for %.1f s at a time",
                        self.id, unit, delay)

    async def _read_request(self, client: AsyncModbusTcpClient, req: ReadRequest) -> list[Reading]:
        answer = await self._fetch(client, req)
        if isinstance(answer, int) and answer == _ILLEGAL_ADDRESS and len(req.points) > 1:
            parts = self.plan.split(req)
            if parts:
                log.info("%s: unit %d refused %s %d..%d (illegal data address); reading it in parts",
                         self.id, req.unit_id, req.table, req.address, req.address + req.count - 1)
                out: list[Reading] = []
                for part in parts:
                    out.extend(await self._read_request(client, part))
                return out
        mono = time.monotonic()
        if isinstance(answer, int):
            return [_bad(p, exception_text(answer), code=answer, mono=mono) for p in req.points]
        # the plan's requests by identity (hashing one hashes every point it serves); a
        # request split after an illegal-address answer is laid out afresh
        cached = self._layouts.get(id(req))
        layout = cached[1] if cached is not None and cached[0] is req else _Layout.of(req)
        if len(answer) != req.count:
            return [_decoded(p, req, answer, mono) for p in req.points]
        out = [_decoded(p, req, answer, mono) for p in layout.points]
        for line, tags in layout.tags:
            # a line's tags from this request: one reading with every value by name
            values: dict[str, int | float] = {}
            for name, offset, type_, order in tags:
                values[name] = (answer[offset] if type_ == "uint16"
                                else decode(answer[offset:offset + TYPE_WIDTH[type_]], type_, order))
            out.append(Reading(line, "tags", None, Quality.GOOD, mono, values=values))
        return out

    async def _fetch(self, client: AsyncModbusTcpClient, req: ReadRequest) -> list[int] | int:
        """The registers, or the exception code of an exception response."""
        fn = client.read_holding_registers if req.table == "holding" else client.read_input_registers
        try:
            # pymodbus bounds the request by the client's timeout (TimeoutError or
            # ModbusIOException when it passes: tests/test_modbus_source.py stalls a PLC)
            rsp = await fn(req.address, count=req.count, device_id=req.unit_id)
        except ConnectionException as exc:
            raise SourceUnavailable(self.id, f"connection to {self.endpoint} lost") from exc
        except (ModbusException, TimeoutError) as exc:
            if not client.connected:
                raise SourceUnavailable(self.id, f"connection to {self.endpoint} lost") from exc
            raise _NoAnswer(f"no answer within {self.config.timeout_s:g} s") from exc
        except OSError as exc:
            raise SourceUnavailable(self.id, f"connection to {self.endpoint} failed: {exc}") from exc
        if rsp.isError():
            return int(getattr(rsp, "exception_code", 0))
        return list(rsp.registers)  # pymodbus gives the registers as ints


@dataclass(frozen=True, slots=True)
class _Layout:
    """A request's points decoded one by one (counters, states) and its tags by line."""

    points: tuple[PointRef, ...]
    #: per line: (tag name, register offset in the response, type, word order)
    tags: tuple[tuple[str, tuple[tuple[str, int, ModbusType, WordOrder], ...]], ...]

    @classmethod
    def of(cls, req: ReadRequest) -> _Layout:
        by_line: dict[str, list[tuple[str, int, ModbusType, WordOrder]]] = {}
        points = []
        for p in req.points:
            if p.role == "tag" and p.name is not None:
                by_line.setdefault(p.line, []).append(
                    (p.name, p.address - req.address, p.type, p.word_order))
            else:
                points.append(p)
        return cls(tuple(points), tuple((line, tuple(t)) for line, t in by_line.items()))


def _bad(p: PointRef, error: str, *, code: int | None = None, mono: float | None = None) -> Reading:
    return Reading(p.line, p.role, None, Quality.BAD, time.monotonic() if mono is None else mono,
                   error=error, code=code, name=p.name)


def _decoded(p: PointRef, req: ReadRequest, registers: list[int], mono: float) -> Reading:
    raw = req.registers_of(p, registers)
    if len(raw) != p.width:
        return _bad(p, f"short response: {len(registers)} of {req.count} registers", mono=mono)
    value = decode(raw, p.type, p.word_order)
    if p.role == "tag":
        return Reading(p.line, p.role, value, Quality.GOOD, mono, name=p.name)
    if isinstance(value, float):
        if not value.is_integer():
            return _bad(p, f"{p.type} value {value} is not a whole number", mono=mono)
        value = int(value)
    modulus = TYPE_MODULUS[p.type] if p.role in COUNTER_ROLES else None
    return Reading(p.line, p.role, value, Quality.GOOD, mono, modulus=modulus)
