-- plantfloor roll-up, schema version 3: sums that no accepted data can overflow, and each line's
-- committed progress (the acknowledgement to its gateway).

-- A day's or a site window's sum of bigint units is numeric (sum() of bigint is numeric):
-- stored as such, it never overflows, whatever rows an earlier version accepted.
DROP VIEW plantfloor.plant_window_latest;
ALTER TABLE plantfloor.plant_day ALTER COLUMN units TYPE numeric;
ALTER TABLE plantfloor.plant_window ALTER COLUMN units TYPE numeric;
CREATE VIEW plantfloor.plant_window_latest AS
SELECT DISTINCT ON (site, epoch, seq)
       site, epoch, seq, revision, period_start, period_end, units,
       message::jsonb AS payload, created_at, published_at
  FROM plantfloor.plant_window
 ORDER BY site, epoch, seq, revision DESC;

-- Per line and epoch, the run of windows the site has without a gap: from first to seq.
-- It starts at the first window of the epoch the site received, grows up as the next ones
-- arrive, and down when earlier ones arrive later (re-published by the agent). What the
-- site acknowledges to the gateway on S/rollup/ack/<gateway>; moved after each commit.
CREATE TABLE plantfloor.line_progress (
    site        text NOT NULL,
    line        text NOT NULL,
    epoch       bigint NOT NULL,
    gateway     text NOT NULL,
    first       bigint NOT NULL,                 -- lowest seq of the run
    seq         bigint NOT NULL,                 -- highest seq of the run (contiguous from first)
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, line, epoch)
);
