"""Sparkplug B 3.0 output: the agent as an edge node, each line a device (docs/sparkplug.md)."""
