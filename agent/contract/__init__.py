"""The bottom layer: the types every other folder shares.

Lives here: ``errors`` (the one error tree: configuration, source unavailable, point read
error, publish error, store error, each saying what the agent does next), ``readings``
(a point's value with its quality and cause, as a source hands it over) and ``payloads``
(the MQTT wire models of the contract: line and plant windows, status, line state, shift
reports; ``plantfloor schema payloads`` prints their JSON Schema).

May import: nothing of ``agent``. Sources, core, outputs, store, runtime, the roll-up and
the commands all import from here.
"""
