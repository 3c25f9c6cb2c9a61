"""The output side: a window is built once, then each configured format encodes it.

A format (:class:`~agent.outputs.base.OutputFormat`) turns a closed window's payload models
into outbox records (:meth:`records`, at commit) and gives the bytes to send for a stored
record (:meth:`wire`, when the forwarder publishes it: a record sent late is marked
historical there). One outbox and one publisher carry every format's records; a record
names its format, so the forwarder asks the right one. A new format is one module here
and one entry in :func:`make_formats`.

Lives here: ``base`` (the format interface), ``json`` and ``sparkplug/`` (the encoders),
``forwarder`` (drains the outbox through the publisher, in order, paced) and ``mqtt/`` (the
paho connection and publisher).

May import: :mod:`agent.store` (the forwarder drains the outbox), :mod:`agent.core`,
:mod:`agent.config`, :mod:`agent.contract`.
"""

from __future__ import annotations

from agent.config import Config
from agent.outputs.base import OutputFormat, WindowOutputs
from agent.outputs.json import JsonFormat

__all__ = ["JsonFormat", "OutputFormat", "WindowOutputs", "make_formats"]


def make_formats(cfg: Config) -> dict[str, OutputFormat]:
    """The formats the config asks for (``output``), by name (the explicit factory)."""
    formats: dict[str, OutputFormat] = {}
    if cfg.output in ("json", "both"):
        formats["json"] = JsonFormat.from_config(cfg)
    if cfg.output in ("sparkplug", "both"):
        from agent.outputs.sparkplug.format import SparkplugFormat  # protobuf only when used

        formats["sparkplug"] = SparkplugFormat.from_config(cfg)
    return formats
