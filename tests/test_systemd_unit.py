"""deploy/plantfloor.service and deploy/plantfloor-rollup.service proven under a real systemd.

A minimal Debian 12 (cached, see tests/systemd/cache.sh) boots under its own systemd in a
systemd-nspawn container with a private network. Inside it the project is installed with
``deploy/install.sh install --rollup`` as an operator does on a host without internet
access (the wheels come from a folder), the credentials and configs are put in place, and
software PLCs, a Mosquitto broker that refuses anonymous clients, a subscriber and
PostgreSQL (Debian's package: the cluster ``postgresql@15-main`` under systemd) run beside
the agent (gateway gw-01 of site kyushu) and one replica of the roll-up. (On a real site
they run on different hosts; here they share one, and so the file ``mqtt-password``.)
The scenario then asserts what docs/operations.md and docs/scale-out.md promise:

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
- after a restart the sums still equal the ledger: nothing lost while the agent was down;
- the roll-up: ``systemctl start plantfloor-rollup`` returns after READY=1 with its STATUS
  line and the replica leads; its credentials (MQTT and PostgreSQL passwords) arrive in
  ``$CREDENTIALS_DIRECTORY``, it is sandboxed like the agent (another dynamic user, no
  capabilities, no new privileges, seccomp, a read-only root) and its watchdog is fed;
  every window the broker saw is stored exactly once in PostgreSQL (rows per line equal
  the distinct windows, unit sums equal the ledger) through the agent's watchdog restart,
  stop and restart and the roll-up's own stop and restart; the site plant figure is
  published on ``S/plant/output``, in order, revised for late windows, adding up to the
  ledger; ``systemctl stop`` commits, publishes offline and exits 0 within
  ``TimeoutStopSec=``; a configuration error exits 2 and is not restarted.

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
ROLLUP_UNIT = REPO / "deploy" / "plantfloor-rollup.service"
CACHE_SH = REPO / "tests" / "systemd" / "cache.sh"
HELD_SIMULATORS = REPO / "tests" / "systemd" / "held_simulators.py"
REQUIRE = os.environ.get("PLANTFLOOR_SYSTEMD_TEST", "")

SITE_ROOT = "nissan/kyushu"          # the site's root S: the roll-up's figure and status
ROOT_TOPIC = f"{SITE_ROOT}/gw-01"    # the agent's: gateway gw-01 of the site (docs/scale-out.md)
LINES = ("kei-ev", "rogue")
PLANTFLOOR = "/opt/plantfloor/venv/bin/plantfloor"
AGENT = "plantfloor.service"
CONFIG = "/etc/plantfloor/plantfloor.yaml"
CREDENTIALS = "/run/credentials/plantfloor.service"
ROLLUP = "plantfloor-rollup.service"
ROLLUP_CONFIG = "/etc/plantfloor/rollup.yaml"
ROLLUP_CREDENTIALS = "/run/credentials/plantfloor-rollup.service"
REPLICA = "site-a"
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
  topic_root: nissan/kyushu/gw-01       # gateway gw-01 under the site's root
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

# the roll-up's: the one gateway is the agent beside it; its plan and window are the agent's
ROLLUP_YAML = """\
# /etc/plantfloor/rollup.yaml of the systemd test: site kyushu, one gateway, time-compressed
site: kyushu
timezone: Asia/Tokyo
replica: site-a
mqtt:
  url: mqtt://127.0.0.1:1883
  topic_root: nissan/kyushu             # S: S/plant/output, S/rollup/site-a/status
  client_id: kyushu-rollup
  version: "5"
  username: plantfloor-rollup
  password_file: mqtt-password          # the systemd credential: $CREDENTIALS_DIRECTORY/mqtt-password
database:
  url: postgresql://plantfloor@127.0.0.1:@PGPORT@/plantfloor
  password_file: pg-password            # the systemd credential: $CREDENTIALS_DIRECTORY/pg-password
  pool_size: 2
  connect_timeout_s: 5
publish:
  interval_s: 5                         # the agent's publish.interval_s
  grace_s: 2
  status_interval_s: 5
ingest:
  share_group: kyushu-rollup
  drain_idle_s: 0.5
leadership:
  lock_poll_s: 0.5
  tick_s: 0.2
plant:
  capacity_per_year: 30800000
  planned_utilization: 0.80
