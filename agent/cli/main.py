"""The ``plantfloor`` console script.

Exit codes: 0 done, 1 runtime failure, 2 usage or configuration error (systemd does not
restart on 2). Errors go to stderr as one sentence; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.cli.extras import require_board_extra, require_rollup_extra
from agent.config.mqtt import BROKER_FORMS, broker_url
from agent.contract.errors import ConfigError, PlantfloorError

__all__ = ["main"]

log = logging.getLogger("plantfloor")


class _DefaultsShown(argparse.HelpFormatter):
    """``--help`` names each option's default (where it has one its help does not name)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (action.default not in (None, False, argparse.SUPPRESS) and "default" not in text
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging and tracebacks")
    common.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS,
                        help="log lines as text (default) or one JSON object per line")
    # the main parser has its own copies: argparse shares parent actions, and a default set
    # here would overwrite the SUPPRESS that lets the options also follow the command
    p = argparse.ArgumentParser(prog="plantfloor",
                                description="PLC good-unit counters to throughput against capacity, over MQTT.")
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="log lines as text (default) or one JSON object per line")
    p.add_argument("--version", action="version", version=f"plantfloor {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        # --help shows each option's default
        return _add(name, parents=[common], formatter_class=_DefaultsShown, **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    run = sub.add_parser("run", help="run the agent in the foreground (systemd runs exactly this)")
    run.add_argument("config", type=Path)
    run.add_argument("--broker", help=f"broker overriding mqtt.url: {BROKER_FORMS}")

    check = sub.add_parser("check", help="validate a config and print a summary")
    check.add_argument("config", type=Path)
    check.add_argument("--connect", action="store_true", help="also reach every PLC and the broker once")
    check.add_argument("--broker", help=f"broker overriding mqtt.url: {BROKER_FORMS}")
    check.add_argument("--year", type=int, help="production year of the yearly plans (default: this year)")

    schema = sub.add_parser("schema", help="print the JSON Schema of the config or of every MQTT payload")
    schema.add_argument("what", choices=["config", "payloads"])

    sim = sub.add_parser("simulate", help="run the software PLCs of a simulator config")
    sim.add_argument("simconfig", type=Path)
    sim.add_argument("--ledger", type=Path, help="keep a JSON ground-truth ledger up to date in this file")

    demo = sub.add_parser("demo", help="simulators, broker, agent and live view on this machine")
    demo.add_argument("--broker", help=f"use this broker ({BROKER_FORMS}); default: "
                      "mqtt://127.0.0.1:1883 if reachable, else an embedded one")
    demo.add_argument("--config", type=Path, help="agent config (default: the packaged demo.yaml)")
    demo.add_argument("--sim-config", type=Path, help="simulator config (default: the packaged simulators.yaml)")
    demo.add_argument("--state-dir", type=Path, help="folder for the demo's state database "
                      "(default: $XDG_STATE_HOME/plantfloor, else ~/.local/state/plantfloor)")
    demo.add_argument("--plain", action="store_true", help="plain text view instead of the live table")
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("--speed", type=float, default=60.0,
                      help="plant seconds per real second (default 60: a plant hour a minute; 1 is real time)")
    demo.add_argument("--start", help="plant date and time a fresh demo starts at, site time "
                      "(default 2028-04-03T06:20; a demo that has run continues from its own)")
    demo.add_argument("--output", choices=["json", "sparkplug", "both"],
                      help="window output (default: the config's); sparkplug shows the Sparkplug node in the view")

    state = sub.add_parser("state", help="see and mend the state store (counter baselines, totals)")
    state_sub = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    state_help = ("the state database, or the folder holding it (e.g. the demo's "
                  "~/.local/state/plantfloor); default: storage.path, a relative one read "
                  "against the config file's folder")
    show = state_sub.add_parser("show", help="what the state store holds, per line")
    show.add_argument("config", type=Path)
    show.add_argument("--format", choices=["text", "json"], default="text",
                      help="text for people (local times), json for scripts (UTC)")
    show.add_argument("--state", type=Path, help=state_help)
    rebase = state_sub.add_parser(
        "rebaseline", help="the next reading of LINE's counter becomes its baseline without counting")
    rebase.add_argument("config", type=Path)
    rebase.add_argument("line")
    rebase.add_argument("--reason", help="why (kept in the log and the state store)")
    rebase.add_argument("--state", type=Path, help=state_help)
    opening = state_sub.add_parser(
        "opening", help="record units a line (or the plant) built earlier in the production year, "
        "through a production day, with a note; a correction is a new entry")
    opening.add_argument("config", type=Path)
    opening.add_argument("--units", type=int, required=True, help="units built in the year up to and including --through")
    opening.add_argument("--through", required=True, metavar="YYYY-MM-DD",
                         help="the last production day the figure covers (its year is the production year)")
    opening.add_argument("--note", required=True, help="where the figure comes from")
    opening.add_argument("--line", help="the line (default: the plant, units not attributed to a line)")
    opening.add_argument("--state", type=Path, help=state_help)
    restore = state_sub.add_parser(
        "restore", help="after copying a backup of the state database back: a new epoch, every "
                        "counter re-baselined (refused while an agent runs)")
    restore.add_argument("config", type=Path)
    restore.add_argument("--state", type=Path, help=state_help)

    rep = sub.add_parser("report", help="the shift reports of a production day from the state store: "
                         "units, targets, OEE and its parts, downtime by reason")
    rep.add_argument("config", type=Path)
    rep.add_argument("--date", help="production date YYYY-MM-DD (default: the current production day: "
                     "a night shift after midnight belongs to the day it started)")
    rep.add_argument("--shift", help="only this shift (by name)")
    rep.add_argument("--format", choices=["text", "csv", "json"], default="text",
                     help="text for people (local times), csv or json for scripts")
    rep.add_argument("--database", metavar="URL",
                     help="read the site's reports from the roll-up's PostgreSQL (postgresql://...) "
                          "instead of the state store")
    rep.add_argument("--state", type=Path, help=state_help)

    rollup = sub.add_parser("rollup", help="the site-wide service for several gateways: every line window "
                            "exactly once into PostgreSQL, one plant figure for the site")
    rollup.add_argument("rollupconfig", type=Path)
    rollup.add_argument("--replica", help="this replica's name (default: replica in the file, else the host name)")
    rollup.add_argument("--broker", help=f"broker overriding mqtt.url: {BROKER_FORMS}")
    rollup.add_argument("--check", action="store_true", help="validate the config and print a summary; do not run")
    rollup.add_argument("--connect", action="store_true", help="with --check: also reach the database and the broker once")

    board = sub.add_parser("board", help="the read-only web board of a gateway (CONFIG: the agent's, figures "
                           "from its state store) or of the site (the roll-up's, figures from PostgreSQL)")
    board.add_argument("config", type=Path)
    board.add_argument("--bind", help="address to listen on (default: board.bind, 127.0.0.1)")
    board.add_argument("--port", type=int, help="TCP port (default: board.port, 8470; 0: any free port)")
    # the demo's plant time (a file the demo keeps up to date): never on a real gateway
    board.add_argument("--plant-clock", type=Path, help=argparse.SUPPRESS)

    watch = sub.add_parser("watch", help="live terminal view of every line and the plant (an MQTT subscriber)")
    watch.add_argument("--broker", default="mqtt://127.0.0.1:1883", help=BROKER_FORMS)
    watch.add_argument("--root", default="plantfloor/kyushu", help="topic root R")
    watch.add_argument("--plain", action="store_true", help="plain periodic lines even on a terminal")
    watch.add_argument("--sparkplug", metavar="GROUP/NODE",
                       help="show this Sparkplug B edge node's lines instead of the JSON topics")
    return p


#: SIGTERM/SIGINT received before the event loop took the signals over (while starting)
_early_signals: list[int] = []


def _catch_early_signals() -> None:
    """Note a stop asked for while the agent is still starting (loading its config,
    importing, opening its store): it ends in a clean stop, exit 0, not by the signal."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: _early_signals.append(signum))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        _catch_early_signals()
    from agent.runtime.logconfig import configure_logging

    configure_logging(fmt=args.log_format, level=logging.DEBUG if args.debug else logging.INFO)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        if args.debug:
            log.exception("configuration error")
        print(f"plantfloor: {exc}", file=sys.stderr)
        return 2
    except PlantfloorError as exc:
        if args.debug:
            log.exception("failed")
        print(f"plantfloor: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except ExceptionGroup as group:
        inner = _first_leaf(group)
        if args.debug:
            raise
        print(f"plantfloor: {inner}" if isinstance(inner, PlantfloorError)
              else f"plantfloor: unexpected error: {type(inner).__name__}: {inner} "
                   "(run with --debug for details)", file=sys.stderr)
        return 2 if isinstance(inner, ConfigError) else 1
    except Exception as exc:
        if args.debug:
            raise
        print(f"plantfloor: unexpected error: {type(exc).__name__}: {exc} (run with --debug for details)",
              file=sys.stderr)
        return 1


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _broker(args: argparse.Namespace) -> None:
    """``--broker`` in any of its forms, as the URL every command uses (one refusal)."""
    if getattr(args, "broker", None) is None:
        return
    try:
        args.broker = broker_url(args.broker)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--broker") from None


def _dispatch(args: argparse.Namespace) -> int:
    _broker(args)
    if args.command == "schema":
        return _schema(args.what)
    if args.command == "check":
        from agent.cli.check import check_command

        return check_command(args.config, connect=args.connect, broker=args.broker, year=args.year)
    if args.command == "run":
        return _run_agent(args)
    if args.command == "state":
        from agent.cli import state
        from agent.config.load import load_config

        cfg = load_config(args.config).config
        path = state.state_path(cfg, args.state)
        if args.state_command == "show":
            print(state.show(cfg, fmt=args.format, path=path))
        elif args.state_command == "restore":
            print(state.restore(cfg, path=path))
        elif args.state_command == "opening":
            print(state.opening(cfg, units=args.units, through=args.through, note=args.note,
                                line=args.line, path=path))
        else:
            print(state.rebaseline(cfg, args.line, args.reason, path=path))
        return 0
    if args.command == "report":
        from agent.config.load import load_config
        from agent.views.report import report

        cfg = load_config(args.config).config
        if args.database:
            require_rollup_extra("report --database")
            from agent.rollup.reports import report_from_database

            print(report_from_database(cfg, args.database, day=args.date, shift=args.shift, fmt=args.format))
            return 0
        from agent.cli.state import state_path
        from agent.core.totals import year_openings
        from agent.store.openings import read_openings
        from agent.store.reports import read_reports

        path = state_path(cfg, args.state)
        openings = year_openings((e.year, e.line, e.units, e.through) for e in read_openings(path))
        from agent.cli.demo import demo_plant_time

        # a demo's state runs on its own plant clock: its "today" is the plant's
        print(report(cfg, day=args.date, shift=args.shift, fmt=args.format, now=demo_plant_time(path),
                     read=lambda d, name: read_reports(path, d, name), openings=openings))
        return 0
    if args.command == "simulate":
        from simulators.runner import run_simulators

        try:
            return _run_until_signal(lambda: run_simulators(args.simconfig, args.ledger))
        except OSError as exc:
            raise PlantfloorError(f"the simulators cannot start: {exc}") from exc
    if args.command == "watch":
        from agent.cli.watch import run_watch

        stop = asyncio.Event()
        return _run_until_signal(lambda: run_watch(broker_url=args.broker, root=args.root,
                                                   plain=True if args.plain else None, stop=stop,
                                                   sparkplug=args.sparkplug),
                                 stop=stop)
    if args.command == "rollup":
        require_rollup_extra("rollup")
        from agent.rollup.command import rollup_command

        return rollup_command(args.rollupconfig, replica=args.replica, broker=args.broker, check=args.check,
                              connect=args.connect, debug=args.debug, log_format=args.log_format,
                              run_until_signal=_run_until_signal)
    if args.command == "board":
        require_board_extra()
        from agent.board.server import load_board_config, serve

        board_cfg = load_board_config(args.config)
        if hasattr(board_cfg, "gateways"):
            require_rollup_extra("board")  # the site's board reads the roll-up's PostgreSQL
        now = None
        if args.plant_clock is not None:
            from agent.board.plantclock import PlantClockFile

            now = PlantClockFile(args.plant_clock).wall
        return _run_until_signal(lambda: serve(board_cfg, bind=args.bind, port=args.port, now=now))
    if args.command == "demo":
        from agent.cli.demo import run_demo

        stop = asyncio.Event()
        return _run_until_signal(lambda: run_demo(broker=args.broker, config=args.config,
                                                  sim_config=args.sim_config, state_dir=args.state_dir,
                                                  plain=args.plain, duration=args.duration, stop=stop,
                                                  output=args.output, speed=args.speed,
                                                  start=args.start),
                                 stop=stop)
    raise AssertionError(args.command)


def _schema(what: str) -> int:
    if what == "config":
        from agent.config import Config

        print(json.dumps(Config.model_json_schema(), indent=2))
    else:
        from agent.contract.payloads import payload_schemas

        print(json.dumps(payload_schemas(), indent=2))
    return 0


def _run_agent(args: argparse.Namespace) -> int:
    from agent.config.load import load_config, with_broker
    from agent.runtime.logconfig import collect_secrets, configure_logging
    from agent.runtime.pipeline import Agent

    loaded = load_config(args.config)
    cfg = with_broker(loaded.config, args.broker) if args.broker else loaded.config
    configure_logging(fmt=args.log_format, level=logging.DEBUG if args.debug else logging.INFO,
                      secrets=collect_secrets(cfg), tz=cfg.tz)
    _check_password(cfg)
    stop = asyncio.Event()

    async def _main() -> int:
        agent = Agent(cfg, config_sha256=loaded.sha256)
        await agent.run(stop)
        return 0

    return _run_until_signal(_main, stop=stop)


def _check_password(cfg: Any) -> None:
    """A configured password file that cannot be read is a configuration error (exit 2)."""
    try:
        cfg.mqtt.password()
    except OSError as exc:
        raise ConfigError(f"cannot read the MQTT password file ({exc.strerror})",
                          file=str(cfg.mqtt.password_file), key="mqtt.password_file") from exc


def _run_until_signal(factory: Callable[[], Awaitable[Any]], *, stop: asyncio.Event | None = None) -> int:
    """Run a coroutine; SIGTERM/SIGINT set ``stop`` (graceful) or cancel the task."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(factory())

        def on_signal() -> None:
            if stop is not None and not stop.is_set():
                stop.set()
            else:
                task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        if _early_signals and stop is not None:
            stop.set()
        try:
            result = await task
        except asyncio.CancelledError:
            return 0
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return int(result) if isinstance(result, int) else 0

    with asyncio.Runner(loop_factory=event_loop_factory()) as run:
        return run.run(runner())


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (``pip install plantfloor[uvloop]``) and not turned off
    with ``PLANTFLOOR_LOOP=asyncio``; else asyncio's own (None)."""
    if os.environ.get("PLANTFLOOR_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
