-- 0008: a REST write of a row commits inside its call, and answers only then.
--
-- 0007's `realtime.apply_write` was a function called by a SELECT. Its transaction was the protocol's implicit one,
-- which PostgreSQL commits at the Sync, after the call's rows and CommandComplete had been sent: PostgresNIO hands the
-- rows over at CommandComplete, so a server could answer before the commit. The server then sent a third, empty
-- statement to learn that the commit was done. That still took a round trip, and a commit that failed (a deferred
-- constraint) reached the server as an error outside any statement, not as the write's: it answered 503 where the
-- write's own 4xx was due.
--
-- `realtime.commit_write` is a procedure that does the same and then COMMITs itself, before its answer is sent (a
-- procedure called by CALL outside a transaction block may commit; PostgreSQL allows it over the extended protocol
-- too). A refusal at the commit is then the CALL's own error, with its SQLSTATE, and a write takes two round trips:
-- the server's read of the caller and the rows (see Database+write.swift), and this call.
--
-- It takes the statement's values as a JSON array of texts (PostgresNIO binds no arrays with NULL elements, and CALL's
-- arguments may not hold the subquery that turned them into an array before). Everything else is 0007's: the role and
-- settings it takes on end with its COMMIT; outcomes other than a write are errors, so nothing of the call stays
-- (RT404 the row is gone, RT409 the stored row is newer than the client's copy, DETAIL: the stored row as JSON, RT422
-- the key was used for another request); `statement` and `stale_check` come from the table registry's names only.

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
DECLARE
    params text[] := ARRAY(SELECT v FROM json_array_elements_text(values_json) WITH ORDINALITY AS e(v, n) ORDER BY n);
    stored realtime.idempotency_key%ROWTYPE;
    current_row text;
    is_newer boolean;
BEGIN
    -- The prepared statements' plans are kept (generic) rather than made anew for each call's values: a write names its
    -- row by id, and the policies' conditions do not depend on the values.
    PERFORM set_config('role', caller_role, true), set_config('realtime.user_id', caller_id, true),
            set_config('realtime.principal', caller_key, true), set_config('plan_cache_mode', 'force_generic_plan', true);
    IF key_text IS NOT NULL THEN
        INSERT INTO realtime.idempotency_key AS k (owner, key, request_hash) VALUES (caller_key, key_text, key_request_hash)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            SELECT * INTO stored FROM realtime.idempotency_key AS k WHERE k.owner = caller_key AND k.key = key_text;
            IF stored.request_hash IS DISTINCT FROM key_request_hash OR stored.status IS NULL OR stored.response IS NULL THEN
                RAISE EXCEPTION 'the Idempotency-Key was used for another request' USING ERRCODE = 'RT422';
            END IF;
            -- A replay writes nothing: the call's implicit transaction ends at the Sync with nothing to commit.
            was_replayed := true;
            stored_status := stored.status;
            answer := stored.response;
            RETURN;
        END IF;
    END IF;
    IF stale_check IS NOT NULL THEN
        EXECUTE realtime.prepared(stale_check, params) INTO current_row, is_newer;
        IF current_row IS NULL THEN
            RAISE EXCEPTION 'no such row' USING ERRCODE = 'RT404';
        END IF;
        IF is_newer THEN
            RAISE EXCEPTION 'the stored row is newer' USING ERRCODE = 'RT409', DETAIL = current_row;
        END IF;
    END IF;
    EXECUTE realtime.prepared(statement, params) INTO answer;
    IF answer IS NULL THEN
        RAISE EXCEPTION 'no such row' USING ERRCODE = 'RT404';
    END IF;
    IF key_text IS NOT NULL THEN
        UPDATE realtime.idempotency_key AS k SET status = answer_status, response = answer
        WHERE k.owner = caller_key AND k.key = key_text;
    END IF;
    was_replayed := false;
    stored_status := answer_status;
    -- Deferred constraints are checked here, and a failure is this call's error; the answer is sent only after it.
    COMMIT;
END
$$;

GRANT EXECUTE ON PROCEDURE realtime.commit_write(text, text, text, text, text, integer, text, text, json, boolean, integer, text)
    TO PUBLIC;

DROP FUNCTION realtime.apply_write(text, text, text, text, text, integer, text, text, text[]);