shifts:
  - {name: day, start: "06:30", end: "18:30", days: [mon, tue, wed, thu, fri, sat, sun]}
  - {name: night, start: "18:30", end: "06:30", days: [mon, tue, wed, thu, fri, sat, sun]}
gateways:
  - {id: gw-01, topic_root: nissan/kyushu/gw-01, lines: [kei-ev, rogue]}
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
    """Everything the in-container subscriber wrote, windows deduplicated by (line, epoch, seq);
    the roll-up's site figures by (epoch, seq), the highest revision kept."""

    lines: dict[str, dict[tuple[Any, int], dict[str, Any]]] = field(default_factory=dict)
    plant: dict[tuple[Any, int], dict[str, Any]] = field(default_factory=dict)
    status: list[tuple[bool, dict[str, Any]]] = field(default_factory=list)
    conflicts: list[tuple[str, Any, int]] = field(default_factory=list)
    site: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    site_all: list[dict[str, Any]] = field(default_factory=list)
    site_conflicts: list[tuple[int, int, int]] = field(default_factory=list)
    rollup_status: list[tuple[bool, dict[str, Any]]] = field(default_factory=list)
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
            if not topic.startswith(f"{SITE_ROOT}/") or not payload.startswith("{"):
                continue
            p = json.loads(payload)
            if topic == f"{SITE_ROOT}/plant/output":
                out._keep_site(p)
            elif topic == f"{SITE_ROOT}/rollup/{REPLICA}/status":
                out.rollup_status.append((retain == "1", p))
            elif topic == f"{ROOT_TOPIC}/status":
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

    def _keep_site(self, p: dict[str, Any]) -> None:
        key = (int(p["epoch"]), int(p["seq"]))
        same = [f for f in self.site_all if (f["epoch"], f["seq"], f["revision"]) == (*key, p["revision"])]
        if same and same[0] != p:  # a leader re-sends a recorded revision byte for byte
            self.site_conflicts.append((*key, int(p["revision"])))
        self.site_all.append(p)
        if key not in self.site or self.site[key]["revision"] < p["revision"]:
            self.site[key] = p

    def units(self, line: str) -> int:
        return sum(int(p["units"]) for p in self.lines.get(line, {}).values())

    def windows(self, line: str) -> list[dict[str, Any]]:
        return [p for _, p in sorted(self.lines.get(line, {}).items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))]

    def plant_windows(self) -> list[dict[str, Any]]:
        return [p for _, p in sorted(self.plant.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))]

    def published(self) -> dict[str, dict[tuple[int, int], int]]:
        """Units of every distinct window the broker saw, per line, by (epoch, seq)."""
        return {line: {(int(k[0]), k[1]): int(p["units"]) for k, p in self.lines.get(line, {}).items()}
                for line in LINES}


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
    pg_password: str = field(default_factory=lambda: f"pg-{secrets.token_hex(12)}")
    pg_port: str = ""      # the cluster's (Debian picks it when it creates the cluster)
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

    async def show(self, *props: str, unit: str = AGENT) -> dict[str, str]:
        return await self.box.show(unit, *props)

    async def log_show(self, when: str, unit: str = AGENT) -> None:
        """Print the unit's state (shown with -s, and with a failure)."""
        props = await self.show(*SHOWN, unit=unit)
        print(f"\nsystemctl show {unit.removesuffix('.service')} ({when}):\n"
              + "\n".join(f"  {k}={props.get(k, '')}" for k in SHOWN))

    async def journal(self, unit: str = AGENT) -> str:
        return (await self.box.run("journalctl", "--no-pager", "-o", "cat", "-u", unit)).stdout

    async def proc(self, pid: str, name: str) -> str:
        return (await self.box.run("cat", f"/proc/{pid}/{name}")).stdout

    async def psql(self, sql: str, database: str = "plantfloor", *, stdin: bool = False) -> list[list[str]]:
        """Rows of ``sql`` run as the postgres superuser (peer authentication on the cluster's
        socket); with ``stdin`` the statements go to psql's stdin (a secret is never in an argv)."""
        argv = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-F", "\t",
                "-v", "ON_ERROR_STOP=1", "-p", self.pg_port, "-d", database, *(() if stdin else ("-c", sql))]
        run = await self.box.run(*argv, within=30, input=sql.encode() if stdin else None)
        return [line.split("\t") for line in run.stdout.splitlines() if line]

    async def secret(self, name: str, content: bytes) -> None:
        """/etc/plantfloor/secrets/NAME, 0600 root, as docs/operations.md writes it (on stdin)."""
        await self.box.run("sh", "-c", f"umask 077; cat > /etc/plantfloor/secrets/{name}", input=content)


