-- 0008: a REST write of a row commits inside its call, and answers only then.
--
-- 0007's `realtime.apply_write` was a function called by a SELECT. Its transaction was the protocol's implicit one,
-- which PostgreSQL commits at the Sync, after the call's rows and CommandComplete had been sent: PostgresNIO hands the
-- rows over at CommandComplete, so a server could answer before the commit. The server then sent a third, empty
-- statement to learn that the commit was done. That still took a round trip, and a commit that failed (a deferred
-- constraint) reached the server as an error outside any statement, not as the write's: it answered 503 where the
-- write's own 4xx was due.
--
-- `realtime.commit_write` is a procedure that calls it and then COMMITs, before its answer is sent (a
-- procedure called by CALL outside a transaction block may commit; PostgreSQL allows it over the extended protocol
-- too). A refusal at the commit is then the CALL's own error, with its SQLSTATE, and a write takes two round trips:
-- the server's read of the caller and the rows (see Database+write.swift), and this call.
--
-- The write itself is 0007's `realtime.apply_write`, called unchanged: the role and settings it takes on end with the
-- COMMIT; its outcomes other than a write are errors, so nothing of the call stays. The procedure takes the statement's
-- values as a JSON array of texts (PostgresNIO binds no arrays with NULL elements, and CALL's arguments may not hold
-- the subquery that turned them into an array before).

CREATE PROCEDURE realtime.commit_write(
    caller_role text,
    caller_id text,
    caller_key text,
    key_text text,
    key_request_hash text,
    answer_status integer,
    stale_check text,
    statement text,
    values_json json,
    INOUT was_replayed boolean DEFAULT NULL,
    INOUT stored_status integer DEFAULT NULL,
    INOUT answer text DEFAULT NULL
)
LANGUAGE plpgsql SECURITY INVOKER
AS $$
BEGIN
    SELECT w.was_replayed, w.stored_status, w.answer INTO was_replayed, stored_status, answer
    FROM realtime.apply_write(caller_role, caller_id, caller_key, key_text, key_request_hash, answer_status, stale_check,
        statement, ARRAY(SELECT v FROM json_array_elements_text(values_json) WITH ORDINALITY AS e(v, n) ORDER BY n)) AS w;
    -- Deferred constraints are checked here, and a failure is this call's error; the answer is sent only after it. (A
    -- replay wrote nothing: its commit is empty.)
    COMMIT;
END
$$;

GRANT EXECUTE ON PROCEDURE realtime.commit_write(text, text, text, text, text, integer, text, text, json, boolean, integer, text)
    TO PUBLIC;
