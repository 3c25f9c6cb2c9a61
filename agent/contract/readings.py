"""The first hop of the pipeline: what a source hands over for one point on one poll."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

__all__ = ["Quality", "Reading", "SourceHealth", "TagRole"]

#: a line's good-unit counter, its optional second counter (all units, or rejects), its state,
#: a tag; ``tags`` is every good tag value of one line from one request at once (``values``)
TagRole = Literal["counter", "total", "rejects", "state", "tag", "tags"]


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Reading:
    """One point read from a PLC.

    ``value`` is the decoded raw value (a counter as an unsigned integer before any
    modulus is applied, a state as its raw integer) or None when the read failed.
    ``mono`` is ``time.monotonic()`` when the answer arrived; rates and windows use it,
    never the wall clock. ``error`` says why quality is not good (for example
    ``"modbus exception 2 (illegal data address)"`` or ``"BadSensorFailure"``) and
    ``code`` carries the Modbus exception code or the OPC UA StatusCode value.
    ``modulus`` is the counter's natural modulus as the source knows it from the data
    type (2**32 for a uint32 register pair or an OPC UA UInt32, 2**31 for Int32); a
    configured ``rollover`` takes precedence. Signed types are delivered signed.
    ``name`` names an extra process value (role ``tag``) from the line's ``tags``.
    ``values`` carries, for role ``tags``, the good values of several of a line's tags read
    in one request by name: a tag that only reports its last value needs no object of
    its own per poll.
    """

    line: str
    role: TagRole
    value: int | float | None
    quality: Quality
    mono: float
    error: str | None = None
    code: int | None = None
    modulus: int | None = None
    name: str | None = None
    values: dict[str, int | float] | None = None


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """A source's connection state, as published on each of its lines' state topics."""

    source: str
    connected: bool
    last_ok_mono: float | None
    error: str | None
