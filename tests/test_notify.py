"""sd_notify: datagrams reach a fake notification socket; the watchdog follows the loop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime.notify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket standing in for systemd's; yields (socket, path)."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


async def recv(sock: socket.socket, within_s: float = 5.0) -> str:
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), within_s)
    return data.decode()


def pending(sock: socket.socket) -> list[str]:
    """Every datagram already queued on the socket."""
    out: list[str] = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


async def test_messages_arrive(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier(environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert n.enabled
    assert n.watchdog_interval_s == 15.0
    assert n.watchdog_timeout_s == 30.0
    n.ready("polling 2 sources")
    assert await recv(sock) == "READY=1\nSTATUS=polling 2 sources"
    n.watchdog()
    assert await recv(sock) == "WATCHDOG=1"
    n.status("backlog 3\nwindows")
    assert await recv(sock) == "STATUS=backlog 3 windows"
    n.stopping()
    assert await recv(sock) == "STOPPING=1"
    n.close()


async def test_status_sent_only_on_change(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier(path, environ={})
    n.ready("a")
    n.status("a")
    n.status("b")
    n.status("b")
    n.stopping()  # a marker: everything before it has been queued
    assert await recv(sock) == "READY=1\nSTATUS=a"
    assert await recv(sock) == "STATUS=b"
    assert await recv(sock) == "STOPPING=1"
    assert pending(sock) == []
    n.close()


async def test_abstract_namespace() -> None:
    name = f"plantfloor-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    try:
        n = Notifier(environ={"NOTIFY_SOCKET": "@" + name})
        n.ready()
        assert await recv(sock) == "READY=1"
        n.close()
    finally:
        sock.close()


def test_noop_without_notify_socket() -> None:
    n = Notifier(environ={})
    assert not n.enabled
    assert n.watchdog_interval_s is None
    # nothing to send to: none of these may raise
    n.ready("x")
    n.status("y")
    n.watchdog()
    n.stopping()
    assert n._sock is None


def test_watchdog_pid_must_match() -> None:
    other = Notifier(environ={"NOTIFY_SOCKET": "/nonexistent",
                              "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval_s is None
    mine = Notifier(environ={"NOTIFY_SOCKET": "/nonexistent",
                             "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval_s == 0.5
    assert Notifier(environ={"WATCHDOG_USEC": "soon"}).watchdog_interval_s is None


async def test_watchdog_only_when_configured(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier(environ={"NOTIFY_SOCKET": path})
    n.watchdog()  # no WATCHDOG_USEC: systemd does not expect pings
    n.stopping()
    assert await recv(sock) == "STOPPING=1"
    n.close()


async def test_unreachable_socket_does_not_raise(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(str(tmp_path / "gone.sock"), environ={})
    n.ready()
    n.stopping()
    n.close()
    warnings = [r for r in caplog.records if "could not notify systemd" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per message


CHILD = textwrap.dedent("""
    import asyncio, signal, time
    from agent.runtime.notify import Notifier

    async def main() -> None:
        n = Notifier()
        assert n.watchdog_interval_s is not None
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_term() -> None:
            n.stopping()
            stop.set()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        beats = 0

        async def heartbeat() -> None:
            nonlocal beats
            while True:
                n.watchdog()
                beats += 1
                await asyncio.sleep(n.watchdog_interval_s)

        hb = asyncio.create_task(heartbeat())
        n.ready("up")
        while beats < 5:
            await asyncio.sleep(0.01)
        n.status("blocking")
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # the event loop is wedged
            pass
        n.status("unblocked")
        await stop.wait()
        hb.cancel()

    asyncio.run(main())
""")


async def test_watchdog_stops_while_loop_blocked(
        notify_socket: tuple[socket.socket, str], tmp_path: Path) -> None:
    sock, path = notify_socket
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="100000")
    env.pop("WATCHDOG_PID", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), env=env,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        events: list[tuple[float, str]] = []
        deadline = time.monotonic() + 20
        while not any(m == "STATUS=unblocked" for _, m in events):
            assert time.monotonic() < deadline, f"child never unblocked: {events}"
            events.append((time.monotonic(), await recv(sock, 20)))
        # pings must resume once the loop runs again
        while sum(m == "WATCHDOG=1" for _, m in events[-3:]) < 2:
            assert time.monotonic() < deadline, f"watchdog did not resume: {events[-5:]}"
            events.append((time.monotonic(), await recv(sock, 20)))

        msgs = [m for _, m in events]
        assert msgs[0] == "READY=1\nSTATUS=up"
        b, u = msgs.index("STATUS=blocking"), msgs.index("STATUS=unblocked")
        assert msgs[:b].count("WATCHDOG=1") >= 5
        assert "WATCHDOG=1" not in msgs[b:u], "a ping arrived while the loop was blocked"
        last_before = max(t for t, m in events[:b] if m == "WATCHDOG=1")
        first_after = min(t for t, m in events[u:] if m == "WATCHDOG=1")
        # far longer than the 0.1 s WATCHDOG_USEC: systemd would have restarted the agent
        assert first_after - last_before >= 0.9

        proc.send_signal(signal.SIGTERM)
        while (await recv(sock, 10)) != "STOPPING=1":
            assert time.monotonic() < deadline + 10
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
