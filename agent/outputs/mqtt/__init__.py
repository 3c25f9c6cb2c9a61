"""The MQTT side of the agent: paho-mqtt on the asyncio loop.

Lives here: ``loop`` (a paho client's socket watched by the loop, keepalives, TLS, one-
sentence connection errors; the roll-up's consumer shares it), ``session`` (one connection
kept up with backoff: the only layer that reconnects), ``publisher`` (publish and await the
PUBACK's reason code, pipelined batches, subscriptions) and ``slots`` (the in-flight bound).

May import: :mod:`agent.config`, :mod:`agent.contract`.
"""
