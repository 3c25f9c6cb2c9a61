"""The site service's PostgreSQL driver is the optional extra ``rollup`` and the web board's
packages the extra ``board``: an agent runs without either."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.rollup.rig import rollup_config, write_yaml

#: run in a fresh interpreter in which neither extra's packages can be imported
_WITHOUT_PSYCOPG = """
import importlib, pkgutil, sys
for extra in ("psycopg", "psycopg_pool", "fastapi", "uvicorn", "jinja2", "starlette"):
    sys.modules[extra] = None
import agent
names = [m.name for m in pkgutil.walk_packages(agent.__path__, "agent.")
         if not m.name.startswith(("agent.rollup", "agent.board"))  # the extras' own
         and not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
from agent.runtime.pipeline import Agent  # noqa: F401
loaded = {k for k, v in sys.modules.items() if v is not None}
assert not loaded & {"psycopg", "fastapi", "uvicorn", "jinja2", "starlette"}
print(len(names), flush=True)
from agent.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_agents_modules_import_without_the_extras_and_rollup_says_how_to_install_it(tmp_path: Path) -> None:
    config = tmp_path / "rollup.yaml"
    write_yaml(config, rollup_config("mqtt://127.0.0.1:1", "postgresql://127.0.0.1:1/x", {"gw1": ["l1"]}))
    done = subprocess.run([sys.executable, "-c", _WITHOUT_PSYCOPG, "rollup", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert int(done.stdout.split()[0]) > 40          # every module of the agent was imported
    assert done.stderr.strip() == ("plantfloor: plantfloor rollup needs PostgreSQL's driver, which is not "
                                   "installed: pip install 'plantfloor[rollup]'")
