"""Child processes of the benchmark: started with their output in log files, stopped by pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Child", "wait_for", "wait_json"]

ROOT = Path(__file__).resolve().parent.parent


class Child:
    """One child process; ``stop()`` sends SIGTERM, then SIGKILL after ``grace_s``."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, *, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=cwd or ROOT, env={**os.environ, **(env or {})},
                                         start_new_session=True)

    @classmethod
    def python(cls, name: str, module: str, args: list[str], log_dir: Path) -> Child:
        """``python -m module args`` with this interpreter, from the repository root."""
        env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        return cls(name, [sys.executable, "-m", module, *args], log_dir, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def wait_for(pred: Callable[[], bool], timeout: float, what: str, *, child: Child | None = None,
             period: float = 0.05) -> None:
    """Poll ``pred`` until true; RuntimeError after ``timeout`` or when ``child`` has exited."""
    deadline = time.monotonic() + timeout
    while not pred():
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}) before {what}:\n{child.log_tail()}")
        if time.monotonic() > deadline:
            tail = f":\n{child.log_tail()}" if child is not None else ""
            raise RuntimeError(f"not within {timeout} s: {what}{tail}")
        time.sleep(period)


def wait_json(path: Path, timeout: float, *, child: Child | None = None) -> Any:
    """Wait for ``path`` to exist (written atomically by a child) and return its JSON."""
    wait_for(path.exists, timeout, f"{path.name} is written", child=child)
    return json.loads(path.read_text())
