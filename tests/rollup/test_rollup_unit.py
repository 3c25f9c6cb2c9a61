"""The roll-up's systemd unit: hardened like the agent's (exposure at most 2.0), runs exactly the command."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "plantfloor-rollup.service"


def settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_unit_directives() -> None:
    s = settings()
    for key, value in {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30", "Restart": "always",
        "RestartPreventExitStatus": "2", "DynamicUser": "yes", "UMask": "0077", "PrivateUsers": "yes",
        "MemoryDenyWriteExecute": "yes", "CapabilityBoundingSet": "", "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "ProtectSystem": "strict",
        "ExecStart": "/opt/plantfloor/venv/bin/plantfloor rollup /etc/plantfloor/rollup.yaml",
    }.items():
        assert s.get(key) == [value], key
    # longer than the replica's drain (10 s) and the offline status, or systemd kills it mid-commit
    assert int(s["TimeoutStopSec"][0]) > 15
    creds = dict(v.split(":", 1) for v in s["LoadCredential"])
    assert set(creds) == {"mqtt-password", "pg-password"}
    assert all(p.startswith("/etc/plantfloor/secrets/") for p in creds.values())
    assert "StateDirectory" not in s     # no local state: the database holds it


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_exposure_at_most_2() -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                          capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for plantfloor-rollup\.service: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 2.0, proc.stdout
