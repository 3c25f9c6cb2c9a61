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
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from agent.config import Config, SparkplugConfig
from agent.config.load import load_config, with_broker
from agent.contract.errors import ConfigError, PlantfloorError

__all__ = ["embedded_broker", "packaged_config", "run_demo"]

log = logging.getLogger("plantfloor.demo")

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def packaged_config(name: str) -> Path:
    """A demo config shipped in the wheel (agent/config_data) or, from a checkout, config/."""
    package = Path(__file__).resolve().parent.parent  # agent/
    for candidate in (package / "config_data" / name, package.parent / "config" / name):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"the packaged demo configuration {name} is missing; pass it explicitly")


async def _reachable(url: str, wait_s: float = 0.5) -> bool:
    parts = urlsplit(url)
    try:
        async with asyncio.timeout(wait_s):
            _, writer = await asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 1883)
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


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
async def embedded_broker(state_dir: Path, *, port: int = 1883,
                          mosquitto: str | None = None) -> AsyncIterator[str]:
    """An MQTT broker on 127.0.0.1 only, for the demo's lifetime; yields the MQTT version to use.

    ``mosquitto`` is the binary to run; None looks for one, "" means use amqtt.
    """
    if mosquitto is None:
        mosquitto = _mosquitto_binary()
    if mosquitto:
        conf = state_dir / "mosquitto-demo.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                        "persistence false\n" + ("user root\n" if os.geteuid() == 0 else ""))
        proc = await asyncio.create_subprocess_exec(mosquitto, "-c", str(conf),
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        try:
            await _wait_port("127.0.0.1", port)
            log.info("embedded Mosquitto on 127.0.0.1:%d", port)
            yield "5"
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        return
    from amqtt.broker import Broker

    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                     "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
    await broker.start()
    log.info("embedded amqtt broker on 127.0.0.1:%d (MQTT 3.1.1)", port)
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


def _demo_config(cfg: Config, state_dir: Path, broker: str, version: str | None,
                 output: str | None = None) -> Config:
    cfg = with_broker(cfg, broker)
    storage = cfg.storage.model_copy(update={"path": state_dir / cfg.storage.path.name})
    mqtt = cfg.mqtt.model_copy(update={"version": version}) if version else cfg.mqtt
    update: dict[str, object] = {"storage": storage, "mqtt": mqtt}
    if output is not None:
        update["output"] = output
        if output != "json" and cfg.sparkplug is None:
            update["sparkplug"] = SparkplugConfig(group_id=cfg.site, edge_node_id=f"{cfg.site}-demo")
    return cfg.model_copy(update=update)


async def run_demo(*, broker: str | None = None, config: Path | None = None, sim_config: Path | None = None,
                   state_dir: Path | None = None, plain: bool = False, duration: float | None = None,
                   stop: asyncio.Event | None = None, output: str | None = None) -> int:
    """Run the whole demo until ``stop`` is set (Ctrl-C) or ``duration`` has passed.

    ``output`` overrides the config's (json, sparkplug, both); with ``sparkplug`` the view
    shows the Sparkplug edge node's lines.
    """
    from agent.cli.watch import run_watch
    from agent.runtime.pipeline import Agent
    from simulators.config import load_sim_config
    from simulators.runner import SimulatorSet

    stop = stop or asyncio.Event()
    loaded = load_config(config or packaged_config("demo.yaml"))
    sim_cfg = load_sim_config(sim_config or packaged_config("simulators.yaml"))
    state = _demo_state_dir(state_dir)
    async with contextlib.AsyncExitStack() as stack:
        version: str | None = None
        if broker is None:
            if await _reachable(DEFAULT_BROKER):
                broker = DEFAULT_BROKER
                log.info("using the broker at %s", broker)
            else:
                version = await stack.enter_async_context(embedded_broker(state))
                broker = DEFAULT_BROKER
        cfg = _demo_config(loaded.config, state, broker, version, output)
        log.info("state database %s: plantfloor state show CONFIG --state %s; plantfloor "
                 "report CONFIG --state %s", cfg.storage.path, state, state)
        spb = cfg.sparkplug
        node = f"{spb.group_id}/{spb.edge_node_id}" if spb and cfg.output == "sparkplug" else None
        sims = SimulatorSet(sim_cfg)
        try:
            await stack.enter_async_context(sims)
        except OSError as exc:
            raise PlantfloorError(f"the simulators cannot start: {exc}") from exc
        agent = Agent(cfg, config_sha256=loaded.sha256)
        agent_stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            agent_task = tg.create_task(agent.run(agent_stop), name="agent")
            watch_task = tg.create_task(run_watch(broker_url=broker, root=cfg.topic_root,
                                                  plain=True if plain else None, stop=stop,
                                                  sparkplug=node),
                                        name="watch")
            # the view ending (it could not reach the broker) ends the demo
            watch_task.add_done_callback(lambda _: stop.set())
            timer = tg.create_task(_stop_after(stop, duration), name="duration") if duration else None
            await stop.wait()
            agent_stop.set()
            await agent_task
            code = await watch_task
            if timer is not None:
                timer.cancel()
    print(f"demo stopped; state kept in {state}")
    return code


async def _stop_after(stop: asyncio.Event, seconds: float) -> None:
    await asyncio.sleep(seconds)
    stop.set()
