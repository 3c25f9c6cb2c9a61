-- plantfloor roll-up, schema version 2: the lines' shift reports (R/lines/<line>/shift, OEE).

-- One row per line and shift instance as each epoch of its agent reported it (an agent
-- whose store was replaced mid-shift reports the part each epoch saw).
CREATE TABLE plantfloor.shift_report (
    site            text NOT NULL,
    line            text NOT NULL,
    epoch           bigint NOT NULL,
    shift_start     timestamptz NOT NULL,
    shift_end       timestamptz NOT NULL,
    shift_name      text NOT NULL,
    production_date date NOT NULL,
    gateway         text NOT NULL,
    units           bigint NOT NULL CHECK (units >= 0),
    payload         jsonb NOT NULL,              -- the report as the agent published it
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, line, epoch, shift_start)
);
CREATE INDEX shift_report_day ON plantfloor.shift_report (site, production_date, shift_start);

-- Per line and shift instance: the report's figures as columns.
CREATE VIEW plantfloor.line_shift_report AS
SELECT site, line, production_date, shift_name, shift_start, shift_end, epoch, gateway, units,
       (payload ->> 'rejects')::bigint AS rejects,
       (payload ->> 'total')::bigint AS total,
       (payload ->> 'target')::double precision AS target,
       (payload -> 'time' ->> 'planned_s')::double precision AS planned_s,
       (payload -> 'time' ->> 'planned_busy_s')::double precision AS planned_busy_s,
       (payload -> 'time' ->> 'run_s')::double precision AS run_s,
       (payload -> 'time' ->> 'down_s')::double precision AS down_s,
       (payload -> 'time' ->> 'ideal_run_s')::double precision AS ideal_run_s,
       (payload ->> 'availability')::double precision AS availability,
       (payload ->> 'performance')::double precision AS performance,
       (payload ->> 'quality')::double precision AS quality,
       (payload ->> 'oee')::double precision AS oee,
       (payload ->> 'coverage')::double precision AS coverage
  FROM plantfloor.shift_report;

-- The plant per shift instance: OEE from the summed times and counts of the lines' reports,
-- never from averaged percentages.
CREATE VIEW plantfloor.plant_shift_report AS
SELECT site, production_date, shift_name, shift_start,
       count(DISTINCT line) AS lines, sum(units) AS units, sum(total) AS total, sum(target) AS target,
       sum(planned_busy_s) AS planned_busy_s, sum(run_s) AS run_s, sum(ideal_run_s) AS ideal_run_s,
       sum(run_s) / nullif(sum(planned_busy_s), 0) AS availability,
       sum(ideal_run_s) / nullif(sum(run_s), 0) AS performance,
       sum(units)::double precision / nullif(sum(total), 0) AS quality,
       (sum(run_s) / nullif(sum(planned_busy_s), 0)) * (sum(ideal_run_s) / nullif(sum(run_s), 0))
           * (sum(units)::double precision / nullif(sum(total), 0)) AS oee
  FROM plantfloor.line_shift_report
 GROUP BY site, production_date, shift_name, shift_start;
