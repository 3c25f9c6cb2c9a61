"""The state store: one SQLite file per agent holding the durable outbox and the pipeline's
persisted state, written together in one transaction per window.

Lives here: ``file`` (the file itself: schema, migrations, epoch, lock, read-only opening),
``records`` (what is persisted: outbox records, each line's counter memory and totals,
shift reports), ``board`` (the board's hours and latest rows), ``outbox`` (the outbox's
byte accounting and trimming), ``store`` (the :class:`Store` the pipeline writes through,
on its own worker thread), ``reports`` (the stored shift reports, read without writing)
and ``openings`` (the year-to-date opening balance an operator records, immutable).

May import: :mod:`agent.contract` only. The runtime writes through :class:`Store`; the
forwarder drains its outbox; commands open the file read-only.
"""

from agent.store.outbox import ROW_OVERHEAD
from agent.store.records import LineState, NewRecord, OutboxRecord, StoredReport, StoredState
from agent.store.store import Store

__all__ = ["ROW_OVERHEAD", "LineState", "NewRecord", "OutboxRecord", "Store", "StoredReport",
           "StoredState"]