def _unit_settings(unit: Path = UNIT) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in unit.read_text().splitlines():
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
        await _database_and_rollup_config(rig)
        # the roll-up subscribes before the agent publishes: a shared subscription gets
        # only what is published once it exists
        await _rollup_start_and_ready(rig, "roll-up READY")
        await _start_and_ready(rig)
        await _windows_arrive(rig)
        await _site_figure_published(rig)
        await _credentials_state_and_sandbox(rig)
        await _rollup_credentials_and_sandbox(rig)
        await _check_connect(rig)
        await _watchdog(rig)
        await _hold_and_count_exactly(rig, "after the watchdog restart")
        await _stop(rig)
        # the agent is down: the roll-up's stop, config error and restart lose no window
        await _stored_exactly_once(rig, "after the agent's stop")
        await _rollup_stop(rig)
        await _config_error_is_not_restarted(rig, AGENT, CONFIG, "check", CONFIG)
        await _config_error_is_not_restarted(rig, ROLLUP, ROLLUP_CONFIG, "rollup", ROLLUP_CONFIG, "--check")
        await _rollup_start_and_ready(rig, "roll-up READY again")
        await _site_window_of_the_stop_recorded(rig)
        ledger = await _restart_and_count_exactly(rig)
        await _stored_exactly_once(rig, "at the end", ledger)
        await _site_figure_adds_up(rig, ledger)
        await _rollup_ran_through(rig)
    except Exception:
        await _diagnostics(rig)
        raise
    start = rig.marks[0][1]
    print("\nsteps (s since boot):", ", ".join(f"{w} {t - start:.1f}" for w, t in rig.marks))


async def _install(rig: Rig) -> None:
    """deploy/install.sh as the operator runs it, offline: the wheels come from a folder."""
    box = rig.box
    run = await box.run("bash", "/root/plantfloor/deploy/install.sh", "install", "--rollup", within=600,
                        env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/root/wheels"})
    assert "installed plantfloor" in run.stdout, run.describe()
    for unit, source in ((AGENT, UNIT), (ROLLUP, ROLLUP_UNIT)):
        assert box.path(f"/etc/systemd/system/{unit}").read_text() == source.read_text()
        enabled = await box.run("systemctl", "is-enabled", unit)
        assert enabled.stdout.strip() == "enabled", unit
    # what the units' Documentation= names, and the roll-up's example config as its config
    for doc in ("operations.md", "scale-out.md"):
        assert box.path(f"/opt/plantfloor/docs/{doc}").read_text() == (REPO / "docs" / doc).read_text()
    assert box.path(ROLLUP_CONFIG).read_text() == (REPO / "config" / "rollup.yaml").read_text()
    secrets_dir = box.path("/etc/plantfloor/secrets").stat()
    assert (stat.S_IMODE(secrets_dir.st_mode), secrets_dir.st_uid) == (0o700, 0)

    # the site's secrets and config (docs/operations.md, Install)
    await rig.secret("mqtt-password", rig.mqtt_password.encode())
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
    # the roll-up's own user (the same password: one mqtt-password file on this one host)
    await box.run("mosquitto_passwd", "-b", "/etc/mosquitto/passwd", "plantfloor-rollup", rig.mqtt_password)
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
                  "-q", "1", "-t", f"{SITE_ROOT}/#", "-F", "%r %t %p")

    async def subscribed() -> bool:
        await box.run("mosquitto_pub", "-h", "127.0.0.1", "-u", "observer", "-P", rig.observer_password,
                      "-t", f"{SITE_ROOT}/probe", "-m", "probe")
        return f"{SITE_ROOT}/probe" in rig.outputs().raw
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


async def _hardened(rig: Rig, pid: str) -> int:
    """A dynamic user without capabilities, new privileges or unfiltered system calls: its uid."""
    status = dict(line.split(":", 1) for line in (await rig.proc(pid, "status")).splitlines() if ":" in line)
    status = {k: v.strip() for k, v in status.items()}
    uid = int(status["Uid"].split()[0])
    assert uid in DYNAMIC_UIDS, f"not a dynamic user: uid {uid}"
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, f"{cap} {status[cap]}"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # filter mode: SystemCallFilter= is in force
    return uid


