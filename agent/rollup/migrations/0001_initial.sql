-- plantfloor roll-up, schema version 1: line windows, the site figure's outbox, the historian's views.
-- Applied by agent/rollup/migrate.py in one transaction; never edit a released migration,
-- add the next numbered file instead.

CREATE SCHEMA IF NOT EXISTS plantfloor;

-- One row per site: the identity of the site figure's sequence.
CREATE TABLE plantfloor.site (
    site        text PRIMARY KEY,
    epoch       bigint NOT NULL,                 -- drawn once, like an agent's: ms * 1000 + 3 random digits
    origin      timestamptz NOT NULL,            -- start of the first site window (seq 1)
    interval_s  integer NOT NULL CHECK (interval_s > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Every line window of every gateway, exactly once: its identity is the primary key.
CREATE TABLE plantfloor.line_window (
    site            text NOT NULL,
    line            text NOT NULL,
    epoch           bigint NOT NULL,
    seq             bigint NOT NULL,
    gateway         text NOT NULL,               -- from the topic root it arrived on
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    period_start    timestamptz NOT NULL,        -- the site window containing window_start
    production_date date NOT NULL,               -- the site calendar's, at window_start
    shift_name      text,                        -- null outside every shift
    shift_start     timestamptz NOT NULL,        -- start of that shift instance (or off-shift period)
    units           bigint NOT NULL CHECK (units >= 0),
    day_target      double precision NOT NULL,
    quality         text NOT NULL,
    historical      boolean NOT NULL,
    payload         jsonb NOT NULL,              -- the message as the agent published it
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, line, epoch, seq),
    CHECK (window_end > window_start)
);
CREATE INDEX line_window_period ON plantfloor.line_window (site, period_start)
    INCLUDE (line, gateway, units, quality);
CREATE INDEX line_window_day ON plantfloor.line_window (site, production_date, period_start)
    INCLUDE (units, window_start);

-- Site windows that received a line window: a queue the leader empties (written in the
-- same transaction as the rows, so no change is ever missed).
CREATE TABLE plantfloor.period_change (
    site            text NOT NULL,
    period_start    timestamptz NOT NULL,
    production_date date NOT NULL
);

-- The sum of every production day's rows, kept by the leader for the year-to-date total:
-- marked stale (in the transaction that takes the queue) whenever a row of that day
-- arrives, summed again from the rows before it is used.
CREATE TABLE plantfloor.plant_day (
    site            text NOT NULL,
    production_date date NOT NULL,
    units           bigint NOT NULL,
    first_window    timestamptz,                 -- the day's earliest window_start
    stale           boolean NOT NULL,
    PRIMARY KEY (site, production_date)
);

-- The site figure: every revision of every site window, and whether it went out.
CREATE TABLE plantfloor.plant_window (
    site          text NOT NULL,
    epoch         bigint NOT NULL,
    seq           bigint NOT NULL,
    revision      integer NOT NULL CHECK (revision >= 0),
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    units         bigint NOT NULL,
    line_windows  jsonb NOT NULL,                -- line -> rows counted (tells which arrived late)
    message       text NOT NULL,                 -- the exact bytes published (a re-send is identical)
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    PRIMARY KEY (site, epoch, seq, revision)
);
CREATE UNIQUE INDEX plant_window_period ON plantfloor.plant_window (site, period_start, revision);
CREATE INDEX plant_window_unpublished ON plantfloor.plant_window (site, seq, revision)
    WHERE published_at IS NULL;

-- The replicas that ran: a dead one's MQTT session is drained by a living one.
CREATE TABLE plantfloor.replica (
    site        text NOT NULL,
    client_id   text NOT NULL,
    host        text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, client_id)
);

-- Messages that were not line windows this site can store: kept, never dropped silently.
CREATE TABLE plantfloor.rejected_message (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    gateway     text,
    topic       text NOT NULL,
    payload     bytea NOT NULL,
    error       text NOT NULL
);

-- The historian's views.
CREATE VIEW plantfloor.plant_window_latest AS
SELECT DISTINCT ON (site, epoch, seq)
       site, epoch, seq, revision, period_start, period_end, units,
       message::jsonb AS payload, created_at, published_at
  FROM plantfloor.plant_window
 ORDER BY site, epoch, seq, revision DESC;

CREATE VIEW plantfloor.line_shift_totals AS
SELECT site, line, production_date, shift_name, shift_start,
       sum(units) AS units, count(*) AS windows,
       max((payload -> 'shift' ->> 'target')::double precision) AS target,
       sum((payload -> 'shift' ->> 'downtime_s')::double precision) AS downtime_s,
       min(window_start) AS first_window_start, max(window_end) AS last_window_end
  FROM plantfloor.line_window
 GROUP BY site, line, production_date, shift_name, shift_start;

CREATE VIEW plantfloor.line_day_totals AS
SELECT site, line, production_date,
       sum(units) AS units, max(day_target) AS target, count(*) AS windows,
       min(window_start) AS first_window_start, max(window_end) AS last_window_end
  FROM plantfloor.line_window
 GROUP BY site, line, production_date;

CREATE VIEW plantfloor.plant_shift_totals AS
SELECT site, production_date, shift_name, shift_start,
       sum(units) AS units, sum(target) AS target, count(*) AS lines
  FROM plantfloor.line_shift_totals
 GROUP BY site, production_date, shift_name, shift_start;

CREATE VIEW plantfloor.plant_day_totals AS
SELECT site, production_date,
       sum(units) AS units, sum(target) AS target, count(*) AS lines
  FROM plantfloor.line_day_totals
 GROUP BY site, production_date;
