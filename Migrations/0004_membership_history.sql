-- 0004: who was a member of which branch at each position of the event log, and TRUNCATE as an event.
--
-- A user may receive an event only if they were a member of its branch at that event's position in the log. Grants
-- and revocations are themselves events of the log (table branch_member), so each membership is an interval of
-- sequence numbers: from the event that granted it (visible to the member) up to the event that ended it (not visible).
-- A trigger keeps the intervals in the same transaction as the relay's append, so the log and the intervals never
-- disagree, on any node, across restarts.

ALTER TABLE realtime.event_log DROP CONSTRAINT event_log_op_check;
ALTER TABLE realtime.event_log ADD CONSTRAINT event_log_op_check CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'));

-- Reads of one channel's events from a cursor: moves are found by where the row was, TRUNCATE by its operation.
CREATE INDEX event_log_old_branch_idx ON realtime.event_log (old_branch_id, seq) WHERE old_branch_id IS NOT NULL;
CREATE INDEX event_log_old_plan_idx ON realtime.event_log (old_plan_id, seq) WHERE old_plan_id IS NOT NULL;
CREATE INDEX event_log_truncate_idx ON realtime.event_log (seq) WHERE op = 'TRUNCATE';
CREATE INDEX event_log_member_idx ON realtime.event_log (branch_id, seq) WHERE table_name = 'branch_member';

CREATE TABLE realtime.membership_interval (
    user_id uuid NOT NULL,
    branch_id uuid NOT NULL,
    role text NOT NULL,
    -- The first sequence the member may see: the grant's own event (0 for memberships older than the log).
    from_seq bigint NOT NULL,
    -- The event that ended the membership, which the member no longer sees; NULL while it lasts.
    until_seq bigint,
    PRIMARY KEY (user_id, branch_id, from_seq),
    CHECK (until_seq IS NULL OR until_seq >= from_seq)
);
CREATE UNIQUE INDEX membership_interval_open_key ON realtime.membership_interval (user_id, branch_id) WHERE until_seq IS NULL;
REVOKE ALL ON realtime.membership_interval FROM PUBLIC;

INSERT INTO realtime.membership_interval (user_id, branch_id, role, from_seq)
SELECT user_id, branch_id, role, 0 FROM branch_member;

