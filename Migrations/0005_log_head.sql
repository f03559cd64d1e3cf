-- 0005: the log's committed head, kept beside the log, and one writer at a time.
--
-- The relay writes a huge source transaction (one UPDATE of millions of rows) as one transaction of the log, in pieces.
-- Until it commits, its rows are in the log's indexes but invisible, and a scan of "seq > cursor", or max(seq), visits
-- every one of them: every node's tailer four times a second, each stream open, poll and snapshot. Their work would
-- grow with the transaction in flight, and a backlog of millions of rows would never drain.
--
-- So the newest committed sequence is kept in realtime.log_head, advanced by the statement that appends, in the same
-- transaction: it becomes visible exactly when the rows do. Every reader bounds its scan by it, and stops there.
--
-- The bound is exact only if the log's sequences are committed in order. The relay is the log's one writer (an
-- advisory lock elects it), and the start-up reconcile of memberships writes too; so each appending statement first
-- locks the head's row: a second writer waits for the first to commit before it takes its sequences.

CREATE TABLE realtime.log_head (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq bigint NOT NULL
);
INSERT INTO realtime.log_head (seq) SELECT coalesce(max(seq), 0) FROM realtime.event_log;
REVOKE ALL ON realtime.log_head FROM PUBLIC;

CREATE FUNCTION realtime.lock_log_head() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM realtime.log_head FOR UPDATE;
    RETURN NULL;
END
$$;
CREATE TRIGGER event_log_one_writer BEFORE INSERT ON realtime.event_log
FOR EACH STATEMENT EXECUTE FUNCTION realtime.lock_log_head();

CREATE FUNCTION realtime.advance_log_head() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE realtime.log_head SET seq = appended.seq
    FROM (SELECT max(seq) AS seq FROM appended_rows) appended
    WHERE appended.seq > log_head.seq;
    RETURN NULL;
END
$$;
CREATE TRIGGER event_log_advances_head AFTER INSERT ON realtime.event_log
REFERENCING NEW TABLE AS appended_rows
FOR EACH STATEMENT EXECUTE FUNCTION realtime.advance_log_head();

-- A snapshot's cursor: the committed head, as its own snapshot sees it.
CREATE OR REPLACE FUNCTION realtime.event_log_head() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT seq FROM realtime.log_head $$;
