"""Pure Modbus read planning: which registers to ask for, in how few requests.

Per (unit id, table), points are sorted by address and coalesced greedily into reads
of at most ``max_registers`` registers that span gaps of at most ``max_gap`` unused
registers. The words of one value always travel in one request, so a 32-bit counter
can never tear between two reads.

Some PLCs refuse a read that covers an unmapped register (exception 2, illegal data
address) even when no configured point lies there. :meth:`ReadPlan.split` then
replaces the refused read by two smaller ones; repeated refusals end at one read per
value. The plan remembers the split so the next poll does not ask again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.config import TYPE_WIDTH, ModbusTable, ModbusType, WordOrder
from agent.contract.readings import TagRole

__all__ = ["PointRef", "ReadPlan", "ReadRequest", "plan_reads", "split_request"]

#: the protocol's limit for function codes 3 and 4
MAX_REGISTERS = 125


@dataclass(frozen=True, slots=True)
class PointRef:
    """One configured value: where it lives and how to decode it."""

    line: str
    role: TagRole
    unit_id: int
    table: ModbusTable
    address: int
    type: ModbusType
    word_order: WordOrder = "big"
    name: str | None = None

    @property
    def width(self) -> int:
        return TYPE_WIDTH[self.type]

    @property
    def end(self) -> int:
        """One past the last register of the value."""
        return self.address + self.width


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read (function code 3 for holding, 4 for input) and the points it serves."""

    unit_id: int
    table: ModbusTable
    address: int
    count: int
    points: tuple[PointRef, ...]

    def registers_of(self, point: PointRef, registers: list[int]) -> list[int]:
        """The slice of a response that holds ``point``."""
        start = point.address - self.address
        return registers[start:start + point.width]


def _request(points: list[PointRef]) -> ReadRequest:
    first = points[0]
    start = min(p.address for p in points)
    end = max(p.end for p in points)
    return ReadRequest(first.unit_id, first.table, start, end - start, tuple(points))


def plan_reads(points: Iterable[PointRef], *, max_registers: int = MAX_REGISTERS,
               max_gap: int = 8) -> tuple[ReadRequest, ...]:
    """Coalesce points into as few reads as the limits allow.

    A single value wider than ``max_registers`` is still read whole (its own request).
    Requests come out ordered by unit id, table and address.
    """
    if not 1 <= max_registers <= MAX_REGISTERS:
        raise ValueError(f"max_registers must be 1..{MAX_REGISTERS}, not {max_registers}")
    if max_gap < 0:
        raise ValueError(f"max_gap must not be negative, not {max_gap}")
    ordered = sorted(points, key=lambda p: (p.unit_id, p.table, p.address, p.end))
    requests: list[ReadRequest] = []
    group: list[PointRef] = []
    start = end = 0
    for p in ordered:
        fits = (
            group
            and (p.unit_id, p.table) == (group[0].unit_id, group[0].table)
            and p.address - end <= max_gap
            and max(end, p.end) - start <= max_registers
        )
        if fits:
            group.append(p)
            end = max(end, p.end)
        else:
            if group:
                requests.append(_request(group))
            group, start, end = [p], p.address, p.end
    if group:
        requests.append(_request(group))
    return tuple(requests)


def split_request(request: ReadRequest) -> tuple[ReadRequest, ...]:
    """Two reads covering the points of ``request`` (first half, second half of points).

    A request serving a single value cannot be split: it comes back unchanged, alone.
    """
    if len(request.points) <= 1:
        return (request,)
    points = sorted(request.points, key=lambda p: (p.address, p.end))
    half = len(points) // 2
    return (_request(points[:half]), _request(points[half:]))


class ReadPlan:
    """The current list of reads of one source, refined when a PLC refuses a read."""

    def __init__(self, points: Iterable[PointRef], *, max_registers: int = MAX_REGISTERS,
                 max_gap: int = 8) -> None:
        self._requests: list[ReadRequest] = list(
            plan_reads(points, max_registers=max_registers, max_gap=max_gap))
        self.splits = 0

    @property
    def requests(self) -> tuple[ReadRequest, ...]:
        return tuple(self._requests)

    def split(self, request: ReadRequest) -> tuple[ReadRequest, ...]:
        """Replace ``request`` by its two halves and return them.

        Returns an empty tuple when it serves one value only (nothing left to split) or
        is no longer part of the plan.
        """
        if len(request.points) <= 1 or request not in self._requests:
            return ()
        parts = split_request(request)
        i = self._requests.index(request)
        self._requests[i:i + 1] = parts
        self.splits += 1
        return parts
