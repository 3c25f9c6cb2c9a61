"""`plantfloor run` stopped while it is still starting: a clean stop, exit 0."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.agentrig import agent_config_dict, sim_config, write_yaml

#: the agent's own CLI, with a SIGTERM sent to itself while it loads its configuration
_TERM_WHILE_LOADING = """
import os, signal, sys
import agent.config.load as load
real = load.load_config
def loading(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
load.load_config = loading
from agent.cli.main import main
raise SystemExit(main(["run", sys.argv[1]]))
"""


async def test_sigterm_while_starting_ends_in_a_clean_stop(
        tmp_path: Path, mosquitto: Any, simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(sim_config(), auto=False)
    config = write_yaml(tmp_path / "agent.yaml", agent_config_dict(tmp_path, mosquitto.url, sims))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _TERM_WHILE_LOADING, str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
    text = out.decode()
    assert proc.returncode == 0, text
    assert "stopped" in text
