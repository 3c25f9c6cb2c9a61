"""Sparkplug: births wait for the primary host, seq never skips, Tahu's decoder reads DATA."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.contract.errors import PublishError
from agent.outputs.sparkplug.encoding import birth, stamp
from agent.outputs.sparkplug.format import SparkplugFormat
from agent.outputs.sparkplug.node import EdgeNode
from agent.store import OutboxRecord, Store
from tests.agentrig import Run, two_plcs, wait_until
from tests.sparkplug_rig import HOST, Host, births, sparkplug_config, wait_node
from tests.sparkplug_wire import DATATYPES
from tests.test_sparkplug_delivery import _window
from tests.test_sparkplug_unit import _cfg

TAHU = Path(__file__).resolve().parent / "tahu"


async def test_a_rebirth_command_waits_for_the_primary_host(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    """NCMD Rebirth while the primary host is offline: no birth (the outbox would drain to
    nobody) until the host's STATE says online; then one birth sequence."""
    sims = await simulator_set(two_plcs(), auto=False)
    sub = mqtt_subscriber(mosquitto, "spBv1.0/#")
    host = Host(mosquitto)
    try:
        async with Run(sparkplug_config(tmp_path, mosquitto.url, sims, host=HOST)) as run:
            await wait_until(lambda: run.agent.sparkplug is not None
                             and run.agent.sparkplug.publisher.connected.is_set(), 20,
                             "the node connected")
            sp = run.agent.sparkplug
            assert sp is not None
            host.rebirth()
            # commands arrive in order: once the DCMD after it is refused, the rebirth was seen
            host.dcmd("kei", [{"name": "units", "datatype": DATATYPES["UInt64"], "long_value": 5}])
            await wait_until(lambda: sp.commands_refused == 1, 20, "the commands handled")
            # the rebirth was handled without starting a birth sequence
            assert not sp._born
            assert not sp.connected.is_set()
            assert births(await wait_node(sub, lambda n: True)) == []
            host.state(True)
            n = await wait_node(sub, lambda n: len(births(n)) == 1 and bool(n.of("DDATA")), 20,
                                "the birth once the host is online")
    finally:
        host.close()
    assert len(births(n)) == 1


async def test_a_publish_that_fails_consumes_no_seq(tmp_path: Path) -> None:
    """The session believes it is born while its connection has just gone: the DDATA
    is refused, and the next message that goes out takes the seq it would have had."""
    cfg = _cfg()
    store = await Store.open(tmp_path / "state.db", max_bytes=10_000_000)
    try:
        node = EdgeNode(cfg, SparkplugFormat(cfg), store, status=dict)
        node.connected.set()
        before = node._seq
        with pytest.raises(PublishError):
            await node.publish("spBv1.0/kyushu/DDATA/kyushu-gw-07/kei-ev", b"", qos=0)
        assert node._seq == before
    finally:
        await store.close()


_DECODE = """
const fs = require("fs");
const sparkplug = require("sparkplug-payload").get("spBv1.0");
const out = {};
for (const file of process.argv.slice(1)) {
  const p = sparkplug.decodePayload(fs.readFileSync(file));
  out[file] = p.metrics.map(m => ({name: m.name === undefined ? null : m.name,
    alias: m.alias === undefined ? null : Number(m.alias),
    value: m.value === null || m.value === undefined ? null : String(m.value)}));
}
process.stdout.write(JSON.stringify(out));
"""


def _tahu(files: list[Path]) -> dict[str, list[dict[str, Any]]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (CI installs it and runs this test)")
    if not (TAHU / "node_modules" / "sparkplug-payload").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=TAHU, check=True,
                       capture_output=True, timeout=300)
    done = subprocess.run([node, "-e", _DECODE, *map(str, files)], cwd=TAHU, capture_output=True,
                          text=True, timeout=60, check=True)
    decoded: dict[str, list[dict[str, Any]]] = json.loads(done.stdout)
    return decoded


@pytest.mark.parametrize("datatypes", [False, True])
def test_tahus_decoder_reads_every_payload(tmp_path: Path, datatypes: bool) -> None:
    """Births always decode with their values. DATA without datatypes (the specification's
    default) decodes with values null in Tahu's decodePayload; with ``data_datatypes``
    every DATA value decodes as the birth announced it."""
    cfg = _cfg(data_datatypes=datatypes)
    fmt = SparkplugFormat(cfg)
    start = datetime(2028, 4, 3, 1, 0, tzinfo=UTC)
    records = fmt.records(_window(0, start, 42, "kei-ev"))
    ddata = next(r for r in records if "/DDATA/" in r.topic)
    files = {
        "nbirth": birth(fmt.birth_metrics(None, 5), bdseq=3, now_ms=5, seq=0),
        "dbirth": birth(fmt.birth_metrics("kei-ev", 5), bdseq=None, now_ms=5, seq=1),
        "ddata": stamp(fmt.wire(OutboxRecord(**{**ddata.__dict__, "id": 1}), historical=False),
                       seq=2, now_ms=6),
    }
    paths = []
    for name, body in files.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(body)
        paths.append(path)
    decoded = {Path(k).stem: v for k, v in _tahu(paths).items()}
    names = {m["alias"]: m["name"] for m in decoded["dbirth"]}
    dbirth = {m["name"]: m["value"] for m in decoded["dbirth"]}
    assert dbirth["units"] == "1"
    assert [m["name"] for m in decoded["nbirth"]][:2] == ["bdSeq", "Node Control/Rebirth"]
    data = {names[m["alias"]]: m["value"] for m in decoded["ddata"]}
    assert set(data) == set(dbirth)
    if datatypes:
        assert data["units"] == "1"
        assert data["state"] == "running"
        assert data == dbirth
    else:
        assert all(v is None for v in data.values())
