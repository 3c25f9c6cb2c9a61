"""The command line: the ``plantfloor`` console script and one module per command.

Lives here: ``main`` (argument parsing, exit codes, one-sentence errors), ``check``,
``demo``, ``state`` (``state show`` and ``state rebaseline``), ``watch`` with its terminal
view ``watch_view``. ``plantfloor report`` renders through :mod:`agent.views.report`;
``plantfloor rollup`` is :mod:`agent.rollup.command`.

May import: every folder; nothing imports it.
"""

from agent.cli.main import main

__all__ = ["main"]
