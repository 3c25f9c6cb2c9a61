"""The first delta after a reboot never trusts a wall clock that contradicts the store.

Baseline 1000 stored at T0 on another boot, a bound of 120/h, the line built 200 units
in the 2 h the gateway was off. The wall clock the agent boots with is controlled.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent.config import Config
from agent.contract.readings import Quality, Reading
from agent.core.counter import untrusted_clock
from agent.runtime.lines import LineBoard, clock_synchronised
from agent.store import LineState, StoredState

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
DAY = 86400


class Clocks:
    """The wall clock the agent sees (steppable) and a monotonic clock."""

    def __init__(self, wall: datetime) -> None:
        self.now = wall
        self.mono_now = 100.0
        self.ntp = False

    def wall(self) -> datetime:
        return self.now

    def mono(self) -> float:
        return self.mono_now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono_now += seconds


def config(tmp_path: Path) -> Config:
    return Config.model_validate({
        "site": "test", "timezone": "UTC",
        "storage": {"path": str(tmp_path / "state.db")},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "00:00", "end": "12:00"}],
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 1}],
        "lines": [{"id": "kei", "product": "Sakura", "target_per_hour": 60,
                   "max_rate_per_hour": 120,
                   "counter": {"source": "plc", "address": 0, "type": "uint32"}}],
    })


def board(tmp_path: Path, clocks: Clocks) -> LineBoard:
    cfg = config(tmp_path)
    row = LineState("kei", "", identity=cfg.point_identity(cfg.lines[0].counter), baseline=1000,
                    modulus=2**32, anchor_wall=T0, anchor_mono=5.0, last_wall=T0, last_mono=5.0,
                    boot_id="a-boot-before-the-reboot")
    stored = StoredState(lines={"kei": row}, plant_json=None, recovered_from=None, epoch=1)
    return LineBoard(cfg, None, stored, mono=clocks.mono, wall=clocks.wall,  # type: ignore[arg-type]
                     synced=lambda: clocks.ntp)


def read(b: LineBoard, clocks: Clocks, value: int) -> None:
    b.on_readings("plc", [Reading(line="kei", role="counter", value=value, quality=Quality.GOOD,
                                  mono=clocks.mono())])


def close(b: LineBoard, clocks: Clocks) -> tuple[int, tuple[str, ...], int | None]:
    r = b.trackers["kei"].close_window(clocks.mono())
    stored = b.line_state("kei", r.memory, "{}", clocks.wall(), clocks.mono())
    return r.units, r.events, stored.baseline


def test_a_correct_clock_counts_the_outage(tmp_path: Path) -> None:
    clocks = Clocks(T0 + timedelta(hours=2))
    b = board(tmp_path, clocks)
    read(b, clocks, 1200)
    assert close(b, clocks) == (200, (), 1200)


def test_a_clock_behind_the_store_holds_the_first_delta_until_it_is_stepped_right(
        tmp_path: Path) -> None:
    """Booted 5 min behind the last stored reading; NTP steps it right 20 s later."""
    clocks = Clocks(T0 - timedelta(minutes=5))
    b = board(tmp_path, clocks)
    read(b, clocks, 1200)
    units, events, baseline = close(b, clocks)
    assert (units, events, baseline) == (0, ("clock_unsynced",), 1000)
    assert "implausible_jump" not in events
    clocks.advance(20)
    clocks.now = T0 + timedelta(hours=2, seconds=20)     # NTP stepped the clock
    read(b, clocks, 1201)
    assert close(b, clocks) == (201, (), 1201)


def test_a_clock_400_days_ahead_never_counts_a_replaced_plc(tmp_path: Path) -> None:
    """Booted 400 days ahead, and the PLC was replaced (reads 900,000): held, nothing
    counted; once the clock is right the normal bound refuses the jump."""
    clocks = Clocks(T0 + timedelta(days=400))
    b = board(tmp_path, clocks)
    read(b, clocks, 900_000)
    assert close(b, clocks) == (0, ("clock_unsynced",), 1000)
    clocks.now = T0 + timedelta(hours=2)
    read(b, clocks, 900_000)
    units, events, baseline = close(b, clocks)
    assert units == 0
    assert "implausible_jump" in events
    assert baseline == 900_000


def test_a_synchronised_clock_is_believed(tmp_path: Path) -> None:
    """Behind the store, but the kernel says NTP synchronised it: the stored time was
    wrong, the normal rule applies (nothing held)."""
    clocks = Clocks(T0 - timedelta(minutes=5))
    b = board(tmp_path, clocks)
    clocks.ntp = True
    read(b, clocks, 1000)
    read(b, clocks, 1000)
    units, events, _ = close(b, clocks)
    assert units == 0
    assert "clock_unsynced" not in events


def test_the_sync_probe_answers() -> None:
    assert clock_synchronised() in (True, False)


@given(st.integers(-400 * DAY, 400 * DAY), st.integers(1, 100 * DAY))
def test_only_a_clock_between_the_store_and_the_maximum_outage_is_trusted(
        offset: int, max_outage: int) -> None:
    doubt = untrusted_clock(T0, T0 + timedelta(seconds=offset), max_outage)
    assert (doubt is None) == (0 <= offset <= max_outage)
