"""What every software PLC shares: its lines, a power cycle, and use as a context manager."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from simulators.config import ModbusPlcConfig, OpcUaPlcConfig
from simulators.production import SimLine, lines_from_config

__all__ = ["SoftPlc"]


class SoftPlc:
    """Base of the Modbus and OPC UA software PLCs; subclasses implement start and stop."""

    def __init__(self, cfg: ModbusPlcConfig | OpcUaPlcConfig, *, host: str | None,
                 port: int | None, lines: Mapping[str, SimLine] | None, seed: int) -> None:
        self.id = cfg.id
        self.host = host if host is not None else cfg.host
        self.port = port if port is not None else cfg.port
        self.lines: dict[str, SimLine] = (dict(lines) if lines is not None
                                          else lines_from_config(cfg, seed=seed))
        missing = {ln.id for ln in cfg.lines} - set(self.lines)
        if missing:
            raise ValueError(f"no SimLine for lines {sorted(missing)}")

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def restart(self, *, reset_counters: bool = False) -> None:
        """Stop, optionally reset every counter to 0 (a power cycle), and start on the same port.

        The refresh schedule of lines with ``counter_update_s`` goes on (it is the
        simulator's clock): their served counters show the reset at the next refresh, and
        until then the value served before the restart.
        """
        await self.stop()
        if reset_counters:
            for line in self.lines.values():
                line.reset_counter(0)
        await self.start()

    def _start_clocks(self) -> None:
        """Start the refresh schedule of every line that has none yet (see ``SimLine.start_clock``)."""
        for line in self.lines.values():
            line.start_clock()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
