"""Configuration: the shipped configs validate; every bad config exits 2 with file, line and key."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import Config
from agent.config.load import load_config

ROOT = Path(__file__).resolve().parent.parent
CASES = sorted(p for p in (ROOT / "tests" / "cases").iterdir() if (p / "expected.txt").exists())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_config_exits_2_naming_file_line_and_key(case: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = case / "config.yaml"
    expected = (case / "expected.txt").read_text().strip()
    code = main(["check", str(config)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"plantfloor: {config}:{expected}"
    assert "\n" not in err
    assert "Traceback" not in err
    assert re.match(rf"plantfloor: {re.escape(str(config))}:\d+: ", err), "file and line are named"


@pytest.mark.parametrize("name", ["kyushu.yaml", "demo.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    loaded = load_config(ROOT / "config" / name)
    cfg = loaded.config
    assert cfg.site == "kyushu"
    assert cfg.timezone == "Asia/Tokyo"
    assert cfg.plant.capacity_per_year == 500_000
    assert cfg.plant.planned_utilization == pytest.approx(0.80)
    assert {ln.id for ln in cfg.lines} == {"kei-ev", "rogue"}
    assert next(ln for ln in cfg.lines if ln.id == "kei-ev").product == "Sakura"
    assert len(loaded.sha256) == 64


def test_the_demo_is_kyushus_plan_lines_and_shifts() -> None:
    """The demo runs the seed plant's own figures (only its clock is faster)."""
    demo = load_config(ROOT / "config" / "demo.yaml").config
    seed = load_config(ROOT / "config" / "kyushu.yaml").config
    assert (demo.plant.capacity_per_year, demo.plant.planned_utilization, demo.plant.holidays) == (
        seed.plant.capacity_per_year, seed.plant.planned_utilization, seed.plant.holidays)
    assert demo.shifts == seed.shifts
    assert demo.publish.interval_s == seed.publish.interval_s
    for line in seed.lines:
        twin = next(ln for ln in demo.lines if ln.id == line.id)
        assert (twin.product, twin.rate_target) == (line.product, line.rate_target)


def test_kyushu_every_key_commented() -> None:
    """Every line of the seed config that holds a key carries a comment."""
    lines = (ROOT / "config" / "kyushu.yaml").read_text().splitlines()
    uncommented = [ln for ln in lines if re.match(r"^\s*(- )?\{?[a-z_]+:", ln) and "#" not in ln]
    assert uncommented == []


def test_kyushu_targets_match_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    """At full rate all year the lines' targets add up to the 400,000 plan (within 1 %);
    2028 as planned, the Sakura from April with a ramp-up and the Rogue's move, is short
    of it, and check says by how much."""
    code = main(["check", str(ROOT / "config" / "kyushu.yaml"), "--year", "2028"])
    out = capsys.readouterr().out
    assert code == 0
    assert "capacity 500,000 /year" in out
    assert "target 400,000 /year" in out
    for needle in ("plc-kei", "plc-rogue", "kei-ev", "rogue", "per shift", "per day", "in 2028"):
        assert needle in out
    assert "plan    from 2028-04-01; ramp-up 50 % from 2028-04-01" in out
    assert "not planned 2028-08-21 to 2028-08-25 (line moves within the site)" in out
    years = {m[0]: int(m[1].replace(",", "")) for m in
             re.findall(r"^  (\S+) .*?\n(?:    .*\n)*?    target .*? in 2028 ([\d,]+);", out, re.M)}
    assert set(years) == {"kei-ev", "rogue"}
    # a quarter of the year gone and a ramp-up: well under the 150,267 of a whole year
    assert 90_000 < years["kei-ev"] < 150_267 * 0.75
    assert 240_000 < years["rogue"] < 251_700        # one week of the Rogue's move
    total = years["kei-ev"] + years["rogue"]
    gap = re.search(r"plant plan for 2028: the lines plan ([\d,]+) against 400,000 "
                    r"\(80 % of 500,000\): short of the plan by ([\d,]+) units", out)
    assert gap is not None
    assert abs(int(gap[1].replace(",", "")) - total) <= 1
    assert abs(int(gap[2].replace(",", "")) - (400_000 - total)) <= 1

    from agent.cli.check import summary

    data = load_config(ROOT / "config" / "kyushu.yaml").config.model_dump(by_alias=True)
    for line in data["lines"]:
        line.update(start=None, ramp_up=[], not_planned=[])
    text = summary(Config.model_validate(data), year=2028)
    share = float(re.search(r"over the plan by [\d,]+ units \(([\d.]+) % of it\)", text)[1])  # type: ignore[index]
    assert 99.0 <= share <= 102.0


def test_check_warns_about_opcua_without_security(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(ROOT / "config" / "demo.yaml")]) == 0
    assert "warning: source plc-rogue: OPC UA security policy None" in capsys.readouterr().out


