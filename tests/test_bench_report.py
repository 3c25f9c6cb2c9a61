"""The benchmark's verdicts and tables from synthetic results, and its window-boundary counting.

No process runs and nothing is timed: these pin down the logic a full ``python -m bench``
run reaches only at 200 and 500 PLCs and with 60 s windows.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from bench.report import evaluate_targets, markdown, scenario_name, text_table
from bench.scenarios import measured_s, window_boundaries


def _lat(p50: float, p99: float, n: int) -> dict[str, Any]:
    return {"n": n, "p50": p50, "p99": p99, "max": p99 + 5}


def _agent(cpu: float, rss: float, *, p99: float = 60.0, missed: int = 0, overruns: int = 0,
           window_s: int = 1, plcs: int = 500, duration_s: float = 60.0) -> dict[str, Any]:
    windows = int(duration_s // window_s) * (plcs + 1)
    return {"lines": plcs, "window_s": window_s, "sources": plcs, "exit_code": 0, "sigterm_to_exit_s": 0.4,
            "duration_s": duration_s, "cpu_pct": cpu, "peak_rss_mb": rss, "rss_mb": rss - 5,
            "poll_ms": _lat(2.0, 9.0, plcs * 60), "polls": int(plcs * duration_s),
            "polls_missed": missed, "poll_overruns": overruns, "modbus_requests_per_poll": 1.0,
            "window_ms": _lat(20.0, p99, windows), "windows_expected": windows, "windows_received": windows,
            "context": {"farm_cpu_pct": 10.0, "broker_cpu_pct": 2.0}}


def _base(cpu: float, rss: float = 40.0, publish_s: int = 1) -> dict[str, Any]:
    return {"publish_s": publish_s, "cpu_pct": cpu, "peak_rss_mb": rss, "rss_mb": rss, "cycle_ms": _lat(1.0, 4.0, 900),
            "cycles_per_plc_per_s": 1.0, "cycle_overruns": 0, "modbus_requests_per_s": 500.0, "errors": 0,
            "context": {"farm_cpu_pct": 10.0, "broker_cpu_pct": 2.0}}


def _nodered(cpu: float) -> dict[str, Any]:
    return {"cpu_pct": cpu, "peak_rss_mb": 150.0, "rss_mb": 140.0, "messages_per_plc_per_s": 1.0,
            "modbus_requests_per_s": 500.0, "context": {"farm_cpu_pct": 10.0, "broker_cpu_pct": 2.0}}


def _scale(plcs: int, window_s: int, agent: dict[str, Any], **bases: dict[str, Any]) -> dict[str, Any]:
    r: dict[str, Any] = {"name": scenario_name(plcs, window_s), "plcs": plcs, "tags_per_plc": 30,
                         "opcua_items": 0, "window_s": window_s, "agent": agent}
    ratios = {}
    for key, b in bases.items():
        mode = key.replace("_", "-")
        r[mode] = b
        if "cpu_pct" in b:
            ratios[mode] = {"cpu": round(agent["cpu_pct"] / b["cpu_pct"], 2),
                            "peak_rss": round(agent["peak_rss_mb"] / b["peak_rss_mb"], 2)}
    r["ratios"] = ratios
    return r


def _results() -> dict[str, Any]:
    return {"meta": {}, "scale": [
        # 200 PLCs: every target met (1.2x the floor, 0.4x Node-RED)
        _scale(200, 1, _agent(6.0, 70.0, plcs=200), floor=_base(5.0), floor_uvloop=_base(4.0),
               nodered=_nodered(15.0)),
        # 500 PLCs: over 25 % of a core, 1.6x the floor, 0.6x Node-RED, p99 over 200 ms
        _scale(500, 1, _agent(26.0, 90.0, p99=250.0), floor=_base(16.25), floor_uvloop=_base(13.0),
               nodered=_nodered(43.3)),
        # 500 PLCs with 60 s windows: the floor only (publishing once a window); within every target
        _scale(500, 60, _agent(20.0, 95.0, window_s=60, duration_s=130.0), floor=_base(15.0, publish_s=60)),
    ]}


def _verdicts(results: dict[str, Any]) -> dict[str, bool | None]:
    return {t["target"]: t["met"] for t in evaluate_targets(results)}


def _of(verdicts: dict[str, bool | None], scenario: str) -> list[bool | None]:
    """The four per-scenario verdicts: CPU/RSS/polls, floor ratio, Node-RED ratio, p99."""
    rows = [(name, met) for name, met in verdicts.items() if name.startswith(scenario + ":")]
    assert [n.split(": ", 1)[1].split(" ", 3)[:3] for n, _ in rows][1:] == [
        ["agent", "CPU", "<="], ["agent", "CPU", "<="], ["window-to-subscriber", "p99", "<="]]
    return [met for _, met in rows]


def test_each_scale_point_has_its_own_verdicts() -> None:
    v = _verdicts(_results())
    assert _of(v, "modbus-200") == [True, True, True, True]
    assert _of(v, "modbus-500") == [False, False, False, False]
    assert _of(v, "modbus-500-w60") == [True, True, None, True]  # Node-RED: not run with 60 s windows
    assert v["modbus-500: agent CPU <= 0.5x Node-RED"] is False
    assert v["modbus-200: agent CPU <= 0.5x Node-RED"] is True


def test_target_rows_name_their_scenario_and_measures() -> None:
    targets = {t["target"]: t for t in evaluate_targets(_results())}
    floor = targets["modbus-200: agent CPU <= 1.5x the floor"]["value"]
    assert floor == "1.20x the floor (1.50x the floor on uvloop)"  # the asyncio floor is the reference
    assert targets["modbus-500: agent CPU <= 0.5x Node-RED"]["value"] == "0.60x Node-RED"
    w60 = targets["modbus-500-w60: 500 PLCs x 30 tags at 1 Hz, 60 s windows: <= 25 % of one core, "
                  "<= 100 MB peak RSS, no missed polls or overruns"]
    assert w60["met"] is True
    assert "20.0 % CPU" in w60["value"]
    assert "not run with 60 s windows" in targets["modbus-500-w60: agent CPU <= 0.5x Node-RED"]["value"]


def test_missed_polls_fail_the_scale_target() -> None:
    res = _results()
    res["scale"][0]["agent"]["polls_missed"] = 3
    assert _of(_verdicts(res), "modbus-200")[0] is False


def test_a_scenario_not_run_is_not_applicable() -> None:
    res = _results()
    del res["scale"][2]  # no 60 s windows in this run
    v = _verdicts(res)
    assert _of(v, "modbus-500-w60") == [None, None, None, None]
    assert _of(v, "modbus-500") == [False, False, False, False]  # the 1 s scenario is not mistaken for it
    assert _of(_verdicts({"scale": []}), "modbus-200") == [None, None, None, None]


def test_results_without_window_s_are_1_s_windows() -> None:
    res = _results()
    old = copy.deepcopy(res["scale"][0])
    del old["window_s"], old["agent"]["window_s"]
    assert _of(_verdicts({"scale": [old]}), "modbus-200") == [True, True, True, True]


def test_skipped_baselines_are_not_applicable_and_shown() -> None:
    res = _results()
    r200 = res["scale"][0]
    r200["nodered"] = {"skipped": "Node-RED could not be installed: npm missing"}
    r200["floor-uvloop"] = {"skipped": "uvloop is not installed"}
    del r200["ratios"]["nodered"], r200["ratios"]["floor-uvloop"]
    targets = {t["target"]: t for t in evaluate_targets(res)}
    assert targets["modbus-200: agent CPU <= 0.5x Node-RED"]["met"] is None
    assert targets["modbus-200: agent CPU <= 1.5x the floor"]["value"] == "1.20x the floor"
    text = text_table({**res, "targets": list(targets.values())})
    assert any(line.split()[:3] == ["modbus-200", "floor-uvloop", "skipped"] for line in text.splitlines())
    assert "modbus-200: floor-uvloop skipped: uvloop is not installed" in text


def test_no_window_at_the_subscriber_fails_p99() -> None:
    res = _results()
    res["scale"][2]["agent"]["window_ms"] = {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan}
    assert _of(_verdicts(res), "modbus-500-w60")[3] is False


@pytest.mark.parametrize(("p99", "n", "met"), [(150.0, 40, True), (300.0, 40, False), (math.nan, 0, True)])
def test_outbox_live_windows_p99_is_200_ms(p99: float, n: int, met: bool) -> None:
    res = _results()
    res["outbox"] = {"lines": 500, "backlog_seconds": 600, "backlog": {"windows": 300_600},
                     "replay_windows_per_s": 2500.0, "live_during_replay_ms": _lat(50.0, p99, n)}
    (t,) = [t for t in evaluate_targets(res) if t["target"].startswith("replay")]
    assert t["target"] == "replay >= 2,000 windows/s with live windows p99 <= 200 ms during the replay"
    assert t["met"] is met


def test_tables_show_every_process_of_every_scenario() -> None:
    res = _results()
    res["targets"] = evaluate_targets(res)
    text, md = text_table(res), markdown(res)
    rows = {tuple(line.split()[:2]) for line in text.splitlines() if line.startswith("modbus-")}
    assert {("modbus-200", "agent"), ("modbus-200", "floor"), ("modbus-200", "floor-uvloop"),
            ("modbus-200", "node-red"), ("modbus-500", "floor-uvloop"), ("modbus-500-w60", "agent"),
            ("modbus-500-w60", "floor")} <= rows
    assert ("modbus-500-w60", "node-red") not in rows
    assert "modbus-500: agent / floor-uvloop: CPU 2.00x" in text
    assert "| modbus-500-w60 | floor | 15.0 |" in md
    assert "| modbus-500-w60: agent CPU <= 0.5x Node-RED | n/a |" in md
    assert "| modbus-500: agent CPU <= 1.5x the floor | NOT met | 1.60x the floor (2.00x the floor on uvloop) |" in md
    assert "[met] modbus-200: window-to-subscriber p99 <= 200 ms" in text


@pytest.mark.parametrize(("t0", "t1", "window_s", "count"), [
    (1000.2, 1060.2, 1, 60),        # 1 s windows: one end per whole second
    (1000.0, 1001.0, 1, 1),         # (t0, t1]: the end at t1 counts, the one at t0 does not
    (1000.999, 1001.001, 1, 1),
    (1000.2, 1000.9, 1, 0),
    (30.0, 160.0, 60, 2),           # 60 and 120
    (60.0, 120.0, 60, 1),           # 120 only
    (59.9, 60.1, 60, 1),
    (61.0, 119.0, 60, 0),
    (1_700_000_013.4, 1_700_000_143.4, 60, 2),  # 130 s (2 x 60 + 10) spans 2 or 3 boundaries
    (1_700_000_039.0, 1_700_000_169.0, 60, 3),
    (0.5, 10.5, 5, 2),               # 5 and 10
])
def test_window_boundaries(t0: float, t1: float, window_s: int, count: int) -> None:
    assert window_boundaries(t0, t1, window_s) == count


def test_long_windows_measure_at_least_two_boundaries() -> None:
    assert measured_s(60.0, 1) == 60.0
    assert measured_s(60.0, 60) == 130.0
    assert measured_s(200.0, 60) == 200.0
    assert measured_s(8.0, 5) == 20.0
    for start in (0.0, 0.01, 12.5, 59.99):
        assert window_boundaries(start, start + measured_s(60.0, 60), 60) >= 2


def test_scenario_names() -> None:
    assert scenario_name(500) == "modbus-500"
    assert scenario_name(500, 60) == "modbus-500-w60"
