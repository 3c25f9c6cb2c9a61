"""The Node-RED baseline: install (into a folder outside the repository), flow, process.

``bench/nodered/package.json`` pins Node-RED 4.1 and node-red-contrib-modbus; its npm
override replaces the contrib package's ``@openp4nr/modbus-serial`` dependency (a
tarball URL on a private registry) with ``modbus-serial@8.0.23`` from the public one.
The flow is ``bench/nodered/flow-template.json`` instantiated once per PLC.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import Child

__all__ = ["NodeRedInstall", "install", "start", "write_flow"]

HERE = Path(__file__).resolve().parent / "nodered"


@dataclass(frozen=True)
class NodeRedInstall:
    """The outcome of ``npm install``: where, whether it worked, how long it took, versions."""

    dir: Path
    ok: bool
    seconds: float
    detail: str
    versions: dict[str, str]


def _versions(d: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for pkg in ("node-red", "node-red-contrib-modbus", "@openp4nr/modbus-serial"):
        try:
            out[pkg] = json.loads((d / "node_modules" / pkg / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            continue
    with contextlib.suppress(OSError):
        out["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True,
                                     timeout=10, check=False).stdout.strip()
    return out


def install(dest: Path, timeout_s: float = 300.0) -> NodeRedInstall:
    """``npm install`` the baseline into ``dest`` (reused when it already holds this package.json)."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        return NodeRedInstall(dest, False, 0.0, "npm/node not available", {})
    dest.mkdir(parents=True, exist_ok=True)
    wanted = (HERE / "package.json").read_text()
    marker = dest / "node_modules" / "node-red" / "package.json"
    if (dest / "package.json").exists() and (dest / "package.json").read_text() == wanted and marker.exists():
        return NodeRedInstall(dest, True, 0.0, "reused an earlier install", _versions(dest))
    (dest / "package.json").write_text(wanted)
    start = time.monotonic()
    try:
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--omit=dev"], cwd=dest,
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return NodeRedInstall(dest, False, time.monotonic() - start, f"npm install took over {timeout_s:.0f} s", {})
    seconds = time.monotonic() - start
    (dest / "npm-install.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not marker.exists():
        return NodeRedInstall(dest, False, seconds, f"npm install failed ({proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).strip()[-500:]}", {})
    warnings = [ln for ln in proc.stderr.splitlines() if "EBADENGINE" in ln and "package:" in ln]
    detail = "installed" + (f" with engine warnings: {'; '.join(w.strip() for w in warnings)}" if warnings else "")
    return NodeRedInstall(dest, True, seconds, detail, _versions(dest))


def write_flow(dest: Path, ports: dict[str, int], broker_port: int) -> Path:
    """Write ``flows.json`` and ``settings.js`` for these PLCs into ``dest``; return the flow file."""
    template: dict[str, Any] = json.loads((HERE / "flow-template.json").read_text())
    shared = json.dumps(template["shared"]).replace('"{{broker_port}}"', str(broker_port))
    nodes: list[Any] = json.loads(shared)
    per_plc = json.dumps(template["per_plc"])
    for i, (line, port) in enumerate(sorted(ports.items())):
        text = per_plc.replace('"{{port}}"', str(port)).replace("{{i}}", str(i)).replace("{{line}}", line)
        nodes.extend(json.loads(text))
    flow = dest / "flows.json"
    flow.write_text(json.dumps(nodes, indent=1))
    # no editor, no HTTP nodes: the runtime only runs the flow
    (dest / "settings.js").write_text(
        "module.exports = {\n"
        "  flowFile: 'flows.json',\n"
        "  credentialSecret: false,\n"
        "  httpAdminRoot: false,\n"
        "  httpNodeRoot: false,\n"
        "  uiHost: '127.0.0.1',\n"
        "  uiPort: 0,\n"
        "  logging: {console: {level: 'warn', metrics: false, audit: false}},\n"
        "  editorTheme: {projects: {enabled: false}},\n"
        "};\n")
    return flow


def start(dest: Path, log_dir: Path) -> Child:
    """Run Node-RED on the flow in ``dest`` (the node process itself, so its pid is measured)."""
    red = dest / "node_modules" / "node-red" / "red.js"
    return Child("nodered", ["node", str(red), "--userDir", str(dest), "--settings",
                             str(dest / "settings.js"), "flows.json"], log_dir, cwd=dest)
