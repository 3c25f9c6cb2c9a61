"""`plantfloor state show` and `plantfloor state rebaseline`, through the command line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.agentrig import (
    ROOT_TOPIC,
    Run,
    Windows,
    one_line_config,
    two_plcs,
    wait_until,
    windows_after,
)


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(path: Path, cfg: Any) -> Path:
    path.write_text(json.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    return path


async def test_show_and_rebaseline(tmp_path: Path, mosquitto: Any,
                                   mqtt_subscriber: Callable[..., Any],
                                   simulator_set: Callable[..., Any]) -> None:
    sims = await simulator_set(two_plcs(), auto=False)
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/#")
    a = sims.lines["line-a"]
    cfg = one_line_config(tmp_path, mosquitto.url, sims, max_rate=3_600_000)
    path = write_config(tmp_path / "agent.yaml", cfg)

    code, _, err = await cli("state", "show", str(path))
    assert code == 1
    assert "there is no state database" in err

    async with Run(cfg):
        await windows_after(sub, 2)
        a.produce(3)
        await wait_until(lambda: Windows(sub.messages).units("kei") == 3, 10, "3 units")
        # while the agent runs: show reads, rebaseline is refused and changes nothing
        code, out, err = await cli("state", "show", str(path), "--format", "json")
        assert code == 0, err
        running = json.loads(out)
        code, _, err = await cli("state", "rebaseline", str(path), "kei", "--reason", "PLC swapped")
        assert code == 1
        assert "agent is running" in err
        assert err.count("\n") == 1
    epoch = Windows(sub.messages).epochs("kei")[0]
    assert running["epoch"] == epoch
    assert running["lines"][0]["line"] == "kei"

    code, out, _ = await cli("state", "show", str(path), "--format", "json")
    shown = json.loads(out)
    kei = shown["lines"][0]
    assert kei["baseline"] == 1003
    assert kei["identity_matches_config"] is True
    assert kei["counter_identity"].startswith(f"modbus://127.0.0.1:{sims.plcs['plc-a'].port} unit 1 holding 100")
    assert kei["seq"] == max(Windows(sub.messages).seqs("kei"))
    assert kei["rebaseline_pending"] is None
    assert kei["year"]["units"] == kei["day"]["units"] == 3
    code, text, _ = await cli("state", "show", str(path))
    assert f"epoch {epoch}" in text
    assert "counter baseline 1003" in text
    assert "matches the config" in text

    code, out, err = await cli("state", "rebaseline", str(path), "nope")
    assert code == 2
    assert "'nope' is not in the config" in err
    code, out, err = await cli("state", "rebaseline", str(path), "kei", "--reason", "counter preset")
    assert code == 0, err
    assert "next reading" in out
    code, out, _ = await cli("state", "show", str(path), "--format", "json")
    kei = json.loads(out)["lines"][0]
    assert kei["baseline"] is None
    assert kei["rebaseline_pending"] == "operator: counter preset"

    # maintenance preset the counter to 50,000 while the agent was stopped: not production
    a.jump(50_000 - 1003)
    async with Run(cfg):
        await windows_after(sub, 1, where=lambda p: "rebaselined" in p["events"])
        a.produce(2)
        await wait_until(lambda: Windows(sub.messages).units("kei") == 5, 10, "2 more units")
    w = Windows(sub.messages)
    assert w.units("kei") == 5
    assert w.epochs("kei") == [epoch]
    assert w.contiguous("kei")
    code, out, _ = await cli("state", "show", str(path), "--format", "json")
    assert json.loads(out)["lines"][0]["baseline"] == 50_002
