"""Smoke test of the benchmark: its smallest piece runs and reports every figure (no time asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.measure import cpu_sample, percentile, rss_mb

ROOT = Path(__file__).resolve().parent.parent


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


def test_proc_sampling_reads_this_process() -> None:
    sample = cpu_sample(os.getpid())
    mem = rss_mb(os.getpid())
    assert sample.cpu_s > 0
    assert mem["VmHWM"] >= mem["VmRSS"] > 1


@pytest.mark.timeout(120)
def test_smallest_quick_piece_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--plcs", "2", "--opcua-items", "0", "--outbox", "0",
         "--duration", "2", "--baseline-duration", "1", "--warmup", "0.5", "--baselines", "floor",
         "--json", str(out), "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "modbus-2" in proc.stdout
    res = json.loads(out.read_text())
    assert {"date", "command", "machine", "python", "versions"} <= res["meta"].keys()
    assert {"pymodbus", "asyncua", "paho-mqtt", "mosquitto"} <= res["meta"]["versions"].keys()
    assert res["meta"]["machine"]["cores"] >= 1
    (scale,) = res["scale"]
    agent = scale["agent"]
    assert {"cpu_pct", "peak_rss_mb", "poll_ms", "polls_missed", "poll_overruns", "window_ms",
            "windows_received", "modbus_requests_per_poll"} <= agent.keys()
    assert {"p50", "p99", "max", "n"} <= agent["poll_ms"].keys()
    assert agent["poll_ms"]["n"] > 0
    assert agent["windows_received"] > 0
    # the agent reads each PLC's 30 tags (31 registers) in one request, not 30 (a poll that
    # straddles one of the farm's two counts may shift the short smoke run's ratio a little)
    assert 0.7 <= agent["modbus_requests_per_poll"] <= 1.3
    assert {"cpu_pct", "peak_rss_mb", "cycle_ms", "cycles_per_plc_per_s"} <= scale["floor"].keys()
    assert scale["floor"]["cycle_ms"]["n"] > 0
    assert {t["target"] for t in res["targets"]} >= {"30 contiguous tags in one request",
                                                     "window-to-subscriber p99 <= 200 ms"}
    assert all({"met", "value"} <= t.keys() for t in res["targets"])
