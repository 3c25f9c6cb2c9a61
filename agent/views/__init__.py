"""Figures rendered for people: text, CSV and JSON renderings of what the core computed.

Lives here: ``report`` (a production day's shift reports, from any reader: the gateway's
state store or the roll-up's database). A view never recomputes a ratio; it lays out the
figures the core put in the payloads.

May import: :mod:`agent.core`, :mod:`agent.config`, :mod:`agent.contract`. The commands and
the roll-up import it.
"""
