"""The error tree, drawn by what the agent does next.

::

    PlantfloorError
    ├── ConfigError            fatal: the CLI exits 2, systemd does not restart
    ├── SourceUnavailable      retry: the source's supervisor backs off and reconnects
    ├── PointReadError         per point: the reading becomes quality "bad"
    ├── PublishError           retry: the window stays in the outbox
    │   └── PublishRefused     the broker answered with a failure reason code (alarm)
    └── StoreError             the state database failed (disk full, corruption)

Library exceptions are translated at the adapter boundary and re-raised ``from exc``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "PlantfloorError",
    "PointReadError",
    "PublishError",
    "PublishRefused",
    "SourceUnavailable",
    "StoreError",
]


class PlantfloorError(Exception):
    """Base of every error plantfloor raises on purpose."""


class ConfigError(PlantfloorError):
    """The configuration is invalid; one sentence naming the file, line and key."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.reason = message
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        keypart = f"{key}: " if key else ""
        super().__init__(f"{where}{keypart}{message}")


class SourceUnavailable(PlantfloorError):
    """A PLC endpoint cannot be reached or its session was lost."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"source {source}: {message}")


class PointReadError(PlantfloorError):
    """One point could not be read; carries the Modbus exception code or OPC UA status."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


class PublishError(PlantfloorError):
    """A publish did not complete; the record stays in the outbox."""


class PublishRefused(PublishError):
    """The broker acknowledged a publish with a failure reason code (>= 0x80)."""

    def __init__(self, topic: str, reason_code: int, reason: str) -> None:
        self.topic = topic
        self.reason_code = reason_code
        self.reason = reason
        super().__init__(f"broker refused publish to {topic}: {reason} (0x{reason_code:02x})")


class StoreError(PlantfloorError):
    """The state database could not be read or written."""
