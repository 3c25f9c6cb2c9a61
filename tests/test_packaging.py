"""A plain install carries everything `plantfloor demo` needs, whatever the working directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_the_demo_configs_and_the_simulators(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("plantfloor-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("agent/config_data/demo.yaml", "agent/config_data/simulators.yaml",
                 "agent/config_data/kyushu.yaml", "simulators/modbus_plc.py", "agent/cli/main.py",
                 # the board works offline: its page, script, styles and uPlot with its licence
                 "agent/board/templates/board.html", "agent/board/static/board.js",
                 "agent/board/static/board.css", "agent/board/static/uplot/uPlot.iife.min.js",
                 "agent/board/static/uplot/uPlot.min.css", "agent/board/static/uplot/LICENSE"):
        assert name in names, name
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import agent.cli.demo as d; from agent.config.load import load_config; "
             "from simulators.config import load_sim_config; "
             "print(d.__file__); load_config(d.packaged_config('demo.yaml')); "
             "load_sim_config(d.packaged_config('simulators.yaml')); print(d.packaged_config('demo.yaml'))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, check=True, capture_output=True,
                         text=True, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}).stdout
    assert out.splitlines()[0].startswith(str(target))
    assert out.splitlines()[1] == str(target / "agent" / "config_data" / "demo.yaml")
