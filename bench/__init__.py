"""The plantfloor benchmark: ``python -m bench`` (``--quick`` for a run under two minutes).

The agent, a bare-loop floor, a naive per-tag poller and Node-RED poll the same simulated
PLC farm (a separate process) and publish to a private Mosquitto; results go to stdout
and, with ``--json FILE``, to a JSON file. See BENCHMARKS.md for the latest results.
"""
