"""``plantfloor demo``: simulators, a broker, the agent and the live view, on one machine.

The demo runs the Kyushu plant on a simulated plant clock shared by the simulators, the
agent and the view: ``speed`` plant seconds per real second (x60 by default: a plant hour
a minute) from a plant instant in the first weeks of Sakura production. Its state folder
keeps the agent's state database and the simulators' counters (as a PLC's retentive
memory keeps them), and a restart continues the plant clock from the end of the last
window the agent committed: the plant day goes on, with no counter reset and no gap.

The broker is the one given with ``--broker``, else the one at 127.0.0.1:1883 when it
answers, else an embedded one on 127.0.0.1:1883 only: a Mosquitto binary when installed,
otherwise amqtt in-process (MQTT 3.1.1, so the agent is switched to 3.1.1 for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from agent.config import Config, SparkplugConfig
from agent.config.load import load_config, with_broker
from agent.contract.errors import ConfigError, PlantfloorError
from agent.core.clock import SimulatedClock, describe
from agent.core.report import LineTotals, PlantTotals
from agent.runtime.logconfig import show_plant_time
from agent.store import Store

__all__ = ["DEFAULT_SPEED", "DEFAULT_START", "demo_plant_time", "embedded_broker", "packaged_config", "parse_start",
           "run_demo", "stored_plant_time"]

log = logging.getLogger("plantfloor.demo")

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
#: plant seconds per real second: a plant hour a minute
DEFAULT_SPEED = 60.0
#: a Monday of the Sakura's first weeks at Kyushu, ten minutes before the day shift
DEFAULT_START = datetime(2028, 4, 3, 6, 20, tzinfo=ZoneInfo("Asia/Tokyo"))
#: the simulators' counters, beside the agent's state database
SIM_STATE = "simulators-state.json"
#: the config the demo's board reads (the demo's own: its state file and broker), and the
#: plant time it reads its clock from
BOARD_CONFIG = "board.json"
PLANT_CLOCK = "plant-clock.json"


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


def demo_plant_time(state: Path) -> datetime | None:
    """The plant time a demo's state (its database, or the folder holding it) has reached, from
    the simulators' state file beside it; None for a state that is not a demo's.

    ``plantfloor report`` takes its default day from it: a demo's "today" is the plant's."""
    folder = state if state.is_dir() else state.parent
    try:
        saved = json.loads((folder / SIM_STATE).read_text(encoding="utf-8"))["saved_at"]
        when = datetime.fromisoformat(saved)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return when if when.tzinfo is not None else None


def parse_start(text: str, tz: ZoneInfo) -> datetime:
    """``--start``: ``YYYY-MM-DD[THH:MM]`` in the site's time zone (or with an offset).

    Raises ConfigError naming the option when it is not a date and time."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--start {text!r} is not a plant date and time such as 2028-04-03T06:20") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=tz)


async def stored_plant_time(path: Path) -> datetime | None:
    """The end of the last window committed in the demo's state database (None: none yet).

    The demo's plant clock resumes there, so the agent finds no gap to fill."""
    if not await asyncio.to_thread(path.exists):
        return None
    store = await Store.open(path, max_bytes=1 << 40)
    try:
        stored = await store.load()
    finally:
        await store.close()
    ends = [LineTotals.from_json(row.totals_json).last_window_end
            for row in stored.lines.values() if row.totals_json]
    if stored.plant_json:
        ends.append(PlantTotals.from_json(stored.plant_json).last_window_end)
    return max((e for e in ends if e is not None), default=None)


async def _plant_clock(db: Path, tz: ZoneInfo, speed: float, start: datetime | None) -> SimulatedClock:
    """The demo's plant clock: from the plant time stored in the state database ``db``, else
    ``start``, else DEFAULT_START."""
    if not (speed > 0 and speed <= 10_000):
        raise ConfigError(f"--speed {speed:g} must be above 0 and at most 10000 (1 is real time)")
    resume = await stored_plant_time(db)
    if resume is not None and start is not None and start < resume:
        local = resume.astimezone(tz)
        raise ConfigError(f"--start {start.isoformat()} is before the plant time the demo's state "
                          f"{db} has reached ({local:%Y-%m-%d %H:%M %Z}): give a later "
                          "one, or another --state-dir for a fresh plant")
    # held until the agent has read its PLCs: starting them takes real time, which at
    # x60 would be plant minutes the agent was not counting (a gap after every restart)
    return SimulatedClock(speed, start or resume or DEFAULT_START, running=False)


