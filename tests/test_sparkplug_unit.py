"""Sparkplug without a broker: the descriptor against the .proto, payloads, ids, bdSeq, the view."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.cli.check import warnings
from agent.cli.watch_view import WatchModel
from agent.config import Config, SparkplugConfig
from agent.config.load import load_config
from agent.contract.errors import PublishRefused
from agent.outputs import make_formats
from agent.outputs.sparkplug.encoding import birth, ndeath, stamp, to_data
from agent.outputs.sparkplug.format import SparkplugFormat
from agent.outputs.sparkplug.metrics import line_metrics, node_metrics
from agent.outputs.sparkplug.proto import file_descriptor
from agent.outputs.sparkplug.view import SparkplugReader
from agent.store import OutboxRecord, Store
from tests.sparkplug_wire import DATATYPES, SCHEMA, Node, decode
from tests.test_sparkplug_delivery import _window

ROOT = Path(__file__).resolve().parent.parent


def _cfg(**sparkplug: Any) -> Config:
    cfg = load_config(ROOT / "config" / "demo.yaml").config
    sp = SparkplugConfig(**{"group_id": "kyushu", "edge_node_id": "kyushu-gw-07", **sparkplug})
    mqtt = cfg.mqtt.model_copy(update={"client_id": "plantfloor-gw-07"})
    return cfg.model_copy(update={"output": "sparkplug", "sparkplug": sp, "mqtt": mqtt})


def test_the_descriptor_is_the_proto_file_field_for_field() -> None:
    from google.protobuf import descriptor_pb2

    fdp = file_descriptor()
    labels = {descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED: True,
              descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL: False}
    types = {v: k.removeprefix("TYPE_").lower()
             for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()}
    built: dict[str, dict[int, tuple[Any, ...]]] = {}
    extensions: dict[str, int] = {}

    def walk(msg: Any, prefix: str) -> None:
        name = f"{prefix}{msg.name}"
        oneofs = [o.name for o in msg.oneof_decl]
        built[name] = {
            f.number: (f.name, f.type_name.removeprefix(f".{fdp.package}.") or types[f.type],
                       labels[f.label], oneofs[f.oneof_index] if f.HasField("oneof_index") else None)
            for f in msg.field}
        for r in msg.extension_range:
            extensions[name] = r.start
        for nested in msg.nested_type:
            walk(nested, f"{name}.")

    for msg in fdp.message_type:
        walk(msg, "")
    expected = {name: {n: (f.name, f.type, f.repeated, f.oneof) for n, f in fields.items()}
                for name, fields in SCHEMA.messages.items()}
    assert built == expected
    assert extensions == SCHEMA.extensions
    assert {v.name: v.number for v in fdp.enum_type[0].value} == DATATYPES
    assert DATATYPES["Int64"] == 4 and DATATYPES["DateTime"] == 13  # noqa: PT018 - spec values


def test_a_window_is_stored_by_name_and_sent_by_alias_and_seq() -> None:
    cfg = _cfg()
    fmt = SparkplugFormat(cfg)
    start = datetime(2028, 4, 3, 1, 0, tzinfo=UTC)
    records = fmt.records(_window(0, start, 42, "kei-ev"))
    ddata = next(r for r in records if "/DDATA/" in r.topic)
    assert ddata.topic == "spBv1.0/kyushu/DDATA/kyushu-gw-07/kei-ev"
    assert (ddata.qos, ddata.retain, ddata.format, ddata.seq) == (0, False, "sparkplug", 1)
    stored = decode(ddata.payload)
    by_name = {m["name"]: m for m in stored["metrics"]}
    assert by_name["units"]["long_value"] == 1
    assert by_name["units"]["datatype"] == DATATYPES["UInt64"]
    assert by_name["attainment"]["double_value"] == 2.0
    assert by_name["window_end"]["long_value"] == int((start + timedelta(seconds=1)).timestamp() * 1000)
    assert by_name["counter"]["long_value"] == 0
    assert by_name["events"]["string_value"] == ""
    assert by_name["state"]["string_value"] == "running"
    assert all(m["timestamp"] == by_name["window_end"]["long_value"] for m in stored["metrics"])
    row = OutboxRecord(**{**ddata.__dict__, "id": 1})
    sent = decode(stamp(fmt.wire(row, historical=True), seq=7, now_ms=99))
    assert (sent["seq"], sent["timestamp"]) == (7, 99)
    aliases = fmt.aliases["kei-ev"]
    assert [m["alias"] for m in sent["metrics"]] == [aliases[m["name"]] for m in stored["metrics"]]
    assert all("name" not in m and "datatype" not in m and m["is_historical"] for m in sent["metrics"])
    # a metric since removed from the configuration is left out, the rest is sent
    fewer = {k: v for k, v in aliases.items() if k != "counter"}
    assert len(decode(to_data(ddata.payload, fewer, historical=False))["metrics"]) == \
        len(stored["metrics"]) - 1
    # a window of a line the configuration no longer has was never born: refused, kept
    gone = OutboxRecord(**{**ddata.__dict__, "id": 2, "line": "old-line"})
    with pytest.raises(PublishRefused):
        fmt.wire(gone, historical=False)


def test_births_and_death() -> None:
    fmt = SparkplugFormat(_cfg())
    nb = decode(birth(fmt.birth_metrics(None, 5, extra={"agent/backlog": 3}), bdseq=9, now_ms=5, seq=0))
    names = [m["name"] for m in nb["metrics"]]
    assert names[:2] == ["bdSeq", "Node Control/Rebirth"]
    assert nb["seq"] == 0
    assert nb["metrics"][0]["long_value"] == 9
    by_name = {m["name"]: m for m in nb["metrics"]}
    assert by_name["agent/backlog"]["long_value"] == 3
    assert by_name["plant/units"]["is_null"] is True
    assert "long_value" not in by_name["plant/units"]
    aliases = [m["alias"] for m in nb["metrics"] if "alias" in m]
    device_aliases = [a for d, table in fmt.aliases.items() if d is not None for a in table.values()]
    assert len(set(aliases) | set(device_aliases)) == len(aliases) + len(device_aliases)
    death = decode(ndeath(9, 5))
    assert "seq" not in death
    assert [(m["name"], m["datatype"], m["long_value"]) for m in death["metrics"]] == [
        ("bdSeq", DATATYPES["Int64"], 9)]


def test_metric_names_are_unique_even_lower_cased() -> None:
    cfg = _cfg()
    for line in cfg.lines:
        names = [s.name for s in line_metrics(line)]
        assert len({n.lower() for n in names}) == len(names)
        assert {"units", "rate_per_hour", "target_per_hour", "attainment", "shift/units",
                "shift/target", "shift/projected", "shift/downtime_s", "day/units", "day/target",
                "state", "quality", "epoch", "seq"} <= set(names)
    node = [s.name for s in node_metrics(cfg)]
    assert len({n.lower() for n in node}) == len(node)
    assert {"plant/units", "agent/backlog", "agent/dropped", "agent/alarms"} <= set(node)


@pytest.mark.parametrize("bad", ["a/b", "x+", "#", "tab\there", ""])
def test_sparkplug_ids_refuse_what_topics_cannot_carry(bad: str) -> None:
    with pytest.raises(ValidationError):
        SparkplugConfig(group_id="plant", edge_node_id=bad)
    with pytest.raises(ValidationError):
        SparkplugConfig(group_id=bad, edge_node_id="gw-1")


def test_output_defaults_to_json_and_sparkplug_needs_its_section() -> None:
    cfg = load_config(ROOT / "config" / "demo.yaml").config
    assert cfg.output == "json"
    assert list(make_formats(cfg)) == ["json"]
    data = cfg.model_dump(mode="json", exclude_none=True)
    with pytest.raises(ValidationError, match="needs the sparkplug section"):
        Config.model_validate({**data, "output": "both"})
    both = Config.model_validate({**data, "output": "both",
                                  "sparkplug": {"group_id": "g", "edge_node_id": "über-gw 1"}})
    assert list(make_formats(both)) == ["json", "sparkplug"]


def test_check_warns_about_ids_likely_to_collide() -> None:
    good = _cfg()
    assert not [w for w in warnings(good) if "sparkplug" in w]
    for node in ("gateway", "kyushu", "Kyushu-GW-07"):
        found = [w for w in warnings(_cfg(edge_node_id=node)) if "sparkplug" in w]
        assert found, node
    default_ids = good.model_copy(update={"mqtt": good.mqtt.model_copy(update={"client_id": None})})
    assert any("client id" in w for w in warnings(default_ids))


async def test_bdseq_is_durable_per_node_and_wraps(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await Store.open(path, max_bytes=1_000_000)
    try:
        assert [await store.next_bdseq("g/a") for _ in range(3)] == [0, 1, 2]
        assert await store.next_bdseq("g/b") == 0
    finally:
        await store.close()
    store = await Store.open(path, max_bytes=1_000_000)
    try:
        assert await store.next_bdseq("g/a") == 3
        values = [await store.next_bdseq("g/a") for _ in range(253)]
        assert values[-2:] == [255, 0]
    finally:
        await store.close()


def test_the_watch_reads_a_node_as_the_json_contract() -> None:
    cfg = _cfg()
    fmt = SparkplugFormat(cfg)
    reader = SparkplugReader("kyushu", "kyushu-gw-07")
    model = WatchModel()
    feed: list[tuple[str, bytes]] = []
    start = datetime(2028, 4, 3, 1, 0, tzinfo=UTC)
    records = [r for i in range(3) for r in fmt.records(_window(i, start, 42, "kei-ev"))]
    feed.append((fmt.topics.node("NBIRTH"), birth(fmt.birth_metrics(
        None, 1, extra={"agent/version": "9.9", "agent/backlog": 4, "agent/dropped": 0,
                        "agent/alarms": "disk_full", "agent/commands_refused": 0}), bdseq=0, now_ms=1, seq=0)))
    for seq, device in enumerate(fmt.device_specs, start=1):
        feed.append((fmt.topics.device("DBIRTH", device), birth(fmt.birth_metrics(device, 1),
                                                                  bdseq=None, now_ms=1, seq=seq)))
    for i, r in enumerate(records):
        row = OutboxRecord(**{**r.__dict__, "id": i})
        feed.append((r.topic, stamp(fmt.wire(row, historical=i < 2), seq=10 + i, now_ms=2)))
    for topic, data in feed * 2:   # every message twice: the view dedupes
        for subtopic, payload in reader.apply(topic, data):
            model.apply(subtopic, payload)
    assert model.invalid == 0, model.last_invalid
    line = model.lines["kei-ev"]
    assert (line.total, len(line.seqs), line.duplicates) == (3, 3, 3)
    assert line.latest is not None
    assert line.latest.seq == 3
    assert line.historical == 1
    assert line.latest.state_seconds.running == 1.0
    assert model.plant.total == 3
    assert model.status is not None
    assert (model.status.version, model.status.backlog) == ("9.9", 4)
    assert [a.kind for a in model.status.alarms] == ["disk_full"]
    # and the same messages read by the independent decoder agree
    n = Node("kyushu", "kyushu-gw-07")
    for topic, data in feed:
        parts = topic.split("/")
        n.add(parts[2], parts[4] if len(parts) > 4 else None, data)
    assert n.units("kei-ev") == 3
    assert re.fullmatch(r"\d+", str(n.of("DDATA")[0].value("epoch")))


def test_docs_name_every_metric() -> None:
    docs = (ROOT / "docs" / "sparkplug.md").read_text(encoding="utf-8")
    cfg = load_config(ROOT / "config" / "kyushu.yaml").config
    names = [s.name for s in line_metrics(cfg.lines[0]) + node_metrics(cfg)
             if not s.name.startswith(("plant/lines/", "tags/"))]
    missing = [n for n in names if f"`{n}`" not in docs]
    assert not missing, f"docs/sparkplug.md does not describe these metrics: {missing}"
