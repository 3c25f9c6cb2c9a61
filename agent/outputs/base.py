"""The interface of an output format, and the closed window it encodes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from agent.contract.payloads import LinePayload, PlantOutput, ShiftReport
from agent.store import NewRecord, OutboxRecord

__all__ = ["OutputFormat", "WindowOutputs"]


@dataclass(frozen=True, slots=True)
class WindowOutputs:
    """One closed window: every line's payload and the plant's, built once for all formats.

    ``shift_reports`` are the reports of the shift instances the window ended (its end is
    their end): one per line, then the plant's (``line`` null); usually none.
    """

    start: datetime
    end: datetime
    lines: Sequence[LinePayload]
    plant: PlantOutput
    shift_reports: Sequence[ShiftReport] = ()


class OutputFormat(Protocol):
    """Turns closed windows into outbox records, and stored records into bytes to send."""

    #: stored with each record (``NewRecord.format``); the forwarder dispatches on it
    name: str

    def records(self, window: WindowOutputs) -> list[NewRecord]:
        """The outbox records of one window (in publishing order)."""
        ...

    def wire(self, record: OutboxRecord, *, historical: bool) -> bytes:
        """The payload to publish for a stored record; ``historical`` when it is sent late."""
        ...
