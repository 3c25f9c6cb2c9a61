"""Deployment: the unit's sandbox exposure, install.sh's tree, idempotence and uninstall."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "plantfloor.service"
ROLLUP_UNIT = REPO / "deploy" / "plantfloor-rollup.service"
BOARD_UNIT = REPO / "deploy" / "plantfloor-board.service"
SITE_BOARD_UNIT = REPO / "deploy" / "plantfloor-site-board.service"
INSTALL = REPO / "deploy" / "install.sh"


def unit_settings(unit: Path = UNIT) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_unit_directives() -> None:
    s = unit_settings()
    for key, value in {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30", "Restart": "always",
        "RestartSec": "5", "RestartPreventExitStatus": "2", "DynamicUser": "yes",
        "StateDirectory": "plantfloor", "ConfigurationDirectory": "plantfloor",
        "UMask": "0077", "MemoryDenyWriteExecute": "yes", "PrivateUsers": "yes",
        "CapabilityBoundingSet": "", "AmbientCapabilities": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "ExecStart": "/opt/plantfloor/venv/bin/plantfloor run /etc/plantfloor/plantfloor.yaml",
    }.items():
        assert s.get(key) == [value], key
    # longer than the agent's 10 s drain, or systemd kills it mid-flush
    assert int(s["TimeoutStopSec"][0]) > 10
    creds = dict(v.split(":", 1) for v in s["LoadCredential"])
    assert creds["mqtt-password"] == "/etc/plantfloor/secrets/mqtt-password"
    assert all(p.startswith("/etc/plantfloor/secrets/") for p in creds.values())
    assert "IPAddressDeny" not in s  # PLC networks differ per site: never guessed here


def test_drain_bound_agrees_with_the_unit_and_the_image() -> None:
    from agent.runtime.pipeline import DRAIN_S

    unit = re.search(r"drains for at most (\d+) s", UNIT.read_text())
    image = re.search(r"drains for up to (\d+) s", (REPO / "deploy" / "Dockerfile").read_text())
    assert unit is not None
    assert image is not None
    assert float(unit.group(1)) == DRAIN_S
    assert float(image.group(1)) == DRAIN_S
    # the drain, then at most 3 s for the offline status and 1 s for the disconnect
    # (Publisher.stop), all before systemd's SIGKILL
    assert int(unit_settings()["TimeoutStopSec"][0]) > DRAIN_S + 3 + 1


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", [UNIT, BOARD_UNIT, SITE_BOARD_UNIT], ids=lambda u: u.name)
def test_unit_exposure_at_most_2(unit: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    m = re.search(rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)",
                  proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 2.0, proc.stdout


def test_board_unit_reads_the_agents_state_and_serves_this_host_only() -> None:
    """The board runs as the agent's dynamic user (its 0700 state directory), from the
    agent's config, bounded in memory, reachable from this host only (a reverse proxy)."""
    s = unit_settings(BOARD_UNIT)
    for key, value in {
        "ExecStart": "/opt/plantfloor/venv/bin/plantfloor board /etc/plantfloor/plantfloor.yaml",
        "DynamicUser": "yes", "User": "plantfloor", "StateDirectory": "plantfloor",
        "ReadOnlyPaths": "/etc/plantfloor", "RestartPreventExitStatus": "2",
        "IPAddressDeny": "any", "IPAddressAllow": "localhost", "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "", "UMask": "0077",
    }.items():
        assert s.get(key) == [value], key
    assert s["MemoryMax"] == ["256M"]
    # the token's credential is documented, not required: a missing file would fail the unit
    assert "LoadCredential" not in s
    assert "#LoadCredential=board-token:/etc/plantfloor/secrets/board-token" in BOARD_UNIT.read_text()


