"""``python -m bench [--quick] [--json FILE] [--markdown FILE] ...``: run the benchmark."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.broker import mosquitto_version
from bench.outbox import run_outbox
from bench.report import evaluate_targets, markdown, scenario_name, text_table
from bench.scenarios import Settings, run_scale

__all__ = ["main"]

FULL = {"plcs": "10,100,200,500", "opcua_items": 1000, "outbox": "500x600", "duration": 60.0,
        "baseline_duration": 30.0, "warmup": 5.0, "baselines": "floor,floor-uvloop,naive,nodered",
        "nodered_plcs": "10,100,200,500", "profile_plcs": "500", "long_windows": "500", "long_window_s": 60}
QUICK = {"plcs": "10", "opcua_items": 200, "outbox": "100x30", "duration": 8.0,
         "baseline_duration": 6.0, "warmup": 2.0, "baselines": "floor,naive",
         "nodered_plcs": "", "profile_plcs": "", "long_windows": "", "long_window_s": 60}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small scale, short measurements (under 2 minutes)")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--markdown", type=Path, help="also write the results as Markdown to this file")
    p.add_argument("--plcs", help="Modbus PLC counts, comma-separated (full: 10,100,200,500; quick: 10; '' for none)")
    p.add_argument("--long-windows", metavar="PLCS",
                   help="PLC counts also run with --long-window-s windows, e.g. modbus-500-w60 "
                        "(full: 500; quick: '' = none)")
    p.add_argument("--long-window-s", type=int,
                   help="window length of the --long-windows scenarios, in s; must divide 3600 (default 60)")
    p.add_argument("--opcua-items", type=int, help="OPC UA monitored items (full: 1000; quick: 200; 0: skip)")
    p.add_argument("--outbox", help="backlog LINESxSECONDS of 1 s windows (full: 500x600; quick: 100x30; 0: skip)")
    p.add_argument("--duration", type=float, help="seconds the agent is measured per scenario")
    p.add_argument("--baseline-duration", type=float, help="seconds each baseline is measured")
    p.add_argument("--warmup", type=float, help="seconds after start-up before measuring")
    p.add_argument("--baselines", help="comma-separated: floor, floor-uvloop, naive, nodered ('' for none; "
                                       "full: all four; quick: floor,naive)")
    p.add_argument("--nodered-plcs", help="PLC counts at which Node-RED runs")
    p.add_argument("--nodered-dir", type=Path, help="install Node-RED here (reused across runs); default: the work dir")
    p.add_argument("--profile-plcs", help="PLC counts at which the agent is also run under cProfile")
    p.add_argument("--workdir", type=Path, help="keep every file of the run here (default: a temporary folder, removed)")
    return p


def _meminfo_gb() -> float:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return float("nan")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str:
    """The repository's commit (``+dirty`` with uncommitted changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _meta(argv: list[str], quick: bool) -> dict[str, Any]:
    versions = {}
    for pkg in ("plantfloor", "pymodbus", "asyncua", "paho-mqtt", "pydantic"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    versions["mosquitto"] = mosquitto_version()
    return {
        "commit": _commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench " + shlex.join(argv),
        "quick": quick,
        "machine": {"cores": os.cpu_count(), "memory_gb": _meminfo_gb(), "cpu": _cpu_model(),
                    "kernel": platform.release()},
        "python": platform.python_version(),
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    d = QUICK if args.quick else FULL
    if args.long_window_s is not None and (args.long_window_s < 1 or 3600 % args.long_window_s):
        parser.error(f"--long-window-s must divide 3600 (the agent's windows do), not {args.long_window_s}")

    def opt(name: str) -> Any:
        v = getattr(args, name)
        return d[name] if v is None else v

    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="plantfloor-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    s = Settings(workdir=workdir, duration_s=float(opt("duration")), baseline_s=float(opt("baseline_duration")),
                 warmup_s=float(opt("warmup")),
                 baselines=tuple(b for b in str(opt("baselines")).split(",") if b),
                 nodered_plcs=_ints(str(opt("nodered_plcs"))), nodered_dir=args.nodered_dir,
                 profile_plcs=_ints(str(opt("profile_plcs"))),
                 long_window_s=int(opt("long_window_s")), long_window_plcs=_ints(str(opt("long_windows"))))
    results: dict[str, Any] = {"meta": _meta(argv, args.quick), "scale": []}
    started = time.monotonic()
    try:
        for n in _ints(str(opt("plcs"))):
            print(f"bench: {n} Modbus PLCs x 30 tags ...", file=sys.stderr, flush=True)
            results["scale"].append(run_scale(f"modbus-{n}", n, 0, s))
        w = s.long_window_s
        for n in s.long_window_plcs:
            print(f"bench: {n} Modbus PLCs x 30 tags, {w} s windows ...", file=sys.stderr, flush=True)
            results["scale"].append(run_scale(scenario_name(n, w), n, 0, s, window_s=w))
        items = int(opt("opcua_items"))
        if items > 0:
            print(f"bench: OPC UA, {items} monitored items ...", file=sys.stderr, flush=True)
            results["scale"].append(run_scale(f"opcua-{items}", 0, max(1, items // 2), s))
        outbox = str(opt("outbox"))
        if outbox not in ("", "0"):
            n_lines, seconds = (int(x) for x in outbox.lower().split("x"))
            print(f"bench: outbox replay of {seconds} s x {n_lines} lines ...", file=sys.stderr, flush=True)
            results["outbox"] = run_outbox(n_lines, seconds, s)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if s.nodered:
        results["meta"]["nodered"] = {k: v for k, v in s.nodered.items() if k != "dir"}
    results["meta"]["run_s"] = round(time.monotonic() - started, 1)
    results["targets"] = evaluate_targets(results)
    print(text_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
    if args.markdown is not None:
        args.markdown.write_text(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
