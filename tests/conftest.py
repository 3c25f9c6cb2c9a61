"""Shared test set-up: fixture plugins and the check that no asyncio task leaks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

pytest_plugins = [
    "tests.fixtures.mosquitto",
    "tests.fixtures.simulators",
    "tests.fixtures.certs",
    "tests.fixtures.opcua_certs",
]


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running on the loop after it finishes."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    if leaked:
        # give cancelled tasks one chance to finish their cleanup
        await asyncio.wait(leaked, timeout=2)
        leaked = [t for t in leaked if not t.done()]
    assert not leaked, f"tasks leaked: {[t.get_coro() for t in leaked]}"
