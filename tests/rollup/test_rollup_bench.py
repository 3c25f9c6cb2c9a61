"""Smoke test of the roll-up benchmark: its smallest run reports every figure (no time asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.postgres import find_bindir

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
@pytest.mark.skipif(find_bindir() is None, reason="PostgreSQL's binaries are not installed")
def test_the_smallest_rollup_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "rollup.json"
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.rollup", "--lines", "12", "--windows", "5", "--replicas", "1",
         "--latency-s", "9", "--json", str(out), "--markdown", str(tmp_path / "rollup.md"), "--workdir", str(work)],
        cwd=ROOT, capture_output=True, text=True, timeout=170, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {"commit", "command", "machine", "versions"} <= res["meta"].keys()
    assert {"postgresql", "psycopg", "mosquitto"} <= res["meta"]["versions"].keys()
    (tp,) = res["throughput"]
    assert tp["replicas"] == 1
    assert tp["windows"] == 12 * 5
    assert tp["windows_per_s"] is None or tp["windows_per_s"] > 0   # None: all in one transaction
    lat = res["latency"]
    assert lat["delay_ms"]["n"] >= 1
    assert lat["delay_ms"]["p99"] >= lat["delay_ms"]["p50"] > 0
    assert "windows/s into PostgreSQL" in (tmp_path / "rollup.md").read_text()
