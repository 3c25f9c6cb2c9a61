"""``plantfloor board``: the plant manager's read-only web board, a service of its own.

One process beside the agent (or beside the roll-up), never inside it: a browser flood must
not slow counting, and a web server does not belong in the process that holds PLC and
broker credentials. Lives here: ``gateway`` (one gateway's figures from the agent's state
file, read-only, and the watch on its commits), ``site`` (the site's figures from the
roll-up's PostgreSQL, and LISTEN for its commits), ``figures`` (what the board shows, the
API's models, assembled from committed rows), ``hub`` (the live state, read once per
commit and handed to every page), ``app`` (FastAPI: the page, ``/api/v1/``, the event
stream, security headers and access token), ``server`` (uvicorn, limits, the command and
the child process the demo starts), ``i18n`` (English and Japanese labels), and the
page's template and static files (uPlot vendored with its licence).

May import: :mod:`agent.rollup` (its config and database connections, read-only),
:mod:`agent.store` (read-only readers), :mod:`agent.views`, :mod:`agent.core`,
:mod:`agent.config` and :mod:`agent.contract`. Only the commands import it, and
:func:`agent.board.server.start_board` starts it as a child process for other programs.
"""

from __future__ import annotations

__all__: list[str] = []
