"""A minimal plantfloor subscriber: a correct running total of units per line.

Delivery is at least once, so the same window can arrive more than once: keep one
message per (line, epoch, seq) and the sum of ``units`` is exact. ``epoch`` changes when
the agent's state store is created afresh (and ``seq`` starts again at 1), so a key
without it would drop the new windows. Nothing is persisted: the
totals count the windows received since this program started; Ctrl-C or SIGTERM (a
service manager stopping it) prints them.

    python examples/subscriber.py --broker mqtt://127.0.0.1:1883 --root plantfloor/kyushu
"""

from __future__ import annotations

import argparse
import json
import signal
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
parser.add_argument("--root", default="plantfloor/kyushu")
args = parser.parse_args()

seen: set[tuple[str, int, int]] = set()  # (line, epoch, seq) of every window already counted
totals: dict[str, int] = {}


def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
    client.subscribe(f"{args.root}/lines/+/output", qos=1)  # again after every reconnect


def on_subscribe(client: mqtt.Client, userdata: object, mid: int, reasons: object, props: object) -> None:
    print(f"listening on {args.root}/lines/+/output", flush=True)


def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
    window = json.loads(msg.payload)
    key = (window["line"], window["epoch"], window["seq"])
    if key in seen:  # a redelivery of a window already counted
        return
    seen.add(key)
    totals[window["line"]] = totals.get(window["line"], 0) + window["units"]
    late = " (historical)" if window.get("historical") else ""
    print(f"{window['line']} epoch={window['epoch']} seq={window['seq']} units={window['units']} "
          f"total={totals[window['line']]}{late}", flush=True)


url = urlsplit(args.broker)
client = mqtt.Client(CallbackAPIVersion.VERSION2)
client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
if url.scheme == "mqtts":
    client.tls_set()  # the system's trusted CAs
client.connect(url.hostname or "127.0.0.1", url.port or (8883 if url.scheme == "mqtts" else 1883))


def stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends it as Ctrl-C does


signal.signal(signal.SIGTERM, stop)
try:
    client.loop_forever()
except KeyboardInterrupt:
    print("totals:", ", ".join(f"{line}={n}" for line, n in sorted(totals.items())))
