"""Config loading is bounded: oversized files and runaway YAML aliases are refused (exit 2).

Hostile shapes are refused by counting on the YAML event stream, before anything is
expanded; the tests do not time anything, they simply have to finish (pytest-timeout).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config.load import (
    MAX_CONFIG_ALIASES,
    MAX_CONFIG_BYTES,
    MAX_CONFIG_NODES,
    load_config,
    parse_yaml,
)
from agent.contract.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
KYUSHU = ROOT / "config" / "kyushu.yaml"
# everything of the seed config before its production lines: site, mqtt, plant, shifts, sources
HEAD = KYUSHU.read_text()[: KYUSHU.read_text().index("\nlines:")] + "\n"


def _billion_laughs(levels: int = 9, width: int = 9) -> str:
    """Nine nested aliases of nine: 9**9 scalars once every alias is expanded."""
    lines = ["site: kyushu", "timezone: Asia/Tokyo",
             "a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _lines(n: int, *, merge: bool) -> str:
    """A ``lines:`` section of n production lines, optionally sharing one by a merge key."""
    out = ["lines:"]
    for i in range(n):
        out.append("  - &line" if merge and i == 0 else "  -")
        out.append(f"    id: line-{i:03d}")
        if merge and i > 0:
            out.append("    <<: *line")
        else:
            out += ["    product: Sakura", "    takt_s: 90", "    max_rate_per_hour: 120"]
        out.append(f"    counter: {{source: plc-kei, address: {1000 + 4 * i}, table: holding, "
                   "type: uint32, word_order: big}")
        out.append(f"    state: {{source: plc-kei, address: {5000 + 2 * i}, table: holding, "
                   "type: uint16, map: {0: stopped, 1: running, 2: faulted}}")
    return "\n".join(out) + "\n"


def _run_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "check", str(config)],
                          capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


def test_billion_laughs_is_refused_naming_the_bound(tmp_path: Path) -> None:
    f = tmp_path / "laughs.yaml"
    f.write_text(_billion_laughs())
    with pytest.raises(ConfigError) as info:
        load_config(f)
    err = info.value
    assert err.file == str(f)
    # a6 expands to millions of nodes: an alias on its line (9) crosses the bound
    assert (err.line, err.key) == (9, "a6.2"), "the line and key of the offending alias"
    assert f"{MAX_CONFIG_NODES:,} YAML nodes" in str(err)
    assert str(err).startswith(f"{f}:{err.line}: ")
    assert "\n" not in str(err)


def test_wider_and_deeper_laughs_are_refused_too(tmp_path: Path) -> None:
    f = tmp_path / "laughs.yaml"
    f.write_text(_billion_laughs(levels=30, width=30))
    with pytest.raises(ConfigError, match=f"bound of {MAX_CONFIG_NODES:,} YAML nodes"):
        parse_yaml(f)


def test_too_many_aliases_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "aliases.yaml"
    many = ", ".join(["*s"] * (MAX_CONFIG_ALIASES + 1))
    f.write_text(f"site: &s kyushu\nx: [{many}]\n")
    with pytest.raises(ConfigError, match=rf"bound of {MAX_CONFIG_ALIASES:,} YAML aliases") as info:
        parse_yaml(f)
    assert info.value.line == 2
    assert info.value.key == f"x.{MAX_CONFIG_ALIASES}"


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "loop.yaml"
    f.write_text("site: kyushu\nloop: &l\n  - *l\n")
    with pytest.raises(ConfigError, match="inside the node it names") as info:
        parse_yaml(f)
    assert (info.value.line, info.value.key) == (3, "loop.0")


def test_too_many_plain_nodes_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the same rule at a smaller bound, so the test stays quick
    monkeypatch.setattr("agent.config.bounds.MAX_CONFIG_NODES", 50_000)
    f = tmp_path / "wide.yaml"
    f.write_text("site: kyushu\nx: [" + ", ".join(["1"] * (50_000 + 10)) + "]\n")
    with pytest.raises(ConfigError, match="bound of 50,000 YAML nodes"):
        parse_yaml(f)


def test_an_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    # a valid config padded with comments: only the size is wrong
    pad = MAX_CONFIG_BYTES + 1 - len(KYUSHU.read_bytes())
    f.write_bytes(KYUSHU.read_bytes() + b"#" * (pad - 1) + b"\n")
    assert f.stat().st_size == MAX_CONFIG_BYTES + 1
    with pytest.raises(ConfigError) as info:
        load_config(f)
    msg = str(info.value)
    assert msg == (f"{f}: the file is {MAX_CONFIG_BYTES + 1:,} bytes, larger than the bound of "
                   f"{MAX_CONFIG_BYTES:,} bytes (8 MiB) on a configuration file")


def test_a_file_at_the_size_bound_still_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the same rule at a smaller bound, so the test stays quick
    bound = 1 << 20
    monkeypatch.setattr("agent.config.bounds.MAX_CONFIG_BYTES", bound)
    f = tmp_path / "full.yaml"
    pad = bound - len(KYUSHU.read_bytes())
    f.write_bytes(KYUSHU.read_bytes() + (b"#" * 99 + b"\n") * (pad // 100) + b"#" * (pad % 100))
    assert f.stat().st_size == bound
    assert load_config(f).config.site == "kyushu"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_stream_is_refused_by_size() -> None:
    with pytest.raises(ConfigError, match=r"larger than the bound of 8,388,608 bytes \(8 MiB\)"):
        load_config("/dev/zero")


def test_merge_keys_and_a_few_aliases_still_load(tmp_path: Path) -> None:
    """A shared shift by a merge key, a shared break list and day list, a shared line."""
    text = KYUSHU.read_text()
    shifts = text[text.index("\nshifts:"): text.index("\nsources:")]
    shared = """
