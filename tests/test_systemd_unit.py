"""deploy/plantfloor.service proven under a real systemd: a fresh Debian booted in a container.

A minimal Debian 12 (cached, see tests/systemd/cache.sh) boots under its own systemd in a
systemd-nspawn container with a private network. Inside it the project is installed with
``deploy/install.sh`` as an operator does on a gateway without internet access (the wheels
come from a folder), the credentials and a config are put in place, and software PLCs, a
Mosquitto broker that refuses anonymous clients and a subscriber run beside the agent.
The scenario then asserts what docs/operations.md promises:

- ``systemctl start`` returns after READY=1: the unit is active (running) with its STATUS line;
- windows of every line and of the plant reach the broker;
- credentials arrive in ``$CREDENTIALS_DIRECTORY`` (the service cannot read the secrets
  folder), the state database is private to the dynamic user, and the sandbox holds (no
  capabilities, no new privileges, seccomp, a read-only root, /root hidden);
- ``plantfloor check --connect`` passes inside, against the running setup;
- the watchdog is armed and fed, and enforced: a SIGSTOPped agent is killed and restarted,
  and the window sums equal the simulators' ledger afterwards, through counter rollovers;
- ``systemctl stop`` closes the window early, publishes the offline status and exits 0
  without reaching the stop timeout; the drain it logs is the unit's;
- a configuration error exits 2 and is not restarted (``RestartPreventExitStatus=2``);
- after a restart the sums still equal the ledger: nothing lost while the agent was down.

It boots a container and takes about two minutes, so it runs when selected: ``make
test-systemd`` (what CI runs), ``pytest -m systemd`` or ``PLANTFLOOR_SYSTEMD_TEST=1``. It
needs root, systemd-nspawn (package systemd-container), nsenter and, while the cache is
cold, debootstrap and a Debian mirror; without them it is skipped with the reason, or
fails with ``PLANTFLOOR_SYSTEMD_TEST=require``. MemoryMax= and TasksMax= are not checked:
cgroup controllers do not reach the container on every host.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import secrets
import shutil
import stat
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.systemd.nspawn import Machine, run_host
from tests.waiting import wait_until

pytestmark = [pytest.mark.systemd, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "plantfloor.service"
CACHE_SH = REPO / "tests" / "systemd" / "cache.sh"
HELD_SIMULATORS = REPO / "tests" / "systemd" / "held_simulators.py"
REQUIRE = os.environ.get("PLANTFLOOR_SYSTEMD_TEST", "")

ROOT_TOPIC = "nissan/kyushu"
LINES = ("kei-ev", "rogue")
PLANTFLOOR = "/opt/plantfloor/venv/bin/plantfloor"
CONFIG = "/etc/plantfloor/plantfloor.yaml"
CREDENTIALS = "/run/credentials/plantfloor.service"
DYNAMIC_UIDS = range(61184, 65520)  # systemd's DynamicUser= range
SHOWN = ("ActiveState", "SubState", "Result", "StatusText", "MainPID", "NRestarts", "WatchdogUSec",
         "ExecMainCode", "ExecMainStatus")
KEI_START = 2**32 - 30   # both counters wrap a few dozen units after production starts
ROGUE_START = 2**31 - 40

SIM_CONFIG = f"""\
# software PLCs for the systemd test: fixed ports (the container's network is its own),
# steady production (no stops) so that "stopped" in the ledger means held
seed: 7
timezone: Asia/Tokyo
plcs:
  - id: plc-kei
    kind: modbus
    host: 127.0.0.1
    port: 5020
    lines:
      - id: kei-ev
        takt_s: 1
        counter: {{unit_id: 1, address: 100, table: holding, type: uint32, word_order: big, start: {KEI_START}}}
        state: {{unit_id: 1, address: 110, table: holding}}
        production: {{micro_stop_rate_per_hour: 0, breakdown_rate_per_hour: 0}}
  - id: plc-rogue
    kind: opcua
    host: 127.0.0.1
    port: 4840
    path: /plantfloor
    lines:
      - id: rogue
        takt_s: 0.5
        counter: {{node: Rogue.GoodCount, type: Int32, modulus: 2147483648, start: {ROGUE_START}}}
        state: {{node: Rogue.State, type: Int32}}
        production: {{micro_stop_rate_per_hour: 0, breakdown_rate_per_hour: 0}}