def test_schema_config_is_generated_from_the_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "config"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == Config.model_json_schema()
    assert schema["additionalProperties"] is False
    assert "lines" in schema["properties"]


def test_schema_payloads(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "payloads"]) == 0
    schemas = json.loads(capsys.readouterr().out)
    assert set(schemas) == {"R/status", "R/lines/<line>/output", "R/lines/<line>/state", "R/plant/output",
                            "R/lines/<line>/shift", "R/plant/shift"}
    out = schemas["R/lines/<line>/output"]["properties"]
    for field in ("schema", "site", "line", "product", "epoch", "seq", "window_start", "window_end", "units",
                  "rate_per_hour", "target_per_hour", "attainment", "shift", "day", "state_seconds",
                  "quality", "events", "reason", "rejects", "total", "time", "historical"):
        assert field in out, field
    shift_block = schemas["R/lines/<line>/output"]["$defs"]["ShiftTotals"]["properties"]
    for field in ("availability", "performance", "quality", "oee", "quality_measured"):
        assert field in shift_block, field
    report = schemas["R/lines/<line>/shift"]["properties"]
    assert report["schema"]["const"] == "plantfloor.shift/1"
    for field in ("units", "rejects", "total", "target", "attainment", "time", "downtime", "top_losses",
                  "availability", "performance", "quality", "oee", "quality_measured", "coverage"):
        assert field in report, field
    assert "reason" in schemas["R/lines/<line>/state"]["properties"]


def test_every_config_field_is_described() -> None:
    """`plantfloor schema config` documents every field (it is the reference)."""
    schema = Config.model_json_schema()
    missing = [f"Config.{f}" for f, spec in schema["properties"].items() if "description" not in spec]
    for name, model in schema.get("$defs", {}).items():
        for field, spec in model.get("properties", {}).items():
            if "description" not in spec:
                missing.append(f"{name}.{field}")
    assert missing == []


def test_password_from_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.config import MqttConfig

    monkeypatch.setenv("PLANTFLOOR_MQTT_PASSWORD", "from-env")
    assert MqttConfig(username="u").password() == "from-env"
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    assert MqttConfig(username="u", password_file=secret).password() == "from-file"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("from-credentials")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert MqttConfig(username="u", password_file=Path("mqtt-password")).password() == "from-credentials"


def test_broker_override_is_validated() -> None:
    from agent.config.load import with_broker
    from agent.contract.errors import ConfigError

    cfg = load_config(ROOT / "config" / "demo.yaml").config
    assert with_broker(cfg, "mqtt://10.0.0.5:1884").mqtt.port == 1884
    with pytest.raises(ConfigError, match="--broker"):
        with_broker(cfg, "http://nope")


def test_line_tags_are_checked_like_counters() -> None:
    from pydantic import ValidationError

    base = load_config(ROOT / "config" / "kyushu.yaml").config.model_dump(mode="json")
    base["lines"][0]["tags"] = {"buffer": {"source": "plc-kei", "address": 111, "type": "uint16"}}
    cfg = Config.model_validate(base)
    assert [(role, name) for role, name, _ in cfg.lines[0].points()] == [
        ("counter", None), ("rejects", None), ("state", None), ("tag", "buffer")]
    base["lines"][0]["tags"] = {"buffer": {"source": "plc-kei", "address": 101, "type": "uint16"}}
    with pytest.raises(ValidationError, match=r"lines\.0\.tags\.buffer\.address: register holding 101"):
        Config.model_validate(base)
    base["lines"][0]["tags"] = {"buffer": {"source": "plc-rogue", "address": 5}}
    with pytest.raises(ValidationError, match=r"lines\.0\.tags\.buffer: source 'plc-rogue' is opcua"):
        Config.model_validate(base)


def test_every_line_has_a_plausibility_bound_and_check_prints_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = load_config(ROOT / "config" / "kyushu.yaml").config.model_dump(mode="json", exclude_none=True)
    del base["lines"][0]["max_rate_per_hour"]
    base["lines"][0]["counter"]["type"] = "uint16"    # a 16-bit counter needs no explicit bound
    base["mqtt"]["version"] = "3.1.1"
    path = tmp_path / "plant.yaml"
    path.write_text(json.dumps(base))
    cfg = load_config(path).config
    assert cfg.lines[0].rate_bound == 2 * cfg.lines[0].rate_target
    assert cfg.lines[1].rate_bound == cfg.lines[1].max_rate_per_hour
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"plausibility bound {2 * cfg.lines[0].rate_target:,.1f} /h (default: 2 x the target)" in out
    assert f"plausibility bound {cfg.lines[1].max_rate_per_hour:,.1f} /h (max_rate_per_hour)" in out
    assert "warning: mqtt: version 3.1.1 cannot report a refused publish" in out


