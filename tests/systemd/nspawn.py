"""A Debian tree booted under its own systemd in a systemd-nspawn container.

The container has a private network namespace (its loopback is its own: the host's broker
on 1883 and anything else listening there are out of reach, and its ports are free), is
not registered with machined (there is none), and is reached with ``nsenter`` into the
namespaces of its PID 1. Everything it runs is torn down with it: :meth:`Machine.shutdown`
powers it off, and kills its PID 1 (so every process in it) when that does not finish.
nspawn runs under ``setpriv --pdeathsig``, so a test process that dies takes it down too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from tests.waiting import wait_until

__all__ = ["PATH", "Machine", "Run"]

#: PATH inside the container (commands run with an empty environment otherwise)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Run:
    """A finished command: its argv, exit status and output."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        return f"{' '.join(self.argv)} -> {self.returncode}\n{self.output[-4000:]}"


async def run_host(*argv: str, within: float, env: dict[str, str] | None = None,
                   input: bytes | None = None) -> Run:
    """Run a command on the host (``input`` on its stdin); AssertionError when it outlives ``within`` s."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL if input is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"not within {within} s: {' '.join(argv)}") from None
    return Run(tuple(argv), proc.returncode or 0, out.decode(errors="replace"),
               err.decode(errors="replace"))


class Machine:
    """One container booted from the tree at ``root``. Constructors do no I/O."""

    def __init__(self, root: Path, name: str, log: Path) -> None:
        self.root = root
        self.name = name
        self.log = log
        self.init_pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def boot(self, within: float = 90.0) -> str:
        """Start the container and wait until its systemd finished booting; its state."""
        nspawn = [shutil.which("systemd-nspawn") or "systemd-nspawn", "-D", str(self.root),
                  f"--machine={self.name}", "--boot", "--register=no", "--keep-unit",
                  "--private-network", "--console=pipe", "-q"]
        setpriv = shutil.which("setpriv")
        argv = [setpriv, "--pdeathsig", "TERM", "--", *nspawn] if setpriv else nspawn
        with self.log.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        await wait_until(self._find_init, 30, "the container's PID 1", interval=0.05)
        state = ""

        async def booted() -> bool:
            # "offline" until the manager listens; then --wait returns once booting is done
            nonlocal state
            run = await self.run("systemctl", "is-system-running", "--wait", within=within, check=False)
            state = run.stdout.strip()
            return state not in ("", "offline")
        await wait_until(booted, within, "the container's systemd to boot", interval=0.1)
        return state

    def _find_init(self) -> bool:
        """The container's PID 1, seen from here: nspawn's child in another PID namespace."""
        assert self._proc is not None
        if self._proc.returncode is not None:
            raise AssertionError(f"systemd-nspawn exited with {self._proc.returncode}: "
                                 f"{self.log.read_text(errors='replace')[-2000:]}")
        own_ns = os.readlink("/proc/self/ns/pid")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self._proc.pid and os.readlink(entry / "ns/pid") != own_ns:
                    self.init_pid = int(entry.name)
                    return True
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
        return False

    async def shutdown(self, within: float = 30.0) -> None:
        """Power the container off; kill its PID 1 (and so everything in it) if it lingers."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            # nspawn turns SIGTERM into a clean poweroff of the container's systemd
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), within)
            except TimeoutError:
                if self.init_pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.init_pid, signal.SIGKILL)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        self._proc = None

    # --- inside --------------------------------------------------------------------------

    async def run(self, *argv: str, within: float = 60.0, check: bool = True,
                  env: dict[str, str] | None = None, ns_of: int | None = None,
                  input: bytes | None = None) -> Run:
        """Run a command inside, as root, with an empty environment but PATH, HOME and ``env``.

        ``within`` bounds it (AssertionError after). ``ns_of`` names a PID inside the container whose namespaces the command enters
        instead (e.g. a service's, to see its sandbox); ``check`` fails on a non-zero exit;
        ``input`` is written to its stdin (secrets: never in an argv, which ``ps`` shows).
        """
        assert self.init_pid is not None, "not booted"
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        cmd = ["nsenter", "-t", str(self.init_pid), "-a", "env", "-i", f"PATH={PATH}",
               "HOME=/root", "LANG=C.UTF-8", *extra]
        if ns_of is not None:
            cmd += ["nsenter", "-t", str(ns_of), "-m", "--"]
        run = await run_host(*cmd, *argv, within=within, input=input)
        run = Run(tuple(argv), run.returncode, run.stdout, run.stderr)
        if check and run.returncode != 0:
            raise AssertionError(f"failed inside the container: {run.describe()}")
        return run

    async def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` of ``props`` as a dict."""
        args = [a for p in props for a in ("-p", p)]
        run = await self.run("systemctl", "show", unit, *args)
        return dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line)

    def path(self, inside: str) -> Path:
        """The host path of a file inside the container (its tree is a plain folder here)."""
        return self.root / inside.lstrip("/")
