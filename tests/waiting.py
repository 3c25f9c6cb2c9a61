"""The one way tests wait: poll a condition with a deadline (never sleep as synchronisation)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["wait_until"]


async def wait_until(pred: Callable[[], bool | Awaitable[bool]], within: float = 20.0,
                     what: str = "condition", interval: float = 0.02) -> None:
    """Poll ``pred`` every ``interval`` s until it holds; AssertionError after ``within`` s.

    ``pred`` may be a coroutine function (e.g. one that asks a process), which is awaited.
    """
    deadline = time.monotonic() + within
    while not await _holds(pred):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(interval)


async def _holds(pred: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = pred()
    if inspect.isawaitable(result):
        return bool(await result)
    return bool(result)
