"""A private Mosquitto on a free loopback port, and a subscriber that timestamps arrivals.

The benchmark never touches a broker it did not start (in particular not 127.0.0.1:1883).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

__all__ = ["Arrival", "Broker", "Subscriber", "free_port", "mosquitto_version"]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_version() -> str:
    """``mosquitto -h`` prints its version on the first line."""
    try:
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    first = (out.stdout or out.stderr).splitlines()[:1]
    return first[0].removeprefix("mosquitto version ").strip() if first else "unknown"


class Broker:
    """One ``mosquitto`` process with a generated configuration in ``workdir``.

    Nagle is off (``set_tcp_nodelay``: pipelined QoS 1 runs several times faster) and a
    slow subscriber's queue is unbounded, so a replay is never cut short by the broker.
    """

    host = "127.0.0.1"

    def __init__(self, workdir: Path, port: int = 0, *, persistence: bool = False) -> None:
        self.workdir = workdir
        self.port = port
        #: keep sessions and queued messages across a restart (saved on SIGTERM)
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 10.0) -> None:
        """Start (on the previous port when there is one) and wait until it accepts connections."""
        if self.proc is not None:
            return
        if not Path(MOSQUITTO).exists():
            raise RuntimeError("mosquitto is not installed")
        if self.port == 0:
            self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join([
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "set_tcp_nodelay true",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            *(["persistence true", f"persistence_location {self.workdir}/"]
              if self.persistence else ["persistence false"]),
            "user root",
            f"log_dest file {self.workdir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
        ]) + "\n")
        with (self.workdir / "mosquitto.out").open("ab") as out:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not start on port {self.port}; see {self.workdir}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Arrival:
    """A message as received: wall-clock arrival time, topic and raw payload."""

    t: float
    topic: str
    payload: bytes

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho subscriber (QoS 1, MQTT 5) on its own network thread.

    ``on_message`` only timestamps and keeps the raw message: decoding happens after the
    measurement, so the subscriber keeps up with a fast replay.
    """

    def __init__(self, broker: Broker, topics: list[str], client_id: str = "bench-subscriber") -> None:
        self.broker = broker
        self.topics = topics
        self._lock = threading.Lock()
        self._arrivals: list[Arrival] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.topics])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        arrival = Arrival(time.time(), msg.topic, bytes(msg.payload))
        with self._lock:
            self._arrivals.append(arrival)

    def start(self, timeout: float = 10.0) -> Subscriber:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        self.client.connect(self.broker.host, self.broker.port, keepalive=30, clean_start=True,
                            properties=props)
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"no SUBACK from {self.broker.url}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def take(self) -> list[Arrival]:
        """Every arrival since the last call (and forget them)."""
        with self._lock:
            out, self._arrivals = self._arrivals, []
        return out

    def count(self) -> int:
        with self._lock:
            return len(self._arrivals)
