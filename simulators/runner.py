"""Run a set of software PLCs: the servers, the production task and the ledger file.

``plantfloor simulate`` and ``plantfloor demo`` call :func:`run_simulators`; tests use
:class:`SimulatorSet` directly (``auto=False`` leaves production to the test).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from simulators.config import ModbusPlcConfig, SimConfig, load_sim_config
from simulators.ledger import Ledger, write_json_atomic
from simulators.modbus_plc import ModbusPlc
from simulators.opcua_plc import OpcUaPlc
from simulators.production import ShiftCalendar, SimLine, lines_from_config

__all__ = ["SimulatorSet", "run_simulators"]

_log = logging.getLogger(__name__)
_LEDGER_PERIOD_S = 0.5


class SimulatorSet:
    """Every PLC of a simulator config, started and stopped together. Constructors do no I/O.

    With ``auto`` a task advances every line's production model each ``tick_s`` by the
    monotonic time elapsed; with ``ledger_path`` the ledger file is rewritten at least
    twice a second while running, and once more on stop. ``clock`` is the wall clock of
    the shift calendar and of the books of time (a test may give a time-compressed one).
    """

    def __init__(self, cfg: SimConfig, *, auto: bool = True, ledger_path: Path | None = None,
                 tick_s: float = 0.1, clock: Callable[[], datetime] | None = None) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be positive")
        self.cfg = cfg
        self.auto = auto
        self.ledger_path = ledger_path
        self.tick_s = tick_s
        calendar = ShiftCalendar(cfg.shifts, cfg.tz) if cfg.shifts else None
        self.plcs: dict[str, ModbusPlc | OpcUaPlc] = {}
        self.lines: dict[str, SimLine] = {}
        index = 0
        for plc_cfg in cfg.plcs:
            lines = lines_from_config(plc_cfg, seed=cfg.seed, first_index=index, calendar=calendar,
                                      clock=clock)
            index += len(plc_cfg.lines)
            self.lines.update(lines)
            plc: ModbusPlc | OpcUaPlc
            if isinstance(plc_cfg, ModbusPlcConfig):
                plc = ModbusPlc(plc_cfg, lines=lines)
            else:
                plc = OpcUaPlc(plc_cfg, lines=lines)
            self.plcs[plc_cfg.id] = plc
        self.ledger = Ledger(self.lines)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start every PLC, write the ledger once, then start production (when ``auto``).

        Lines with ``counter_update_s`` refresh their served counters every so many seconds
        from now, all together.
        """
        now = time.monotonic()
        for line in self.lines.values():
            line.start_clock(now)
        started: list[ModbusPlc | OpcUaPlc] = []
        try:
            for plc in self.plcs.values():
                await plc.start()
                started.append(plc)
            if self.ledger_path is not None:
                await self.write_ledger()
        except BaseException:
            for plc in reversed(started):
                await plc.stop()
            raise
        if self.auto:
            self._tasks.append(asyncio.create_task(self._produce(), name="simulators-production"))
        if self.ledger_path is not None:
            self._tasks.append(asyncio.create_task(self._keep_ledger(), name="simulators-ledger"))

    async def stop(self) -> None:
        """Stop production and every PLC; the ledger file gets its final state."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for plc in self.plcs.values():
            await plc.stop()
        if self.ledger_path is not None:
            await self.write_ledger()

    async def write_ledger(self) -> None:
        """Write the ledger file now (the file I/O runs in a worker thread)."""
        if self.ledger_path is not None:
            await asyncio.to_thread(write_json_atomic, self.ledger_path, self.ledger.snapshot())

    async def __aenter__(self) -> SimulatorSet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _produce(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            for line in self.lines.values():
                line.advance(now - last)
            last = now

    async def _keep_ledger(self) -> None:
        while True:
            await asyncio.sleep(_LEDGER_PERIOD_S)
            try:
                await self.write_ledger()
            except OSError as exc:  # a full disk must not stop the PLCs
                _log.warning("cannot write the ledger %s: %s", self.ledger_path, exc)


async def run_simulators(
    cfg_path: Path,
    ledger_path: Path | None,
    *,
    on_ready: Callable[[SimulatorSet], None] | None = None,
) -> None:
    """Run the simulators of ``cfg_path`` until cancelled.

    Raises :class:`agent.contract.errors.ConfigError` for a bad file and ``OSError`` when a port
    cannot be bound. ``on_ready`` is called once every PLC listens.
    """
    cfg = load_sim_config(cfg_path)
    async with SimulatorSet(cfg, auto=True, ledger_path=ledger_path) as sims:
        for plc_id, plc in sims.plcs.items():
            where = plc.endpoint if isinstance(plc, OpcUaPlc) else f"modbus://{plc.host}:{plc.port}"
            _log.info("simulator %s listening on %s (lines %s)", plc_id, where, ", ".join(plc.lines))
        if on_ready is not None:
            on_ready(sims)
        await asyncio.Event().wait()