async def _companions(stack: contextlib.AsyncExitStack, cfg: Config, state: Path,
                      clock: SimulatedClock) -> list[tuple[str, str]]:
    """Further processes the demo runs beside the agent, as (name, URL) to print.

    Each is entered on ``stack`` (so it stops with the demo) and returns where a person
    reaches it: the board, in its own process as on a gateway, on the demo's plant time
    (:mod:`agent.board.plantclock`) and its config's port (another free one when taken).
    Without the ``board`` extra, or when it cannot start, the demo runs without it.
    """
    try:
        from agent.board.plantclock import write_plant_clock
        from agent.board.server import start_board
    except ImportError:
        log.info("no board: install plantfloor[board] for the web board")
        return []
    config = state / BOARD_CONFIG
    config.write_text(json.dumps(cfg.model_dump(mode="json", by_alias=True, exclude_defaults=True)),
                      encoding="utf-8")
    write_plant_clock(state / PLANT_CLOCK, clock)
    port = cfg.board.port if cfg.board.port and _port_free(cfg.board.bind, cfg.board.port) else _free_port()
    try:
        board = await asyncio.to_thread(start_board, config, port, bind=cfg.board.bind,
                                        plant_clock=state / PLANT_CLOCK)
    except PlantfloorError as exc:
        log.warning("the demo runs without its board: %s", exc)
        return []
    stack.push_async_callback(asyncio.to_thread, board.stop)
    return [("board", board.url)]


def _port_free(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_demo(*, broker: str | None = None, config: Path | None = None, sim_config: Path | None = None,
                   state_dir: Path | None = None, plain: bool = False, duration: float | None = None,
                   stop: asyncio.Event | None = None, output: str | None = None,
                   speed: float = DEFAULT_SPEED, start: str | datetime | None = None) -> int:
    """Run the whole demo until ``stop`` is set (Ctrl-C) or ``duration`` real seconds have passed.

    ``output`` overrides the config's (json, sparkplug, both); with ``sparkplug`` the view
    shows the Sparkplug edge node's lines. ``speed`` is the plant clock's (1 = real time);
    ``start`` the plant instant a fresh demo begins at (a state folder that has run
    continues from its own plant time).
    """
    from agent.cli.watch import run_watch
    from agent.runtime.pipeline import Agent
    from simulators.config import load_sim_config
    from simulators.runner import SimulatorSet

    stop = stop or asyncio.Event()
    loaded = load_config(config or packaged_config("demo.yaml"))
    sim_cfg = load_sim_config(sim_config or packaged_config("simulators.yaml"))
    state = _demo_state_dir(state_dir)
    tz = loaded.config.tz
    begin = parse_start(start, tz) if isinstance(start, str) else start
    clock = await _plant_clock(state / loaded.config.storage.path.name, tz, speed, begin)
    # its log lines on the terminal tell the plant's time, as its view does
    show_plant_time(tz, clock.wall)
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
        sims = SimulatorSet(sim_cfg, plant=clock, state_path=state / SIM_STATE)
        try:
            await stack.enter_async_context(sims)
        except OSError as exc:
            raise PlantfloorError(f"the simulators cannot start: {exc}") from exc
        print(f"plantfloor demo: {describe(clock, tz)}; state kept in {state} "
              f"(agent {cfg.storage.path.name}, simulators {SIM_STATE})", flush=True)
        companions = await _companions(stack, cfg, state, clock)
        for name, url in companions:
            print(f"plantfloor demo: {name} at {url}", flush=True)
        agent = Agent(cfg, config_sha256=loaded.sha256, clock=clock, simulated_ok=True)
        agent_stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            agent_task = tg.create_task(agent.run(agent_stop), name="agent")
            release = tg.create_task(_release_when_ready(clock, agent.ready,
                                                         state / PLANT_CLOCK if companions else None),
                                     name="plant-clock")
            watch_task = tg.create_task(run_watch(broker_url=broker, root=cfg.topic_root,
                                                  plain=True if plain else None, stop=stop,
                                                  sparkplug=node, clock=clock, tz=tz),
                                        name="watch")
            # the view ending (it could not reach the broker) ends the demo
            watch_task.add_done_callback(lambda _: stop.set())
            timer = tg.create_task(_stop_after(stop, duration), name="duration") if duration else None
            await stop.wait()
            release.cancel()
            # the lines stand still first, so the agent's last window holds every unit built
            await sims.pause()
            agent_stop.set()
            await agent_task
            code = await watch_task
            if timer is not None:
                timer.cancel()
    print(f"demo stopped; state kept in {state}")
    return code


async def _release_when_ready(clock: SimulatedClock, ready: asyncio.Event, record: Path | None) -> None:
    """Plant time runs once the agent is ready (it read every PLC and reached the broker);
    ``record`` tells the board's process (when there is a board)."""
    await ready.wait()
    clock.release()
    if record is not None:
        from agent.board.plantclock import write_plant_clock

        write_plant_clock(record, clock)


async def _stop_after(stop: asyncio.Event, seconds: float) -> None:
    await asyncio.sleep(seconds)
    stop.set()
