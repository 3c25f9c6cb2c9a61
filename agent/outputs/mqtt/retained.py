"""Reading one retained message from the broker before the agent's own session starts."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig
from agent.outputs.mqtt.loop import tls_context

__all__ = ["read_retained"]

#: after the broker acknowledged the subscription, how long a retained message may take
_AFTER_SUBACK_S = 1.0


def read_retained(cfg: MqttConfig, topic: str, *, client_id: str, password: str | None,
                  timeout_s: float) -> bytes | None:
    """The broker's retained message on ``topic``; None when there is none, or the broker
    cannot be reached within ``timeout_s``. Blocking: run it in a worker thread.

    A connection of its own (no will, clean session), so the agent's session and its
    retained status are not touched.
    """
    v5 = cfg.version == "5"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                         clean_session=None if v5 else True, reconnect_on_failure=False)
    client.connect_timeout = timeout_s
    if cfg.username is not None:
        client.username_pw_set(cfg.username, password)
    got: list[bytes] = []
    answered = threading.Event()
    subscribed = threading.Event()

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            answered.set()
        else:
            c.subscribe(topic, qos=1)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain and not got:
            got.append(bytes(msg.payload))
            answered.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    try:
        if cfg.uses_tls:
            client.tls_set_context(tls_context(cfg))
        client.connect(cfg.host, cfg.port, keepalive=max(5, int(timeout_s) + 1))
    except (OSError, ValueError):
        return None
    client.loop_start()
    try:
        if subscribed.wait(timeout_s):
            answered.wait(_AFTER_SUBACK_S)
        else:
            answered.wait(0)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None
