"""Every SQL statement of the roll-up, named, with named parameters (``%(name)s``).

The tables and views are created by the migrations in ``agent/rollup/migrations/``; their
meaning is documented in docs/scale-out.md. Idempotency comes from primary keys
(``ON CONFLICT DO NOTHING``), never from reading before writing.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ADD_REVISION",
    "ADVISORY_LOCK_CLASS",
    "CREATE_MIGRATION_TABLE",
    "FORGET_REPLICA",
    "GATEWAY_PROGRESS",
    "HAS_TABLE",
    "INSERT_REJECTED",
    "INSERT_SHIFT_REPORTS",
    "INSERT_WINDOWS",
    "LAST_PLANT_WINDOW",
    "LATEST_DAY_TARGETS",
    "MARK_DAYS_STALE",
    "MARK_PUBLISHED",
    "MIGRATION_APPLIED",
    "MIGRATION_LOCK",
    "MIGRATION_RECORD",
    "OTHER_REPLICAS",
    "PERIOD_LINES",
    "PERIOD_REVISIONS",
    "PERIOD_TOTALS",
    "PING",
    "PROGRESS_ADVANCE",
    "PROGRESS_EXTEND_DOWN",
    "PROGRESS_LOCK",
    "PROGRESS_START",
    "REFRESH_DAYS",
    "REGISTER_REPLICA",
    "REPEATABLE_READ",
    "SCHEMA_VERSION",
    "SERVER_VERSION",
    "SHIFT_REPORTS",
    "SITE_CREATE",
    "SITE_GET",
    "TAKE_CHANGES",
    "TRY_LOCK",
    "UNLOCK",
    "UNPUBLISHED",
]

#: the first key of every advisory lock plantfloor takes ('plfr'); the second is hashtext(name)
ADVISORY_LOCK_CLASS: Final = 0x706C6672

# --- migrations -------------------------------------------------------------------------

MIGRATION_LOCK: Final = "SELECT pg_advisory_xact_lock(%(cls)s, hashtext('migrate'))"
CREATE_MIGRATION_TABLE: Final = """
CREATE SCHEMA IF NOT EXISTS plantfloor;
CREATE TABLE IF NOT EXISTS plantfloor.schema_migration (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
MIGRATION_APPLIED: Final = "SELECT version FROM plantfloor.schema_migration ORDER BY version"
MIGRATION_RECORD: Final = "INSERT INTO plantfloor.schema_migration (version, name) VALUES (%(version)s, %(name)s)"

# --- what a database holds (plantfloor rollup --check --connect, report --database) -----------

SERVER_VERSION: Final = "SHOW server_version"
HAS_TABLE: Final = "SELECT to_regclass(%(table)s) IS NOT NULL"
SCHEMA_VERSION: Final = "SELECT coalesce(max(version), 0) FROM plantfloor.schema_migration"

# --- locks and replicas -------------------------------------------------------------------

TRY_LOCK: Final = "SELECT pg_try_advisory_lock(%(cls)s, hashtext(%(key)s))"
UNLOCK: Final = "SELECT pg_advisory_unlock(%(cls)s, hashtext(%(key)s))"
PING: Final = "SELECT 1"
REGISTER_REPLICA: Final = """
INSERT INTO plantfloor.replica (site, client_id, host, pid) VALUES (%(site)s, %(client_id)s, %(host)s, %(pid)s)
ON CONFLICT (site, client_id) DO UPDATE SET host = excluded.host, pid = excluded.pid, started_at = now()"""
OTHER_REPLICAS: Final = """
SELECT client_id FROM plantfloor.replica WHERE site = %(site)s AND client_id <> %(client_id)s ORDER BY client_id"""
FORGET_REPLICA: Final = "DELETE FROM plantfloor.replica WHERE site = %(site)s AND client_id = %(client_id)s"

# --- the site ------------------------------------------------------------------------------

SITE_CREATE: Final = """
INSERT INTO plantfloor.site (site, epoch, origin, interval_s) VALUES (%(site)s, %(epoch)s, %(origin)s, %(interval_s)s)
ON CONFLICT (site) DO NOTHING"""
SITE_GET: Final = "SELECT epoch, origin, interval_s FROM plantfloor.site WHERE site = %(site)s"

# --- ingest: one statement per batch; the rows, and the site windows they changed --------
# (arrays are sent in binary, %(name)b: text arrays of JSON would otherwise be escaped
# element by element, which cost 30 times more than the insert itself)

INSERT_WINDOWS: Final = """
WITH batch AS (
    SELECT * FROM unnest(
        %(site)b::text[], %(line)b::text[], %(epoch)b::bigint[], %(seq)b::bigint[], %(gateway)b::text[],
        %(window_start)b::timestamptz[], %(window_end)b::timestamptz[], %(period_start)b::timestamptz[],
        %(production_date)b::date[], %(shift_name)b::text[], %(shift_start)b::timestamptz[],
        %(units)b::bigint[], %(day_target)b::float8[], %(quality)b::text[], %(historical)b::boolean[],
        %(payload)b::text[])
    AS b(site, line, epoch, seq, gateway, window_start, window_end, period_start, production_date,
         shift_name, shift_start, units, day_target, quality, historical, payload)
), inserted AS (
    INSERT INTO plantfloor.line_window (site, line, epoch, seq, gateway, window_start, window_end,
        period_start, production_date, shift_name, shift_start, units, day_target, quality,
        historical, payload)
    SELECT site, line, epoch, seq, gateway, window_start, window_end, period_start, production_date,
           shift_name, shift_start, units, day_target, quality, historical, payload::jsonb
      FROM batch
    ON CONFLICT DO NOTHING
    RETURNING site, period_start, production_date
), changed AS (
    INSERT INTO plantfloor.period_change (site, period_start, production_date)
    SELECT DISTINCT site, period_start, production_date FROM inserted
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted) AS inserted, (SELECT count(*) FROM changed) AS periods"""

INSERT_SHIFT_REPORTS: Final = """
INSERT INTO plantfloor.shift_report (site, line, epoch, shift_start, shift_end, shift_name, production_date,
                                     gateway, units, payload)
SELECT site, line, epoch, shift_start, shift_end, shift_name, production_date, gateway, units, payload::jsonb
  FROM unnest(%(site)b::text[], %(line)b::text[], %(epoch)b::bigint[], %(shift_start)b::timestamptz[],
              %(shift_end)b::timestamptz[], %(shift_name)b::text[], %(production_date)b::date[],
              %(gateway)b::text[], %(units)b::bigint[], %(payload)b::text[])
    AS r(site, line, epoch, shift_start, shift_end, shift_name, production_date, gateway, units, payload)
ON CONFLICT DO NOTHING"""

INSERT_REJECTED: Final = """
INSERT INTO plantfloor.rejected_message (gateway, topic, payload, error)
SELECT * FROM unnest(%(gateway)b::text[], %(topic)b::text[], %(payload)b::bytea[], %(error)b::text[])"""

# --- the acknowledgement: each line's run of windows committed without a gap --------------
# (after the batch's commit, in a transaction of its own: one statement each for every line
# and epoch of the batch, the rows locked in key order first so that two replicas moving
# the same lines wait for each other instead of deadlocking; the run only ever grows)

PROGRESS_START: Final = """
INSERT INTO plantfloor.line_progress (site, line, epoch, gateway, first, seq)
SELECT k.site, k.line, k.epoch, k.gateway, m.first, m.first - 1
  FROM unnest(%(site)s::text[], %(line)s::text[], %(epoch)s::bigint[], %(gateway)s::text[])
       AS k(site, line, epoch, gateway)
 CROSS JOIN LATERAL (SELECT min(w.seq) AS first FROM plantfloor.line_window AS w
                      WHERE w.site = k.site AND w.line = k.line AND w.epoch = k.epoch) AS m
 WHERE m.first IS NOT NULL
 ORDER BY k.site, k.line, k.epoch
ON CONFLICT DO NOTHING
RETURNING gateway"""
PROGRESS_LOCK: Final = """
SELECT 1 FROM plantfloor.line_progress AS p
  JOIN unnest(%(site)s::text[], %(line)s::text[], %(epoch)s::bigint[], %(gateway)s::text[])
       AS k(site, line, epoch, gateway) ON p.site = k.site AND p.line = k.line AND p.epoch = k.epoch
 ORDER BY p.site, p.line, p.epoch
   FOR UPDATE OF p"""
PROGRESS_ADVANCE: Final = """
UPDATE plantfloor.line_progress AS p
   SET seq = coalesce((SELECT w.seq FROM plantfloor.line_window AS w
                        WHERE w.site = p.site AND w.line = p.line AND w.epoch = p.epoch AND w.seq > p.seq
                          AND NOT EXISTS (SELECT 1 FROM plantfloor.line_window AS x
                                           WHERE x.site = w.site AND x.line = w.line AND x.epoch = w.epoch
                                             AND x.seq = w.seq + 1)
                        ORDER BY w.seq LIMIT 1), p.seq),
       updated_at = now()
  FROM unnest(%(site)s::text[], %(line)s::text[], %(epoch)s::bigint[], %(gateway)s::text[])
       AS k(site, line, epoch, gateway)
 WHERE p.site = k.site AND p.line = k.line AND p.epoch = k.epoch
   AND EXISTS (SELECT 1 FROM plantfloor.line_window AS y
                WHERE y.site = p.site AND y.line = p.line AND y.epoch = p.epoch AND y.seq = p.seq + 1)
RETURNING p.gateway"""
PROGRESS_EXTEND_DOWN: Final = """
UPDATE plantfloor.line_progress AS p
   SET first = coalesce((SELECT w.seq FROM plantfloor.line_window AS w
                          WHERE w.site = p.site AND w.line = p.line AND w.epoch = p.epoch AND w.seq < p.first
                            AND NOT EXISTS (SELECT 1 FROM plantfloor.line_window AS x
                                             WHERE x.site = w.site AND x.line = w.line AND x.epoch = w.epoch
                                               AND x.seq = w.seq - 1)
                          ORDER BY w.seq DESC LIMIT 1), p.first),
       updated_at = now()
  FROM unnest(%(site)s::text[], %(line)s::text[], %(epoch)s::bigint[], %(gateway)s::text[])
       AS k(site, line, epoch, gateway)
 WHERE p.site = k.site AND p.line = k.line AND p.epoch = k.epoch
   AND EXISTS (SELECT 1 FROM plantfloor.line_window AS y
                WHERE y.site = p.site AND y.line = p.line AND y.epoch = p.epoch AND y.seq = p.first - 1)
RETURNING p.gateway"""
GATEWAY_PROGRESS: Final = """
SELECT DISTINCT ON (line) line, epoch, first, seq FROM plantfloor.line_progress
 WHERE site = %(site)s AND gateway = %(gateway)s
 ORDER BY line, updated_at DESC, epoch DESC"""

# --- plantfloor report --database ---------------------------------------------------------

SHIFT_REPORTS: Final = """
SELECT payload::text FROM plantfloor.shift_report
 WHERE site = %(site)s AND production_date = %(day)s AND (%(shift)s::text IS NULL OR shift_name = %(shift)s)
 ORDER BY shift_start, line, epoch"""

# --- the leader: changes, the figure's inputs, the outbox of the figure -------------------
# (sums stay numeric, as sum() of bigint is: no accepted rows can overflow them)

#: the leader's tick sees one snapshot: the queue it takes and the rows it sums agree
REPEATABLE_READ: Final = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"

TAKE_CHANGES: Final = """
DELETE FROM plantfloor.period_change
 WHERE ctid IN (SELECT ctid FROM plantfloor.period_change WHERE site = %(site)s LIMIT %(limit)s)
RETURNING period_start, production_date"""
MARK_DAYS_STALE: Final = """
INSERT INTO plantfloor.plant_day (site, production_date, units, stale)
SELECT %(site)s, d, 0, true FROM unnest(%(days)s::date[]) AS d
ON CONFLICT (site, production_date) DO UPDATE SET stale = true"""
REFRESH_DAYS: Final = """
UPDATE plantfloor.plant_day AS d
   SET units = s.units, first_window = s.first_window, stale = false
  FROM (SELECT pd.production_date, coalesce(sum(w.units), 0) AS units,
               min(w.window_start) AS first_window
          FROM plantfloor.plant_day AS pd
          LEFT JOIN plantfloor.line_window AS w
            ON w.site = pd.site AND w.production_date = pd.production_date
         WHERE pd.site = %(site)s AND pd.stale AND pd.production_date < %(day)s
         GROUP BY pd.production_date) AS s
 WHERE d.site = %(site)s AND d.production_date = s.production_date"""
LAST_PLANT_WINDOW: Final = """
SELECT seq, period_start, period_end FROM plantfloor.plant_window
 WHERE site = %(site)s AND epoch = %(epoch)s ORDER BY seq DESC LIMIT 1"""
PERIOD_REVISIONS: Final = """
SELECT seq, revision, line_windows FROM plantfloor.plant_window
 WHERE site = %(site)s AND epoch = %(epoch)s AND period_start = %(period_start)s ORDER BY revision"""
PERIOD_LINES: Final = """
SELECT line, gateway, sum(units) AS units, count(*) AS windows,
       min(CASE quality WHEN 'bad' THEN 0 WHEN 'uncertain' THEN 1 ELSE 2 END) AS quality,
       max(day_target) AS day_target
  FROM plantfloor.line_window
 WHERE site = %(site)s AND period_start = %(period_start)s
 GROUP BY line, gateway ORDER BY line, gateway"""
PERIOD_TOTALS: Final = """
WITH today AS (
    SELECT coalesce(sum(units), 0) AS units, min(window_start) AS first_window
      FROM plantfloor.line_window
     WHERE site = %(site)s AND production_date = %(day)s AND period_start <= %(period_start)s
), before AS (
    SELECT coalesce(sum(units), 0) AS units, min(first_window) AS first_window
      FROM plantfloor.plant_day
     WHERE site = %(site)s AND production_date >= %(year_start)s AND production_date < %(day)s
)
SELECT today.units, today.units + before.units, least(today.first_window, before.first_window)
  FROM today, before"""
LATEST_DAY_TARGETS: Final = """
SELECT DISTINCT ON (line) line, day_target
  FROM plantfloor.line_window
 WHERE site = %(site)s AND production_date = %(day)s AND line = ANY(%(lines)s)
 ORDER BY line, period_start DESC"""
ADD_REVISION: Final = """
INSERT INTO plantfloor.plant_window (site, epoch, seq, revision, period_start, period_end, units,
                                     line_windows, message)
VALUES (%(site)s, %(epoch)s, %(seq)s, %(revision)s, %(period_start)s, %(period_end)s, %(units)s,
        %(line_windows)s, %(message)s)"""
UNPUBLISHED: Final = """
SELECT seq, revision, message FROM plantfloor.plant_window
 WHERE site = %(site)s AND epoch = %(epoch)s AND published_at IS NULL
 ORDER BY seq, revision LIMIT %(limit)s"""
MARK_PUBLISHED: Final = """
UPDATE plantfloor.plant_window SET published_at = now()
 WHERE site = %(site)s AND epoch = %(epoch)s AND seq = %(seq)s AND revision = %(revision)s
   AND published_at IS NULL"""
