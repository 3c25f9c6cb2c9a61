"""paho-mqtt on the asyncio loop: the client's socket watched with ``add_reader``/``add_writer``,
keepalives from a small task, no paho thread; TLS and connection errors in one sentence.

Shared by the agent's publisher (:mod:`agent.outputs.mqtt.publisher`) and the roll-up's
consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig, resolve_secret_file

__all__ = ["attach", "close_socket", "describe", "keepalive", "new_client", "tls_context", "unwatch"]

_MISC_INTERVAL_S = 1.0


def attach(client: mqtt.Client) -> bool:
    """Watch a connected client's socket on the running loop; False if it has none."""
    loop = asyncio.get_running_loop()
    sock = client.socket()
    if sock is None:
        return False
    client.on_socket_close = lambda _c, _u, s: unwatch(loop, s)
    client.on_socket_register_write = lambda c, _u, s: loop.add_writer(s, c.loop_write)

    def unregister_write(_c: mqtt.Client, _u: Any, s: Any) -> None:
        loop.remove_writer(s)

    client.on_socket_unregister_write = unregister_write
    loop.add_reader(sock, _readable, client)
    if client.want_write():
        loop.add_writer(sock, client.loop_write)
    return True


def _readable(client: mqtt.Client) -> None:
    client.loop_read()
    sock = client.socket()
    # TLS may hold decrypted bytes the kernel no longer reports as readable
    while isinstance(sock, ssl.SSLSocket) and sock.pending() and client.socket() is sock:
        client.loop_read()


async def keepalive(client: mqtt.Client) -> None:
    """paho's periodic duties (PINGREQ, timeouts) until cancelled."""
    while True:
        await asyncio.sleep(_MISC_INTERVAL_S)
        client.loop_misc()


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """Verify the broker against ``ca_file`` (system store when absent), hostname included."""
    tls = cfg.tls
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls and tls.ca_file else None)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if tls is not None and tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(str(resolve_secret_file(tls.cert_file)), str(resolve_secret_file(tls.key_file)))
    return ctx


def unwatch(loop: asyncio.AbstractEventLoop, sock: Any) -> None:
    """Stop watching a socket (it may be gone already)."""
    with contextlib.suppress(ValueError, OSError):
        loop.remove_reader(sock)
        loop.remove_writer(sock)


def close_socket(client: mqtt.Client) -> None:
    """Close without a DISCONNECT packet (the broker keeps the session and publishes any will)."""
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def describe(exc: BaseException, cfg: MqttConfig) -> str:
    """A connection failure as one sentence naming the broker."""
    where = f"{cfg.host}:{cfg.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake with {where} failed: certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.CertificateError):
        return f"TLS handshake with {where} failed: {exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot connect to {where}: connection refused"
    if isinstance(exc, TimeoutError):
        return f"cannot connect to {where}: timed out"
    if isinstance(exc, FileNotFoundError):
        return f"TLS file not found: {exc.filename}"
    if isinstance(exc, OSError):
        return f"cannot connect to {where}: {exc.strerror or exc}"
    return str(exc)


def new_client(cfg: MqttConfig, *, client_id: str, will: tuple[str, bytes], will_retain: bool,
               password: str | None, connect_timeout_s: float) -> mqtt.Client:
    """A fresh paho client for one publishing session: no reconnect of its own (one layer
    owns reconnection), the will set, in-flight capped by the publisher's own slots."""
    v5 = cfg.version == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else True, reconnect_on_failure=False)
    client.connect_timeout = connect_timeout_s
    will_topic, will_payload = will
    client.will_set(will_topic, will_payload, qos=1, retain=will_retain)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, password)
    # the publisher's own slots cap what is in flight (at the broker's Receive Maximum);
    # paho's cap would only make it walk every unacknowledged message on each PUBACK
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(cfg.max_inflight)
    return client
