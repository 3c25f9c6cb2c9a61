"""Register decoding: every type, both word orders, sign, and round-trips."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.sources.decode import decode, encode, width


@pytest.mark.parametrize(
    ("registers", "type_", "order", "expected"),
    [
        ([0x0000], "uint16", "big", 0),
        ([0xFFFF], "uint16", "big", 65535),
        ([0x1234], "uint16", "little", 0x1234),  # one word: word order does not apply
        ([0xFFFF], "int16", "big", -1),
        ([0x8000], "int16", "big", -32768),
        ([0x7FFF], "int16", "big", 32767),
        ([0x0001, 0x0002], "uint32", "big", 0x0001_0002),
        ([0x0001, 0x0002], "uint32", "little", 0x0002_0001),
        ([0xFFFF, 0xFFFF], "uint32", "big", 2**32 - 1),
        ([0xFFFF, 0xFFFE], "int32", "big", -2),
        ([0xFFFE, 0xFFFF], "int32", "little", -2),
        ([0x8000, 0x0000], "int32", "big", -(2**31)),
        ([0x0000, 0x8000], "int32", "little", -(2**31)),
        ([0x0102, 0x0304, 0x0506, 0x0708], "uint64", "big", 0x0102_0304_0506_0708),
        ([0x0102, 0x0304, 0x0506, 0x0708], "uint64", "little", 0x0708_0506_0304_0102),
        ([0x3F80, 0x0000], "float32", "big", 1.0),
        ([0x0000, 0x3F80], "float32", "little", 1.0),
        ([0xC120, 0x0000], "float32", "big", -10.0),
    ],
)
def test_known_values(registers: list[int], type_: str, order: str, expected: float) -> None:
    assert decode(registers, type_, order) == expected  # type: ignore[arg-type]
    assert encode(expected, type_, order) == registers  # type: ignore[arg-type]


def test_byte_order_inside_a_register_is_big_endian() -> None:
    # 0x1234 is transmitted 0x12, 0x34; decoding must not swap bytes within a word
    assert decode([0x1234], "uint16") == 0x1234
    assert decode([0x1234, 0x5678], "uint32", "little") == 0x5678_1234


def test_wrong_word_order_jumps_by_multiples_of_65536() -> None:
    # the failure mode a plausibility bound catches: low word wraps, value jumps
    before = encode(65535, "uint32", "big")
    after = encode(65536, "uint32", "big")
    assert decode(after, "uint32", "little") - decode(before, "uint32", "little") != 1


def test_float_nan_and_inf() -> None:
    assert math.isnan(decode([0x7FC0, 0x0000], "float32"))  # type: ignore[arg-type]
    assert decode([0x7F80, 0x0000], "float32") == math.inf


@pytest.mark.parametrize(("type_", "n"), [("uint16", 1), ("int16", 1), ("uint32", 2),
                                          ("int32", 2), ("float32", 2), ("uint64", 4)])
def test_width(type_: str, n: int) -> None:
    assert width(type_) == n  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="register"):
        decode([0] * (n + 1), type_)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 65536])
def test_register_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError, match="16-bit"):
        decode([bad], "uint16")


@pytest.mark.parametrize(("value", "type_"), [(65536, "uint16"), (-1, "uint16"), (32768, "int16"),
                                              (2**32, "uint32"), (2**31, "int32"), (2**64, "uint64"),
                                              (1.5, "uint32"), (True, "uint16"), (1e39, "float32")])
def test_encode_rejects_what_does_not_fit(value: float, type_: str) -> None:
    with pytest.raises(ValueError, match=r"fit|holds"):
        encode(value, type_)  # type: ignore[arg-type]


orders = st.sampled_from(["big", "little"])
RANGES = {
    "uint16": (0, 2**16 - 1), "int16": (-(2**15), 2**15 - 1),
    "uint32": (0, 2**32 - 1), "int32": (-(2**31), 2**31 - 1), "uint64": (0, 2**64 - 1),
}


@given(st.sampled_from(sorted(RANGES)).flatmap(
    lambda t: st.tuples(st.just(t), st.integers(*RANGES[t]))), orders)
def test_integer_round_trip(tv: tuple[str, int], order: str) -> None:
    type_, value = tv
    regs = encode(value, type_, order)  # type: ignore[arg-type]
    assert len(regs) == width(type_)  # type: ignore[arg-type]
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode(regs, type_, order) == value  # type: ignore[arg-type]


@given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2), orders)
def test_register_round_trip_32(regs: list[int], order: str) -> None:
    for type_ in ("uint32", "int32"):
        assert encode(decode(regs, type_, order), type_, order) == regs  # type: ignore[arg-type]


@given(st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4), orders)
def test_uint64_words(regs: list[int], order: str) -> None:
    msw_first = regs if order == "big" else regs[::-1]
    expected = (msw_first[0] << 48) | (msw_first[1] << 32) | (msw_first[2] << 16) | msw_first[3]
    assert decode(regs, "uint64", order) == expected  # type: ignore[arg-type]


@given(st.floats(width=32, allow_nan=False), orders)
def test_float_round_trip(value: float, order: str) -> None:
    regs = encode(value, "float32", order)  # type: ignore[arg-type]
    assert decode(regs, "float32", order) == value  # type: ignore[arg-type]
    big = regs if order == "big" else regs[::-1]
    assert struct.pack(">HH", *big) == struct.pack(">f", value)