"""

AGENT_CONFIG = """\
# /etc/plantfloor/plantfloor.yaml of the systemd test: the Kyushu plant, time-compressed
site: kyushu
timezone: Asia/Tokyo
mqtt:
  url: mqtt://127.0.0.1:1883
  topic_root: nissan/kyushu
  client_id: kyushu-gw-01
  qos: 1
  username: plantfloor
  password_file: mqtt-password          # the systemd credential: $CREDENTIALS_DIRECTORY/mqtt-password
publish:
  interval_s: 5
  status_interval_s: 5
storage:
  path: /var/lib/plantfloor/state.db
  max_mb: 64
plant:
  capacity_per_year: 30800000
  planned_utilization: 0.80
shifts:
  - {name: day, start: "06:30", end: "18:30", days: [mon, tue, wed, thu, fri, sat, sun]}
  - {name: night, start: "18:30", end: "06:30", days: [mon, tue, wed, thu, fri, sat, sun]}
sources:
  - {id: plc-kei, kind: modbus, host: 127.0.0.1, port: 5020, unit_id: 1, poll_interval_s: 0.5, timeout_s: 0.4, backoff_max_s: 1}
  - {id: plc-rogue, kind: opcua, endpoint: "opc.tcp://127.0.0.1:4840/plantfloor", mode: subscribe, poll_interval_s: 0.5, backoff_max_s: 1}
lines:
  - id: kei-ev
    product: Sakura
    takt_s: 1
    max_rate_per_hour: 36000
    counter: {source: plc-kei, address: 100, table: holding, type: uint32, word_order: big}
    state: {source: plc-kei, address: 110, table: holding, type: uint16, map: {0: stopped, 1: running, 2: faulted}}
  - id: rogue
    product: Rogue
    takt_s: 0.5
    max_rate_per_hour: 36000
    counter: {source: plc-rogue, node: "ns=2;s=Rogue.GoodCount", rollover: 2147483648}
    state: {source: plc-rogue, node: "ns=2;s=Rogue.State", map: {0: stopped, 1: running, 2: faulted}}
