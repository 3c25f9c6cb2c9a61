"""The agent at run time: the wiring that turns readings into windows and windows into
outbox records.

Lives here: ``pipeline`` (the :class:`~agent.runtime.pipeline.Agent`: one TaskGroup with
the source supervisors, the window closer, the forwarder, status and heartbeat),
``windows`` (the window clock: closes every line's window on the wall-clock grid and
commits it with the state it advances), ``lines`` (per line: the latest readings, the
tracker and the counter memory persisted with each window), ``status`` (``R/status`` and
alarms), ``notify`` (systemd readiness and watchdog), ``metrics`` (Prometheus) and
``logconfig`` (text or JSON log lines with secrets masked; the roll-up uses it too).

May import: :mod:`agent.sources`, :mod:`agent.store`, :mod:`agent.outputs`,
:mod:`agent.core`, :mod:`agent.config`, :mod:`agent.contract`. Only the commands import it.
"""
