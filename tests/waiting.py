"""The one way tests wait: poll a condition with a deadline (never sleep as synchronisation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["wait_until"]


async def wait_until(pred: Callable[[], bool], within: float = 20.0, what: str = "condition",
                     interval: float = 0.02) -> None:
    """Poll ``pred`` every ``interval`` s until it holds; AssertionError after ``within`` s."""
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(interval)
