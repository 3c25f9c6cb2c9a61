"""PLC sources: one adapter module per protocol behind :class:`agent.sources.base.Source`.

Lives here: ``base`` (the interface), ``modbus`` with its pure request planning
``modbus_plan`` and decoding ``decode``, ``opcua`` with ``opcua_security``, and
``supervisor`` (each source's poll loop: backoff, readiness, one log line per transition).
A source turns registers and nodes into :class:`~agent.contract.readings.Reading` values;
it reads only (read function codes, read services).

May import: :mod:`agent.config`, :mod:`agent.contract`.
"""
