"""The ledger: the simulators' ground truth as JSON, for tests, the demo and people.

Per line it records what was built (``produced``), the PLC's counter (``counter``,
``modulus``, ``state``), what it serves (``served_counter``: ``counter`` itself unless the
line has ``counter_update_s``, then its value at the latest refresh), the counter faults
(``resets``, ``frozen_units``, ``jumped``) and
``expected_units`` = ``produced - frozen_units``: the total a correct agent reports
(jumps are not production; units built between a last read and a counter reset are the
only ones an agent may miss, and it flags those windows).

The books of OEE: ``rejected`` (units built as rejects), the second counter the PLC
serves (``second_role``: rejects or total, ``second_counter``), the reason served now
(``state``, ``state_code``), the seconds served in each reason (``reason_seconds``, by the
simulators' wall clock) and the latest changes of the served reason (``timeline``: the
time, the reason served from then on, and the units built and rejected by then), from
which the time in each reason over any interval (a shift less its breaks) follows.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simulators.production import SimLine

__all__ = ["Ledger", "write_json_atomic"]

#: changes of the served reason the ledger file lists per line (the newest)
LEDGER_TIMELINE = 500


class Ledger:
    """A view over live SimLines; ``snapshot`` reads them, ``write`` saves one atomically."""

    def __init__(self, lines: Mapping[str, SimLine]) -> None:
        self.lines = lines

    def snapshot(self) -> dict[str, Any]:
        """``{"lines": {id: {...}}, "updated_at": RFC 3339 UTC}``."""
        return {
            "lines": {
                line_id: {
                    "plc": line.plc,
                    "produced": line.produced,
                    "expected_units": line.expected_units,
                    "counter": line.counter,
                    "served_counter": line.served_counter,
                    "modulus": line.modulus,
                    "state": line.state,
                    "resets": line.resets,
                    "frozen_units": line.frozen_units,
                    "jumped": line.jumped,
                    "rejected": line.rejected,
                    "second_role": line.second_role,
                    "second_counter": line.served_second if line.second_role else None,
                    "state_code": line.state_code,
                    "reason_seconds": {k: round(v, 3) for k, v in line.reason_seconds().items()},
                    "timeline": [[_iso(t), reason, produced, rejected] for t, reason, produced, rejected
                                 in list(line.timeline)[-LEDGER_TIMELINE:]],
                }
                for line_id, line in self.lines.items()
            },
            "updated_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }

    def write(self, path: Path | str, snapshot: Mapping[str, Any] | None = None) -> None:
        """Write ``snapshot`` (default: a fresh one) to ``path`` atomically; blocking file I/O."""
        write_json_atomic(Path(path), snapshot if snapshot is not None else self.snapshot())


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Readers see the old file or the new one, never half of one (temp file + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
