"""Alarms raised by the agent, reported on ``R/status`` and in the log."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from agent.contract.payloads import Alarm

__all__ = ["Alarms"]

log = logging.getLogger("plantfloor.alarms")


class Alarms:
    """Active alarms by kind; each is logged once when raised and once when cleared."""

    def __init__(self, wall: Callable[[], datetime]) -> None:
        self._wall = wall
        self._active: dict[str, Alarm] = {}

    def raise_(self, kind: str, message: str) -> None:
        current = self._active.get(kind)
        if current is not None and current.message == message:
            return
        if current is None:
            log.error("alarm %s: %s", kind, message)
        self._active[kind] = Alarm(kind=kind, message=message,
                                   since=current.since if current else self._wall())

    def clear(self, kind: str) -> None:
        if self._active.pop(kind, None) is not None:
            log.warning("alarm %s cleared", kind)

    def on_alarm(self, kind: str, message: str | None) -> None:
        """Callback form: an empty or None message clears the alarm."""
        if message:
            self.raise_(kind, message)
        else:
            self.clear(kind)

    def active(self) -> list[Alarm]:
        return list(self._active.values())

    def __contains__(self, kind: str) -> bool:
        return kind in self._active