def test_site_board_unit_reads_the_rollups_config_and_the_database_password() -> None:
    """The site's board: the roll-up's config, its database password as a credential, no
    state of its own, bounded, reachable from this host only."""
    s = unit_settings(SITE_BOARD_UNIT)
    for key, value in {
        "ExecStart": "/opt/plantfloor/venv/bin/plantfloor board /etc/plantfloor/rollup.yaml",
        "DynamicUser": "yes", "ReadOnlyPaths": "/etc/plantfloor",
        "RuntimeDirectory": "plantfloor-site-board", "RestartPreventExitStatus": "2",
        "LoadCredential": "pg-password:/etc/plantfloor/secrets/pg-password",
        "IPAddressDeny": "any", "IPAddressAllow": "localhost", "MemoryMax": "256M",
        "CapabilityBoundingSet": "", "UMask": "0077",
    }.items():
        assert s.get(key) == [value], key
    assert "StateDirectory" not in s
    # the credential id is the one the shipped roll-up config names
    assert "password_file: pg-password" in (REPO / "config/rollup.yaml").read_text()


FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for python3 and the venv's python: records what pip is asked to install
if [[ "$1" == -c ]]; then exit 0; fi
if [[ "$1 $2" == "-m venv" ]]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && printf '#!/bin/sh\necho plantfloor\n' > "$3/bin/plantfloor"
    chmod +x "$3/bin/plantfloor"; exit 0
