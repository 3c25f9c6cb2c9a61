"""Read planning: coalescing limits, never tearing a value, split fallback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.sources.modbus_plan import PointRef, ReadPlan, ReadRequest, plan_reads, split_request


def pt(address: int, type_: str = "uint16", *, unit: int = 1, table: str = "holding",
       line: str = "l") -> PointRef:
    return PointRef(line, "counter", unit, table, address, type_)  # type: ignore[arg-type]


def spans(reqs: tuple[ReadRequest, ...]) -> list[tuple[int, int]]:
    return [(r.address, r.count) for r in reqs]


def test_contiguous_points_become_one_read() -> None:
    reqs = plan_reads([pt(100, "uint32"), pt(102, "uint32"), pt(104)])
    assert spans(reqs) == [(100, 5)]
    assert len(reqs[0].points) == 3


def test_gap_within_max_gap_is_spanned_beyond_it_is_not() -> None:
    assert spans(plan_reads([pt(0), pt(9)], max_gap=8)) == [(0, 10)]   # 8 unused registers
    assert spans(plan_reads([pt(0), pt(10)], max_gap=8)) == [(0, 1), (10, 1)]
    assert spans(plan_reads([pt(0), pt(1)], max_gap=0)) == [(0, 2)]
    assert spans(plan_reads([pt(0), pt(2)], max_gap=0)) == [(0, 1), (2, 1)]


def test_max_registers_is_respected_and_a_value_never_split() -> None:
    # 0..123 then a uint32 at 124..125 would make 126: it must start a new read whole
    points = [pt(a) for a in range(124)] + [pt(124, "uint32")]
    reqs = plan_reads(points)
    assert spans(reqs) == [(0, 124), (124, 2)]
    assert plan_reads([pt(0, "uint64")], max_registers=2)[0].count == 4


def test_units_and_tables_are_never_mixed() -> None:
    reqs = plan_reads([pt(0, unit=1), pt(1, unit=2), pt(2, unit=1, table="input"), pt(3, unit=1)])
    assert {(r.unit_id, r.table, r.address, r.count) for r in reqs} == {
        (1, "holding", 0, 4), (2, "holding", 1, 1), (1, "input", 2, 1)}


def test_registers_of_slices_the_response() -> None:
    req = plan_reads([pt(10, "uint32"), pt(14)])[0]
    regs = [1, 2, 3, 4, 5]
    assert req.registers_of(req.points[0], regs) == [1, 2]
    assert req.registers_of(req.points[1], regs) == [5]


def test_limits_validated() -> None:
    with pytest.raises(ValueError, match="max_registers"):
        plan_reads([pt(0)], max_registers=126)
    with pytest.raises(ValueError, match="max_gap"):
        plan_reads([pt(0)], max_gap=-1)


def test_split_down_to_one_read_per_value_and_remembered() -> None:
    plan = ReadPlan([pt(0), pt(2, "uint32"), pt(5), pt(6, "uint64")])
    (whole,) = plan.requests
    halves = plan.split(whole)
    assert len(halves) == 2
    assert plan.requests == halves                      # remembered for the next poll
    for h in halves:
        for q in plan.split(h):
            assert len(q.points) == 1
    assert sorted(spans(plan.requests)) == [(0, 1), (2, 2), (5, 1), (6, 4)]
    single = plan.requests[0]
    assert plan.split(single) == ()                     # nothing left to split
    assert split_request(single) == (single,)
    assert plan.splits == 3


def test_split_of_a_request_not_in_the_plan_is_refused() -> None:
    plan = ReadPlan([pt(0), pt(1)])
    stranger = plan_reads([pt(50), pt(51)])[0]
    assert plan.split(stranger) == ()
    assert spans(plan.requests) == [(0, 2)]


point_lists = st.lists(
    st.tuples(st.integers(1, 3), st.sampled_from(["holding", "input"]), st.integers(0, 400),
              st.sampled_from(["uint16", "int16", "uint32", "int32", "uint64", "float32"])),
    max_size=60,
)


def _non_overlapping(raw: list[tuple[int, str, int, str]]) -> list[PointRef]:
    used: set[tuple[int, str, int]] = set()
    out = []
    for unit, table, addr, type_ in raw:
        p = pt(addr, type_, unit=unit, table=table)
        regs = {(unit, table, a) for a in range(p.address, p.end)}
        if not regs & used:
            used |= regs
            out.append(p)
    return out


@given(point_lists, st.integers(1, 125), st.integers(0, 20))
def test_plan_properties(raw: list[tuple[int, str, int, str]], max_registers: int, max_gap: int) -> None:
    points = _non_overlapping(raw)
    reqs = plan_reads(points, max_registers=max_registers, max_gap=max_gap)
    served = [p for r in reqs for p in r.points]
    assert sorted(served, key=repr) == sorted(points, key=repr)        # each point exactly once
    for r in reqs:
        assert r.count <= max(max_registers, max(p.width for p in r.points))
        for p in r.points:
            assert (p.unit_id, p.table) == (r.unit_id, r.table)
            assert r.address <= p.address  # never torn
            assert p.end <= r.address + r.count
    # splitting everything ends with one read per value, still covering every point
    plan = ReadPlan(points, max_registers=max_registers, max_gap=max_gap)
    while any(len(r.points) > 1 for r in plan.requests):
        plan.split(next(r for r in plan.requests if len(r.points) > 1))
    assert sorted((p for r in plan.requests for p in r.points), key=repr) == sorted(points, key=repr)
    assert all(r.count == r.points[0].width for r in plan.requests)
