-- 0010: finding a write's prepared statement without listing them all.
--
-- `realtime.prepared` (migration 0007) asked pg_prepared_statements whether this connection had prepared a statement
-- yet. That view builds a row, statement text and parameter types included, for every statement the connection has
-- prepared (the server's own protocol-level ones too), on every call; a PATCH calls it twice (the row's branch and
-- the write), three times with an `updated_at` check. Measured on this machine (20,000 calls in a DO loop): 13–17 µs a call with 10
-- statements prepared, 43 µs with 20, against about 1 µs for reading a setting; a write holds about 1 ms of
-- PostgreSQL's CPU, so this is a few percent of it.
--
-- Now a session-level setting, `realtime.<statement name>`, marks a statement once it is prepared, and the view is read
-- only when the mark is missing. The mark is set inside the write's transaction, so a transaction that fails takes its
-- mark back while the statement stays prepared (PREPARE is not undone by a rollback): the view, read again once,
-- finds it then. Same statements, same names, same answers.

CREATE OR REPLACE FUNCTION realtime.prepared(statement text, params text[]) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
DECLARE
    statement_name text := 'realtime_write_' || md5(statement);
BEGIN
    IF current_setting('realtime.' || statement_name, true) IS DISTINCT FROM 'prepared' THEN
        IF NOT EXISTS (SELECT 1 FROM pg_prepared_statements p WHERE p.name = statement_name) THEN
            EXECUTE format('PREPARE %I(text[]) AS %s', statement_name, statement);
        END IF;
        PERFORM set_config('realtime.' || statement_name, 'prepared', false);
    END IF;
    RETURN format('EXECUTE %I(%L)', statement_name, params);
END
$$;
