"""A software Modbus TCP PLC (pymodbus 3.16 server); the only simulator module importing pymodbus.

Registers are read through: every read request copies the current served counters and
state code of its :class:`SimLine`\\ s into the served registers, so a change is visible on the next read
(with ``counter_update_s``, a counter change on the first read after the next refresh).
Every holding and input register from 0 up to well past the highest one used is readable
(unused ones read 0), as on a real PLC, so an agent may coalesce reads across gaps.
Writes of any kind are refused with ILLEGAL_FUNCTION and counted: the agent must never
write. Fault knobs (delay, exception codes, silence) act per unit id or on every unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Mapping
from typing import Generic, TypeVar

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.config import ModbusPlcConfig, SimLineConfig
from simulators.plc import SoftPlc
from simulators.production import SimLine

__all__ = ["READ_CODES", "WRITE_CODES", "ModbusPlc", "counter_words"]

READ_CODES = frozenset({1, 2, 3, 4})
WRITE_CODES = frozenset({5, 6, 15, 16, 22, 23})
_TABLE_OF_CODE = {3: "holding", 4: "input"}
_MIN_REGISTERS = 1024
_SLACK = 128
T = TypeVar("T")


class _PerUnit(Generic[T]):
    """A fault knob set for every unit, or for one unit id (which then wins)."""

    def __init__(self, default: T) -> None:
        self._all = default
        self._units: dict[int, T] = {}

    def set(self, value: T, unit_id: int | None) -> None:
        if unit_id is None:
            self._units.clear()
            self._all = value
        else:
            self._units[unit_id] = value

    def get(self, unit_id: int) -> T:
        return self._units.get(unit_id, self._all)


def counter_words(value: int, width: int, word_order: str) -> list[int]:
    """A counter as ``width`` 16-bit registers; big word order puts the most significant first."""
    words = [(value >> (16 * (width - 1 - i))) & 0xFFFF for i in range(width)]
    return words if word_order == "big" else words[::-1]


class ModbusPlc(SoftPlc):
    """A Modbus TCP server serving the counters and states of its lines. Constructors do no I/O.

    ``port`` is the bound port once started (give 0 for an ephemeral one); ``ready`` is set
    while listening; ``reads`` and ``write_attempts`` count requests received.
    """

    def __init__(
        self,
        cfg: ModbusPlcConfig,
        *,
        host: str | None = None,
        port: int | None = None,
        lines: Mapping[str, SimLine] | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__(cfg, host=host, port=port, lines=lines, seed=seed)
        self.cfg = cfg
        self.ready = asyncio.Event()
        self.write_attempts = 0
        self.reads = 0
        self._server: ModbusTcpServer | None = None
        self._stopping = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._delay: _PerUnit[float] = _PerUnit(0.0)
        self._exception: _PerUnit[int | None] = _PerUnit(None)
        self._silent: _PerUnit[bool] = _PerUnit(False)
        self._map = _register_map(cfg.lines)

    @property
    def unit_ids(self) -> list[int]:
        return sorted({unit for unit, _ in self._map})

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``host:port``; sets ``port`` to the bound port and ``ready``."""
        if self._server is not None:
            raise RuntimeError(f"modbus PLC {self.id} is already started")
        self._start_clocks()
        self._stopping = asyncio.Event()
        server = ModbusTcpServer(
            self._devices(),
            address=(self.host, self.port),
            # the catch-all device raises NoSuchIdException to stay silent: do not answer it
            ignore_missing_devices=True,
            trace_pdu=self._trace_pdu,
        )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            await server.shutdown()  # type: ignore[no-untyped-call]
            raise OSError(f"modbus PLC {self.id} cannot listen on {self.host}:{self.port} (is the port in use?)") from exc
        self._server = server
        sockets = getattr(server.transport, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self.ready.set()

    async def stop(self) -> None:
        """Close the listener and every connection; requests being delayed are dropped unanswered."""
        server, self._server = self._server, None
        self.ready.clear()
        self._stopping.set()
        if server is None:
            return
        await server.shutdown()  # type: ignore[no-untyped-call]
        # delayed handlers wake on _stopping; let them finish so no task outlives the server
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 2.0)

    # --- fault knobs -------------------------------------------------------------------

    def set_delay(self, seconds: float, unit_id: int | None = None) -> None:
        """Answer ``seconds`` late (None: every unit; 0 restores)."""
        if seconds < 0:
            raise ValueError("delay must not be negative")
        self._delay.set(seconds, unit_id)

    def set_exception(self, code: int | None, unit_id: int | None = None) -> None:
        """Answer every read with Modbus exception ``code`` (2, 4, 6, 11 ...); None restores."""
        if code is not None and code not in {c.value for c in ExcCodes}:
            raise ValueError(f"{code} is not a Modbus exception code")
        self._exception.set(code, unit_id)

    def set_silent(self, on: bool, unit_id: int | None = None) -> None:
        """Never answer (a stalled device or a dead gateway route)."""
        self._silent.set(on, unit_id)

    # --- serving -----------------------------------------------------------------------

    def _devices(self) -> list[SimDevice]:
        top = max((addr + 4 for regs in self._map.values() for addr in regs), default=0)
        count = min(max(_MIN_REGISTERS, top + _SLACK), 65536)
        units = set(self.unit_ids) | {0}  # unit 0 catches requests for any other unit id
        return [
            SimDevice(
                id=unit,
                simdata=(
                    [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=count, values=0, datatype=DataType.REGISTERS)],
                    [SimData(0, count=count, values=0, datatype=DataType.REGISTERS)],
                ),
                action=functools.partial(self._action, unit),
            )
            for unit in sorted(units)
        ]

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            if pdu.function_code in WRITE_CODES:
                self.write_attempts += 1
            elif pdu.function_code in READ_CODES:
                self.reads += 1
        return pdu

    async def _action(
        self,
        unit_id: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Called by pymodbus for every request on a valid address, before it answers."""
        if function_code in WRITE_CODES or set_values:
            return ExcCodes.ILLEGAL_FUNCTION
        if self._silent.get(unit_id):
            raise NoSuchIdException(f"unit {unit_id} is silent")
        delay = self._delay.get(unit_id)
        if delay > 0:
            self._in_flight += 1
            self._idle.clear()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
            finally:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.set()
            if self._stopping.is_set():
                raise NoSuchIdException("the PLC stopped while the answer was delayed")
        code = self._exception.get(unit_id)
        if code is not None:
            return ExcCodes(code)
        if unit_id not in self.unit_ids:
            return ExcCodes.GATEWAY_NO_RESPONSE
        table = _TABLE_OF_CODE.get(function_code)
        if table is not None:
            for addr, word in self._words(unit_id, table).items():
                registers[addr - start_address] = word
        return None

    def _words(self, unit_id: int, table: str) -> dict[int, int]:
        """The current value of every register the lines use in one unit and table."""
        out: dict[int, int] = {}
        for address, (cfg, role) in self._map.get((unit_id, table), {}).items():
            line = self.lines[cfg.id]
            if role == "state":
                out[address] = line.state_code
            elif role == "second" and cfg.second is not None:
                tag = cfg.second[1]
                words = counter_words(line.served_second, tag.width, tag.word_order)
                out.update({address + i: w for i, w in enumerate(words)})
            else:
                words = counter_words(line.served_counter, cfg.counter.width, cfg.counter.word_order)
                out.update({address + i: w for i, w in enumerate(words)})
        return out


def _register_map(lines: tuple[SimLineConfig, ...]) -> dict[tuple[int, str], dict[int, tuple[SimLineConfig, str]]]:
    """(unit, table) -> first address of each tag -> (line, "counter" | "second" | "state")."""
    out: dict[tuple[int, str], dict[int, tuple[SimLineConfig, str]]] = {}
    for line in lines:
        c = line.counter
        out.setdefault((c.unit_id, c.table), {})[c.address] = (line, "counter")
        if line.second is not None:
            t = line.second[1]
            out.setdefault((t.unit_id, t.table), {})[t.address] = (line, "second")
        if line.state is not None:
            s = line.state
            out.setdefault((s.unit_id, s.table), {})[s.address] = (line, "state")
    return out
