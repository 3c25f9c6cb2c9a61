"""The count can never be poisoned: end to end, with simulated PLCs, the agent and Mosquitto.

Between two runs of the agent on the same state store the line is re-pointed to another
PLC, the store is deleted, the PLCs restart with fresh counters; within a run the PLC
shows its counter only every few seconds; a run is stopped half-way through a window.
The judge is the simulators' ledger and the line's plausibility bound: no window carries
more units than the line could build, and windows tile time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.agentrig import (
    ROOT_TOPIC,
    Run,
    Windows,
    one_line_config,
    two_plcs,
    wait_until,
    windows_after,
)


async def test_a_line_re_pointed_to_another_plc_counts_no_phantom_units(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(two_plcs(), auto=False)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    a, b = sims.lines["line-a"], sims.lines["line-b"]
    async with Run(one_line_config(tmp_path, mosquitto.url, sims, plc="plc-a")):
        await windows_after(sub, 2)
        a.produce(3)
        await wait_until(lambda: Windows(sub.messages).units("kei") == 3, 10, "3 units from plc-a")
    first = Windows(sub.messages)
    # the line moves to plc-b, whose counter stands at 7,000,000: none of it is production
    b.produce(4)
    async with Run(one_line_config(tmp_path, mosquitto.url, sims, plc="plc-b")):
        await windows_after(sub, 1, where=lambda p: "rebaselined" in p["events"])
        b.produce(5)
        await wait_until(lambda: Windows(sub.messages).units("kei") == 3 + 5, 10, "5 more from plc-b")
    w = Windows(sub.messages)
    assert w.conflicts == []
    assert w.units("kei") == 3 + 5
    assert w.epochs("kei") == first.epochs("kei")      # the same store: the same epoch
    assert w.contiguous("kei")
    assert w.tiles("kei")
    rebased = [p for p in w.windows("kei") if "rebaselined" in p["events"]]
    assert len(rebased) == 1
    assert rebased[0]["units"] == 0
    assert rebased[0]["quality"] == "uncertain"


async def test_a_lost_state_file_starts_a_new_epoch_that_no_subscriber_drops(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(two_plcs(), auto=False)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    a = sims.lines["line-a"]
    async with Run(one_line_config(tmp_path, mosquitto.url, sims)):
        await windows_after(sub, 2)
        a.produce(4)
        await wait_until(lambda: Windows(sub.messages).units("kei") == 4, 10, "4 units")
        await windows_after(sub, 3)    # more seqs than the second run will reach
    first = Windows(sub.messages)
    for f in tmp_path.glob("state.db*"):  # noqa: ASYNC240 - the test's own files
        f.unlink()
    async with Run(one_line_config(tmp_path, mosquitto.url, sims)):
        await windows_after(sub, 1, where=lambda p: p["epoch"] != first.epochs("kei")[0])
        a.produce(6)
        await wait_until(lambda: Windows(sub.messages).units("kei") == 4 + 6, 10, "6 more units")
    w = Windows(sub.messages)
    old, new = first.epochs("kei")[0], next(e for e in w.epochs("kei") if e != first.epochs("kei")[0])
    assert len(w.epochs("kei")) == 2
    assert w.units("kei") == 4 + 6
    assert w.contiguous("kei")
    assert w.conflicts == []
    second = [p for p in w.windows("kei") if p["epoch"] == new]
    assert second[0]["seq"] == 1
    assert "new_epoch" in second[0]["events"]
    assert max(p["seq"] for p in w.windows("kei") if p["epoch"] == old) > 1
    plant_epochs = {e for e, _ in w.plant}
    assert plant_epochs == {old, new}
    statuses = [m.json() for m in sub.messages if m.topic == f"{ROOT_TOPIC}/status"]
    assert {s["epoch"] for s in statuses if s["state"] == "online"} == {old, new}


async def test_a_stop_half_way_through_a_window_resumes_without_overlap(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(two_plcs(), auto=False)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    a = sims.lines["line-a"]
    # units are made by hand, faster than any real line: a bound that does not get in the way
    cfg = one_line_config(tmp_path, mosquitto.url, sims, interval_s=4, max_rate=3_600_000)
    async with Run(cfg):
        await windows_after(sub, 1)
        a.produce(2)
        # stop in the middle of a 4 s window: at least 1 s past its start, 1 s before its end
        await wait_until(lambda: 1.0 <= dt.datetime.now(dt.UTC).timestamp() % 4 <= 3.0, 10,
                         "the middle of a window")
        a.produce(1)
    a.produce(2)   # built while the agent is stopped
    async with Run(cfg):
        await wait_until(lambda: Windows(sub.messages).units("kei") == 5, 15, "all 5 units")
        await windows_after(sub, 1)
    w = Windows(sub.messages)
    assert w.tiles("kei"), [(p["window_start"], p["window_end"]) for p in w.windows("kei")]
    cut = [p for p in w.windows("kei")[:-1]
           if dt.datetime.fromisoformat(p["window_end"]).timestamp() % 4 != 0]
    assert len(cut) == 1, "before the last, exactly one window ends at the stop, off the grid"
    nxt = next(p for p in w.windows("kei") if p["window_start"] == cut[0]["window_end"])
    assert dt.datetime.fromisoformat(nxt["window_end"]).timestamp() % 4 == 0
    assert w.units("kei") == 5
    assert w.contiguous("kei")
    assert len(w.epochs("kei")) == 1


async def test_a_plc_showing_its_counter_every_5_s_at_the_top_rate_is_counted_exactly(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    # the line builds 5 units every 5 s, exactly its bound of 3,600 an hour, and its PLC
    # shows the counter only every 5 s: each reading that moves shows 5 units at once
    sims = await simulator_set(two_plcs(update_s=5.0), auto=False)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    a = sims.lines["line-a"]
    async with Run(one_line_config(tmp_path, mosquitto.url, sims, max_rate=3600)):
        await windows_after(sub, 2)
        before = a.expected_units
        for _ in range(4):
            await a.wait_refresh()
            a.produce(5)
        await a.wait_refresh()     # shows the last 5
        await wait_until(lambda: Windows(sub.messages).units("kei") == 20, 15, "20 units")
        await windows_after(sub, 2)
    w = Windows(sub.messages)
    assert a.expected_units - before == 20
    assert w.units("kei") == 20
    assert "implausible_jump" not in w.events("kei")
    assert [p["units"] for p in w.windows("kei") if p["units"]] == [5, 5, 5, 5]


async def test_plcs_restarted_with_fresh_counters_while_the_agent_was_stopped(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    """The second ``make demo``: the simulators start their counters afresh."""
    near_top = 2**32 - 3
    sims = await simulator_set(two_plcs(start_a=near_top), auto=False)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    a = sims.lines["line-a"]
    async with Run(one_line_config(tmp_path, mosquitto.url, sims)):
        await windows_after(sub, 2)
        a.produce(5)                               # through the rollover
        await wait_until(lambda: Windows(sub.messages).units("kei") == 5, 10, "5 units")
    # a new simulator process on the same endpoint: its counter starts again near the top
    plc = sims.plcs["plc-a"]
    await plc.stop()
    a.reset_counter(near_top)
    await plc.start()
    async with Run(one_line_config(tmp_path, mosquitto.url, sims)):
        await windows_after(sub, 1, where=lambda p: "implausible_jump" in p["events"])
        a.produce(2)
        await wait_until(lambda: Windows(sub.messages).units("kei") == 5 + 2, 10, "2 more")
        await windows_after(sub, 1)
    w = Windows(sub.messages)
    assert w.units("kei") == 7
    assert max(p["units"] for p in w.windows("kei")) <= 5
    assert "rollover" in w.events("kei")
    plant = sum(p["units"] for p in w.plant.values())
    assert plant == 7
    assert max(p["units_year_to_date"] for p in w.plant.values()) == 7
    assert w.tiles("kei")


async def test_a_uint64_counter_above_2_63_is_stored_and_published_exactly(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    start = 2**63 + 5            # beyond SQLite's signed 64-bit integers
    sims = await simulator_set(two_plcs(start_a=start, type_="uint64"), auto=False)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    a = sims.lines["line-a"]
    cfg = one_line_config(tmp_path, mosquitto.url, sims, type_="uint64", max_rate=3_600_000)
    for n in (3, 2):             # two runs: the second restores the baseline from the store
        async with Run(cfg):
            await windows_after(sub, 2)
            total = Windows(sub.messages).units("kei") + n
            a.produce(n)
            await wait_until(lambda t=total: Windows(sub.messages).units("kei") == t, 10, f"{n} units")
    w = Windows(sub.messages)
    assert w.units("kei") == 5
    assert w.windows("kei")[-1]["counter"] == start + 5
    assert w.contiguous("kei")
    assert {"implausible_jump", "rebaselined", "counter_reset"}.isdisjoint(w.events("kei"))
