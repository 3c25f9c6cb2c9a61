"""Run a set of software PLCs: the servers, the production task, the ledger and their state.

``plantfloor simulate`` and ``plantfloor demo`` call :func:`run_simulators`; tests use
:class:`SimulatorSet` directly (``auto=False`` leaves production to the test).

Like a real PLC's retentive memory, the PLCs' counters can live in a state file of their
own (``state_path``): a restarted set continues its counters where they stood instead of
starting again from the configured start values (which an agent would read as a reset).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.core.clock import Clock, SystemClock
from simulators.config import ModbusPlcConfig, SimConfig, load_sim_config
from simulators.ledger import Ledger, write_json_atomic
from simulators.modbus_plc import ModbusPlc
from simulators.opcua_plc import OpcUaPlc
from simulators.production import ShiftCalendar, SimLine, lines_from_config

__all__ = ["SimulatorSet", "run_simulators"]

_log = logging.getLogger(__name__)
_LEDGER_PERIOD_S = 0.5


class SimulatorSet:
    """Every PLC of a simulator config, started and stopped together. The constructor opens
    no port (it reads only the state file, when given).

    With ``auto`` a task advances every line's production model each ``tick_s`` by the
    plant time elapsed; with ``ledger_path`` the ledger file is rewritten at least
    twice a second while running, and once more on stop, and so is ``state_path`` (the
    counters, restored from it at construction). ``plant`` is the plant clock (the
    machine's by default; the demo's runs faster): the production model's time, the shift
    calendar and the books of time follow it, while ``tick_s`` is real time. ``clock``
    replaces only its wall clock (a test's compressed calendar).
    """

    def __init__(self, cfg: SimConfig, *, auto: bool = True, ledger_path: Path | None = None,
                 tick_s: float = 0.1, clock: Callable[[], datetime] | None = None,
                 plant: Clock | None = None, state_path: Path | None = None) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be positive")
        self.plant = plant or SystemClock()
        if clock is None and plant is not None:
            clock = plant.wall
        self.state_path = state_path
        self.cfg = cfg
        self.auto = auto
        self.ledger_path = ledger_path
        self.tick_s = tick_s
        calendar = ShiftCalendar(cfg.shifts, cfg.tz, cfg.holidays) if cfg.shifts else None
        self.plcs: dict[str, ModbusPlc | OpcUaPlc] = {}
        self.lines: dict[str, SimLine] = {}
        index = 0
        for plc_cfg in cfg.plcs:
            lines = lines_from_config(plc_cfg, seed=cfg.seed, first_index=index, calendar=calendar,
                                      clock=clock, clock_s=self.plant.mono)
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
        self.restored = self._restore() if state_path is not None else False

    def counters(self) -> dict[str, Any]:
        """What the PLCs keep across a restart: each line's counters, and the plant time."""
        return {"version": 1, "saved_at": self.plant.wall().isoformat(),
                "lines": {line_id: {"plc": line.plc, "counter": line.counter, "modulus": line.modulus,
                                    "second_counter": line.second_counter,
                                    "second_modulus": line.second_modulus}
                          for line_id, line in self.lines.items()}}

    def _restore(self) -> bool:
        """Counters from the state file, for the lines whose PLC and modulus still match."""
        assert self.state_path is not None
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            saved = data["lines"]
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log.warning("the simulators' state %s is unreadable (%s): counters start afresh",
                         self.state_path, exc)
            return False
        restored = False
        for line_id, line in self.lines.items():
            row = saved.get(line_id) if isinstance(saved, dict) else None
            if (not isinstance(row, dict) or row.get("plc") != line.plc
                    or row.get("modulus") != line.modulus
                    or row.get("second_modulus") != line.second_modulus):
                continue
            counter, second = row.get("counter"), row.get("second_counter")
            if isinstance(counter, int) and isinstance(second, int):
                line.restore_counters(counter, second)
                restored = True
        return restored

    async def save_state(self) -> None:
        """Write the counters to ``state_path`` now (in a worker thread)."""
        if self.state_path is not None:
            await asyncio.to_thread(write_json_atomic, self.state_path, self.counters())

    def resume(self) -> None:
        """Start production (when paused, or built with ``auto=False``): the lines run from now."""
        if not any(t.get_name() == "simulators-production" for t in self._tasks):
            self._tasks.append(asyncio.create_task(self._produce(), name="simulators-production"))

    async def pause(self) -> None:
        """Stop production (the PLCs keep serving): the counters stand still from now on."""
        tasks = [t for t in self._tasks if t.get_name() == "simulators-production"]
        for task in tasks:
            task.cancel()
            self._tasks.remove(task)
        if tasks:
            await asyncio.wait(tasks)

    async def start(self) -> None:
        """Start every PLC, write the ledger once, then start production (when ``auto``).

        Lines with ``counter_update_s`` refresh their served counters every so many seconds
        from now, all together.
        """
        now = self.plant.mono()
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
            self.resume()
        if self.ledger_path is not None or self.state_path is not None:
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
        await self.save_state()

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
        last = self.plant.mono()
        while True:
            await asyncio.sleep(self.tick_s)
            now = self.plant.mono()
            for line in self.lines.values():
                line.advance(now - last)
            last = now

    async def _keep_ledger(self) -> None:
        while True:
            await asyncio.sleep(_LEDGER_PERIOD_S)
            try:
                await self.write_ledger()
                await self.save_state()
            except OSError as exc:  # a full disk must not stop the PLCs
                _log.warning("cannot write the ledger %s or the state %s: %s", self.ledger_path,
                             self.state_path, exc)


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
