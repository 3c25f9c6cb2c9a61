"""Stale is visible: a clean stop leaves every line's retained state ``unknown`` with its
source disconnected, beside the retained ``offline`` status."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import Config
from tests.agentrig import ROOT_TOPIC, Run, agent_config_dict, sim_config, wait_until


async def test_a_clean_stop_leaves_each_line_unknown_and_disconnected(
        tmp_path: Path, mosquitto: Any, mqtt_subscriber: Callable[..., Any],
        simulator_set: Callable[..., Any]) -> None:
    """Before, the retained state said running, connected, while the agent was down."""
    sims = await simulator_set(sim_config(), auto=False)
    sims.lines["kei"].set_state("running")
    cfg = Config.model_validate(agent_config_dict(tmp_path, mosquitto.url, sims))
    sub = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/lines/kei/state")
    async with Run(cfg):
        await wait_until(lambda: any(m.json()["state"] == "running" for m in sub.messages), 10,
                         "running")
    late = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/lines/+/state")
    status = mqtt_subscriber(mosquitto, f"{ROOT_TOPIC}/status")
    await wait_until(lambda: len(late.messages) >= 2 and bool(status.messages), 5,
                     "retained states and status")
    states = {m.json()["line"]: m.json() for m in late.messages}
    assert set(states) == {"kei", "rogue"}
    for s in states.values():
        assert s["state"] == "unknown"
        assert s["source"]["connected"] is False
        assert s["source"]["error"] == "the agent stopped"
    assert states["kei"]["source"]["last_ok"] is not None   # its last good reading kept
    assert all(m.retain for m in late.messages)
    assert status.messages[-1].json()["state"] == "offline"
