"""What every software PLC shares: its lines, a power cycle, and use as a context manager."""

from __future__ import annotations

from typing import Self

from simulators.production import SimLine

__all__ = ["SoftPlc"]


class SoftPlc:
    """Base of the Modbus and OPC UA software PLCs; subclasses implement start and stop."""

    lines: dict[str, SimLine]

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def restart(self, *, reset_counters: bool = False) -> None:
        """Stop, optionally reset every counter to 0 (a power cycle), and start on the same port."""
        await self.stop()
        if reset_counters:
            for line in self.lines.values():
                line.reset_counter(0)
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
