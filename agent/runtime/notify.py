"""sd_notify without a dependency: READY, STATUS, WATCHDOG and STOPPING for systemd.

systemd passes the address of its notification socket in ``$NOTIFY_SOCKET`` (a path, or
an abstract socket written with a leading ``@``) and, with ``WatchdogSec=``, the watchdog
timeout in ``$WATCHDOG_USEC``. Each notification is one datagram. Outside systemd (no
``$NOTIFY_SOCKET``) every method is a no-op, so the pipeline calls them unconditionally.

The watchdog must be fed from the pipeline's own heartbeat, never from a free-running
timer: a wedged event loop then stops the pings and systemd restarts the agent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends service-manager notifications; a no-op when not started by systemd.

    The constructor only reads the environment; the socket is created on first use.
    Sending never blocks the event loop (non-blocking datagram) and never raises: a
    notification that cannot be delivered is logged once and dropped, as libsystemd does.
    """

    def __init__(self, socket_path: str | None = None, *,
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET")
        self._address: str | None = _address(path) if path else None
        self.enabled: bool = self._address is not None
        self.watchdog_timeout_s: float | None = _watchdog_timeout(env)
        #: how often to send WATCHDOG=1: half of systemd's timeout (None: no watchdog)
        self.watchdog_interval_s: float | None = (
            self.watchdog_timeout_s / 2 if self.watchdog_timeout_s is not None else None)
        self._sock: socket.socket | None = None
        self._status: str | None = None
        self._failed = False

    def ready(self, status: str | None = None) -> None:
        """Tell systemd start-up is complete (``Type=notify`` units leave "activating")."""
        parts = ["READY=1"]
        if status is not None:
            parts.append(f"STATUS={_one_line(status)}")
            self._status = status
        self._send("\n".join(parts))

    def status(self, text: str) -> None:
        """Set the STATUS line shown by ``systemctl status``; sent only when it changed."""
        if text == self._status:
            return
        self._status = text
        self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        """Feed the watchdog (``WATCHDOG=1``)."""
        if self.watchdog_interval_s is not None:
            self._send("WATCHDOG=1")

    def stopping(self) -> None:
        """Tell systemd a clean shutdown has begun (so the drain is not mistaken for a hang)."""
        self._send("STOPPING=1")

    def close(self) -> None:
        """Release the socket (notifications after this reopen it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            # A full or vanished socket must not take the agent down; say so once.
            if not self._failed:
                log.warning("could not notify systemd at %s: %s", self._address, exc)
                self._failed = True
        else:
            if self._failed:
                log.info("notifications to systemd delivered again")
                self._failed = False


def _address(path: str) -> str:
    # "@name" is Linux's abstract namespace: the address begins with a NUL byte.
    return "\0" + path[1:] if path.startswith("@") else path


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the datagram.
    return " ".join(text.splitlines())


def _watchdog_timeout(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    try:
        if pid and int(pid) != os.getpid():
            return None  # meant for another process (e.g. a wrapper's parent)
        value = int(usec)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r / WATCHDOG_PID=%r", usec, pid)
        return None
    return value / 1_000_000 if value > 0 else None
