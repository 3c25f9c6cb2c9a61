"""PLC sources: one adapter module per protocol behind :class:`agent.sources.base.Source`."""
