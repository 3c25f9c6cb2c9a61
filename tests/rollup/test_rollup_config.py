"""The roll-up's configuration: the shipped example validates; a bad file exits 2 naming file, line and key."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config.load import load_config
from agent.contract.errors import ConfigError
from agent.rollup.config import RollupConfig, load_rollup_config, replica_name
from tests.rollup.rig import rollup_config, write_yaml

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_example_validates_and_shares_the_gateways_plan() -> None:
    cfg, _ = load_rollup_config(ROOT / "config" / "rollup.yaml")
    agent = load_config(ROOT / "config" / "kyushu.yaml").config
    assert cfg.site == agent.site
    assert cfg.plant == agent.plant
    assert cfg.shifts == agent.shifts
    assert cfg.line_gateway == {"kei-ev": "gw-01", "rogue": "gw-02"}
    assert cfg.filters() == ["$share/kyushu-rollup/nissan/kyushu/gw-01/lines/+/output",
                             "$share/kyushu-rollup/nissan/kyushu/gw-01/lines/+/shift",
                             "$share/kyushu-rollup/nissan/kyushu/gw-02/lines/+/output",
                             "$share/kyushu-rollup/nissan/kyushu/gw-02/lines/+/shift"]
    assert cfg.client_id("a") == "kyushu-rollup-a"


def _bad(tmp_path: Path, **change: Any) -> Path:
    data = rollup_config("mqtt://127.0.0.1:1883", "postgresql://u@127.0.0.1/db", {"gw1": ["l1"], "gw2": ["l2"]})
    for key, value in change.items():
        data[key] = value
    return write_yaml(tmp_path / "rollup.yaml", data)


@pytest.mark.parametrize(("change", "key", "reason"), [
    ({"gateways": [{"id": "gw1", "topic_root": "r/1", "lines": ["l1"]},
                   {"id": "gw2", "topic_root": "r/2", "lines": ["l1"]}]},
     "gateways[gw2].lines[0]", "line 'l1' is already a line of gateway 'gw1'"),
    ({"gateways": [{"id": "gw1", "topic_root": "test/site", "lines": ["l1"]}]},
     "gateways[gw1].topic_root", "is the site's own root"),
    ({"gateways": [{"id": "gw1", "topic_root": "r/+", "lines": ["l1"]}]},
     "gateways[gw1].topic_root", "is not a valid topic prefix"),
    ({"mqtt": {"url": "mqtt://127.0.0.1:1883", "version": "3.1.1"}}, "mqtt.version", "needs MQTT 5"),
    ({"database": {"url": "postgresql://u:secret@db/plant"}}, "database.url", "password does not belong"),
    ({"database": {"url": "mysql://db/plant"}}, "database.url", "is not a postgresql:// URI"),
    ({"publish": {"interval_s": 7}}, "publish.interval_s", "does not divide an hour"),
    ({"shards": 2}, "shards", "unknown key"),
])
def test_a_bad_rollup_config_exits_2_with_file_line_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], key: str, reason: str) -> None:
    path = _bad(tmp_path, **change)
    assert main(["rollup", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert re.match(rf"plantfloor: {re.escape(str(path))}:\d+: {re.escape(key)}: ", err), err
    assert reason in err


def test_check_prints_what_a_replica_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _bad(tmp_path)
    assert main(["rollup", str(path), "--check", "--replica", "blue"]) == 0
    out = capsys.readouterr().out
    assert "replica blue, MQTT client id rollup-blue" in out
    assert "test/site/gw1/lines/+/output  lines: l1" in out
    assert "publishes test/site/plant/output (leader)" in out


def test_replica_names() -> None:
    cfg = RollupConfig.model_validate(rollup_config("mqtt://h:1", "postgresql://u@h/d", {"g": ["l"]}))
    assert replica_name(cfg, "r-1") == "r-1"
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", replica_name(cfg))
    assert replica_name(cfg.model_copy(update={"replica": "b"})) == "b"
    with pytest.raises(ConfigError, match="--replica"):
        replica_name(cfg, "Bad Name")


def test_the_wheel_ships_the_migrations_and_the_example(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
                   check=True, capture_output=True, timeout=120)
    names = set(zipfile.ZipFile(next(tmp_path.glob("plantfloor-*.whl"))).namelist())
    assert "agent/rollup/migrations/0001_initial.sql" in names
    assert "agent/config_data/rollup.yaml" in names
