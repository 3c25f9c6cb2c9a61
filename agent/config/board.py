"""The ``board`` section: ``plantfloor board``, the read-only web board of a gateway."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from agent.config.mqtt import resolve_secret_file
from agent.config.types import _Model

__all__ = ["BoardConfig"]


class BoardConfig(_Model):
    """How ``plantfloor board`` serves the board (its own process; GET only)."""

    bind: str = Field("127.0.0.1", description="address to listen on; a reverse proxy with TLS in front for other hosts (docs/board.md)")
    port: int = Field(8470, ge=0, le=65535, description="TCP port (0: any free port)")
    credential_file: Path | None = Field(None, description="file holding the access token (bearer token, or the password of basic auth with any user); relative names are looked up in $CREDENTIALS_DIRECTORY first; no authentication when absent")
    red_after_s: float = Field(600, gt=0, description="a line down for longer than this of planned time is shown red (breaks and time off shift do not count)")
    max_connections: int = Field(64, ge=1, le=10_000, description="open connections at most (live pages hold one each); more are refused with 503")
    max_event_clients: int = Field(32, ge=1, le=10_000, description="live pages (event streams) at most; more are refused with 503 and retry")
    poll_s: float = Field(0.2, gt=0, le=10, description="how often the state file is checked for a new commit (PRAGMA data_version, a cheap read)")

    def token(self) -> str | None:
        """The access token, or None when the board is open."""
        if self.credential_file is None:
            return None
        return resolve_secret_file(self.credential_file).read_text(encoding="utf-8").strip() or None
