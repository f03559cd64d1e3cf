-- 0006: the functions that row-level security and the feed's readers call, with plans PostgreSQL keeps.
--
-- Every policy asks realtime.member_rank(branch_id). As a SECURITY DEFINER function in LANGUAGE sql it cannot be
-- inlined, and PostgreSQL parses and plans its body anew in every statement that calls it: under a load of editors'
-- writes that was a third of the CPU of the requests' backends (perf: fmgr_security_definer → fmgr_sql, with
-- base_yyparse and the planner under it). In PL/pgSQL the body's plan is prepared once per connection and kept.
-- Same arguments, same answers, same privileges: only the cost changes. The same goes for the log's head, which every
-- tailer, stream, poll and snapshot reads.

CREATE OR REPLACE FUNCTION realtime.member_rank(target_branch uuid) RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT coalesce(max(CASE role WHEN 'viewer' THEN 1 WHEN 'editor' THEN 2 WHEN 'admin' THEN 3 END), 0)
        FROM branch_member
        WHERE branch_id = target_branch AND user_id = realtime.current_user_id()
    );
END
$$;

CREATE OR REPLACE FUNCTION realtime.event_log_head() RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT seq FROM realtime.log_head);
END
$$;
