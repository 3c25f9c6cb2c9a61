"""Prometheus endpoint: names, labels and values as scraped over HTTP."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.config import MetricsConfig
from agent.runtime.metrics import Metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


async def scrape(port: int) -> Samples:
    text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    yield m
    m.stop()


async def test_scrape_names_labels_values(metrics: Metrics) -> None:
    port = metrics.serve(MetricsConfig().host, 0)
    assert port > 0
    metrics.poll("plc-kei", 0.012)
    metrics.poll("plc-kei", 0.3)
    metrics.read_error("plc-kei", "2")
    metrics.read_error("plc-kei", "2")
    metrics.read_error("plc-rogue", "BadNodeIdUnknown")
    metrics.reconnect("plc-rogue")
    metrics.overrun("plc-kei")
    metrics.published()
    metrics.published(4)
    metrics.backlog(17)
    metrics.backlog(3)
    metrics.dropped(2)
    metrics.dropped(1)
    metrics.last_good_read("kei-ev", 1_900_000_000.5)

    s = await scrape(port)
    assert s[key("plantfloor_poll_latency_seconds_count", source="plc-kei")] == 2
    assert s[key("plantfloor_poll_latency_seconds_sum", source="plc-kei")] == pytest.approx(0.312)
    assert s[key("plantfloor_poll_latency_seconds_bucket", source="plc-kei", le="0.025")] == 1
    assert s[key("plantfloor_poll_latency_seconds_bucket", source="plc-kei", le="+Inf")] == 2
    assert s[key("plantfloor_read_errors_total", source="plc-kei", code="2")] == 2
    assert s[key("plantfloor_read_errors_total", source="plc-rogue", code="BadNodeIdUnknown")] == 1
    assert s[key("plantfloor_reconnects_total", source="plc-rogue")] == 1
    assert s[key("plantfloor_poll_overruns_total", source="plc-kei")] == 1
    assert s[key("plantfloor_windows_published_total")] == 5
    assert s[key("plantfloor_outbox_backlog")] == 3
    assert s[key("plantfloor_windows_dropped_total")] == 3
    assert s[key("plantfloor_last_good_read_timestamp_seconds", line="kei-ev")] == 1_900_000_000.5
    assert s[key("plantfloor_build_info", version=__version__)] == 1
    # only plantfloor's own series: not the global registry's process/platform collectors
    assert all(name.startswith("plantfloor_") for name, _ in s)


async def test_loopback_by_default_and_stop_closes(metrics: Metrics) -> None:
    assert MetricsConfig().host == "127.0.0.1"
    assert MetricsConfig().port == 9464
    port = metrics.serve("127.0.0.1", 0)
    assert metrics._server is not None
    assert metrics._server.server_address[0] == "127.0.0.1"
    assert key("plantfloor_outbox_backlog") in await scrape(port)
    await asyncio.to_thread(metrics.stop)
    with pytest.raises(urllib.error.URLError):
        await scrape(port)
    metrics.stop()  # idempotent


async def test_instances_are_independent() -> None:
    a, b = Metrics(), Metrics()
    try:
        pa, pb = a.serve("127.0.0.1", 0), b.serve("127.0.0.1", 0)
        assert pa != pb
        a.published(7)
        assert (await scrape(pa))[key("plantfloor_windows_published_total")] == 7
        assert (await scrape(pb))[key("plantfloor_windows_published_total")] == 0
        with pytest.raises(RuntimeError):
            a.serve("127.0.0.1", 0)
    finally:
        a.stop()
        b.stop()
