-- plantfloor roll-up, schema version 4: the board's live changes (plantfloor board ROLLUPCONFIG).
-- A commit that stored line windows, shift reports or a site figure notifies the channel
-- plantfloor_board (once per statement; PostgreSQL folds equal notifications of one
-- transaction and delivers them at its commit). The board LISTENs on a connection of its own.

CREATE FUNCTION plantfloor.board_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('plantfloor_board', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE TRIGGER line_window_board AFTER INSERT ON plantfloor.line_window
    FOR EACH STATEMENT EXECUTE FUNCTION plantfloor.board_notify();
CREATE TRIGGER shift_report_board AFTER INSERT ON plantfloor.shift_report
    FOR EACH STATEMENT EXECUTE FUNCTION plantfloor.board_notify();
CREATE TRIGGER plant_window_board AFTER INSERT ON plantfloor.plant_window
    FOR EACH STATEMENT EXECUTE FUNCTION plantfloor.board_notify();