fi
if [[ "$1 $2 $3" == "-m pip install" ]]; then echo "${@: -1}" >> "$PIP_LOG"; exit 0; fi
exit 1
"""


@pytest.mark.parametrize(("args", "enabled", "extras"), [
    ((), ["plantfloor.service"], ""),
    (("--board",), ["plantfloor-board.service", "plantfloor.service"], "[board]"),
    (("--rollup", "--no-agent", "--board"),
     ["plantfloor-rollup.service", "plantfloor-site-board.service"], "[rollup,board]"),
], ids=["agent", "gateway-board", "site-board"])
def test_install_board_enables_its_unit_and_installs_its_packages(
        tmp_path: Path, args: tuple[str, ...], enabled: list[str], extras: str) -> None:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    pip_log = tmp_path / "pip.log"
    root = tmp_path / "root"
    proc = run_install("install", *args, "--root", str(root),
                       env={"PYTHON": str(fake), "PIP_LOG": str(pip_log)})
    assert pip_log.read_text().splitlines() == [f"{REPO}{extras}"]
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert sorted(os.listdir(wants)) == enabled
    for unit in (BOARD_UNIT, SITE_BOARD_UNIT):
        assert (root / "etc/systemd/system" / unit.name).read_text() == unit.read_text()
    board = [u for u in enabled if "board" in u]
    if board:
        assert f"the board ({board[0]}, docs/board.md)" in proc.stdout
    else:
        assert "the board (" not in proc.stdout


def test_install_board_without_agent_or_rollup_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(INSTALL), "--no-agent", "--board", "--root", str(tmp_path),
                           "--no-venv"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "--board serves an agent's figures or a roll-up's" in proc.stderr
    assert not (tmp_path / "etc").exists()


def run_install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, **(env or {}))
    full.pop("DESTDIR", None)
    proc = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True,
                          timeout=300, env=full, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def tree(root: Path) -> dict[str, str]:
    """Relative path -> kind and mode of everything below root (symlinks by target)."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if rel.startswith("opt/plantfloor/venv/"):
            continue
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = f"link->{os.readlink(p)}"
        else:
            out[rel] = f"{'d' if p.is_dir() else 'f'}{stat.S_IMODE(st.st_mode):04o}"
    return out


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_install_tree_idempotent_and_uninstall(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_install("install", "--root", str(root), "--no-venv")
    first = tree(root)

    etc = root / "etc/plantfloor"
    assert (etc / "plantfloor.yaml").read_text() == (REPO / "config/kyushu.yaml").read_text()
    assert mode(etc / "plantfloor.yaml") == 0o644
    assert mode(etc / "secrets") == 0o700
    if os.geteuid() == 0:
        assert (etc / "secrets").stat().st_uid == 0
    assert mode(etc) == 0o755
    unit = root / "etc/systemd/system/plantfloor.service"
    assert unit.read_text() == UNIT.read_text()
    assert mode(unit) == 0o644
    wants = root / "etc/systemd/system/multi-user.target.wants/plantfloor.service"
    assert os.readlink(wants) == "/etc/systemd/system/plantfloor.service"
    assert (root / "opt/plantfloor/docs/operations.md").is_file()
    assert (root / "opt/plantfloor/share/plantfloor.example.yaml").is_file()
    # the roll-up's unit is installed, not enabled, and has no config without --rollup
    rollup_unit = root / "etc/systemd/system/plantfloor-rollup.service"
    assert rollup_unit.read_text() == ROLLUP_UNIT.read_text()
    assert mode(rollup_unit) == 0o644
    assert os.listdir(wants.parent) == ["plantfloor.service"]
    # the board's unit too: installed, enabled by the operator (docs/board.md)
    assert (root / "etc/systemd/system/plantfloor-board.service").read_text() == BOARD_UNIT.read_text()
    assert (root / "opt/plantfloor/docs/board.md").is_file()
    assert not (etc / "rollup.yaml").exists()
    assert (root / "opt/plantfloor/docs/scale-out.md").is_file()   # the roll-up unit's Documentation=
    assert (root / "opt/plantfloor/share/rollup.example.yaml").is_file()

    # a site's edits and secrets survive a re-install (upgrade)
    (etc / "plantfloor.yaml").write_text("site: edited\n")
    (etc / "secrets/mqtt-password").write_text("pw\n")
    (etc / "secrets/mqtt-password").chmod(0o600)
    proc = run_install("install", "--root", str(root), "--no-venv")
    assert "keeping the existing /etc/plantfloor/plantfloor.yaml" in proc.stdout
    assert (etc / "plantfloor.yaml").read_text() == "site: edited\n"
    again = tree(root)
    assert again.pop("etc/plantfloor/secrets/mqtt-password") == "f0600"
    assert again == first

    run_install("uninstall", "--root", str(root))
    left = {k: v for k, v in tree(root).items() if not v.startswith("d")}
    assert left == {"etc/plantfloor/plantfloor.yaml": "f0644",
                    "etc/plantfloor/secrets/mqtt-password": "f0600"}
    assert not (root / "opt/plantfloor").exists()
    run_install("uninstall", "--root", str(root))  # idempotent too


def test_install_rollup_on_a_site_server_and_beside_the_agent(tmp_path: Path) -> None:
    root = tmp_path / "root"
    etc = root / "etc/plantfloor"
    wants = root / "etc/systemd/system/multi-user.target.wants"
    proc = run_install("install", "--rollup", "--no-agent", "--root", str(root), "--no-venv")
    assert (etc / "rollup.yaml").read_text() == (REPO / "config/rollup.yaml").read_text()
    assert mode(etc / "rollup.yaml") == 0o644
    assert not (etc / "plantfloor.yaml").exists()
    assert os.listdir(wants) == ["plantfloor-rollup.service"]
    assert os.readlink(wants / "plantfloor-rollup.service") == "/etc/systemd/system/plantfloor-rollup.service"
    for unit in (UNIT, ROLLUP_UNIT):
        assert (root / "etc/systemd/system" / unit.name).read_text() == unit.read_text()
    assert "/etc/plantfloor/secrets/pg-password" in proc.stdout
    assert "plantfloor rollup /etc/plantfloor/rollup.yaml --check" in proc.stdout
    assert "plantfloor check /etc/plantfloor/plantfloor.yaml" not in proc.stdout
    first = tree(root)

    # again: the site's config kept, the tree the same; an install without --rollup (an
    # upgrade) leaves the roll-up enabled
    (etc / "rollup.yaml").write_text("site: edited\n")
    proc = run_install("install", "--rollup", "--no-agent", "--root", str(root), "--no-venv")
    assert "keeping the existing /etc/plantfloor/rollup.yaml" in proc.stdout
    assert tree(root) == first
    run_install("install", "--no-agent", "--root", str(root), "--no-venv")
    assert tree(root) == first

    # both on one host
    run_install("install", "--rollup", "--root", str(root), "--no-venv")
    assert sorted(os.listdir(wants)) == ["plantfloor-rollup.service", "plantfloor.service"]
    assert (etc / "plantfloor.yaml").is_file()
    assert (etc / "rollup.yaml").read_text() == "site: edited\n"

    run_install("uninstall", "--root", str(root))
    left = {k: v for k, v in tree(root).items() if not v.startswith("d")}
    assert left == {"etc/plantfloor/plantfloor.yaml": "f0644", "etc/plantfloor/rollup.yaml": "f0644"}


def test_destdir_and_skip_env(tmp_path: Path) -> None:
    root = tmp_path / "dest"
    full = dict(os.environ, DESTDIR=str(root), PLANTFLOOR_SKIP_VENV="1")
    done = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=60,
                          env=full, check=False)
    assert done.returncode == 0, done.stderr
    assert (root / "etc/plantfloor/plantfloor.yaml").is_file()
    assert not (root / "opt/plantfloor/venv").exists()


