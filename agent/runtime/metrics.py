"""Optional Prometheus endpoint (``metrics:`` in the config; off when absent).

The metrics live in their own ``CollectorRegistry``, not prometheus_client's global one,
so several agents (tests, ``plantfloor demo``) can run in one process, and the endpoint
exposes only plantfloor's own series (no process or platform collectors to surprise
anyone reading the list in docs/operations.md).

Recording methods are plain, thread-safe in-memory updates and cheap enough to call from
the event loop. The HTTP server runs in a daemon thread of prometheus_client; only
:meth:`Metrics.stop` blocks (up to half a second), so call it via ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from agent import __version__

__all__ = ["Metrics"]

log = logging.getLogger(__name__)

# From a fast local Modbus read (a few ms) to a request that runs into its timeout.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """plantfloor's metrics and, once :meth:`serve` is called, their HTTP endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._poll_latency = Histogram(
            "plantfloor_poll_latency_seconds", "Duration of one complete poll of a source",
            ["source"], buckets=_LATENCY_BUCKETS, registry=r)
        self._read_errors = Counter(
            "plantfloor_read_errors_total",
            "Failed point reads, by source and error code (Modbus exception code, OPC UA status)",
            ["source", "code"], registry=r)
        self._reconnects = Counter(
            "plantfloor_reconnects_total", "Connections (re-)established to a source",
            ["source"], registry=r)
        self._overruns = Counter(
            "plantfloor_poll_overruns_total",
            "Polls that took longer than the source's poll interval", ["source"], registry=r)
        self._published = Counter(
            "plantfloor_windows_published_total",
            "Window messages acknowledged by the broker", registry=r)
        self._backlog = Gauge(
            "plantfloor_outbox_backlog", "Window messages waiting in the outbox", registry=r)
        self._dropped = Counter(
            "plantfloor_windows_dropped_total",
            "Window messages dropped because the outbox was full (oldest first)", registry=r)
        self._site_backlog = Gauge(
            "plantfloor_site_backlog", "Line windows the site service has not acknowledged yet (site_ack)",
            registry=r)
        self._site_oldest = Gauge(
            "plantfloor_site_oldest_unacknowledged_seconds",
            "Age of the oldest line window the site service has not acknowledged (0 when none)", registry=r)
        self._last_good = Gauge(
            "plantfloor_last_good_read_timestamp_seconds",
            "Unix time of the line's last good counter reading", ["line"], registry=r)
        Gauge("plantfloor_build_info", "Version of the running agent", ["version"],
              registry=r).labels(version=__version__).set(1)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint on ``host:port`` (0: any free port); return the bound port."""
        if self._server is not None:
            raise RuntimeError("the metrics endpoint is already serving")
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        bound = int(server.server_address[1])
        log.info("metrics at http://%s/metrics", _hostport(host, bound))
        return bound

    def stop(self) -> None:
        """Stop the HTTP endpoint and wait for its thread (idempotent; blocks briefly)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    # --- recording ------------------------------------------------------------------

    def poll(self, source: str, latency_s: float) -> None:
        """One poll of ``source`` completed in ``latency_s`` seconds."""
        self._poll_latency.labels(source=source).observe(latency_s)

    def read_error(self, source: str, code: str) -> None:
        """A point read failed (``code``: e.g. ``"2"`` for a Modbus exception, ``"timeout"``)."""
        self._read_errors.labels(source=source, code=code).inc()

    def reconnect(self, source: str) -> None:
        """A connection to ``source`` was (re-)established."""
        self._reconnects.labels(source=source).inc()

    def overrun(self, source: str) -> None:
        """A poll of ``source`` outlasted its poll interval."""
        self._overruns.labels(source=source).inc()

    def published(self, n: int = 1) -> None:
        """``n`` more window messages were acknowledged by the broker."""
        self._published.inc(n)

    def backlog(self, n: int) -> None:
        """The outbox now holds ``n`` window messages."""
        self._backlog.set(n)

    def site_backlog(self, n: int, oldest_age_s: float) -> None:
        """``n`` windows wait for the site's acknowledgement, the oldest for ``oldest_age_s``."""
        self._site_backlog.set(n)
        self._site_oldest.set(oldest_age_s)

    def dropped(self, n: int) -> None:
        """``n`` more window messages were just dropped from a full outbox (an increment)."""
        if n > 0:
            self._dropped.inc(n)

    def last_good_read(self, line: str, ts_unix: float) -> None:
        """The counter of ``line`` was last read good at Unix time ``ts_unix``."""
        self._last_good.labels(line=line).set(ts_unix)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