shifts:
  - &day
    name: day
    start: "06:30"
    end: "15:15"
    days: &weekdays [mon, tue, wed, thu, fri]
    breaks: &breaks
      - {start: "08:45", end: "08:55"}
  - <<: *day
    name: saturday
    days: [sat]
  - name: sunday
    start: "06:30"
    end: "15:15"
    days: [sun]
    breaks: *breaks
  - name: night
    start: "16:30"
    end: "01:15"
    days: *weekdays
"""
    f = tmp_path / "shared.yaml"
    f.write_text(HEAD.replace(shifts, shared) + _lines(3, merge=True))
    cfg = load_config(f).config
    day, saturday, sunday, night = cfg.shifts
    assert (saturday.start, saturday.end, saturday.breaks) == (day.start, day.end, day.breaks)
    assert saturday.days != day.days
    assert sunday.breaks == day.breaks
    assert night.days == day.days
    assert [ln.product for ln in cfg.lines] == ["Sakura"] * 3
    assert [ln.takt_s for ln in cfg.lines] == [90] * 3


@pytest.mark.parametrize(("n", "merge"), [(70, False), (500, False), (500, True)],
                         ids=["500-text-lines", "500-production-lines", "500-merged-lines"])
def test_large_real_configs_pass(tmp_path: Path, n: int, merge: bool) -> None:
    f = tmp_path / "plant.yaml"
    f.write_text(HEAD + _lines(n, merge=merge))
    if n == 70:
        assert len(f.read_text().splitlines()) >= 500
    assert len(load_config(f).config.lines) == n


def test_the_seed_config_passes() -> None:
    assert load_config(KYUSHU).config.site == "kyushu"


@pytest.mark.parametrize("shape", ["laughs", "oversized"])
def test_check_exits_2_with_one_line(tmp_path: Path, shape: str) -> None:
    f = tmp_path / f"{shape}.yaml"
    if shape == "laughs":
        f.write_text(_billion_laughs())
    else:
        f.write_bytes(b"#" * (2 * MAX_CONFIG_BYTES) + b"\nsite: kyushu\n")
    proc = _run_check(f)
    assert proc.returncode == 2
    assert proc.stdout == ""
    err = proc.stderr.strip()
    assert "\n" not in err
    assert "Traceback" not in err
    assert err.startswith(f"plantfloor: {f}:")
    assert (f"{MAX_CONFIG_NODES:,} YAML nodes" if shape == "laughs" else "8,388,608 bytes (8 MiB)") in err


def test_laughs_behind_what_libyaml_cannot_read_are_refused_too(tmp_path: Path) -> None:
    """A flow mapping that only ruamel's own parser reads ends libyaml's count early: the
    bound is then checked again on the round-trip path, before anything is expanded."""
    f = tmp_path / "laughs.yaml"
    f.write_text("mqtt: {url: mqtt://h:1883}\n" + _billion_laughs())
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert f"{MAX_CONFIG_NODES:,} YAML nodes" in str(info.value)
    assert info.value.key == "a6.2"


@pytest.mark.parametrize("text", [
    "z:\n  <<: {a: 1}\n  b: 2\n  b: 3\n",
    "x: &x {a: 1}\nz:\n  a: 2\n  <<: *x\n  a: 3\n",
])
def test_a_duplicate_key_beside_a_merge_key_is_refused(tmp_path: Path, text: str) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match="duplicate key"):
        load_config(f)


def test_a_yaml_directive_reads_as_the_round_trip_loader_reads_it(tmp_path: Path) -> None:
    """One reading of a file whichever loader gets it: a %YAML directive takes the
    round-trip path (libyaml reads every file as 1.2 whatever the directive says)."""
    f = tmp_path / "v11.yaml"
    f.write_text("%YAML 1.1\n---\n" + KYUSHU.read_text().replace("port: 502 ", "port: 0502", 1))
    doc, _ = parse_yaml(f)
    source = next(s for s in doc["sources"] if s["kind"] == "modbus")
    got = next(s for s in load_config(f).config.sources if s.id == source["id"])
    assert got.port == source["port"]
