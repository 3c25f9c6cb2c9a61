"""Serving the board: uvicorn with bounded connections, the command, and the board as a child
process (the demo starts it beside the terminal view).

``plantfloor board CONFIG`` reads the agent's config, opens its state file read-only and
serves on ``board.bind``:``board.port`` (127.0.0.1:8470 by default). Limits: at most
``board.max_connections`` open connections (more get 503 from uvicorn), at most
``board.max_event_clients`` live pages, request headers bounded by h11's defaults, idle
keep-alive connections closed after 5 s; no server header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

import uvicorn
from fastapi import FastAPI

from agent.board.app import create_app
from agent.board.gateway import StoreGateway
from agent.board.hub import FigureSource, Hub
from agent.config import Config
from agent.contract.errors import ConfigError, PlantfloorError
from agent.rollup.config import RollupConfig, load_rollup_config

__all__ = ["BoardProcess", "build", "load_board_config", "serve", "start_board"]

log = logging.getLogger("plantfloor.board")


def build(cfg: Config | RollupConfig, *,
          now: Callable[[], datetime] | None = None) -> tuple[FastAPI, Hub, FigureSource]:
    """The application, its hub (run while the app is served) and where its figures come
    from: the agent's state file (an agent's config) or the site's database (the roll-up's).
    ``now`` is the plant's clock (the demo's plant time; the machine's by default)."""
    try:
        token = cfg.board.token()
    except OSError as exc:
        raise ConfigError(f"cannot read the board's credential file ({exc.strerror})",
                          key="board.credential_file") from exc
    gateway: FigureSource
    if isinstance(cfg, Config):
        gateway = StoreGateway(cfg, now=now)
    else:
        # psycopg only for a site's board
        from agent.board.site import SiteGateway

        gateway = SiteGateway(cfg)
    hub = Hub(gateway, poll_s=cfg.board.poll_s, interval_s=cfg.publish.interval_s,
              now=gateway.now)
    app = create_app(cfg.board, gateway, hub, token=token)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(hub.run(), name="board-hub")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await gateway.close()

    app.router.lifespan_context = lifespan
    return app, hub, gateway


async def serve(cfg: Config | RollupConfig, *, bind: str | None = None, port: int | None = None,
                now: Callable[[], datetime] | None = None) -> None:
    """Serve the board until cancelled (SIGTERM/SIGINT are handled by uvicorn's caller)."""
    app, _hub, _gateway = build(cfg, now=now)
    host = bind or cfg.board.bind
    config = uvicorn.Config(
        app, host=host, port=cfg.board.port if port is None else port, log_config=None,
        access_log=False, server_header=False, proxy_headers=False,
        limit_concurrency=cfg.board.max_connections, timeout_keep_alive=5,
        timeout_graceful_shutdown=2, lifespan="on")
    server = uvicorn.Server(config)
    log.info("board for %s on http://%s:%s/", cfg.site, host, config.port)
    try:
        await server.serve()
    except OSError as exc:  # pragma: no cover - uvicorn logs and exits on bind errors
        raise PlantfloorError(f"the board cannot listen on {host}:{config.port}: {exc}") from exc


def load_board_config(path: Path) -> Config | RollupConfig:
    """An agent's config (a gateway's board) or a roll-up's (the site's), told by its keys."""
    from agent.config.load import load_config

    try:
        raw = path.read_bytes()
    except OSError:
        raw = b""  # the loader names the file and the reason
    # the roll-up's config has gateways (and no lines); an agent's config never has them
    if re.search(rb'^\s*"?gateways"?\s*:', raw, re.MULTILINE):
        return load_rollup_config(path)[0]
    return load_config(path).config


@dataclass
class BoardProcess:
    """A board running as a child process; :meth:`stop` ends it."""

    process: subprocess.Popen[bytes]
    url: str
    #: the child's stderr (its log), kept until :meth:`stop`
    log: IO[bytes]

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait (killed after ``timeout``); the exit status."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    return self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
            return self.process.wait()
        finally:
            self.log.close()


def start_board(config: Path, port: int, *, bind: str = "127.0.0.1", timeout: float = 30.0,
                env: dict[str, str] | None = None, plant_clock: Path | None = None) -> BoardProcess:
    """Start ``plantfloor board CONFIG --port PORT`` as a child process; return once it
    answers, with its URL. Raises :class:`PlantfloorError` if it exits or never answers.
    ``plant_clock``: the demo's plant-time file (:mod:`agent.board.plantclock`)."""
    cmd = [sys.executable, "-m", "agent.cli", "board", str(config), "--port", str(port),
           "--bind", bind]
    if plant_clock is not None:
        cmd += ["--plant-clock", str(plant_clock)]
    # the child's log goes to a file, never to a pipe nobody drains
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - the child's whole life; stop() closes it
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=errors)
    url = f"http://{bind}:{port}/"
    board = BoardProcess(proc, url, errors)
    deadline = _now() + timeout
    while _now() < deadline:
        if proc.poll() is not None:
            errors.seek(0)
            err = errors.read().decode(errors="replace").strip().splitlines()[-1:]
            board.log.close()
            raise PlantfloorError(f"the board exited with status {proc.returncode}: {''.join(err)}")
        try:
            with urllib.request.urlopen(url + "healthz", timeout=1):
                return board
        except urllib.error.HTTPError:
            return board  # it answers (503 while the state file is not readable yet, 401)
        except OSError:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.1)  # the child's readiness is its answer: wait on it, briefly
    board.stop()
    raise PlantfloorError(f"the board did not answer on {url} within {timeout:g} s")


def _now() -> float:
    return time.monotonic()