async def _environ(rig: Rig, pid: str) -> dict[str, str]:
    return dict(v.split("=", 1) for v in (await rig.proc(pid, "environ")).split("\0") if "=" in v)


async def _credentials(rig: Rig, pid: str, uid: int, directory: str, expected: dict[str, bytes]) -> None:
    """Copies of the secrets in $CREDENTIALS_DIRECTORY, readable by the service only; the
    folder they come from is not readable by it."""
    box = rig.box
    assert (await _environ(rig, pid))["CREDENTIALS_DIRECTORY"] == directory
    listing = await box.run("stat", "-c", "%n %a %u", *(f"{directory}/{name}" for name in expected))
    assert len(listing.stdout.splitlines()) == len(expected), listing.stdout
    for line in listing.stdout.splitlines():
        _, mode, owner = line.split()
        assert (mode, int(owner)) == ("400", uid), line
    for name, content in expected.items():
        # /run is the container's own tmpfs: read inside
        assert (await box.run("cat", f"{directory}/{name}")).stdout.encode() == content, name
        denied = await box.run("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                               "cat", f"/etc/plantfloor/secrets/{name}", check=False)
        assert denied.returncode != 0, denied.describe()
        assert "Permission denied" in denied.output, denied.describe()


async def _read_only_root(rig: Rig, pid: str, *targets: str) -> None:
    """The sandbox, seen from the service's own mount namespace: / read-only, /root hidden."""
    mounts = [line.split() for line in (await rig.proc(pid, "mountinfo")).splitlines()]
    root_opts = [m[5] for m in mounts if m[4] == "/"][-1]
    assert root_opts.split(",")[0] == "ro", f"/ is mounted {root_opts}"
    for target in ("/opt/plantfloor/probe", "/etc/plantfloor/probe", "/usr/probe", *targets):
        wrote = await rig.box.run("touch", target, ns_of=int(pid), check=False)
        assert wrote.returncode != 0, wrote.describe()
        assert "Read-only file system" in wrote.output, wrote.describe()
    home = await rig.box.run("ls", "-A", "/root", ns_of=int(pid), check=False)
    assert home.stdout.strip() == "", f"ProtectHome=yes, yet /root shows {home.stdout!r}"


async def _credentials_state_and_sandbox(rig: Rig) -> None:
    box = rig.box
    pid = (await rig.show("MainPID"))["MainPID"]
    uid = await _hardened(rig, pid)
    await _credentials(rig, pid, uid, CREDENTIALS, {
        "mqtt-password": rig.mqtt_password.encode(),
        "opcua-client-key.pem": box.path("/root/client-key.pem").read_bytes()})
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

    await _read_only_root(rig, pid)
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


async def _config_error_is_not_restarted(rig: Rig, unit: str, config: str, *check_args: str) -> None:
    """A config error: the check says so (exit 2), and the unit fails with 2 without restarting."""
    box = rig.box
    good = box.path(config).read_text()
    box.path(config).write_text(good + "bogus_key: 1\n")
    check = await box.run(PLANTFLOOR, *check_args, check=False)
    assert check.returncode == 2, check.describe()
    assert config in check.stderr, check.describe()
    assert "bogus_key" in check.stderr, check.describe()

    started = await box.run("systemctl", "start", unit, check=False, within=120)
    assert started.returncode != 0, started.describe()
    props = await rig.show("ActiveState", "SubState", "Result", "ExecMainCode", "ExecMainStatus", "NRestarts",
                           unit=unit)
    # a restart would show as SubState=auto-restart for RestartSec, and count in NRestarts
    # (which a manual start sets back to 0)
    assert props == {"ActiveState": "failed", "SubState": "failed", "Result": "exit-code",
                     "ExecMainCode": "1", "ExecMainStatus": "2", "NRestarts": "0"}, props
    jobs = await box.run("systemctl", "list-jobs", "--no-legend", "--no-pager")
    assert unit not in jobs.stdout, jobs.stdout
    journal = await rig.journal(unit)
    assert "bogus_key" in journal, journal[-2000:]
    assert "status=2/INVALIDARGUMENT" in journal, journal[-2000:]

    await rig.log_show("after a start with a config error", unit=unit)
    box.path(config).write_text(good)
    rig.mark(f"config error {unit.removesuffix('.service')}")


async def _restart_and_count_exactly(rig: Rig) -> dict[str, Any]:
    """Fixed config, `systemctl restart`: the units built while it was down are all counted.
    Ends with the agent stopped and the lines held: the ledger, final."""
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
    return ledger


# --- the roll-up -------------------------------------------------------------------------

async def _database_and_rollup_config(rig: Rig) -> None:
    """PostgreSQL as Debian runs it, the roll-up's role, database, password and config
    (docs/operations.md, The roll-up); `plantfloor rollup --check --connect` passes."""
    box = rig.box
    cluster: list[str] = []

    async def online() -> bool:
        nonlocal cluster
        run = await box.run("pg_lsclusters", "--no-header", check=False)
        cluster = run.stdout.split()
        return len(cluster) >= 4 and cluster[3] == "online"
    await wait_until(online, 60, "the cluster of Debian's postgresql package online", interval=0.2)
    version, name, rig.pg_port = cluster[:3]
    active = await box.run("systemctl", "is-active", f"postgresql@{version}-{name}.service")
    assert active.stdout.strip() == "active", active.describe()
    await rig.psql(f"CREATE ROLE plantfloor LOGIN PASSWORD '{rig.pg_password}';\n"
                   "CREATE DATABASE plantfloor OWNER plantfloor TEMPLATE template0 ENCODING 'UTF8' "
                   "LOCALE 'C.UTF-8';\n", database="postgres", stdin=True)
    await rig.secret("pg-password", rig.pg_password.encode())
    box.path(ROLLUP_CONFIG).write_text(ROLLUP_YAML.replace("@PGPORT@", rig.pg_port))

    run = await box.run(PLANTFLOOR, "rollup", ROLLUP_CONFIG, "--check", "--connect", within=120,
                        env={"CREDENTIALS_DIRECTORY": "/etc/plantfloor/secrets"}, check=False)
    assert run.returncode == 0, run.describe()
    for text in (f"site kyushu (Asia/Tokyo): replica {REPLICA}, MQTT client id kyushu-rollup-{REPLICA}",
                 f"publishes {SITE_ROOT}/plant/output (leader), {SITE_ROOT}/rollup/{REPLICA}/status and "
                 f"{SITE_ROOT}/rollup/ack/<gateway>",
                 f"{ROOT_TOPIC}/lines/+/output  lines: kei-ev, rogue",
                 f"database: PostgreSQL {version}.", "plantfloor schema none yet",
                 "broker: mqtt://127.0.0.1:1883 accepted an MQTT 5 connection"):
        assert text in run.stdout, f"{text!r} not in\n{run.describe()}"
    rig.mark("PostgreSQL, roll-up config")


async def _rollup_start_and_ready(rig: Rig, mark: str) -> None:
    """`systemctl start plantfloor-rollup` returns once READY=1 (subscribed): active (running)
    with its STATUS line; the replica then leads and says so in its retained status."""
    await rig.systemctl("start", ROLLUP, within=120)
    props = await rig.show("Type", "ActiveState", "SubState", "StatusText", "MainPID", unit=ROLLUP)
    assert props["Type"] == "notify"
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    # READY=1 after the subscription, never the 30 s fallback ("degraded: ...")
    assert re.fullmatch(r"(leader|follower); broker up; windows \d+; duplicates \d+", props["StatusText"]), props
    status = await rig.systemctl("status", ROLLUP, "--lines=0")
    assert re.search(r"Active: active \(running\)", status), status
    assert re.search(r'Status: "(leader|follower); broker up; windows', status), status

    async def leading() -> bool:
        return (await rig.show("StatusText", unit=ROLLUP))["StatusText"].startswith("leader; broker up")
    await wait_until(leading, 15, "the replica leads (it is the only one)", interval=0.2)
    pid = props["MainPID"]

    def online() -> bool:
        last = rig.outputs().rollup_status[-1:]
        return bool(last) and last[0][1]["state"] == "online" \
            and last[0][1]["ready"] is True and last[0][1]["leader"] is True
    await wait_until(online, 15, "the replica's status: online, ready, leading", interval=0.2)
    s = rig.outputs().rollup_status[-1][1]
    assert (s["site"], s["replica"], s["client_id"]) == ("kyushu", REPLICA, f"kyushu-rollup-{REPLICA}"), s
    journal = await rig.journal(ROLLUP)
    assert "database schema migrated to version" in journal, journal[-2000:]
    assert f"leading site kyushu: publishing {SITE_ROOT}/plant/output" in journal, journal[-2000:]
    assert (await rig.show("MainPID", unit=ROLLUP))["MainPID"] == pid, "the replica restarted"
    rig.mark(mark)
    await rig.log_show(f"after systemctl start ({mark})", unit=ROLLUP)


async def _site_figure_published(rig: Rig) -> None:
    """The leader publishes the site's plant figure from the rows, on S/plant/output."""
    def complete() -> list[dict[str, Any]]:
        return [p for p in rig.outputs().site_all
                if set(p["lines"]) == set(LINES) and p["gateways"]["gw-01"]["missing"] == []]
    await wait_until(lambda: len(complete()) >= 1, 30, "a site figure every line reported", interval=0.25)
    for p in rig.outputs().site_all:
        assert (p["schema"], p["site"]) == ("plantfloor.plant/1", "kyushu"), p
        assert set(p["gateways"]) == {"gw-01"}, p
        assert p["units"] == sum(p["lines"].values()), p
        assert p["revision"] >= 0, p
        assert _ts(p["window_end"]) > _ts(p["window_start"]), p
    assert [p["seq"] for p in rig.outputs().site_all if p["revision"] == 0][:1] == [1]
    rig.mark("site figure")


async def _rollup_credentials_and_sandbox(rig: Rig) -> None:
    """The roll-up's credentials, sandbox, database login and watchdog, as the agent's."""
    box = rig.box
    props = await rig.show("MainPID", "WatchdogUSec", "WatchdogTimestampMonotonic", unit=ROLLUP)
    pid = props["MainPID"]
    uid = await _hardened(rig, pid)
    agent_uid = box.path("/var/lib/private/plantfloor").stat().st_uid
    assert uid != agent_uid, "the roll-up and the agent are one user: it could read the agent's state"
    await _credentials(rig, pid, uid, ROLLUP_CREDENTIALS, {
        "mqtt-password": rig.mqtt_password.encode(), "pg-password": rig.pg_password.encode()})
    journal = await rig.journal(ROLLUP)
    assert rig.mqtt_password not in journal
    assert rig.pg_password not in journal
    # no local state; a private runtime folder as its working directory
    run_dir = await box.run("stat", "-c", "%a %u", "/run/plantfloor-rollup")
    assert run_dir.stdout.split() == ["700", str(uid)], run_dir.stdout
    assert (await box.run("readlink", f"/proc/{pid}/cwd")).stdout.strip() == "/run/plantfloor-rollup"
    assert not box.path("/var/lib/private/plantfloor-rollup").exists()
    await _read_only_root(rig, pid, "/var/lib/probe")
    # its database sessions: the role, over TCP, where pg_hba.conf wants the password
    # (scram-sha-256), which only the credential holds
    rows = await rig.psql("SELECT usename, host(client_addr), count(*) FROM pg_stat_activity "
                          f"WHERE application_name = 'plantfloor-rollup {REPLICA}' GROUP BY 1, 2")
    assert len(rows) == 1, rows
    assert rows[0][:2] == ["plantfloor", "127.0.0.1"], rows
    assert int(rows[0][2]) >= 2, rows   # the pool, and the session holding the locks
    # the watchdog: armed, and fed by the heartbeat that pings the database session
    assert props["WatchdogUSec"] == "30s", props
    environ = await _environ(rig, pid)
    assert (environ["WATCHDOG_USEC"], environ["WATCHDOG_PID"]) == ("30000000", pid)
    armed_at = int(props["WatchdogTimestampMonotonic"])

    async def pinged() -> bool:
        return int((await rig.show("WatchdogTimestampMonotonic", unit=ROLLUP))["WatchdogTimestampMonotonic"]) > armed_at
    await wait_until(pinged, 15, "a WATCHDOG=1 ping from the replica", interval=0.25)
    rig.mark("roll-up credentials, sandbox, watchdog")


async def _stored(rig: Rig) -> dict[str, dict[tuple[int, int], int]]:
    """Units of every row of plantfloor.line_window, per line, by (epoch, seq)."""
    out: dict[str, dict[tuple[int, int], int]] = {line: {} for line in LINES}
    for line, epoch, seq, units, gateway in await rig.psql(
            "SELECT line, epoch, seq, units, gateway FROM plantfloor.line_window WHERE site = 'kyushu'"):
        assert gateway == "gw-01", (line, epoch, seq, gateway)
        key = (int(epoch), int(seq))
        assert key not in out.setdefault(line, {}), f"{line} {key} stored twice"
        out[line][key] = int(units)
    return out


async def _stored_exactly_once(rig: Rig, when: str, ledger: dict[str, Any] | None = None) -> None:
    """Every window the broker saw is a row, once, with its units (and nothing else is);
    at a quiescent point the rows' sums equal the simulators' ledger."""
    got: dict[str, dict[tuple[int, int], int]] = {}

    async def stored() -> bool:
        nonlocal got
        got = await _stored(rig)
        return got == rig.outputs().published()
    try:
        await wait_until(stored, 30, f"every window in PostgreSQL {when}", interval=0.5)
    except AssertionError:
        want = rig.outputs().published()
        diff = {line: (len(got.get(line, {})), len(want[line]), sorted(set(got.get(line, {})) ^ set(want[line]))[:5])
                for line in LINES}
        raise AssertionError(f"{when}: (rows, windows the broker saw, keys in one only) per line {diff}") from None
    out = rig.outputs()
    counts = await rig.psql("SELECT line, count(*), sum(units) FROM plantfloor.line_window "
                            "WHERE site = 'kyushu' GROUP BY line ORDER BY line")
    assert {r[0]: int(r[1]) for r in counts} == {line: len(out.lines[line]) for line in LINES}, counts
    if ledger is not None:
        assert {r[0]: int(r[2]) for r in counts} == {line: ledger[line]["expected_units"] for line in LINES}, \
            (counts, ledger)
    assert await rig.psql("SELECT count(*) FROM plantfloor.rejected_message") == [["0"]]
    rig.mark(f"stored exactly once {when}")


async def _rollup_stop(rig: Rig) -> None:
    """`systemctl stop plantfloor-rollup`: drained, offline status, locks freed, exit 0 in time."""
    box = rig.box
    stop_timeout = int(_unit_settings(ROLLUP_UNIT)["TimeoutStopSec"][0])
    before = datetime.now(UTC)
    started = time.monotonic()
    await rig.systemctl("stop", ROLLUP, within=stop_timeout + 30)
    took = time.monotonic() - started
    props = await rig.show("ActiveState", "SubState", "Result", "ExecMainCode", "ExecMainStatus", unit=ROLLUP)
    # Result=timeout (and a SIGKILL) had the stop outlasted TimeoutStopSec
    assert props == {"ActiveState": "inactive", "SubState": "dead", "Result": "success",
                     "ExecMainCode": "1", "ExecMainStatus": "0"}, props
    assert took < stop_timeout, f"the stop took {took:.1f} s, TimeoutStopSec={stop_timeout}"
    journal = await rig.journal(ROLLUP)
    assert "stopping: handing over leadership, draining the subscription" in journal, journal[-2000:]
    assert "not committed at stop" not in journal, journal[-2000:]

    def offline() -> bool:
        last = rig.outputs().rollup_status[-1:]
        return bool(last) and last[0][1]["state"] == "offline" and _ts(last[0][1]["ts"]) >= before
    await wait_until(offline, 15, "the replica's offline status published at the stop", interval=0.2)
    retained = await box.run("mosquitto_sub", "-h", "127.0.0.1", "-u", "observer", "-P", rig.observer_password,
                             "-t", f"{SITE_ROOT}/rollup/{REPLICA}/status", "-C", "1", "-W", "5", "-F", "%r %p")
    flag, payload = retained.stdout.strip().split(" ", 1)
    assert flag == "1", f"not retained: {retained.stdout}"
    last = json.loads(payload)
    assert (last["state"], last["ready"], last["leader"]) == ("offline", False, False), last

    async def released() -> bool:
        # its database sessions ended: the leader and identity locks went with them
        rows = await rig.psql("SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name "
                              "LIKE 'plantfloor-rollup%'), (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory')")
        return rows == [["0", "0"]]
    await wait_until(released, 10, "the replica's sessions and advisory locks gone", interval=0.2)
    print(f"\nsystemctl stop plantfloor-rollup took {took:.1f} s (TimeoutStopSec={stop_timeout})")
    rig.mark("roll-up stop")
    await rig.log_show("after systemctl stop", unit=ROLLUP)


async def _site_window_of_the_stop_recorded(rig: Rig) -> None:
    """The leader has published the site window in which the agent stopped: the windows the
    agent publishes for its downtime when it is back then arrive late for it (and revise it)."""
    out = rig.outputs()
    stopped_at = max(_ts(out.windows(line)[-1]["window_end"]) for line in LINES)

    def recorded() -> bool:
        return any(_ts(p["window_start"]) <= stopped_at < _ts(p["window_end"]) for p in rig.outputs().site_all)
    await wait_until(recorded, 20, "the site window of the agent's stop published", interval=0.2)
    rig.mark("site window of the stop")


async def _site_figure_adds_up(rig: Rig, ledger: dict[str, Any]) -> None:
    """The figure's latest revisions add up to the ledger and agree with plant_window_latest;
    seq never skips; late windows (the agent's gap fill) made revisions naming them."""
    total = sum(ledger[line]["expected_units"] for line in LINES)
    db: dict[int, tuple[int, int]] = {}

    async def adds_up() -> bool:
        nonlocal db
        site = rig.outputs().site
        rows = await rig.psql("SELECT seq, revision, units FROM plantfloor.plant_window_latest "
                              "WHERE site = 'kyushu'")
        db = {int(seq): (int(rev), int(units)) for seq, rev, units in rows}
        return (sum(int(p["units"]) for p in site.values()) == total
                and db == {k[1]: (int(p["revision"]), int(p["units"])) for k, p in site.items()})
    try:
        await wait_until(adds_up, 30, "the site figure adds up to the ledger", interval=0.25)
    except AssertionError:
        site = rig.outputs().site
        raise AssertionError(f"site figure: units {sum(int(p['units']) for p in site.values())} of {total}; "
                             f"{len(site)} site windows published, {len(db)} recorded") from None
    out = rig.outputs()
    assert out.site_conflicts == [], f"a revision published twice with different bytes: {out.site_conflicts[:5]}"
    epochs = {k[0] for k in out.site}
    assert len(epochs) == 1, f"one site epoch, yet {epochs}"
    seqs = sorted(k[1] for k in out.site)
    assert seqs == list(range(1, len(seqs) + 1)), f"site seq skips: {seqs}"
    revised = [p for p in out.site_all if p["revision"] >= 1 and p["gateways"]["gw-01"]["late"]]
    assert revised, "the agent's windows published after its restart revised no site window"
    rig.mark("site figure adds up")


async def _rollup_ran_through(rig: Rig) -> None:
    """Since its last start the replica ran without a restart, and it never logged a warning."""
    props = await rig.show("ActiveState", "SubState", "NRestarts", "Result", unit=ROLLUP)
    assert props == {"ActiveState": "active", "SubState": "running", "NRestarts": "0", "Result": "success"}, props
    # its own processes' lines only (systemd's about the failed start are not the replica's)
    warnings = await rig.box.run("journalctl", "--no-pager", "-o", "cat", "-p", "warning", f"_SYSTEMD_UNIT={ROLLUP}")
    assert warnings.stdout.strip() == "", warnings.stdout
    await rig.log_show("at the end", unit=ROLLUP)


async def _diagnostics(rig: Rig) -> None:
    """What a failure needs: the units' journals, the ledger and the last messages."""
    if rig.box.init_pid is None:
        return
    for unit in (AGENT, ROLLUP, "pf-plcs.service", "mosquitto.service", "postgresql@15-main.service"):
        try:
            print(f"\n--- journal of {unit} ---\n{(await rig.journal(unit))[-6000:]}")
        except AssertionError as exc:
            print(f"(no journal of {unit}: {exc})")
    print(f"\n--- ledger ---\n{json.dumps(rig.ledger(), indent=1)[-3000:]}")
    log = rig.box.path("/root/mqtt.log")
    if log.exists():
        print(f"\n--- last messages ---\n{log.read_text(errors='replace')[-4000:]}")