def test_point_identity_names_every_part_of_the_counter() -> None:
    cfg = load_config(ROOT / "config" / "kyushu.yaml").config
    kei, rogue = cfg.lines
    ident = cfg.point_identity(kei.counter)
    assert ident.startswith("modbus://")
    moved = cfg.model_copy(update={"sources": tuple(
        s.model_copy(update={"port": 5021}) if s.kind == "modbus" else s for s in cfg.sources)})
    assert moved.point_identity(kei.counter) != ident
    for change in ({"word_order": "little"}, {"address": 200}, {"type": "uint64"}, {"unit_id": 2},
                   {"table": "input"}, {"rollover": 1_000_000}):
        other = kei.counter.model_copy(update=change)
        assert cfg.point_identity(other) != ident, change
    assert "ns=2;s=Rogue.GoodCount" in cfg.point_identity(rogue.counter)
    assert cfg.point_identity(rogue.counter) != cfg.point_identity(
        rogue.counter.model_copy(update={"rollover": None}))


def test_global_options_work_before_and_after_the_command() -> None:
    from agent.cli.main import _parser

    for argv in (["--debug", "--log-format", "json", "run", "x.yaml"],
                 ["run", "x.yaml", "--debug", "--log-format", "json"]):
        args = _parser().parse_args(argv)
        assert (args.debug, args.log_format) == (True, "json")
    args = _parser().parse_args(["run", "x.yaml"])
    assert (args.debug, args.log_format) == (False, "text")


def test_yaml_is_read_as_yaml_1_2(tmp_path: Path) -> None:
    """0502 is 502 (not octal 322), `no` is a string, 12:30 is not sexagesimal."""
    from agent.config.load import parse_yaml

    f = tmp_path / "x.yaml"
    f.write_text("port: 0502\nanswer: no\nat: 12:30\nflag: true\n")
    doc, _ = parse_yaml(f)
    assert doc["port"] == 502
    assert doc["answer"] == "no"
    assert doc["at"] == "12:30"
    assert doc["flag"] is True


def _kyushu_as_json(tmp_path: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    from ruamel.yaml import YAML

    doc = YAML(typ="safe").load((ROOT / "config" / "kyushu.yaml").read_text())
    if edit is not None:
        edit(doc)
    f = tmp_path / "kyushu.json"
    f.write_text(json.dumps(doc, indent=2, default=str))
    return f


def test_a_json_config_loads_like_its_yaml(tmp_path: Path) -> None:
    """JSON is YAML 1.2: a generated JSON file gives the same validated config."""
    f = _kyushu_as_json(tmp_path)
    assert load_config(f).config == load_config(ROOT / "config" / "kyushu.yaml").config


def test_a_json_config_with_a_duplicate_key_is_refused_naming_its_line(tmp_path: Path) -> None:
    from agent.contract.errors import ConfigError

    f = _kyushu_as_json(tmp_path)
    text = f.read_text().replace('"site": "kyushu",', '"site": "kyushu",\n  "site": "other",', 1)
    f.write_text(text)
    line = text.splitlines().index('  "site": "other",') + 1
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value) == f"{f}:{line}: site: duplicate key (each key may appear once)"


def test_a_bad_value_in_a_json_config_names_its_line_and_key(tmp_path: Path) -> None:
    from agent.contract.errors import ConfigError

    def edit(doc: dict[str, Any]) -> None:
        doc["lines"][1]["target_per_hour"] = -5

    f = _kyushu_as_json(tmp_path, edit)
    line = next(i for i, ln in enumerate(f.read_text().splitlines(), 1) if '"target_per_hour": -5' in ln)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value).startswith(f"{f}:{line}: lines[rogue].target_per_hour: ")


@pytest.mark.parametrize(("calendar", "key", "reason"), [
    ({"ramp_up": [{"from": "2028-05-01", "share": 1}, {"from": "2028-04-01", "share": 0.5}]},
     "lines[kei-ev]", "ramp_up steps must be in increasing date order"),
    ({"not_planned": [{"from": "2028-08-25", "to": "2028-08-21", "reason": "move"}]},
     "lines[kei-ev].not_planned[0]", "to (2028-08-21) is before from (2028-08-25)"),
    ({"ramp_up": [{"from": "2028-04-01", "share": 1.5}]},
     "lines[kei-ev].ramp_up[0].share", "less than or equal to 1"),
    ({"start": "2028-04-31"}, "lines[kei-ev].start", "date"),
], ids=["ramp-up-out-of-order", "not-planned-backwards", "share-above-1", "no-such-day"])
def test_a_line_calendar_that_cannot_be_is_refused_naming_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], calendar: dict[str, Any], key: str,
        reason: str) -> None:
    """A line's own calendar is checked at the door: each mistake names its key and why."""
    data = load_config(ROOT / "config" / "kyushu.yaml").config.model_dump(
        by_alias=True, mode="json", exclude_none=True)
    kei = next(ln for ln in data["lines"] if ln["id"] == "kei-ev")
    for k in ("start", "ramp_up", "not_planned"):
        kei.pop(k, None)
    kei.update(calendar)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    code = main(["check", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in err
    assert key in err
    assert reason in err
