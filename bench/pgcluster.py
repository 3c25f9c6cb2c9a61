"""A private PostgreSQL cluster for the benchmark: ``initdb`` in the run's folder, ``pg_ctl`` on a
free loopback port. Durable settings (fsync, synchronous commit): the figures are what a
production server on this disk would give. Never the server already on 5432.

PostgreSQL refuses to run as root: as root the cluster belongs to the ``postgres`` account
and its commands run through ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from bench.broker import free_port

__all__ = ["PgCluster", "postgres_bindir", "postgres_version"]


def postgres_bindir() -> Path:
    """Where initdb and pg_ctl are: $PG_BINDIR, the newest /usr/lib/postgresql/*/bin, or PATH."""
    env = os.environ.get("PG_BINDIR")
    if env and (Path(env) / "initdb").exists():
        return Path(env)
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        found = sorted((p for p in root.iterdir() if (p / "bin" / "initdb").exists()),
                       key=lambda p: int(p.name) if p.name.isdigit() else 0)
        if found:
            return found[-1] / "bin"
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL's binaries (initdb, pg_ctl) are not installed")
    return Path(initdb).parent


def postgres_version() -> str:
    try:
        out = subprocess.run([str(postgres_bindir() / "postgres"), "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, RuntimeError):
        return "not installed"
    found = re.search(r"\d+(?:\.\d+)+", out)
    return found.group(0) if found else "unknown"


class PgCluster:
    """``start()``, ``url``, ``stop()``. The cluster lives in a folder of its own in the system's
    temporary directory (the postgres account must reach it, which a root-only run folder
    does not allow); ``stop()`` removes it and keeps its log as ``<log_dir>/postgres.log``."""

    host = "127.0.0.1"

    def __init__(self, log_dir: Path) -> None:
        self.bindir = postgres_bindir()
        self.log_dir = log_dir
        self.workdir = Path(tempfile.mkdtemp(prefix="plantfloor-bench-pg-"))
        self.port = 0
        self._as: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.workdir, account.pw_uid, account.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> None:
        data = self.workdir / "data"
        done = self._run(str(self.bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                         "-E", "UTF8", "--locale=C")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")
        self.port = free_port()
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(data), "-l", str(self.workdir / "postgres.log"),
                         "-o", f"-p {self.port} -k {self.workdir} -c listen_addresses={self.host}",
                         "-w", "-t", "60", "start")
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {done.stderr[-2000:]}")
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if (self.workdir / "data").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.workdir / "data"), "-m", "fast", "-w", "stop")
        log = self.workdir / "postgres.log"
        if log.exists():
            self.log_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, self.log_dir / "postgres.log")
        shutil.rmtree(self.workdir, ignore_errors=True)