def test_dockerfile_shape() -> None:
    text = (REPO / "deploy" / "Dockerfile").read_text()
    instructions = [ln.split(None, 1) for ln in text.splitlines()
                    if ln.strip() and not ln.startswith((" ", "#"))]
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM"):]
    kv = dict(final)
    assert kv["FROM"] == "python:3.11-slim"
    assert kv["USER"].split(":")[0] == "plantfloor"  # never root at run time
    assert kv["ENTRYPOINT"] == '["plantfloor", "run"]'
    assert kv["VOLUME"] == '["/var/lib/plantfloor"]'
    assert "CREDENTIALS_DIRECTORY=/run/secrets" in text
    # every path the build copies from the context exists in the tree
    for k, v in instructions:
        if k == "COPY" and not v.startswith("--from"):
            for src in v.split()[:-1]:
                assert (REPO / src).exists(), src


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(INSTALL), "frobnicate", "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "unknown argument 'frobnicate'" in proc.stderr
    assert not (tmp_path / "etc").exists()


def test_check_accepts_installed_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_install("install", "--root", str(root), "--no-venv")
    plantfloor = Path(sys.executable).parent / "plantfloor"
    proc = subprocess.run([str(plantfloor), "check", str(root / "etc/plantfloor/plantfloor.yaml")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_install("install", "--rollup", "--root", str(root), "--no-venv")
    proc = subprocess.run([str(plantfloor), "rollup", str(root / "etc/plantfloor/rollup.yaml"), "--check"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_install_with_real_venv(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_install("install", "--root", str(root), env={"PYTHON": sys.executable})
    exe = root / "opt/plantfloor/venv/bin/plantfloor"
    assert exe.is_file()
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                             timeout=60, check=False)
    assert version.returncode == 0, version.stderr
    from agent import __version__
    assert __version__ in version.stdout + version.stderr
    check = subprocess.run([str(exe), "check", str(root / "etc/plantfloor/plantfloor.yaml")],
                           capture_output=True, text=True, timeout=120, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


# Runs argv[1:] with the kernel's "memory-deny-write-execute" (prctl PR_SET_MDWE, Linux 6.3+),
# which survives execve: the same refusal of writable+executable memory that the unit's
# MemoryDenyWriteExecute=yes imposes through seccomp.
MDWE_EXEC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])
"""

UNDER_MDWE = """
import mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    raise SystemExit("W+X memory was allowed: MDWE is not in force")
except PermissionError:
    pass
import asyncio, sqlite3
import agent.cli, agent.runtime.pipeline, asyncua, paho.mqtt.client, pymodbus.client, ruamel.yaml
from asyncua.crypto import uacrypto
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
sig = uacrypto.sign_sha256(key, b"plantfloor")
key.public_key().verify(sig, b"plantfloor", padding.PKCS1v15(), hashes.SHA256())
sqlite3.connect(":memory:").execute("pragma journal_mode=wal")
asyncio.run(asyncio.sleep(0))
print("mdwe-ok")
"""


def test_runs_under_memory_deny_write_execute() -> None:
    plantfloor = str(Path(sys.executable).parent / "plantfloor")
    probe = subprocess.run([sys.executable, "-c", MDWE_EXEC, sys.executable, "-c", UNDER_MDWE],
                           capture_output=True, text=True, timeout=120, check=False)
    if probe.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert probe.returncode == 0, probe.stderr
    assert "mdwe-ok" in probe.stdout
    check = subprocess.run([sys.executable, "-c", MDWE_EXEC, plantfloor, "check",
                            str(REPO / "config/kyushu.yaml")],
                           capture_output=True, text=True, timeout=120, check=False)
    assert check.returncode == 0, check.stderr
