"""Targets met or not, and the results as a text table (stdout) or Markdown (BENCHMARKS.md)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["evaluate_targets", "markdown", "text_table"]

CPU_500 = 25.0
RSS_500 = 100.0
FLOOR_RATIO = 1.5
WINDOW_P99_MS = 200.0
REPLAY_RATE = 2000.0
LIVE_ON_TIME_MS = 1000.0  # a live window reaches the subscriber before the next one closes
OPCUA_CPU = 10.0


def _scale(results: dict[str, Any], plcs: int) -> dict[str, Any] | None:
    return next((r for r in results.get("scale", []) if r["plcs"] == plcs and not r["opcua_items"]), None)


def _target(name: str, met: bool | None, value: str, why: str = "") -> dict[str, Any]:
    return {"target": name, "met": met, "value": value, "why": why}


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue: met (True/False) or not measured at its scale (None)."""
    out: list[dict[str, Any]] = []
    big = _scale(results, 500)
    if big is None:
        out.append(_target("500 PLCs x 30 tags at 1 Hz: <= 25 % of one core, <= 100 MB RSS", None,
                           "not measured at 500 PLCs in this run"))
        out.append(_target("agent CPU <= 1.5x the floor (500 PLCs)", None, "not measured at 500 PLCs"))
    else:
        a = big["agent"]
        keeps_up = a["polls_missed"] == 0 and a["poll_overruns"] == 0
        out.append(_target(
            "500 PLCs x 30 tags at 1 Hz: <= 25 % of one core, <= 100 MB RSS",
            a["cpu_pct"] <= CPU_500 and a["peak_rss_mb"] <= RSS_500 and keeps_up,
            f"{a['cpu_pct']:.1f} % CPU, {a['peak_rss_mb']:.0f} MB peak RSS, "
            f"{a['polls_missed']} polls missed, {a['poll_overruns']} overruns"))
        ratio = big.get("ratios", {}).get("floor", {}).get("cpu")
        out.append(_target("agent CPU <= 1.5x the floor (500 PLCs)",
                           None if ratio is None else ratio <= FLOOR_RATIO,
                           "floor not measured" if ratio is None else f"{ratio:.2f}x the floor"))
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
    if ob is None:
        out.append(_target("replay >= 2,000 windows/s while live windows stay on time", None, "not run"))
    else:
        live = ob["live_during_replay_ms"]
        at_scale = ob["lines"] >= 500 and ob["backlog_seconds"] >= 600
        met = ob["replay_windows_per_s"] >= REPLAY_RATE and (live["n"] == 0 or live["p99"] <= LIVE_ON_TIME_MS)
        out.append(_target("replay >= 2,000 windows/s while live windows stay on time",
                           met if at_scale else None,
                           f"{ob['replay_windows_per_s']:.0f} windows/s over {ob['backlog']['windows']} windows; "
                           f"live windows during the replay p50 {live['p50']:.0f} ms, p99 {live['p99']:.0f} ms, "
                           f"max {live['max']:.0f} ms" + ("" if at_scale else " (below target scale)")))
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
        for b in ("floor", "naive"):
            if b in r:
                x = r[b]
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
