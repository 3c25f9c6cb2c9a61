"""``plantfloor watch``: a subscriber's live view of every line and the plant.

A paho-mqtt client subscribes to ``<root>/#``. Its network thread (``loop_start``)
hands every callback to the event loop with ``call_soon_threadsafe``; everything else
(the model, rendering) runs on the loop. Reconnection is paho's own: this is a viewer
with no state worth more than a resubscription, and retained status and line states
come back on every subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import deque
from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.live import Live

from agent.cli.watch_screen import rich_view
from agent.cli.watch_view import WatchModel, plain_lines
from agent.core.clock import Clock, SystemClock

if TYPE_CHECKING:
    from agent.outputs.sparkplug.view import SparkplugReader

__all__ = ["BrokerAddress", "parse_broker_url", "run_watch"]


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker listens, as given by ``mqtt://`` or ``mqtts://`` URL."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://[user[:password]@]host[:port]``; ``mqtts://`` means TLS (port 8883).

    Raises ``ValueError`` naming the URL when it is not of that form.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"broker URL {url!r} is not of the form mqtt[s]://host[:port]")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ValueError(f"broker URL {url!r} has an invalid port") from exc
    return BrokerAddress(parts.hostname, port, tls, parts.username, parts.password)


class _Link:
    """The paho client and its thread, reporting to the event loop as (kind, ...) items."""

    def __init__(self, address: BrokerAddress, topics: list[str],
                 loop: asyncio.AbstractEventLoop) -> None:
        self._address = address
        self._topics = topics
        self._loop = loop
        self.inbox: deque[tuple[str, Any, Any]] = deque()
        self.wake = asyncio.Event()
        # MQTT 3.1.1 so that any broker a demo may run (amqtt included) serves it.
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311,
                                   clean_session=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        if address.username is not None:
            self._client.username_pw_set(address.username, address.password)
        if address.tls:
            self._client.tls_set()  # the system's trusted CAs
        self._started = False

    # paho's thread -----------------------------------------------------------------
    def _post(self, kind: str, a: Any = None, b: Any = None) -> None:
        self._loop.call_soon_threadsafe(self._deliver, (kind, a, b))

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._post("refused", str(rc))
            return
        client.subscribe([(t, 1) for t in self._topics])
        self._post("connected")

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._post("disconnected", str(rc))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._post("message", msg.topic, msg.payload)

    # the event loop ----------------------------------------------------------------
    def _deliver(self, item: tuple[str, Any, Any]) -> None:
        self.inbox.append(item)
        self.wake.set()

    async def start(self, within_s: float) -> str | None:
        """Connect once; None on success, else why not (the caller names the URL)."""
        self._client.connect_timeout = within_s
        try:
            await asyncio.wait_for(asyncio.to_thread(
                self._client.connect, self._address.host, self._address.port, 30), within_s)
        except (OSError, TimeoutError) as exc:
            return str(exc) or type(exc).__name__
        self._client.loop_start()
        self._started = True
        try:
            async with asyncio.timeout(within_s):
                while True:
                    while not self.inbox:
                        self.wake.clear()
                        await self.wake.wait()
                    kind, a, _ = self.inbox.popleft()
                    if kind == "connected":
                        return None
                    if kind in ("refused", "disconnected"):
                        return f"connection refused: {a}"
        except TimeoutError:
            return f"no answer to CONNECT within {within_s:g} s"

    async def close(self) -> None:
        """Disconnect and join paho's thread (off the loop: the join can block)."""
        self._client.disconnect()
        if self._started:
            await asyncio.to_thread(self._client.loop_stop)


