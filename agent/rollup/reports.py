"""``plantfloor report CONFIG --database URL``: a production day's shift reports from the
roll-up's database instead of a gateway's state store.

The roll-up keeps every line's ``R/lines/<line>/shift`` report of every gateway of the site
(``plantfloor.shift_report``), so this shows the whole site's lines, rendered exactly as
``plantfloor report`` renders a gateway's (text, CSV or JSON, with the day's figures
computed from summed times and counts). The site's plant per shift instance is the view
``plantfloor.plant_shift_report`` (docs/scale-out.md).
"""

from __future__ import annotations

from datetime import date, datetime

import psycopg

from agent.config import Config
from agent.contract.errors import ConfigError, StoreError
from agent.contract.payloads import ShiftReport
from agent.rollup import sql
from agent.views.report import report

__all__ = ["read_reports", "report_from_database"]


def read_reports(url: str, site: str, day: date, shift: str | None = None) -> list[ShiftReport]:
    """The stored line reports of production date ``day`` (of one shift name), by start and line."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(sql.HAS_TABLE, {"table": "plantfloor.shift_report"}).fetchone()
            if exists is None or not exists[0]:
                return []
            rows = conn.execute(sql.SHIFT_REPORTS, {"site": site, "day": day, "shift": shift}).fetchall()
    except psycopg.Error as exc:
        raise StoreError(f"cannot read the roll-up's database: {' '.join(str(exc).split())}") from exc
    return [ShiftReport.model_validate_json(r[0], extra="ignore") for r in rows]


def report_from_database(cfg: Config, url: str, *, day: str | None = None, shift: str | None = None,
                         fmt: str = "text", now: datetime | None = None) -> str:
    """As :func:`agent.views.report.report`, from the roll-up's database at ``url``."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{url!r} is not a postgresql:// URI", key="--database")
    return report(cfg, day=day, shift=shift, fmt=fmt, now=now,
                  read=lambda d, name: read_reports(url, cfg.site, d, name))
