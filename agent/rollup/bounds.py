"""Physical bounds on what a gateway may send the site (pure: no I/O, times from the payload).

Every incoming window and shift report is checked here before any of it reaches SQL, so
that no message can crash, wedge or poison the site service: a value outside these bounds
makes the message a rejection (kept in ``plantfloor.rejected_message``), never an
exception.

* every timestamp lies in ``[TIME_MIN, TIME_MAX)``: a year 1 or 9999 would overflow the
  calendar's arithmetic;
* every string is at most ``MAX_STRING`` characters, and without NUL (PostgreSQL's text
  cannot hold it; an index row is limited to about 2.7 kB);
* every number is finite (no infinity or NaN at any depth), every float at most
  ``MAX_FLOAT`` and every integer below ``MAX_INT`` in magnitude;
* every list or mapping has at most ``MAX_ITEMS`` entries;
* a window's ``units`` are at most what its line could build: the gateway's
  ``max_rate_per_hour`` over the window's length plus a day (an agent that was stopped
  counts what its line built meanwhile in the first window after it starts again).
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Final

from pydantic import BaseModel

__all__ = ["MAX_FLOAT", "MAX_INT", "MAX_ITEMS", "MAX_STRING", "TIME_MAX", "TIME_MIN", "max_units", "out_of_bounds"]

TIME_MIN: Final = datetime(2000, 1, 1, tzinfo=UTC)
TIME_MAX: Final = datetime(2100, 1, 1, tzinfo=UTC)
MAX_STRING: Final = 256
MAX_ITEMS: Final = 1000
MAX_FLOAT: Final = 1e15
MAX_INT: Final = 2**64
#: what a stopped agent may count in its first window beyond the window itself, in hours
CATCH_UP_H: Final = 24.0


def max_units(rate_per_hour: float, start: datetime, end: datetime) -> int:
    """The most units a line of ``rate_per_hour`` could put in a window ``start..end``."""
    hours = max(0.0, (end - start).total_seconds()) / 3600.0
    return math.ceil(rate_per_hour * (hours + CATCH_UP_H))


def out_of_bounds(value: object, where: str = "") -> str | None:
    """The first value (at any depth of a parsed model) outside the bounds, as one sentence
    naming its field; None when everything is inside."""
    if isinstance(value, BaseModel):
        for name, item in value.__dict__.items():
            got = out_of_bounds(item, f"{where}.{name}" if where else name)
            if got is not None:
                return got
        return None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            return f"{where or 'a value'}: longer than {MAX_STRING} characters"
        if "\0" in value:
            return f"{where or 'a value'}: contains a NUL character"
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > MAX_FLOAT:
            return f"{where or 'a value'}: {value!r} is not a finite number of at most {MAX_FLOAT:g}"
        return None
    if isinstance(value, int):
        if abs(value) >= MAX_INT:
            return f"{where or 'a value'}: beyond a 64-bit integer"
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return f"{where or 'a time'}: {value.isoformat()} has no time zone"
        if not TIME_MIN <= value < TIME_MAX:
            return f"{where or 'a time'}: {value.isoformat()} is outside {TIME_MIN.year}..{TIME_MAX.year - 1}"
        return None
    if isinstance(value, date):
        if not TIME_MIN.date() <= value < TIME_MAX.date():
            return f"{where or 'a date'}: {value.isoformat()} is outside {TIME_MIN.year}..{TIME_MAX.year - 1}"
        return None
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            return f"{where or 'a mapping'}: more than {MAX_ITEMS} entries"
        for key, item in value.items():
            got = out_of_bounds(key, where) or out_of_bounds(item, f"{where}.{key}"[:80])
            if got is not None:
                return got
        return None
    if isinstance(value, list | tuple):
        if len(value) > MAX_ITEMS:
            return f"{where or 'a list'}: more than {MAX_ITEMS} items"
        for i, item in enumerate(value):
            got = out_of_bounds(item, f"{where}.{i}")
            if got is not None:
                return got
    return None