async def run_watch(*, broker_url: str = "mqtt://127.0.0.1:1883", root: str = "plantfloor/kyushu",
                    plain: bool | None = None, interval_s: float = 1.0,
                    stop: asyncio.Event | None = None, out: TextIO | None = None,
                    connect_timeout_s: float = 5.0, sparkplug: str | None = None,
                    clock: Clock | None = None, tz: tzinfo | None = None) -> int:
    """Show every line and the plant published under ``root`` until ``stop`` is set.

    Renders a live table when ``out`` (default stdout) is a terminal and ``plain`` is not
    True; otherwise prints :func:`~agent.cli.watch_view.plain_lines` every ``interval_s``
    whenever something changed (and once more on stop). Returns 0 when stopped, 1 when
    the broker could not be reached within ``connect_timeout_s`` at start, 2 for a
    malformed URL. Cancellation (Ctrl-C in the CLI) closes the client and propagates.

    ``sparkplug`` ("GROUP/NODE") shows that Sparkplug edge node's lines instead of the
    JSON topics under ``root``. ``clock`` is the plant clock the view tells the time and
    the age of windows by (the demo's simulated one; the machine's by default), ``tz``
    the zone it shows times in (default: the machine's local zone).
    """
    out = out if out is not None else sys.stdout
    if plain is None:
        plain = not out.isatty()
    try:
        address = parse_broker_url(broker_url)
    except ValueError as exc:
        print(f"plantfloor watch: {exc}", file=sys.stderr)
        return 2
    root = root.rstrip("/")
    reader = None
    if sparkplug is not None:
        from agent.outputs.sparkplug.view import SparkplugReader

        group, _, node = sparkplug.partition("/")
        if not group or not node or "/" in node:
            print(f"plantfloor watch: --sparkplug {sparkplug!r} is not GROUP/NODE", file=sys.stderr)
            return 2
        reader = SparkplugReader(group, node)
    link = _Link(address, reader.topics if reader else [f"{root}/#"], asyncio.get_running_loop())
    try:
        why = await link.start(connect_timeout_s)
        if why is not None:
            print(f"plantfloor watch: cannot reach the MQTT broker at {broker_url}: {why}",
                  file=sys.stderr)
            return 1
        await _watch(link, root, broker_url, plain, interval_s, stop or asyncio.Event(), out, reader,
                     clock or SystemClock(), tz)
        return 0
    finally:
        await link.close()


async def _watch(link: _Link, root: str, url: str, plain: bool, interval_s: float,
                 stop: asyncio.Event, out: TextIO, reader: SparkplugReader | None = None,
                 clock: Clock | None = None, tz: tzinfo | None = None) -> None:
    clock = clock or SystemClock()
    model = WatchModel()
    prefix = f"{root}/"
    connection = f"{url} connected"
    live: Live | None = None
    if not plain:
        # plain=False asks for the live view even where ``out`` is not a terminal
        live = Live(console=Console(file=out, force_terminal=True), auto_refresh=False,
                    transient=False)
        live.start()
    stopper = asyncio.ensure_future(stop.wait())
    stopper.add_done_callback(lambda _: link.wake.set())
    loop = asyncio.get_running_loop()
    next_render = loop.time()
    changed = True
    size = None
    try:
        while True:
            link.wake.clear()
            while link.inbox:
                kind, a, b = link.inbox.popleft()
                if kind == "message" and isinstance(a, str) and reader is not None:
                    for subtopic, payload in reader.apply(a, b):
                        changed |= model.apply(subtopic, payload)
                elif kind == "message" and isinstance(a, str) and a.startswith(prefix):
                    changed |= model.apply(a[len(prefix):], b)
                elif kind in ("disconnected", "refused", "connected"):
                    notice = _notice(kind, url, a)
                    connection = f"{url} {'connected' if kind == 'connected' else 'lost'}"
                    if live is not None:
                        live.console.print(f"[yellow]{notice}[/]")
                    else:
                        print(notice, file=out, flush=True)
            done = stop.is_set()
            if done or loop.time() >= next_render:
                if live is not None:
                    if live.console.size != size:
                        # a resized terminal rewraps the frames above: start on a clean screen
                        if size is not None:
                            live.console.clear()
                        size = live.console.size
                    live.update(rich_view(model, connection, clock=clock, tz=tz,
                                          width=live.console.width), refresh=True)
                elif changed and (model.lines or model.plant.latest or model.status):
                    print("\n".join(plain_lines(model)), file=out, flush=True)
                changed = False
                next_render = loop.time() + interval_s
            if done:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_render - loop.time())):
                    await link.wake.wait()
    finally:
        if live is not None:
            live.stop()
        stopper.cancel()
        await asyncio.wait([stopper])  # reaps it without absorbing our own cancellation


def _notice(kind: str, url: str, reason: object) -> str:
    if kind == "connected":
        return f"notice: reconnected to {url}"
    return f"notice: connection to {url} lost ({reason}); reconnecting"
