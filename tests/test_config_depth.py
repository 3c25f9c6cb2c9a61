"""Config nesting is bounded, and keys equal once read are duplicate keys (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config.bounds import MAX_CONFIG_DEPTH, nesting_depth
from agent.config.load import load_config
from agent.contract.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
KYUSHU = (ROOT / "config" / "kyushu.yaml").read_text()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("command", [["check"], ["run"], ["rollup", "--check"], ["rollup"]])
def test_fifty_thousand_nested_brackets_are_refused_with_exit_2(
        tmp_path: Path, command: list[str]) -> None:
    """100 KB of ``[``: a segmentation fault (exit -11) before the bound."""
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 50_000)
    if command[0] == "rollup":
        done = _cli("rollup", *command[1:], str(deep))
    else:
        done = _cli(*command, str(deep))
    assert done.returncode == 2, (done.returncode, done.stderr[-500:])
    err = done.stderr.strip()
    assert f"the bound of {MAX_CONFIG_DEPTH} levels" in err
    assert len(err.splitlines()) == 1
    assert err.startswith(f"plantfloor: {deep}:1")


def test_deep_json_is_refused_with_its_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"site": ' + "[" * 50_000 + "]" * 50_000 + "}")
    with pytest.raises(ConfigError, match="deeper than the bound of 64 levels") as err:
        load_config(deep)
    assert err.value.line == 1


def test_deep_block_yaml_is_refused(tmp_path: Path) -> None:
    text = "site:\n" + "".join(" " * (2 * i + 2) + f"k{i}:\n" for i in range(100)) + " " * 202 + "x\n"
    deep = tmp_path / "deep.yaml"
    deep.write_text(text)
    with pytest.raises(ConfigError, match="deeper than the bound"):
        load_config(deep)


def test_an_alias_that_brings_deep_nesting_along_is_refused(tmp_path: Path) -> None:
    """An anchor 40 deep, aliased 40 deep: 80 levels once expanded."""
    nest = "[" * 40 + "1" + "]" * 40
    f = tmp_path / "alias.yaml"
    f.write_text(f"a: &deep {nest}\nb: {'[' * 40}*deep{']' * 40}\n")
    with pytest.raises(ConfigError, match="alias \\*deep nests collections deeper"):
        load_config(f)


def test_nesting_within_the_bound_is_left_to_validation(tmp_path: Path) -> None:
    f = tmp_path / "ok.yaml"
    f.write_text("site: " + "[" * (MAX_CONFIG_DEPTH - 1) + "]" * (MAX_CONFIG_DEPTH - 1) + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert "levels in a configuration" not in str(err.value)


def test_nesting_depth_counts_levels() -> None:
    assert nesting_depth(1) == 0
    assert nesting_depth({"a": [1, {"b": []}]}) == 4


@pytest.mark.parametrize(("first", "second"), [("1", '"1"'), ("1", '"01"'), ("1", "'+1'")])
def test_state_keys_equal_once_read_are_duplicate_keys(tmp_path: Path, first: str, second: str) -> None:
    old = "map: {0: stopped, 1: running, 2: fault,"
    assert old in KYUSHU
    text = KYUSHU.replace(old, f"map: {{0: stopped, {first}: running, {second}: fault, 2: fault,")
    f = tmp_path / "dup.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match="duplicate key") as err:
        load_config(f)
    assert err.value.line == KYUSHU[:KYUSHU.index(old)].count("\n") + 1
    assert "map" in str(err.value)


def test_json_keys_equal_once_read_are_duplicate_keys(tmp_path: Path) -> None:
    from ruamel.yaml import YAML

    doc = YAML(typ="safe").load(KYUSHU)
    doc["lines"][0]["state"]["map"] = {"1": "running", "01": "fault"}
    f = tmp_path / "dup.json"
    f.write_text(json.dumps(doc, default=str, indent=1))
    done = _cli("check", str(f))
    assert done.returncode == 2, done.stderr
    assert "duplicate key: '1' and '01' are the same key" in done.stderr
