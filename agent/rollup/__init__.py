"""``plantfloor rollup``: the site-wide service for a plant with several gateways.

Every line window of every gateway is written exactly once into PostgreSQL (its identity
``site, line, epoch, seq`` is the primary key), and one replica at a time, the leader,
publishes the site's plant figure computed from the rows. The service reuses the agent's
configuration models, calendar, payload models and error style; what it adds is its own:
the database (:mod:`agent.rollup.database`, :mod:`agent.rollup.sql`, versioned migrations
under ``migrations/``), the shared MQTT subscription (:mod:`agent.rollup.consumer`) and
leadership (:mod:`agent.rollup.leader`). Topics and tables: ``docs/scale-out.md``.

Data flow, one way, with a named type at each hop::

    MQTT $share/<group>/<gateway root>/lines/+/{output,shift}   Consumer -> Delivery
      -> Ingest: Delivery -> WindowRow | ShiftRow | Rejected (pure, agent.rollup.rows, bounds)
      -> Database.insert() (one transaction; a refused batch split, refusals kept)
      -> Database.advance() (each line's run) -> ack each Delivery after the commit
      -> AckPublisher: S/rollup/ack/<gateway> (retained; agent.outputs.siteack reads it)
    Leader (advisory lock): rows -> PeriodRows/PeriodTotals -> SitePlantOutput (pure,
      agent.rollup.plant) -> plant_window (outbox table) -> Publisher -> S/plant/output

``plantfloor report CONFIG --database URL`` reads the stored shift reports back
(:mod:`agent.rollup.reports`).

May import: :mod:`agent.outputs.mqtt`, :mod:`agent.views`, :mod:`agent.core`,
:mod:`agent.config`, :mod:`agent.contract`, and of the agent's runtime its logging
(:mod:`agent.runtime.logconfig`) and systemd notifications (:mod:`agent.runtime.notify`).
Only the commands and the site's board (:mod:`agent.board.site`) import it.
"""

from __future__ import annotations

__all__: list[str] = []
