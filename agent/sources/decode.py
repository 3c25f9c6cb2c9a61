"""Pure Modbus register decoding: width, sign and word order.

A Modbus register is 16 bits, transmitted big-endian (most significant byte first).
Values wider than one register span consecutive registers; ``word_order`` says which
register holds the most significant word: ``big`` (the first register, "ABCD") or
``little`` (the last register, "CDAB" for 32 bits). Only whole registers are swapped;
the bytes inside a register are never swapped.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from agent.config import TYPE_WIDTH, ModbusType, WordOrder

__all__ = ["SIGNED", "decode", "encode", "width"]

#: types delivered as signed integers
SIGNED = frozenset({"int16", "int32"})


def width(type_: ModbusType) -> int:
    """Registers occupied by one value of ``type_``."""
    return TYPE_WIDTH[type_]


def _words_msw_first(registers: Sequence[int], word_order: WordOrder) -> list[int]:
    words = list(registers)
    return words if word_order == "big" else words[::-1]


def _to_bytes(registers: Sequence[int], type_: ModbusType, word_order: WordOrder) -> bytes:
    n = width(type_)
    if len(registers) != n:
        raise ValueError(f"a {type_} takes {n} register(s), got {len(registers)}")
    for r in registers:
        if not 0 <= r <= 0xFFFF:
            raise ValueError(f"register value {r} is not a 16-bit word")
    return b"".join(w.to_bytes(2, "big") for w in _words_msw_first(registers, word_order))


def decode(registers: Sequence[int], type_: ModbusType, word_order: WordOrder = "big") -> int | float:
    """Decode the registers of one value (exactly ``width(type_)`` of them).

    Integer types come back as ``int`` (``int16``/``int32`` signed), ``float32`` as
    ``float``. Raises ``ValueError`` for a wrong register count or a register outside
    0..65535.
    """
    if type_ == "float32":
        value: float = struct.unpack(">f", _to_bytes(registers, type_, word_order))[0]
        return value
    # integers by shifting words: this runs for every point of every poll
    n = TYPE_WIDTH[type_]
    if len(registers) != n:
        raise ValueError(f"a {type_} takes {n} register(s), got {len(registers)}")
    result = 0
    for word in (registers if word_order == "big" or n == 1 else reversed(registers)):
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"register value {word} is not a 16-bit word")
        result = (result << 16) | word
    if type_ in SIGNED and result >= 1 << (16 * n - 1):
        result -= 1 << (16 * n)
    return result


def encode(value: int | float, type_: ModbusType, word_order: WordOrder = "big") -> list[int]:
    """The registers that hold ``value`` (the inverse of :func:`decode`).

    Raises ``ValueError`` when the value does not fit the type.
    """
    n = width(type_)
    if type_ == "float32":
        if not isinstance(value, (int, float)) or (math.isfinite(value) and abs(value) > 3.4028234663852886e38):
            raise ValueError(f"{value!r} does not fit a float32")
        raw = struct.pack(">f", value)
    else:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"a {type_} holds integers, not {value!r}")
        try:
            raw = value.to_bytes(2 * n, "big", signed=type_ in SIGNED)
        except OverflowError as exc:
            raise ValueError(f"{value} does not fit a {type_}") from exc
    words = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, 2 * n, 2)]
    return words if word_order == "big" else words[::-1]
