"""``python -m bench.rollup [--quick] [--json FILE] [--markdown FILE]``: the roll-up's benchmark.

* **Windows per second into PostgreSQL**, with one and with two replicas: the replicas
  subscribe, are killed (their persistent sessions stay subscribed), a backlog of line
  windows is published into their sessions, and the replicas start again and drain it.
  The rate is the backlog over the time between the first and the last insert
  transaction (``received_at`` in the database), so process start-up is not counted. The
  windows lie before the site's first window: this measures ingest (receive, parse,
  insert, commit, acknowledge); the figure's own cost is in the second measurement.
* **Line window to plant figure**: two replicas live; every second, right after a site
  window ends, one window per line is published for it (as agents do); the delay is the
  arrival of the site figure (revision 0) at a subscriber minus the moment the last line
  window of that site window was handed to the broker.

A private Mosquitto and a private PostgreSQL (``initdb`` in the run's folder, durable
settings) on free loopback ports; the replicas are ``plantfloor rollup`` processes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import platform
import shlex
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from agent.rollup.config import load_rollup_config
from agent.rollup.database import Database
from bench.__main__ import _commit, _cpu_model, _meminfo_gb
from bench.broker import Broker, Subscriber, mosquitto_version
from bench.measure import cpu_percent, cpu_sample, summary
from bench.pgcluster import PgCluster, postgres_version
from bench.procs import Child, wait_for
from bench.rollup_load import SITE_ROOT, Publisher, line_ids, site_config, window

__all__ = ["main"]

TARGET_RATE = 5000.0
FULL: dict[str, Any] = {"lines": 300, "windows": 200, "latency_s": 60.0, "replicas": "1,2"}
QUICK: dict[str, Any] = {"lines": 60, "windows": 25, "latency_s": 15.0, "replicas": "1,2"}
#: the live run's grace: a site window no line reported waits this long, and the empty ones
#: before the first live window hold the (in-order) figure back at the start
LIVE_GRACE_S = 5.0
#: live site windows not measured at the start: the figure catches up with the empty ones
WARMUP_WINDOWS = int(LIVE_GRACE_S) + 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.rollup", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small backlog and a short live run (under a minute)")
    p.add_argument("--lines", type=int, help="lines of the site, over 3 gateways (full: 300; quick: 60)")
    p.add_argument("--windows", type=int, help="backlog windows per line (full: 200; quick: 25)")
    p.add_argument("--replicas", help="replica counts for the throughput runs (default 1,2)")
    p.add_argument("--latency-s", type=float, help="seconds of the live run, the first 7 not measured "
                                                   "(full: 60; quick: 15)")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.add_argument("--markdown", type=Path, help="also write the results as Markdown")
    p.add_argument("--workdir", type=Path, help="keep every file of the run here (default: a temporary folder)")
    return p


class Site:
    """One database of the cluster, its config and its replicas."""

    def __init__(self, name: str, pg: PgCluster, broker: Broker, workdir: Path, lines: int, *,
                 grace_s: float, adopt_interval_s: float) -> None:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        self.url = pg.url.rsplit("/", 1)[0] + f"/{name}"
        self.workdir = workdir
        self.config = site_config(workdir / f"{name}.json", broker_url=broker.url, db_url=self.url, lines=lines,
                                  grace_s=grace_s, adopt_interval_s=adopt_interval_s)
        self.origin = asyncio.run(self._prepare())
        self.replicas: dict[str, Child] = {}

    async def _prepare(self) -> datetime:
        cfg, _ = load_rollup_config(self.config)
        db = Database(cfg.database, application_name="bench")
        await db.open()
        try:
            await db.migrate()
            now = datetime.now(UTC).replace(microsecond=0)
            return (await db.site(cfg.site, interval_s=1, origin=now)).origin
        finally:
            await db.close()

    def start(self, names: list[str]) -> None:
        for name in names:
            self.replicas[name] = Child.python(f"rollup-{name}", "agent.cli",
                                               ["rollup", str(self.config), "--replica", name], self.workdir)

    def count(self) -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT count(*) FROM plantfloor.line_window").fetchone()
        return int(row[0]) if row else 0

    def stop(self) -> None:
        for child in self.replicas.values():
            child.stop()
        self.replicas.clear()


def _ready(sub: Subscriber, names: list[str], seen: dict[str, dict[str, Any]]) -> bool:
    for a in sub.take():
        if a.topic.startswith(f"{SITE_ROOT}/rollup/"):
            p = a.json()
            seen[p["replica"]] = p
    return all(seen.get(n, {}).get("ready") for n in names)


def run_throughput(n: int, pg: PgCluster, broker: Broker, workdir: Path, lines: int, per_line: int) -> dict[str, Any]:
    """A backlog of ``lines * per_line`` windows drained by ``n`` replicas."""
    site = Site(f"throughput_{n}", pg, broker, workdir, lines, grace_s=5.0, adopt_interval_s=3600.0)
    names = [chr(ord("a") + i) for i in range(n)]
    sub = Subscriber(broker, [f"{SITE_ROOT}/rollup/+/status"], client_id=f"bench-status-{n}").start()
    pub = Publisher(broker.host, broker.port)
    try:
        site.start(names)
        seen: dict[str, dict[str, Any]] = {}
        wait_for(lambda: _ready(sub, names, seen), 60, "replicas subscribed")
        for child in site.replicas.values():   # kill -9: the sessions stay subscribed, the backlog queues
            child.proc.kill()
            child.proc.wait()
        site.replicas.clear()
        backlog = [window(gw, line, k + 1, site.origin - timedelta(seconds=per_line - k), units=k % 3)
                   for k in range(per_line) for gw, line in line_ids(lines)]
        publish_s = pub.send_acked(backlog)
        site.start(names)
        wait_for(lambda: site.count() > 0, 60, "the first commit")   # CPU from here: not the start-up
        t0 = {name: cpu_sample(child.pid) for name, child in site.replicas.items()}
        broker0, machine0 = cpu_sample(broker.pid or 0), _machine_busy()
        wait_for(lambda: site.count() >= len(backlog), 600, "the backlog committed")
        cpu = {name: round(cpu_percent(t0[name], cpu_sample(child.pid)), 1) for name, child in site.replicas.items()}
        cpu["mosquitto"] = round(cpu_percent(broker0, cpu_sample(broker.pid or 0)), 1)
        busy, total = (b - a for a, b in zip(machine0, _machine_busy(), strict=True))
        cpu["machine"] = round(100.0 * busy / total, 1) if total else float("nan")
        with psycopg.connect(site.url) as conn:
            first, last, rows = conn.execute(
                "SELECT min(received_at), max(received_at), count(*) FROM plantfloor.line_window").fetchone() or (
                None, None, 0)
            in_first = conn.execute("SELECT count(*) FROM plantfloor.line_window WHERE received_at = %s",
                                    (first,)).fetchone()
        span = (last - first).total_seconds()
        # the first transaction's rows were inserted at its start: the span begins after them
        rate = round((rows - (in_first[0] if in_first else 0)) / span) if span > 0 else None
        return {"replicas": n, "windows": rows, "span_s": round(span, 3), "windows_per_s": rate,
                "cpu_pct": cpu, "publish_s": round(publish_s, 2)}
    finally:
        site.stop()
        sub.stop()
        pub.close()


def _machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of every core since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run_latency(pg: PgCluster, broker: Broker, workdir: Path, lines: int, seconds: float) -> dict[str, Any]:
    """Live windows every second from ``lines`` lines; delay to the site figure."""
    site = Site("latency", pg, broker, workdir, lines, grace_s=LIVE_GRACE_S, adopt_interval_s=5.0)
    sub = Subscriber(broker, [f"{SITE_ROOT}/rollup/+/status", f"{SITE_ROOT}/plant/output"],
                     client_id="bench-plant").start()
    pub = Publisher(broker.host, broker.port)
    sent: dict[str, float] = {}
    try:
        site.start(["a", "b"])
        seen: dict[str, dict[str, Any]] = {}
        wait_for(lambda: _ready(sub, ["a", "b"], seen), 60, "replicas subscribed")
        sub.take()
        ids = line_ids(lines)
        end = time.time() + seconds
        seq = 0
        while time.time() < end:
            boundary = int(time.time()) + 1
            time.sleep(max(0.0, boundary - time.time()))          # the pace of the site's windows
            start = datetime.fromtimestamp(boundary - 1, UTC)
            seq += 1
            pub.send([window(gw, line, seq, start, units=1) for gw, line in ids])
            sent[start.isoformat(timespec="milliseconds").replace("+00:00", "Z")] = time.time()
        arrivals: dict[str, float] = {}

        def all_in() -> bool:
            for a in sub.take():
                if a.topic.endswith("/plant/output"):
                    p = a.json()
                    if p["revision"] == 0 and p["window_start"] in sent:
                        arrivals.setdefault(p["window_start"], a.t)
            return len(arrivals) >= len(sent)
        wait_for(all_in, 30, "a figure for every site window")
        delays = [arrivals[k] - sent[k] for k in sorted(sent)[WARMUP_WINDOWS:]]
        return {"lines": lines, "windows_per_s": lines, "seconds": seconds, "warmup_windows": WARMUP_WINDOWS,
                "delay_ms": summary(delays)}
    finally:
        site.stop()
        sub.stop()
        pub.close()


def _meta(argv: list[str], quick: bool) -> dict[str, Any]:
    versions = {}
    for pkg in ("plantfloor", "psycopg", "psycopg-pool", "paho-mqtt", "pydantic"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    versions["postgresql"] = postgres_version()
    versions["mosquitto"] = mosquitto_version()
    return {"commit": _commit(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "python -m bench.rollup " + shlex.join(argv), "quick": quick,
            "machine": {"cores": __import__("os").cpu_count(), "memory_gb": _meminfo_gb(), "cpu": _cpu_model(),
                        "kernel": platform.release()},
            "python": platform.python_version(), "versions": versions}


def markdown(results: dict[str, Any]) -> str:
    """The results as the Markdown of BENCHMARKS.md's roll-up section."""
    out = ["| replicas | windows | first to last commit | windows/s into PostgreSQL | CPU while draining "
           "(% of one core; machine: % of all cores) |",
           "| ---: | ---: | ---: | ---: | --- |"]
    for t in results["throughput"]:
        cpu = ", ".join(f"{k}: {v:.0f} %" for k, v in t["cpu_pct"].items())
        rate = "one transaction" if t["windows_per_s"] is None else f"**{t['windows_per_s']:,}**"
        out.append(f"| {t['replicas']} | {t['windows']:,} | {t['span_s']:.2f} s | {rate} | {cpu} |")
    lat = results.get("latency")
    if lat:
        d = lat["delay_ms"]
        out += ["", "| live load | site windows | line window to plant figure p50 | p99 | max |",
                "| --- | ---: | ---: | ---: | ---: |",
                f"| {lat['lines']} lines, {lat['windows_per_s']} windows/s, 2 replicas | {d['n']} | {d['p50']:.0f} ms "
                f"| **{d['p99']:.0f} ms** | {d['max']:.0f} ms |"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    d = QUICK if args.quick else FULL
    lines = args.lines or int(d["lines"])
    per_line = args.windows or int(d["windows"])
    seconds = args.latency_s if args.latency_s is not None else float(d["latency_s"])
    counts = [int(x) for x in (args.replicas or str(d["replicas"])).split(",") if x]
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="plantfloor-bench-rollup-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir / "broker")
    pg = PgCluster(workdir)
    results: dict[str, Any] = {"meta": _meta(argv, args.quick), "throughput": []}
    started = time.monotonic()
    try:
        broker.start()
        pg.start()
        for n in counts:
            print(f"bench.rollup: {lines * per_line:,} windows, {n} replica(s) ...", file=sys.stderr, flush=True)
            results["throughput"].append(run_throughput(n, pg, broker, workdir, lines, per_line))
        if seconds > 0:
            print(f"bench.rollup: live, {lines} lines for {seconds:g} s ...", file=sys.stderr, flush=True)
            results["latency"] = run_latency(pg, broker, workdir, lines, seconds)
    finally:
        pg.stop()
        broker.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["run_s"] = round(time.monotonic() - started, 1)
    rates = [t["windows_per_s"] for t in results["throughput"] if t["windows_per_s"] is not None]
    results["target"] = {"windows_per_s": TARGET_RATE, "met": bool(rates) and min(rates) >= TARGET_RATE}
    text = markdown(results)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    if args.markdown is not None:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
