"""Running totals survive the store: written with orjson, read back exactly, as stdlib JSON."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.oee import Acc
from agent.core.totals import LineTotals, PlantTotals

# Berlin's ambiguous hour: a datetime whose offset depends on fold compares unequal to any
# datetime of another zone (PEP 495) though it is the same instant, so the round trip is
# compared in UTC
ZONES = [UTC, ZoneInfo("Asia/Tokyo"), ZoneInfo("Europe/Berlin")]

moments = st.builds(
    lambda d, us, z: (datetime(2028, 1, 1, tzinfo=UTC) + timedelta(days=d, microseconds=us)).astimezone(z),
    st.integers(0, 800), st.integers(0, 86_400_000_000 - 1), st.sampled_from(ZONES))
days = st.dates(date(2027, 1, 1), date(2030, 12, 31))
names = st.sampled_from(["changeover", "fault", "blocked", "starved", "stopped"])
counts = st.dictionaries(names, st.integers(0, 10**9), max_size=4)
accs = st.builds(Acc, planned_ms=st.integers(0, 10**9), run_ms=st.integers(0, 10**9),
                 minor_ms=st.integers(0, 10**8), unknown_ms=st.integers(0, 10**8),
                 covered_ms=st.integers(0, 10**9), minor_stops=st.integers(0, 1000),
                 down_ms=counts, stops=counts, good=st.integers(0, 10**7),
                 rejects=st.integers(0, 10**6), ideal_s=st.floats(0, 1e7),
                 ideal_good_s=st.floats(0, 1e7))
line_totals = st.builds(
    LineTotals, seq=st.integers(0, 2**40), shift_key=st.none() | st.text(max_size=20),
    shift_units=st.integers(0, 10**6), shift_downtime_s=st.floats(0, 1e6), day=st.none() | days,
    day_units=st.integers(0, 10**6), last_window_end=st.none() | moments,
    year=st.none() | st.integers(2027, 2030), year_units=st.integers(0, 10**7),
    shift_name=st.none() | st.text(max_size=10), shift_start=st.none() | moments,
    shift_end=st.none() | moments, shift_date=st.none() | days,
    shift_planned_ms=st.integers(0, 10**8), shift_target=st.floats(0, 1e5),
    shift_reported=st.booleans(), shift_acc=accs, day_acc=accs, count_carry=st.integers(0, 100))
plant_totals = st.builds(
    PlantTotals, seq=st.integers(0, 2**40), day=st.none() | days, day_units=st.integers(0, 10**6),
    year=st.none() | st.integers(2027, 2030), year_units=st.integers(0, 10**7),
    last_window_end=st.none() | moments, counted_since=st.none() | moments)


def _reference(totals: LineTotals | PlantTotals) -> str:
    """What the stdlib writes for the same totals (dates and datetimes as isoformat)."""
    def default(v: object) -> object:
        if isinstance(v, Acc):
            return dataclasses.asdict(v)
        if isinstance(v, date | datetime):
            return v.isoformat()
        raise TypeError(type(v).__name__)
    return json.dumps({f.name: getattr(totals, f.name) for f in dataclasses.fields(totals)},
                      default=default, sort_keys=True)


@settings(max_examples=300, deadline=None)
@given(line_totals)
def test_line_totals_round_trip_and_match_the_stdlib(t: LineTotals) -> None:
    text = t.to_json()
    assert _utc(LineTotals.from_json(text)) == _utc(t)
    assert json.loads(text) == json.loads(_reference(t))


@settings(max_examples=200, deadline=None)
@given(plant_totals)
def test_plant_totals_round_trip_and_match_the_stdlib(t: PlantTotals) -> None:
    text = t.to_json()
    assert _utc(PlantTotals.from_json(text)) == _utc(t)
    assert json.loads(text) == json.loads(_reference(t))


def _utc(t: LineTotals | PlantTotals) -> LineTotals | PlantTotals:
    return dataclasses.replace(t, **{
        f.name: getattr(t, f.name).astimezone(UTC) for f in dataclasses.fields(t)
        if isinstance(getattr(t, f.name), datetime)})


def test_totals_written_by_the_stdlib_still_load() -> None:
    t = LineTotals(seq=5, day=date(2028, 4, 3), last_window_end=datetime(2028, 4, 3, 1, tzinfo=UTC),
                   shift_acc=Acc(run_ms=10, down_ms={"fault": 3}))
    assert LineTotals.from_json(_reference(t)) == t
