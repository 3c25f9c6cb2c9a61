"""Targets met or not, and the results as a text table (stdout) or Markdown (BENCHMARKS.md)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["evaluate_targets", "markdown", "scenario_name", "text_table"]

CPU_MAX = 25.0  # % of one core
RSS_MAX = 100.0  # MB, peak
FLOOR_RATIO = 1.5  # agent CPU / the floor's (asyncio's loop: the target's reference)
NODERED_RATIO = 0.5  # agent CPU / Node-RED's
WINDOW_P99_MS = 200.0
REPLAY_RATE = 2000.0
OPCUA_CPU = 10.0
#: the Modbus scale points with per-scenario targets: (PLCs, window length in s)
TARGET_SCALES = ((200, 1), (500, 1), (500, 60))


def _scale(results: dict[str, Any], plcs: int, window_s: int = 1) -> dict[str, Any] | None:
    """The Modbus scenario at ``plcs`` PLCs and ``window_s`` windows (results before
    ``window_s`` was recorded had 1 s windows only)."""
    return next((r for r in results.get("scale", []) if r["plcs"] == plcs and not r["opcua_items"]
                 and r.get("window_s", 1) == window_s), None)


def scenario_name(plcs: int, window_s: int = 1) -> str:
    """The name ``python -m bench`` gives a Modbus scenario: ``modbus-500``, ``modbus-500-w60``."""
    return f"modbus-{plcs}" if window_s == 1 else f"modbus-{plcs}-w{window_s}"


def _target(name: str, met: bool | None, value: str, why: str = "") -> dict[str, Any]:
    return {"target": name, "met": met, "value": value, "why": why}


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _scale_targets(results: dict[str, Any], plcs: int, window_s: int) -> list[dict[str, Any]]:
    """The agent's targets at one Modbus scale point, each row named by its scenario."""
    name = scenario_name(plcs, window_s)
    windows = "1 s windows" if window_s == 1 else f"{window_s} s windows"
    names = [f"{name}: {plcs} PLCs x 30 tags at 1 Hz, {windows}: <= {CPU_MAX:.0f} % of one core, "
             f"<= {RSS_MAX:.0f} MB peak RSS, no missed polls or overruns",
             f"{name}: agent CPU <= {FLOOR_RATIO}x the floor",
             f"{name}: agent CPU <= {NODERED_RATIO}x Node-RED",
             f"{name}: window-to-subscriber p99 <= {WINDOW_P99_MS:.0f} ms"]
    r = _scale(results, plcs, window_s)
    if r is None:
        return [_target(n, None, f"{name} not run") for n in names]
    a = r["agent"]
    ratios = r.get("ratios", {})
    out: list[dict[str, Any]] = []
    keeps_up = a["polls_missed"] == 0 and a["poll_overruns"] == 0
    out.append(_target(names[0], a["cpu_pct"] <= CPU_MAX and a["peak_rss_mb"] <= RSS_MAX and keeps_up,
                       f"{a['cpu_pct']:.1f} % CPU, {a['peak_rss_mb']:.0f} MB peak RSS, "
                       f"{a['polls_missed']} polls missed, {a['poll_overruns']} overruns"))
    floor = ratios.get("floor", {}).get("cpu")
    uv = ratios.get("floor-uvloop", {}).get("cpu")
    value = "floor not measured" if floor is None else f"{floor:.2f}x the floor"
    if uv is not None:
        value += f" ({uv:.2f}x the floor on uvloop)"
    out.append(_target(names[1], None if floor is None else floor <= FLOOR_RATIO, value))
    nr = ratios.get("nodered", {}).get("cpu")
    if nr is not None:
        out.append(_target(names[2], nr <= NODERED_RATIO, f"{nr:.2f}x Node-RED"))
    elif window_s != 1:
        out.append(_target(names[2], None, f"Node-RED is not run with {window_s} s windows"))
    elif "skipped" in r.get("nodered", {}):
        out.append(_target(names[2], None, f"Node-RED skipped: {r['nodered']['skipped'][:120]}"))
    else:
        out.append(_target(names[2], None, "Node-RED not measured"))
    w = a["window_ms"]
    got = f"{a['windows_received']}/{a['windows_expected']} windows received"
    if _nan(w["p99"]):
        out.append(_target(names[3], False, f"no window reached the subscriber in the interval ({got})"))
    else:
        out.append(_target(names[3], w["p99"] <= WINDOW_P99_MS,
                           f"p50 {w['p50']:.0f} ms, p99 {w['p99']:.0f} ms over {w['n']} windows ({got})"))
    return out


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue: met (True/False) or not measured at its scale (None)."""
    out: list[dict[str, Any]] = []
    for plcs, window_s in TARGET_SCALES:
        out += _scale_targets(results, plcs, window_s)
    per_poll = [r["agent"]["modbus_requests_per_poll"] for r in results.get("scale", [])
                if r["agent"].get("modbus_requests_per_poll") is not None]
    out.append(_target("30 contiguous tags in one request", max(per_poll) <= 1.05 if per_poll else None,
                       f"{max(per_poll):.2f} Modbus requests per poll of a 30-tag PLC (counted at the PLCs)"
                       if per_poll else "no Modbus scenario"))
    p99s = [(r["name"], r["agent"]["window_ms"]["p99"]) for r in results.get("scale", [])]
    worst = max(p99s, key=lambda x: x[1] if not math.isnan(x[1]) else -1) if p99s else None
    out.append(_target("window-to-subscriber p99 <= 200 ms",
                       None if worst is None else all(v <= WINDOW_P99_MS for _, v in p99s),
                       "; ".join(f"{n}: {v:.0f} ms" for n, v in p99s)))
    ob = results.get("outbox")
    replay = "replay >= 2,000 windows/s with live windows p99 <= 200 ms during the replay"
    if ob is None:
        out.append(_target(replay, None, "not run"))
    else:
        live = ob["live_during_replay_ms"]
        at_scale = ob["lines"] >= 500 and ob["backlog_seconds"] >= 600
        met = ob["replay_windows_per_s"] >= REPLAY_RATE and (live["n"] == 0 or live["p99"] <= WINDOW_P99_MS)
        out.append(_target(replay,
                           met if at_scale else None,
                           f"{ob['replay_windows_per_s']:.0f} windows/s over {ob['backlog']['windows']} windows; "
                           f"{live['n']} live windows during the replay, p50 {_f(live['p50'], '.0f')} ms, "
                           f"p99 {_f(live['p99'], '.0f')} ms, max {_f(live['max'], '.0f')} ms"
                           + ("" if at_scale else " (below target scale)")))
    ua = next((r for r in results.get("scale", []) if r["opcua_items"] >= 1000 and not r["plcs"]), None)
    if ua is None:
        out.append(_target("1,000 OPC UA monitored items at 1 Hz: <= 10 % of one core", None,
                           "not measured at 1,000 items"))
    else:
        out.append(_target("1,000 OPC UA monitored items at 1 Hz: <= 10 % of one core",
                           ua["agent"]["cpu_pct"] <= OPCUA_CPU,
                           f"{ua['agent']['cpu_pct']:.1f} % CPU with {ua['opcua_items']} items, "
                           f"{ua['agent']['peak_rss_mb']:.0f} MB peak RSS"))
    return out


def _f(v: Any, fmt: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def _rows(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    for r in results.get("scale", []):
        a = r["agent"]
        rows.append([r["name"], "agent", _f(a["cpu_pct"]), _f(a["peak_rss_mb"], ".0f"),
                     f"{_f(a['poll_ms']['p50'], '.2f')} / {_f(a['poll_ms']['p99'], '.2f')}",
                     _f(a["polls"] / max(1, a["sources"]) / max(1e-9, a["duration_s"]), ".2f"),
                     f"{a['polls_missed']} / {a['poll_overruns']}",
                     f"{_f(a['window_ms']['p50'], '.0f')} / {_f(a['window_ms']['p99'], '.0f')}",
                     f"{a['windows_received']}/{a['windows_expected']}"])
        for b in ("floor", "floor-uvloop", "naive"):
            if b in r:
                x = r[b]
                if "skipped" in x:
                    rows.append([r["name"], b, "skipped", "-", "-", "-", "-", "-", "-"])
                    continue
                rows.append([r["name"], b, _f(x["cpu_pct"]), _f(x["peak_rss_mb"], ".0f"),
                             f"{_f(x['cycle_ms']['p50'], '.2f')} / {_f(x['cycle_ms']['p99'], '.2f')}",
                             _f(x["cycles_per_plc_per_s"], ".2f"), f"- / {x['cycle_overruns']}", "-", "-"])
        if "nodered" in r:
            x = r["nodered"]
            if "skipped" in x:
                rows.append([r["name"], "node-red", "skipped", "-", "-", "-", "-", "-", "-"])
            else:
                rows.append([r["name"], "node-red", _f(x["cpu_pct"]), _f(x["peak_rss_mb"], ".0f"), "-",
                             _f(x["messages_per_plc_per_s"], ".2f"), "-", "-", "-"])
    return rows


HEADER = ["scenario", "process", "CPU % of 1 core", "peak RSS MB", "poll/cycle p50 / p99 ms",
          "polls per PLC per s", "missed / overruns", "window->sub p50 / p99 ms", "windows rcvd/exp"]


def _ratio_lines(results: dict[str, Any]) -> list[str]:
    out = []
    for r in results.get("scale", []):
        for b, x in r.get("ratios", {}).items():
            out.append(f"{r['name']}: agent / {b}: CPU {x['cpu']:.2f}x, peak RSS {x['peak_rss']:.2f}x")
        for b in ("floor", "floor-uvloop", "naive", "nodered"):
            if "skipped" in r.get(b, {}):
                out.append(f"{r['name']}: {b} skipped: {r[b]['skipped']}")
    return out


def _outbox_lines(results: dict[str, Any]) -> list[str]:
    ob = results.get("outbox")
    if ob is None:
        return []
    b = ob["backlog"]
    live = ob["live_during_replay_ms"]
    return [
        f"backlog: {ob['backlog_seconds']} s x {ob['lines']} lines of 1 s windows = {b['windows']} windows "
        f"(line + plant), filled in {b['fill_s']} s; disk {b['disk_bytes'] / 1e6:.1f} MB = "
        f"{b['disk_bytes_per_window']:.0f} bytes per window",
        f"replay: {ob['backlog_received']}/{b['windows']} received in {ob['replay_s']} s = "
        f"{ob['replay_windows_per_s']:.0f} windows/s (broker return to last backlog window: "
        f"{ob['replay_from_return_s']} s)",
        f"live windows during the replay: {live['n']}, window->subscriber p50 {_f(live['p50'], '.0f')} ms, "
        f"p99 {_f(live['p99'], '.0f')} ms, max {_f(live['max'], '.0f')} ms; agent CPU during the replay "
        f"{ob['agent_cpu_pct_during_replay']} %, peak RSS {ob['agent_peak_rss_mb']} MB",
    ]


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "NOT met")


def text_table(results: dict[str, Any]) -> str:
    """The results for a terminal."""
    rows = [HEADER, *_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", *_ratio_lines(results), "", *_outbox_lines(results), ""]
    lines += [f"[{_verdict(t['met'])}] {t['target']}: {t['value']}" for t in results.get("targets", [])]
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables and lists."""
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(row) + " |" for row in _rows(results)]
    out += ["", *[f"- {x}" for x in _ratio_lines(results)], "", *[f"- {x}" for x in _outbox_lines(results)], ""]
    out += ["| target | verdict | measured |", "|---|---|---|"]
    out += [f"| {t['target']} | {_verdict(t['met'])} | {t['value']} |" for t in results.get("targets", [])]
    return "\n".join(out) + "\n"
