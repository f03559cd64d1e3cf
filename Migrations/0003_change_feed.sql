-- 0003: the change feed. Logical decoding (pgoutput) of this publication feeds the relay,
-- which appends every committed change, in commit order, to realtime.event_log.

-- UPDATE and DELETE must carry the old row: to filter DELETEs by branch and to detect moves.
ALTER TABLE plan REPLICA IDENTITY FULL;
ALTER TABLE task REPLICA IDENTITY FULL;
ALTER TABLE client_card REPLICA IDENTITY FULL;
ALTER TABLE status_history REPLICA IDENTITY FULL;
ALTER TABLE attachment REPLICA IDENTITY FULL;
ALTER TABLE branch_member REPLICA IDENTITY FULL;

CREATE PUBLICATION realtime_changes FOR TABLE plan, task, client_card, status_history, attachment, branch_member;

CREATE TABLE realtime.event_log (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    commit_lsn pg_lsn NOT NULL,
    tx_index integer NOT NULL,
    xid bigint NOT NULL,
    commit_time timestamptz NOT NULL,
    table_name text NOT NULL,
    op text NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE')),
    branch_id uuid,
    plan_id uuid,
    task_id uuid,
    old_branch_id uuid,
    old_plan_id uuid,
    record json NOT NULL,
    old_record json NOT NULL,
    logged_at timestamptz NOT NULL DEFAULT now(),
    -- A transaction replayed after a crash of the relay is recognised and skipped.
    CONSTRAINT event_log_position_key UNIQUE (commit_lsn, tx_index)
);
CREATE INDEX event_log_branch_idx ON realtime.event_log (branch_id, seq);
CREATE INDEX event_log_plan_idx ON realtime.event_log (plan_id, seq);
CREATE INDEX event_log_commit_time_idx ON realtime.event_log (commit_time);

-- The event log is the server's own: the request roles never read it directly.
REVOKE ALL ON realtime.event_log FROM PUBLIC;

-- A snapshot's cursor: the newest logged sequence, readable by the request roles without the log itself.
CREATE FUNCTION realtime.event_log_head() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(max(seq), 0) FROM realtime.event_log $$;
GRANT EXECUTE ON FUNCTION realtime.event_log_head() TO realtime_authenticated, realtime_service;