"""

BROKER_CONF = """\
# the site's broker: loopback only, no anonymous clients
listener 1883 127.0.0.1
allow_anonymous false
password_file /etc/mosquitto/passwd
"""

# what the copy of the source tree leaves out: what .gitignore names, and the repository
_IGNORED_ANYWHERE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".mypy_cache",
    ".ruff_cache", ".hypothesis", "*.db", "*.db-wal", "*.db-shm")
_IGNORED_AT_TOP = {"build", "dist", "state"}


def _source_ignore(folder: str, names: list[str]) -> set[str]:
    ignored = set(_IGNORED_ANYWHERE(folder, names))
    if Path(folder) == REPO:
        ignored |= _IGNORED_AT_TOP & set(names)
    return ignored


# --- selection and prerequisites -----------------------------------------------------------

def _selected(config: pytest.Config) -> bool:
    markexpr = str(config.getoption("markexpr", "") or "")
    return bool(REQUIRE) or re.search(r"(?<!not )\bsystemd\b", markexpr) is not None


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def _missing() -> str | None:
    """Why this host cannot boot the container, or None."""
    if sys.platform != "linux":
        return "systemd-nspawn runs on Linux only"
    if os.geteuid() != 0:
        return "booting a container with systemd-nspawn needs root"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"),
                          ("debootstrap", "debootstrap")):
        if _which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if not Path("/proc/self/ns/pid").exists():
        return "no PID namespaces on this kernel"
    return None


@pytest.fixture
def systemd_host(request: pytest.FixtureRequest) -> None:
    if not _selected(request.config):
        pytest.skip("boots Debian under systemd in a container (about 2 min): selected by "
                    "`make test-systemd`, `-m systemd` or PLANTFLOOR_SYSTEMD_TEST=1")
    reason = _missing()
    if reason is not None:
        if REQUIRE == "require":
            pytest.fail(f"PLANTFLOOR_SYSTEMD_TEST=require, but {reason}")
        pytest.skip(reason)


@pytest.fixture
async def machine(systemd_host: None, tmp_path: Path) -> AsyncIterator[Machine]:
    """A fresh Debian booted under systemd, with a copy of the source tree and the wheels in /root."""
    path = {"PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"}
    env = {**os.environ, **path}
    made = await run_host("bash", str(CACHE_SH), "rootfs", within=1200, env=env)
    assert made.returncode == 0, made.describe()
    tarball = made.stdout.strip().splitlines()[-1]
    made = await run_host("bash", str(CACHE_SH), "wheels", sys.executable, within=600, env=env)
    assert made.returncode == 0, made.describe()
    wheels = Path(made.stdout.strip().splitlines()[-1])

    root = tmp_path / "root"
    root.mkdir()
    box = Machine(root, f"plantfloor-ci-{uuid.uuid4().hex[:8]}", tmp_path / "nspawn.log")
    try:
        unpack = ["tar", "--zstd" if tarball.endswith(".zst") else "--gzip", "--numeric-owner",
                  "-C", str(root), "-xf", tarball]
        done = await run_host(*unpack, within=300)
        assert done.returncode == 0, done.describe()
        await _copy(REPO, root / "root/plantfloor", ignore=_source_ignore)
        await _copy(wheels, root / "root/wheels")
        shutil.copy2(HELD_SIMULATORS, root / "root/held_simulators.py")
        state = await box.boot(within=120)
        assert state in ("running", "degraded"), f"the container did not boot: {state!r}"
        yield box
    finally:
        await box.shutdown()
        # --one-file-system: never follow a mount the container might have left
        await run_host("rm", "-rf", "--one-file-system", str(root), within=300)


async def _copy(src: Path, dst: Path, ignore: Any = None) -> None:
    await asyncio.to_thread(shutil.copytree, src, dst, ignore=ignore, symlinks=True)


# --- what the broker saw, and the ledger -----------------------------------------------------

@dataclass
class Outputs:
    """Everything the in-container subscriber wrote, windows deduplicated by (line, epoch, seq)."""

    lines: dict[str, dict[tuple[Any, int], dict[str, Any]]] = field(default_factory=dict)
    plant: dict[tuple[Any, int], dict[str, Any]] = field(default_factory=dict)
    status: list[tuple[bool, dict[str, Any]]] = field(default_factory=list)
    conflicts: list[tuple[str, Any, int]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Outputs:
        out = cls()
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # still being written
            retain, topic, payload = [*line.rstrip("\n").split(" ", 2), "", ""][:3]
            out.raw.append(topic)
            if not topic.startswith(f"{ROOT_TOPIC}/") or not payload.startswith("{"):
                continue
            p = json.loads(payload)
            if topic == f"{ROOT_TOPIC}/status":
                out.status.append((retain == "1", p))
            elif topic == f"{ROOT_TOPIC}/plant/output":
                out._keep(out.plant, "plant", p)
            elif topic.startswith(f"{ROOT_TOPIC}/lines/") and topic.endswith("/output"):
                out._keep(out.lines.setdefault(p["line"], {}), p["line"], p)
        return out

    def _keep(self, seen: dict[tuple[Any, int], dict[str, Any]], name: str, p: dict[str, Any]) -> None:
        # tolerant of the epoch field: (line, epoch, seq) when payloads carry it
        key = (p.get("epoch"), int(p["seq"]))
        old = seen.get(key)
        if old is not None and _strip(old) != _strip(p):
            self.conflicts.append((name, *key))
        seen.setdefault(key, p)

    def units(self, line: str) -> int:
        return sum(int(p["units"]) for p in self.lines.get(line, {}).values())

    def windows(self, line: str) -> list[dict[str, Any]]:
        return [p for _, p in sorted(self.lines.get(line, {}).items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))]

    def plant_windows(self) -> list[dict[str, Any]]:
        return [p for _, p in sorted(self.plant.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))]


def _strip(p: dict[str, Any]) -> dict[str, Any]:
    """A window's identity without the delivery flag (a resend may say historical)."""
    return {k: v for k, v in p.items() if k != "historical"}


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Rig:
    """The booted container and what the scenario put into it."""

    box: Machine
    mqtt_password: str = field(default_factory=lambda: f"pf-{secrets.token_hex(12)}")
    observer_password: str = field(default_factory=lambda: f"obs-{secrets.token_hex(12)}")
    marks: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, what: str) -> None:
        self.marks.append((what, time.monotonic()))

    def outputs(self) -> Outputs:
        return Outputs.read(self.box.path("/root/mqtt.log"))

    def ledger(self) -> dict[str, Any]:
        path = self.box.path("/root/ledger.json")
        return json.loads(path.read_text()) if path.exists() else {}

    async def systemctl(self, *args: str, check: bool = True, within: float = 60) -> str:
        return (await self.box.run("systemctl", "--no-pager", *args, check=check, within=within)).output

    async def show(self, *props: str) -> dict[str, str]:
        return await self.box.show("plantfloor.service", *props)

    async def log_show(self, when: str) -> None:
        """Print the unit's state (shown with -s, and with a failure)."""
        props = await self.show(*SHOWN)
        print(f"\nsystemctl show plantfloor ({when}):\n" + "\n".join(f"  {k}={props.get(k, '')}" for k in SHOWN))

    async def journal(self, unit: str = "plantfloor.service") -> str:
        return (await self.box.run("journalctl", "--no-pager", "-o", "cat", "-u", unit)).stdout

    async def proc(self, pid: str, name: str) -> str:
        return (await self.box.run("cat", f"/proc/{pid}/{name}")).stdout