-- Ends the open interval of one membership at `at_seq`.
CREATE FUNCTION realtime.end_membership(member_user uuid, member_branch uuid, at_seq bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE realtime.membership_interval SET until_seq = at_seq
    WHERE user_id = member_user AND branch_id = member_branch AND until_seq IS NULL;
$$;

-- Opens an interval for a membership from `at_seq`, ending the one it replaces (a change of role).
CREATE FUNCTION realtime.begin_membership(member_user uuid, member_branch uuid, member_role text, at_seq bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    SELECT realtime.end_membership(member_user, member_branch, at_seq);
    INSERT INTO realtime.membership_interval (user_id, branch_id, role, from_seq)
    VALUES (member_user, member_branch, member_role, at_seq)
    ON CONFLICT (user_id, branch_id, from_seq) DO UPDATE SET role = excluded.role, until_seq = NULL;
$$;

-- Applies one logged branch_member event to the intervals. An UPDATE's old_record holds only the changed columns, so
-- the old row is the new one overlaid with them. A TRUNCATE ends every membership (rows inserted after it in the same
-- transaction are later events, which open theirs again).
CREATE FUNCTION realtime.track_membership() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old_row jsonb;
    new_row jsonb;
BEGIN
    IF NEW.op = 'TRUNCATE' THEN
        UPDATE realtime.membership_interval SET until_seq = NEW.seq WHERE until_seq IS NULL;
        RETURN NULL;
    END IF;
    IF NEW.op IN ('UPDATE', 'DELETE') THEN
        old_row := CASE NEW.op WHEN 'DELETE' THEN NEW.old_record::jsonb ELSE NEW.record::jsonb || NEW.old_record::jsonb END;
        PERFORM realtime.end_membership((old_row ->> 'user_id')::uuid, (old_row ->> 'branch_id')::uuid, NEW.seq);
    END IF;
    IF NEW.op IN ('INSERT', 'UPDATE') THEN
        new_row := NEW.record::jsonb;
        PERFORM realtime.begin_membership((new_row ->> 'user_id')::uuid, (new_row ->> 'branch_id')::uuid, new_row ->> 'role', NEW.seq);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER event_log_tracks_memberships AFTER INSERT ON realtime.event_log
FOR EACH ROW WHEN (NEW.table_name = 'branch_member') EXECUTE FUNCTION realtime.track_membership();

-- Brings the log's memberships in line with branch_member as it is now, for a replication slot just created, whose
-- log lacks the changes made before it (e.g. while the change feed was off): each difference is appended as a
-- branch_member event (xid 0, a negative index at the current WAL position, so it never collides with a relayed
-- change), which the trigger above turns into intervals and every node's fan-out applies like any other. Removals first,
-- so that a changed role ends the old interval before the new one opens. Returns the number of events appended.
CREATE FUNCTION realtime.reconcile_memberships() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    appended integer;
BEGIN
    WITH gone AS (
        SELECT 0 AS kind, i.user_id, i.branch_id,
               json_build_object('user_id', i.user_id, 'branch_id', i.branch_id, 'role', i.role) AS body
        FROM realtime.membership_interval i
        WHERE i.until_seq IS NULL
          AND NOT EXISTS (SELECT 1 FROM public.branch_member m
                          WHERE m.user_id = i.user_id AND m.branch_id = i.branch_id AND m.role = i.role)
    ), added AS (
        SELECT 1 AS kind, m.user_id, m.branch_id, row_to_json(m) AS body
        FROM public.branch_member m
        WHERE NOT EXISTS (SELECT 1 FROM realtime.membership_interval i
                          WHERE i.user_id = m.user_id AND i.branch_id = m.branch_id AND i.role = m.role
                            AND i.until_seq IS NULL)
    ), changes AS (
        SELECT row_number() OVER (ORDER BY kind, user_id, branch_id) AS position, * FROM (SELECT * FROM gone UNION ALL SELECT * FROM added) c
    )
    INSERT INTO realtime.event_log (commit_lsn, tx_index, xid, commit_time, table_name, op, branch_id, record, old_record)
    SELECT pg_current_wal_lsn(), -position, 0, now(), 'branch_member',
           CASE kind WHEN 0 THEN 'DELETE' ELSE 'INSERT' END, branch_id,
           CASE kind WHEN 0 THEN '{}'::json ELSE body END,
           CASE kind WHEN 0 THEN body ELSE '{}'::json END
    FROM changes ORDER BY position;
    GET DIAGNOSTICS appended = ROW_COUNT;
    RETURN appended;
END;
$$;

-- Idempotency keys are capped per principal: past the newest 10,000 (within the 24 h retention), the oldest are
-- forgotten, so that no caller can grow the table without bound. The caller deletes only its own rows (RLS).
GRANT DELETE ON realtime.idempotency_key TO realtime_authenticated, realtime_service;
CREATE INDEX idempotency_key_owner_created_idx ON realtime.idempotency_key (owner, created_at DESC, key);

CREATE FUNCTION realtime.cap_idempotency_keys() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM realtime.idempotency_key k
    WHERE k.owner = NEW.owner
      AND k.key IN (SELECT o.key FROM realtime.idempotency_key o WHERE o.owner = NEW.owner
                    ORDER BY o.created_at DESC, o.key DESC OFFSET 10000 LIMIT 100);
    RETURN NULL;
END;
$$;
CREATE TRIGGER idempotency_key_cap AFTER INSERT ON realtime.idempotency_key
FOR EACH ROW EXECUTE FUNCTION realtime.cap_idempotency_keys();
