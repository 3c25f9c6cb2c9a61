"""The interface every protocol adapter implements, and the factory matching the config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from agent.config import Config, ModbusSource, OpcUaSource
from agent.contract.readings import Reading

__all__ = ["PointSpec", "Source", "make_source"]


class PointSpec(Protocol):
    """What a source needs to know of one configured point (built from LineConfig)."""


class Source(Protocol):
    """A PLC endpoint. Constructors do no I/O.

    ``connect`` opens the connection (and, for OPC UA in subscribe mode, creates the
    subscription); it raises :class:`agent.contract.errors.SourceUnavailable` on failure.
    ``read`` returns one :class:`Reading` for every point of the source, in any order:
    points that failed individually come back with quality bad and the error/code set;
    a failure of the whole connection raises ``SourceUnavailable`` (the supervisor then
    closes and reconnects with backoff). ``close`` never raises.
    """

    id: str

    async def connect(self) -> None: ...

    async def read(self) -> Sequence[Reading]: ...

    async def close(self) -> None: ...


def make_source(cfg: Config, source: ModbusSource | OpcUaSource) -> Source:
    """The explicit factory: one adapter per ``kind``."""
    if source.kind == "modbus":
        from agent.sources.modbus import ModbusTcpSource

        return ModbusTcpSource.from_config(cfg, source)
    from agent.sources.opcua import OpcUaClientSource

    return OpcUaClientSource.from_config(cfg, source)
