"""The optional extras a command needs: without them, one sentence saying how to install
them (a configuration error, exit 2), never an ImportError from deep inside."""

from __future__ import annotations

from agent.contract.errors import ConfigError

__all__ = ["require_board_extra", "require_rollup_extra"]


def require_rollup_extra(command: str) -> None:
    """The site service's PostgreSQL driver is the optional extra ``rollup``: without it,
    one sentence saying how to install it (exit 2), not an ImportError."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise ConfigError(f"plantfloor {command} needs PostgreSQL's driver, which is not installed: "
                          "pip install 'plantfloor[rollup]'") from None


def require_board_extra() -> None:
    """The web board's packages are the optional extra ``board``: without them, one
    sentence saying how to install them (exit 2), not an ImportError."""
    try:
        import fastapi  # noqa: F401
        import jinja2  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError("plantfloor board needs the web board's packages, which are not installed: "
                          "pip install 'plantfloor[board]'") from None
