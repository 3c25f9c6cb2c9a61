"""``python -m bench.board [--lines 500] [--pages 20] [--duration 60]``: the board's benchmark.

Two runs of the agent's window clock (``bench.board_writer``: every line's window closed
and committed each second, the board's rows included) on a fresh state file:

* **without the board**: the writer alone; its CPU.
* **with the board**: ``plantfloor board`` as its own process on the same file, and
  ``--pages`` live pages (Server-Sent Events streams held by this process, as browsers
  would); the writer's CPU again, the board's CPU and memory, and for every state each
  page receives, the delay from the commit of the window it shows (the writer logs each
  commit's time) to its arrival at the page.

Targets (the issue's): the board at most 10 % of one core and 150 MB, window commit to
page p99 at most 1 s, and the writer's CPU unchanged within noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shlex
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.measure import cpu_percent, cpu_sample, rss_mb, summary
from bench.procs import Child, wait_for

__all__ = ["main"]

MAP = {0: "stopped", 1: "running", 2: "fault"}


def config(workdir: Path, lines: int) -> Path:
    all_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    cfg = {
        "site": "bench", "timezone": "Asia/Tokyo",
        "publish": {"interval_s": 1},
        "storage": {"path": str(workdir / "state.db"), "max_mb": 4096},
        "plant": {"capacity_per_year": 500_000, "planned_utilization": 0.8},
        "shifts": [{"name": "a", "start": "00:00", "end": "12:00", "days": all_days},
                   {"name": "b", "start": "12:00", "end": "00:00", "days": all_days}],
        "downtime": {"reasons": {"fault": {"category": "unplanned", "state": "faulted"}}},
        "sources": [{"id": "plc", "kind": "modbus", "host": "127.0.0.1", "port": 1}],
        "lines": [{"id": f"l{i:03d}", "product": "Sakura", "target_per_hour": 3600,
                   "counter": {"source": "plc", "address": 4 * i, "type": "uint32"},
                   "state": {"source": "plc", "address": 4 * i + 2, "type": "uint16", "map": MAP}}
                  for i in range(lines)],
    }
    path = workdir / "agent.json"
    path.write_text(json.dumps(cfg))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def commits(log: Path) -> dict[float, float]:
    out: dict[float, float] = {}
    for line in log.read_text().splitlines():
        end, at = line.split()
        out.setdefault(float(end), float(at))
    return out


async def page(url: str, received: list[tuple[float, float]], stop: asyncio.Event) -> None:
    """One open page: the window end each state shows, and when it arrived."""
    async with httpx.AsyncClient(timeout=None) as client, \
            client.stream("GET", url + "api/v1/events") as r:
        data: list[str] = []
        seen: set[float] = set()
        async for line in r.aiter_lines():
            if stop.is_set():
                return
            if line.startswith("data:"):
                data.append(line)
            elif not line and data:
                text = data[0]
                data = []
                at = time.time()
                i = text.find('"window_end":"')
                if i >= 0:
                    end = datetime.fromisoformat(text[i + 14:text.index('"', i + 14)]).timestamp()
                    # the first state showing a window is its arrival; a state sent again
                    # for another reason (a line turning stale or fresh) is not
                    if end not in seen:
                        seen.add(end)
                        received.append((end, at))


def phase(workdir: Path, lines: int, pages: int, warmup: float, duration: float,
          board: bool) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = config(workdir, lines)
    log = workdir / "commits.log"
    logs = workdir / "logs"
    child: Child | None = None
    url = ""
    if board:
        port = free_port()
        child = Child.python("board", "agent.cli", ["board", str(cfg), "--port", str(port)], logs)
        url = f"http://127.0.0.1:{port}/"

        def answers() -> bool:
            try:
                return httpx.get(url + "healthz", timeout=1).status_code in (200, 503)
            except httpx.HTTPError:
                return False

        wait_for(answers, 60, "the board answers", child=child)
    writer = Child.python("writer", "bench.board_writer",
                          [str(cfg), str(log), str(warmup + duration + 1)], logs)
    received: list[tuple[float, float]] = []
    result: dict[str, Any] = {"board": board, "lines": lines, "pages": pages if board else 0}

    async def measure() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(page(url, received, stop)) for _ in range(pages if board else 0)]
        await asyncio.sleep(warmup)
        w0 = cpu_sample(writer.pid)
        b0 = cpu_sample(child.pid) if child else None
        mark = time.time()
        await asyncio.sleep(duration)
        result["writer_cpu"] = round(cpu_percent(w0, cpu_sample(writer.pid)), 1)
        if child is not None and b0 is not None:
            result["board_cpu"] = round(cpu_percent(b0, cpu_sample(child.pid)), 1)
            result["board_rss_mb"] = {k: round(v, 1) for k, v in rss_mb(child.pid).items()}
        result["measured_from"] = mark
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run(measure())
        writer.proc.wait(timeout=60)
    finally:
        writer.stop()
        if child is not None:
            child.stop()
    done = commits(log)
    result["windows"] = len(done)
    if board:
        delays = [at - done[end] for end, at in received
                  if end in done and done[end] >= result["measured_from"]]
        result["commit_to_page"] = summary(delays)
        result["states_received"] = len(received)
    return result


def markdown(res: dict[str, Any]) -> str:
    a, b = res["without"], res["with"]
    d = b["commit_to_page"]
    return "\n".join([
        "| run | writer CPU (% of one core) | board CPU | board RSS now / peak | states at the pages | window commit to page p50 / p99 / max |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        f"| without the board | {a['writer_cpu']} % | - | - | - | - |",
        f"| with the board and {b['pages']} pages | {b['writer_cpu']} % | **{b['board_cpu']} %** | "
        f"{b['board_rss_mb'].get('VmRSS')} / **{b['board_rss_mb'].get('VmHWM')} MB** | "
        f"{b['states_received']} | {d['p50']} / **{d['p99']}** / {d['max']} ms |",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.board", description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=500)
    p.add_argument("--pages", type=int, default=20)
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds of each run")
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--workdir", type=Path)
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-board-"))
    started = datetime.now(UTC)
    res = {
        "command": "python -m bench.board " + shlex.join(sys.argv[1:] if argv is None else argv),
        "started": started.isoformat(timespec="seconds"), "machine": platform.platform(),
        "python": platform.python_version(),
        "without": phase(work / "without", args.lines, args.pages, args.warmup, args.duration, False),
        "with": phase(work / "with", args.lines, args.pages, args.warmup, args.duration, True),
    }
    text = markdown(res)
    print(json.dumps(res, indent=2))
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