def _unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


# --- the scenario ------------------------------------------------------------------------

async def test_unit_under_systemd(machine: Machine) -> None:
    rig = Rig(machine)
    rig.mark("booted")
    try:
        await _install(rig)
        await _start_broker_simulators_subscriber(rig)
        await _start_and_ready(rig)
        await _windows_arrive(rig)
        await _credentials_state_and_sandbox(rig)
        await _check_connect(rig)
        await _watchdog(rig)
        await _hold_and_count_exactly(rig, "after the watchdog restart")
        await _stop(rig)
        await _config_error_is_not_restarted(rig)
        await _restart_and_count_exactly(rig)
    except Exception:
        await _diagnostics(rig)
        raise
    start = rig.marks[0][1]
    print("\nsteps (s since boot):", ", ".join(f"{w} {t - start:.1f}" for w, t in rig.marks))


async def _install(rig: Rig) -> None:
    """deploy/install.sh as the operator runs it, offline: the wheels come from a folder."""
    box = rig.box
    run = await box.run("bash", "/root/plantfloor/deploy/install.sh", "install", within=600,
                        env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/root/wheels"})
    assert "installed plantfloor" in run.stdout, run.describe()
    assert box.path("/etc/systemd/system/plantfloor.service").read_text() == UNIT.read_text()
    enabled = await box.run("systemctl", "is-enabled", "plantfloor.service")
    assert enabled.stdout.strip() == "enabled"
    secrets_dir = box.path("/etc/plantfloor/secrets").stat()
    assert (stat.S_IMODE(secrets_dir.st_mode), secrets_dir.st_uid) == (0o700, 0)

    # the site's secrets and config (docs/operations.md, Install)
    await box.run("sh", "-c", "umask 077; printf '%s' \"$PW\" > /etc/plantfloor/secrets/mqtt-password",
                  env={"PW": rig.mqtt_password})
    box.path("/root/client-key.pem").write_bytes(_private_key_pem())
    await box.run("install", "-m", "0600", "/root/client-key.pem", "/etc/plantfloor/secrets/opcua-client-key.pem")
    box.path(CONFIG).write_text(AGENT_CONFIG)
    check = await box.run(PLANTFLOOR, "check", CONFIG)
    assert f"{CONFIG}: valid" in check.stdout
    rig.mark("installed")


def _private_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


async def _start_broker_simulators_subscriber(rig: Rig) -> None:
    box = rig.box
    box.path("/etc/mosquitto/conf.d/plantfloor.conf").write_text(BROKER_CONF)
    await box.run("mosquitto_passwd", "-c", "-b", "/etc/mosquitto/passwd", "plantfloor", rig.mqtt_password)
    await box.run("mosquitto_passwd", "-b", "/etc/mosquitto/passwd", "observer", rig.observer_password)
    await box.run("chown", "mosquitto", "/etc/mosquitto/passwd")
    await box.run("systemctl", "restart", "mosquitto.service")
    anonymous = await box.run("mosquitto_sub", "-h", "127.0.0.1", "-t", "probe", "-C", "1", "-W", "5",
                              check=False)
    assert anonymous.returncode != 0, "the broker must refuse anonymous clients"
    assert "not authori" in anonymous.output, anonymous.describe()

    box.path("/root/simulators.yaml").write_text(SIM_CONFIG)
    await box.run("systemd-run", "--quiet", "--unit=pf-plcs", "/opt/plantfloor/venv/bin/python",
                  "/root/held_simulators.py", "/root/simulators.yaml", "/root/ledger.json")
    # the ledger is written once every PLC listens
    await wait_until(lambda: bool(rig.ledger().get("lines")), 60, "the simulators listen", interval=0.1)
    assert {k: v["state"] for k, v in rig.ledger()["lines"].items()} == dict.fromkeys(LINES, "stopped")

    await box.run("systemd-run", "--quiet", "--unit=pf-mqtt", "-p", "StandardOutput=file:/root/mqtt.log",
                  "mosquitto_sub", "-h", "127.0.0.1", "-u", "observer", "-P", rig.observer_password,
                  "-q", "1", "-t", f"{ROOT_TOPIC}/#", "-F", "%r %t %p")

    async def subscribed() -> bool:
        await box.run("mosquitto_pub", "-h", "127.0.0.1", "-u", "observer", "-P", rig.observer_password,
                      "-t", f"{ROOT_TOPIC}/probe", "-m", "probe")
        return f"{ROOT_TOPIC}/probe" in rig.outputs().raw
    await wait_until(subscribed, 30, "the subscriber receives", interval=0.5)
    rig.mark("broker, PLCs, subscriber")


async def _start_and_ready(rig: Rig) -> None:
    """`systemctl start` returns once READY=1 arrived: active (running), the STATUS line set."""
    await rig.systemctl("start", "plantfloor.service", within=120)
    props = await rig.show("Type", "ActiveState", "SubState", "StatusText", "MainPID")
    assert props["Type"] == "notify"
    # a Type=notify unit is "running" only after READY=1; before it, it is "activating (start)"
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert props["StatusText"].startswith("sources 2/2 up; broker up; backlog "), props
    status = await rig.systemctl("status", "plantfloor.service", "--lines=0")
    assert re.search(r"Active: active \(running\)", status), status
    assert 'Status: "sources 2/2 up; broker up' in status, status
    rig.mark("READY")
    await rig.log_show("after systemctl start")
    # the agent has its baselines (READY waits for a good reading of every source): now the lines run
    await rig.box.run("systemctl", "kill", "--kill-who=main", "--signal=SIGUSR1", "pf-plcs.service")


async def _windows_arrive(rig: Rig) -> None:
    def every_line_and_plant() -> bool:
        out = rig.outputs()
        return all(len(out.lines.get(line, {})) >= 2 for line in LINES) and len(out.plant) >= 2
    await wait_until(every_line_and_plant, 40, "two windows of every line and of the plant", interval=0.25)
    out = rig.outputs()
    for line in LINES:
        for p in out.windows(line):
            assert (p["site"], p["line"]) == ("kyushu", line)
            assert isinstance(p["units"], int)
            assert p["units"] >= 0
            assert _ts(p["window_end"]) > _ts(p["window_start"])
    for p in out.plant_windows():
        assert set(p["lines"]) == set(LINES)
    online = [s for _, s in out.status]
    assert online, "no status message"
    assert online[-1]["state"] == "online", online[-1:]
    rig.mark("windows")


async def _credentials_state_and_sandbox(rig: Rig) -> None:
    box = rig.box
    pid = (await rig.show("MainPID"))["MainPID"]
    status = dict(line.split(":", 1) for line in (await rig.proc(pid, "status")).splitlines() if ":" in line)
    status = {k: v.strip() for k, v in status.items()}
    uid = int(status["Uid"].split()[0])
    assert uid in DYNAMIC_UIDS, f"not a dynamic user: uid {uid}"
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, f"{cap} {status[cap]}"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # filter mode: SystemCallFilter= is in force

    # credentials: copies of the secrets in $CREDENTIALS_DIRECTORY, readable by the service only
    environ = dict(v.split("=", 1) for v in (await rig.proc(pid, "environ")).split("\0") if "=" in v)
    assert environ["CREDENTIALS_DIRECTORY"] == CREDENTIALS
    listing = await box.run("stat", "-c", "%n %a %u", f"{CREDENTIALS}/mqtt-password",
                            f"{CREDENTIALS}/opcua-client-key.pem")
    for line in listing.stdout.splitlines():
        _, mode, owner = line.split()
        assert (mode, int(owner)) == ("400", uid), line
    assert (await box.run("cat", f"{CREDENTIALS}/mqtt-password")).stdout == rig.mqtt_password
    assert (await box.run("cat", f"{CREDENTIALS}/opcua-client-key.pem")).stdout.encode() == \
        box.path("/root/client-key.pem").read_bytes()
    denied = await box.run("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           "cat", "/etc/plantfloor/secrets/mqtt-password", check=False)
    assert denied.returncode != 0, denied.describe()
    assert "Permission denied" in denied.output, denied.describe()
    # the broker refuses anonymous clients: the agent is connected with the credential's password,
    # which is nowhere else it could have found it, and never in its log
    assert not box.path("/var/lib/private/plantfloor/mqtt-password").exists()
    assert "broker up" in (await rig.show("StatusText"))["StatusText"]
    assert rig.mqtt_password not in await rig.journal()

    # the state database: in /var/lib/private (0700 root), owned by the dynamic user, 0600
    private = box.path("/var/lib/private").stat()
    assert (stat.S_IMODE(private.st_mode), private.st_uid) == (0o700, 0)
    assert os.readlink(box.path("/var/lib/plantfloor")) == "private/plantfloor"
    state_dir = box.path("/var/lib/private/plantfloor").stat()
    assert (stat.S_IMODE(state_dir.st_mode), state_dir.st_uid) == (0o700, uid)
    db = box.path("/var/lib/private/plantfloor/state.db").stat()
    assert (stat.S_IMODE(db.st_mode), db.st_uid) == (0o600, uid)

    # the sandbox, seen from the service's own mount namespace
    mounts = [line.split() for line in (await rig.proc(pid, "mountinfo")).splitlines()]
    root_opts = [m[5] for m in mounts if m[4] == "/"][-1]
    assert root_opts.split(",")[0] == "ro", f"/ is mounted {root_opts}"
    for target in ("/opt/plantfloor/probe", "/etc/plantfloor/probe", "/usr/probe"):
        wrote = await box.run("touch", target, ns_of=int(pid), check=False)
        assert wrote.returncode != 0, wrote.describe()
        assert "Read-only file system" in wrote.output, wrote.describe()
    home = await box.run("ls", "-A", "/root", ns_of=int(pid), check=False)
    assert home.stdout.strip() == "", f"ProtectHome=yes, yet /root shows {home.stdout!r}"
    rig.mark("credentials, state, sandbox")


async def _check_connect(rig: Rig) -> None:
    """`plantfloor check --connect` as docs/operations.md shows it, beside the running agent."""
    run = await rig.box.run(PLANTFLOOR, "check", "--connect", CONFIG, within=120,
                            env={"CREDENTIALS_DIRECTORY": "/etc/plantfloor/secrets"}, check=False)
    assert run.returncode == 0, run.describe()
    for name in ("source plc-kei: kei-ev.counter=", "source plc-rogue: rogue.counter=",
                 "broker mqtt://127.0.0.1:1883: connected"):
        assert f"ok   {name}" in run.stdout, run.describe()
    rig.mark("check --connect")


async def _watchdog(rig: Rig) -> None:
    """Armed (WATCHDOG_USEC, pings arrive) and enforced (a stopped agent is killed, restarted)."""
    props = await rig.show("WatchdogUSec", "WatchdogTimestampMonotonic", "MainPID", "NRestarts")
    assert props["WatchdogUSec"] == "30s", props
    assert props["NRestarts"] == "0", props
    pid = props["MainPID"]
    environ = dict(v.split("=", 1) for v in (await rig.proc(pid, "environ")).split("\0") if "=" in v)
    assert (environ["WATCHDOG_USEC"], environ["WATCHDOG_PID"]) == ("30000000", pid)
    armed_at = int(props["WatchdogTimestampMonotonic"])  # READY (systemd arms it then)

    async def pinged() -> bool:
        return int((await rig.show("WatchdogTimestampMonotonic"))["WatchdogTimestampMonotonic"]) > armed_at
    await wait_until(pinged, 40, "a WATCHDOG=1 ping from the agent", interval=0.5)
    rig.mark("watchdog ping")

    await rig.box.run("systemctl", "kill", "--kill-who=main", "--signal=SIGSTOP", "plantfloor.service")

    async def stopped() -> bool:
        status = await rig.proc(pid, "status")
        return any(line.split()[1:2] == ["T"] for line in status.splitlines() if line.startswith("State:"))
    await wait_until(stopped, 10, "the agent stopped by SIGSTOP", interval=0.1)

    async def restarted() -> bool:
        now = await rig.show("NRestarts", "SubState", "MainPID")
        return (now["NRestarts"], now["SubState"]) == ("1", "running") and now["MainPID"] not in ("0", pid)
    await wait_until(restarted, 100, "systemd kills the stopped agent and starts it again", interval=0.5)
    journal = await rig.journal()
    assert "Watchdog timeout (limit 30s)!" in journal, journal[-3000:]
    assert "Failed with result 'watchdog'" in journal, journal[-3000:]
    assert "Scheduled restart job, restart counter is at 1." in journal, journal[-3000:]
    rig.mark("watchdog restart")
    await rig.log_show("after the watchdog restart")


async def _hold_and_count_exactly(rig: Rig, when: str) -> dict[str, Any]:
    """Hold production, then the window sums must reach exactly the ledger's units."""
    sent = datetime.now(UTC)
    await rig.box.run("systemctl", "kill", "--kill-who=main", "--signal=SIGUSR2", "pf-plcs.service")

    def held() -> bool:
        led = rig.ledger()
        return _ts(led["updated_at"]) > sent and all(v["state"] == "stopped" for v in led["lines"].values())
    await wait_until(held, 20, "the simulators hold production", interval=0.1)
    ledger = rig.ledger()["lines"]
    for line in LINES:
        assert ledger[line]["expected_units"] > 10, f"{line} built too little to prove anything: {ledger[line]}"

    def exact() -> bool:
        out = rig.outputs()
        return all(out.units(line) == ledger[line]["expected_units"] for line in LINES)
    try:
        await wait_until(exact, 40, f"window sums equal to the ledger {when}", interval=0.25)
    except AssertionError:
        out = rig.outputs()
        got = {line: (out.units(line), ledger[line]["expected_units"], len(out.lines.get(line, {})))
               for line in LINES}
        raise AssertionError(f"{when}: (window sums, ledger, windows) per line {got}") from None
    out = rig.outputs()
    assert out.conflicts == [], f"a window was published twice with different contents: {out.conflicts[:5]}"
    rig.mark(f"exact {when}")
    return ledger


async def _stop(rig: Rig) -> None:
    """`systemctl stop`: the window closes early, the offline status goes out, exit 0 in time."""
    await rig.box.run("systemctl", "kill", "--kill-who=main", "--signal=SIGUSR1", "pf-plcs.service")
    drain = re.search(r"drains for at most (\d+) s", UNIT.read_text())
    assert drain, "the unit documents the drain bound"
    stop_timeout = int(_unit_settings()["TimeoutStopSec"][0])
    before = datetime.now(UTC)
    await rig.systemctl("stop", "plantfloor.service", within=stop_timeout + 30)
    after = datetime.now(UTC)
    props = await rig.show("ActiveState", "SubState", "Result", "ExecMainCode", "ExecMainStatus")
    # Result=timeout (and a SIGKILL) had the stop outlasted TimeoutStopSec
    assert props == {"ActiveState": "inactive", "SubState": "dead", "Result": "success",
                     "ExecMainCode": "1", "ExecMainStatus": "0"}, props
    journal = await rig.journal()
    assert f"stopping: draining the outbox for up to {drain.group(1)} s" in journal, journal[-2000:]

    def offline_after_stop() -> bool:
        status = rig.outputs().status
        return bool(status) and status[-1][1]["state"] == "offline" and _ts(status[-1][1]["ts"]) >= before
    await wait_until(offline_after_stop, 15, "the offline status published at the stop", interval=0.2)
    retained = await rig.box.run("mosquitto_sub", "-h", "127.0.0.1", "-u", "observer", "-P",
                                 rig.observer_password, "-t", f"{ROOT_TOPIC}/status", "-C", "1",
                                 "-W", "5", "-F", "%r %p")
    flag, payload = retained.stdout.strip().split(" ", 1)
    assert flag == "1", f"not retained: {retained.stdout}"
    assert json.loads(payload)["state"] == "offline", retained.stdout

    # the window in progress was closed at the stop, not at its boundary, and published
    out = rig.outputs()
    for name, windows in [*((line, out.windows(line)) for line in LINES), ("plant", out.plant_windows())]:
        last = windows[-1]
        assert before <= _ts(last["window_end"]) <= after, \
            f"{name}: last window {last['window_start']}..{last['window_end']}, stop {before}..{after}"
    rig.mark("stop")
    await rig.log_show("after systemctl stop")


async def _config_error_is_not_restarted(rig: Rig) -> None:
    box = rig.box
    good = box.path(CONFIG).read_text()
    box.path(CONFIG).write_text(good + "bogus_key: 1\n")
    check = await box.run(PLANTFLOOR, "check", CONFIG, check=False)
    assert check.returncode == 2, check.describe()
    assert CONFIG in check.stderr, check.describe()
    assert "bogus_key" in check.stderr, check.describe()

    started = await box.run("systemctl", "start", "plantfloor.service", check=False, within=120)
    assert started.returncode != 0, started.describe()
    props = await rig.show("ActiveState", "SubState", "Result", "ExecMainCode", "ExecMainStatus", "NRestarts")
    # a restart would show as SubState=auto-restart for RestartSec, and count in NRestarts
    # (which a manual start sets back to 0)
    assert props == {"ActiveState": "failed", "SubState": "failed", "Result": "exit-code",
                     "ExecMainCode": "1", "ExecMainStatus": "2", "NRestarts": "0"}, props
    jobs = await box.run("systemctl", "list-jobs", "--no-legend", "--no-pager")
    assert "plantfloor" not in jobs.stdout, jobs.stdout
    journal = await rig.journal()
    assert "bogus_key" in journal, journal[-2000:]
    assert "status=2/INVALIDARGUMENT" in journal, journal[-2000:]

    await rig.log_show("after a start with a config error")
    box.path(CONFIG).write_text(good)
    rig.mark("config error")


async def _restart_and_count_exactly(rig: Rig) -> None:
    """Fixed config, `systemctl restart`: the units built while it was down are all counted."""
    await rig.box.run("systemctl", "kill", "--kill-who=main", "--signal=SIGUSR1", "pf-plcs.service")
    await rig.systemctl("restart", "plantfloor.service", within=120)
    props = await rig.show("ActiveState", "SubState", "StatusText")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert props["StatusText"].startswith("sources 2/2 up; broker up"), props

    # the lines run on for a window, then hold
    seen = {line: len(rig.outputs().lines.get(line, {})) for line in LINES}
    await wait_until(lambda: all(len(rig.outputs().lines.get(line, {})) > seen[line] for line in LINES),
                     30, "a window after the restart", interval=0.25)
    ledger = await _hold_and_count_exactly(rig, "after stop, config error and restart")

    out = rig.outputs()
    epochs = {key[0] for line in LINES for key in out.lines[line]} | {key[0] for key in out.plant}
    assert len(epochs) == 1, f"the state store survived every restart, yet epochs {epochs}"
    for name, windows in [*((line, out.windows(line)) for line in LINES), ("plant", out.plant_windows())]:
        assert [w["seq"] for w in windows] == list(range(1, len(windows) + 1)), f"{name}: seq gaps"
        for prev, nxt in itertools.pairwise(windows):
            assert nxt["window_start"] == prev["window_end"], f"{name}: windows do not tile at {nxt['seq']}"
    for line in LINES:
        events = {e for w in out.windows(line) for e in w["events"]}
        assert "agent_offline" in events, f"{line}: no window marks the time the agent was down: {events}"
        # both counters wrapped while counted (the ledger's counter is the PLC's, modulo its width)
        start = KEI_START if line == "kei-ev" else ROGUE_START
        assert ledger[line]["counter"] < start, f"{line} did not roll over: {ledger[line]}"

    def plant_adds_up() -> bool:
        now = rig.outputs()
        return sum(int(p["units"]) for p in now.plant.values()) == sum(now.units(line) for line in LINES)
    await wait_until(plant_adds_up, 15, "the plant's windows add up to the lines'", interval=0.25)

    await rig.log_show("after the restart, before the last stop")
    await rig.systemctl("stop", "plantfloor.service", within=60)
    rig.mark("exact after restart")


async def _diagnostics(rig: Rig) -> None:
    """What a failure needs: the units' journals, the ledger and the last messages."""
    if rig.box.init_pid is None:
        return
    for unit in ("plantfloor.service", "pf-plcs.service", "mosquitto.service"):
        try:
            print(f"\n--- journal of {unit} ---\n{(await rig.journal(unit))[-6000:]}")
        except AssertionError as exc:
            print(f"(no journal of {unit}: {exc})")
    print(f"\n--- ledger ---\n{json.dumps(rig.ledger(), indent=1)[-3000:]}")
    log = rig.box.path("/root/mqtt.log")
    if log.exists():
        print(f"\n--- last messages ---\n{log.read_text(errors='replace')[-4000:]}")
