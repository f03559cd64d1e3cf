-- 0007: a REST write of a row as one call.
--
-- The server reads the caller's memberships and the branches of the rows a write names (one round trip), decides the
-- Swift policy with its clear errors, and then hands the write to this function (the second round trip): it
-- takes on the caller's role, so row-level security checks every statement once more, claims the Idempotency-Key,
-- checks that the client's copy is not stale, writes, and records the answer under the key, all in the one
-- transaction of the call. Before, the same took BEGIN, the caller's settings, the claim, the check, the write, the
-- record and COMMIT, each a round trip of its own. (The call's transaction commits at the protocol's Sync, after its
-- answer has been sent: the server acknowledges the write only once a third, empty statement has been answered.)
--
-- Outcomes other than a write are errors, so that nothing of the call stays (a claimed key rolls back with a failed
-- write, and the client may retry with it): RT404 the row is gone, RT409 the stored row is newer than the client's
-- copy (DETAIL: the stored row as JSON), RT422 the key was used for another request.
--
-- `statement` and `stale_check` are built by the server from the table registry's names only; every value reaches
-- them through `params` (`$1[n]` in the statement).

-- A statement of apply_write, prepared once per connection under a name made from its text, as the command that runs
-- it with these values: PL/pgSQL would parse and plan a dynamic statement anew in every call (a quarter of a request
-- backend's CPU), a prepared one keeps its plan. A connection holds one per shape of write it has run (table and set
-- of columns written): a few dozen at most.
CREATE FUNCTION realtime.prepared(statement text, params text[]) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
DECLARE
    statement_name text := 'realtime_write_' || md5(statement);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_prepared_statements p WHERE p.name = statement_name) THEN
        EXECUTE format('PREPARE %I(text[]) AS %s', statement_name, statement);
    END IF;
    RETURN format('EXECUTE %I(%L)', statement_name, params);
END
$$;

CREATE FUNCTION realtime.apply_write(
    caller_role text,
    caller_id text,
    caller_key text,
    key_text text,
    key_request_hash text,
    answer_status integer,
    stale_check text,
    statement text,
    params text[]
) RETURNS TABLE (was_replayed boolean, stored_status integer, answer text)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
DECLARE
    stored realtime.idempotency_key%ROWTYPE;
    current_row text;
    is_newer boolean;
    written text;
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
            RETURN QUERY SELECT true, stored.status, stored.response;
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
    EXECUTE realtime.prepared(statement, params) INTO written;
    IF written IS NULL THEN
        RAISE EXCEPTION 'no such row' USING ERRCODE = 'RT404';
    END IF;
    IF key_text IS NOT NULL THEN
        UPDATE realtime.idempotency_key AS k SET status = answer_status, response = written
        WHERE k.owner = caller_key AND k.key = key_text;
    END IF;
    RETURN QUERY SELECT false, answer_status, written;
END
$$;

GRANT EXECUTE ON FUNCTION realtime.apply_write(text, text, text, text, text, integer, text, text, text[]),
    realtime.prepared(text, text[]) TO PUBLIC;
