"""plantfloor: PLC good-unit counters to throughput against capacity targets, over MQTT."""

__version__ = "0.1.0"
__all__ = ["__version__"]
