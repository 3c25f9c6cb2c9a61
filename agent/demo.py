"""``plantfloor demo``: simulators, a broker, the agent and the live view, on one machine.

The broker is the one given with ``--broker``, else the one at 127.0.0.1:1883 when it
answers, else an embedded one on 127.0.0.1:1883 only: a Mosquitto binary when installed,
otherwise amqtt in-process (MQTT 3.1.1, so the agent is switched to 3.1.1 for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from agent.config import Config
from agent.configload import load_config, with_broker
from agent.errors import ConfigError, PlantfloorError

__all__ = ["packaged_config", "run_demo"]

log = logging.getLogger("plantfloor.demo")

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def packaged_config(name: str) -> Path:
    """A demo config shipped in the wheel (agent/config_data) or, from a checkout, config/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "config_data" / name, here.parent / "config" / name):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"the packaged demo configuration {name} is missing; pass it explicitly")


def _reachable(url: str, timeout: float = 0.5) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 1883), timeout=timeout):
            return True
    except OSError:
        return False


async def _wait_port(host: str, port: int, deadline_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if loop.time() > end:
                raise PlantfloorError(f"the embedded broker did not listen on {host}:{port}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


def _mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found is None and Path("/usr/sbin/mosquitto").exists():
        found = "/usr/sbin/mosquitto"
    return found


@contextlib.asynccontextmanager
async def _embedded_broker(state_dir: Path) -> AsyncIterator[str]:
    """An MQTT broker on 127.0.0.1:1883 for the demo's lifetime; yields the MQTT version to use."""
    mosquitto = _mosquitto_binary()
    if mosquitto:
        conf = state_dir / "mosquitto-demo.conf"
        conf.write_text("listener 1883 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                        "persistence false\n" + ("user root\n" if os.geteuid() == 0 else ""))
        proc = await asyncio.create_subprocess_exec(mosquitto, "-c", str(conf),
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        try:
            await _wait_port("127.0.0.1", 1883)
            log.info("embedded Mosquitto on 127.0.0.1:1883")
            yield "5"
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        return
    from amqtt.broker import Broker

    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:1883"}},
                     "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
    await broker.start()
    log.info("embedded amqtt broker on 127.0.0.1:1883 (MQTT 3.1.1)")
    try:
        yield "3.1.1"
    finally:
        await broker.shutdown()


def _demo_state_dir(state_dir: Path | None) -> Path:
    if state_dir is None:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        state_dir = Path(base) / "plantfloor"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        state_dir = Path(tempfile.mkdtemp(prefix="plantfloor-demo-"))
    return state_dir


def _demo_config(cfg: Config, state_dir: Path, broker: str, version: str | None) -> Config:
    cfg = with_broker(cfg, broker)
    storage = cfg.storage.model_copy(update={"path": state_dir / cfg.storage.path.name})
    mqtt = cfg.mqtt.model_copy(update={"version": version}) if version else cfg.mqtt
    return cfg.model_copy(update={"storage": storage, "mqtt": mqtt})


async def run_demo(*, broker: str | None = None, config: Path | None = None, sim_config: Path | None = None,
                   state_dir: Path | None = None, plain: bool = False, duration: float | None = None,
                   stop: asyncio.Event | None = None) -> int:
    """Run the whole demo until ``stop`` is set (Ctrl-C) or ``duration`` has passed."""
    from agent.pipeline import Agent
    from agent.watch import run_watch
    from simulators.config import load_sim_config
    from simulators.runner import SimulatorSet

    stop = stop or asyncio.Event()
    loaded = load_config(config or packaged_config("demo.yaml"))
    sim_cfg = load_sim_config(sim_config or packaged_config("simulators.yaml"))
    state = _demo_state_dir(state_dir)
    async with contextlib.AsyncExitStack() as stack:
        version: str | None = None
        if broker is None:
            if _reachable(DEFAULT_BROKER):
                broker = DEFAULT_BROKER
                log.info("using the broker at %s", broker)
            else:
                version = await stack.enter_async_context(_embedded_broker(state))
                broker = DEFAULT_BROKER
        cfg = _demo_config(loaded.config, state, broker, version)
        sims = SimulatorSet(sim_cfg)
        await stack.enter_async_context(sims)
        agent = Agent(cfg, config_sha256=loaded.sha256)
        agent_stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            agent_task = tg.create_task(agent.run(agent_stop), name="agent")
            watch_task = tg.create_task(run_watch(broker_url=broker, root=cfg.topic_root,
                                                  plain=True if plain else None, stop=stop),
                                        name="watch")
            if duration is not None:
                tg.create_task(_stop_after(stop, duration), name="duration")
            await stop.wait()
            agent_stop.set()
            await agent_task
            await watch_task
            for t in asyncio.all_tasks():
                if t.get_name() == "duration":
                    t.cancel()
    print(f"demo stopped; state kept in {state}")
    return 0


async def _stop_after(stop: asyncio.Event, seconds: float) -> None:
    await asyncio.sleep(seconds)
    stop.set()
