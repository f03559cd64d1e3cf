-- 0002: who may read and write what, enforced by PostgreSQL itself.
--
-- The server runs every request as one of two non-login roles, with the caller's user id
-- set per transaction in `realtime.user_id`:
--   realtime_authenticated  a signed-in user; row-level security applies;
--   realtime_service        the service role; it bypasses row-level security.
-- The rules are the same as the server's Swift policy (Sources/Realtime/Policy):
--   viewers and above read a branch's rows;
--   editors and above write plans, tasks, client cards and attachments;
--   status history is written only by a change of a task's status (the trigger below);
--   admins manage the members of their branch.

-- Roles belong to the whole cluster, so another database's migration may create them at the
-- same moment: a duplicate is fine.
DO $roles$
BEGIN
    BEGIN
        CREATE ROLE realtime_authenticated NOLOGIN NOINHERIT;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    BEGIN
        CREATE ROLE realtime_service NOLOGIN NOINHERIT BYPASSRLS;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
END
$roles$;

-- The connecting role switches to the request roles with SET ROLE (a superuser already may).
DO $membership$
BEGIN
    IF NOT pg_has_role(current_user, 'realtime_authenticated', 'MEMBER') THEN
        EXECUTE format('GRANT realtime_authenticated TO %I', current_user);
    END IF;
    IF NOT pg_has_role(current_user, 'realtime_service', 'MEMBER') THEN
        EXECUTE format('GRANT realtime_service TO %I', current_user);
    END IF;
END
$membership$;

-- The caller, as set by the server for this transaction; NULL when unset.
CREATE FUNCTION realtime.current_user_id() RETURNS uuid
LANGUAGE sql STABLE
AS $$ SELECT nullif(current_setting('realtime.user_id', true), '')::uuid $$;

-- The caller's rank in a branch: 0 none, 1 viewer, 2 editor, 3 admin. SECURITY DEFINER so
-- that policies on branch_member can use it without recursing into their own policy.
CREATE FUNCTION realtime.member_rank(target_branch uuid) RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT coalesce(max(CASE role WHEN 'viewer' THEN 1 WHEN 'editor' THEN 2 WHEN 'admin' THEN 3 END), 0)
    FROM branch_member
    WHERE branch_id = target_branch AND user_id = realtime.current_user_id()
$$;

GRANT USAGE ON SCHEMA realtime TO realtime_authenticated, realtime_service;
GRANT USAGE ON SCHEMA public TO realtime_authenticated, realtime_service;
GRANT EXECUTE ON FUNCTION realtime.current_user_id() TO realtime_authenticated, realtime_service;
GRANT EXECUTE ON FUNCTION realtime.member_rank(uuid) TO realtime_authenticated, realtime_service;

-- The service role may do anything the API offers.
GRANT SELECT, INSERT, UPDATE, DELETE ON branch, app_user, branch_member, plan, task, client_card, attachment
    TO realtime_service;
GRANT SELECT ON status_history TO realtime_service;

-- Users: reads everywhere (filtered by policies), writes where the API allows them.
GRANT SELECT ON branch, app_user, branch_member, plan, task, client_card, attachment, status_history
    TO realtime_authenticated;
GRANT INSERT ON app_user TO realtime_authenticated;
GRANT INSERT, UPDATE, DELETE ON branch_member, plan, task, client_card, attachment TO realtime_authenticated;

GRANT SELECT, INSERT, UPDATE ON realtime.idempotency_key TO realtime_authenticated, realtime_service;

ALTER TABLE branch ENABLE ROW LEVEL SECURITY;
ALTER TABLE branch FORCE ROW LEVEL SECURITY;
ALTER TABLE app_user ENABLE ROW LEVEL SECURITY;
ALTER TABLE app_user FORCE ROW LEVEL SECURITY;
ALTER TABLE branch_member ENABLE ROW LEVEL SECURITY;
ALTER TABLE branch_member FORCE ROW LEVEL SECURITY;
ALTER TABLE plan ENABLE ROW LEVEL SECURITY;
ALTER TABLE plan FORCE ROW LEVEL SECURITY;
ALTER TABLE task ENABLE ROW LEVEL SECURITY;
ALTER TABLE task FORCE ROW LEVEL SECURITY;
ALTER TABLE client_card ENABLE ROW LEVEL SECURITY;
ALTER TABLE client_card FORCE ROW LEVEL SECURITY;
ALTER TABLE status_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE status_history FORCE ROW LEVEL SECURITY;
ALTER TABLE attachment ENABLE ROW LEVEL SECURITY;
ALTER TABLE attachment FORCE ROW LEVEL SECURITY;
ALTER TABLE realtime.idempotency_key ENABLE ROW LEVEL SECURITY;
ALTER TABLE realtime.idempotency_key FORCE ROW LEVEL SECURITY;

-- The table owner (who ran these migrations) keeps full access under FORCE, so that the
-- server's own maintenance, the triggers below and other writers of the database keep
-- working when the owner is not a superuser. The request roles are not members of it.
DO $owner$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['branch', 'app_user', 'branch_member', 'plan', 'task', 'client_card',
                             'status_history', 'attachment', 'realtime.idempotency_key'] LOOP
        EXECUTE format('CREATE POLICY owner_all ON %s TO %I USING (true) WITH CHECK (true)', t, current_user);
    END LOOP;
END
$owner$;

-- branch: members see their branches.
CREATE POLICY branch_read ON branch FOR SELECT TO realtime_authenticated
    USING (realtime.member_rank(id) >= 1);

-- app_user: a user sees themself, the people of their branches and the users they created.
-- Admins create users (and then add them to their branch).
CREATE POLICY app_user_read ON app_user FOR SELECT TO realtime_authenticated
    USING (
        id = realtime.current_user_id()
        OR created_by = realtime.current_user_id()
        OR EXISTS (
            SELECT FROM branch_member mine
            JOIN branch_member theirs ON theirs.branch_id = mine.branch_id
            WHERE mine.user_id = realtime.current_user_id() AND theirs.user_id = app_user.id
        )
    );
CREATE POLICY app_user_create ON app_user FOR INSERT TO realtime_authenticated
    WITH CHECK (EXISTS (SELECT FROM branch_member WHERE user_id = realtime.current_user_id() AND role = 'admin'));

-- branch_member: members see their branch's members; admins manage them.
CREATE POLICY branch_member_read ON branch_member FOR SELECT TO realtime_authenticated
    USING (realtime.member_rank(branch_id) >= 1);
CREATE POLICY branch_member_insert ON branch_member FOR INSERT TO realtime_authenticated
    WITH CHECK (realtime.member_rank(branch_id) >= 3);
CREATE POLICY branch_member_update ON branch_member FOR UPDATE TO realtime_authenticated
    USING (realtime.member_rank(branch_id) >= 3)
    WITH CHECK (realtime.member_rank(branch_id) >= 3);
CREATE POLICY branch_member_delete ON branch_member FOR DELETE TO realtime_authenticated
    USING (realtime.member_rank(branch_id) >= 3);

-- plan, task, client_card, attachment: viewers read, editors write.
CREATE POLICY plan_read ON plan FOR SELECT TO realtime_authenticated USING (realtime.member_rank(branch_id) >= 1);
CREATE POLICY plan_insert ON plan FOR INSERT TO realtime_authenticated WITH CHECK (realtime.member_rank(branch_id) >= 2);
CREATE POLICY plan_update ON plan FOR UPDATE TO realtime_authenticated
    USING (realtime.member_rank(branch_id) >= 2) WITH CHECK (realtime.member_rank(branch_id) >= 2);
CREATE POLICY plan_delete ON plan FOR DELETE TO realtime_authenticated USING (realtime.member_rank(branch_id) >= 2);

CREATE POLICY task_read ON task FOR SELECT TO realtime_authenticated USING (realtime.member_rank(branch_id) >= 1);
CREATE POLICY task_insert ON task FOR INSERT TO realtime_authenticated WITH CHECK (realtime.member_rank(branch_id) >= 2);
CREATE POLICY task_update ON task FOR UPDATE TO realtime_authenticated
    USING (realtime.member_rank(branch_id) >= 2) WITH CHECK (realtime.member_rank(branch_id) >= 2);
CREATE POLICY task_delete ON task FOR DELETE TO realtime_authenticated USING (realtime.member_rank(branch_id) >= 2);

CREATE POLICY client_card_read ON client_card FOR SELECT TO realtime_authenticated
    USING (realtime.member_rank(branch_id) >= 1);
CREATE POLICY client_card_insert ON client_card FOR INSERT TO realtime_authenticated
    WITH CHECK (realtime.member_rank(branch_id) >= 2);
CREATE POLICY client_card_update ON client_card FOR UPDATE TO realtime_authenticated
    USING (realtime.member_rank(branch_id) >= 2) WITH CHECK (realtime.member_rank(branch_id) >= 2);
CREATE POLICY client_card_delete ON client_card FOR DELETE TO realtime_authenticated
    USING (realtime.member_rank(branch_id) >= 2);

CREATE POLICY attachment_read ON attachment FOR SELECT TO realtime_authenticated
    USING (realtime.member_rank(branch_id) >= 1);
CREATE POLICY attachment_insert ON attachment FOR INSERT TO realtime_authenticated
    WITH CHECK (realtime.member_rank(branch_id) >= 2);
CREATE POLICY attachment_update ON attachment FOR UPDATE TO realtime_authenticated
    USING (realtime.member_rank(branch_id) >= 2) WITH CHECK (realtime.member_rank(branch_id) >= 2);
CREATE POLICY attachment_delete ON attachment FOR DELETE TO realtime_authenticated
    USING (realtime.member_rank(branch_id) >= 2);

-- status_history: read by viewers; the request roles have no INSERT privilege at all.
CREATE POLICY status_history_read ON status_history FOR SELECT TO realtime_authenticated
    USING (realtime.member_rank(branch_id) >= 1);

-- Idempotency records belong to the principal that made them.
CREATE POLICY idempotency_key_own ON realtime.idempotency_key TO realtime_authenticated
    USING (owner = current_setting('realtime.principal', true))
    WITH CHECK (owner = current_setting('realtime.principal', true));

-- Stamps updated_at and updated_by on every write, whoever the writer is: the server
-- passes its own updated_at (last-write-wins); another writer that leaves it unchanged gets the clock time.
-- clock_timestamp(), not now(): taken under the row lock, so that a later change gets a later time.
CREATE FUNCTION realtime.stamp_row() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := clock_timestamp();
    END IF;
    IF NEW.updated_at IS NULL OR NEW.updated_at > clock_timestamp() THEN
        NEW.updated_at := clock_timestamp();
    END IF;
    NEW.updated_by := coalesce(realtime.current_user_id(), NEW.updated_by);
    RETURN NEW;
END
$$;

CREATE TRIGGER branch_stamp BEFORE INSERT OR UPDATE ON branch FOR EACH ROW EXECUTE FUNCTION realtime.stamp_row();
CREATE TRIGGER app_user_stamp BEFORE INSERT OR UPDATE ON app_user FOR EACH ROW EXECUTE FUNCTION realtime.stamp_row();
CREATE TRIGGER branch_member_stamp BEFORE INSERT OR UPDATE ON branch_member
    FOR EACH ROW EXECUTE FUNCTION realtime.stamp_row();
CREATE TRIGGER plan_stamp BEFORE INSERT OR UPDATE ON plan FOR EACH ROW EXECUTE FUNCTION realtime.stamp_row();
CREATE TRIGGER task_stamp BEFORE INSERT OR UPDATE ON task FOR EACH ROW EXECUTE FUNCTION realtime.stamp_row();
CREATE TRIGGER client_card_stamp BEFORE INSERT OR UPDATE ON client_card
    FOR EACH ROW EXECUTE FUNCTION realtime.stamp_row();
CREATE TRIGGER attachment_stamp BEFORE INSERT OR UPDATE ON attachment
    FOR EACH ROW EXECUTE FUNCTION realtime.stamp_row();

-- A change of a task's status writes its history row in the same transaction, whoever
-- made the change. SECURITY DEFINER: the request roles cannot insert history themselves.
CREATE FUNCTION realtime.record_status_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE
    previous text;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.status IS NOT DISTINCT FROM OLD.status THEN
            RETURN NULL;
        END IF;
        previous := OLD.status;
    END IF;
    -- clock_timestamp(), not now(): this runs under the task's row lock, so history times follow the order of the
    -- changes even when the transactions began in another order.
    INSERT INTO status_history (branch_id, plan_id, task_id, from_status, to_status, changed_at, changed_by,
                                created_at, updated_at, updated_by)
    VALUES (NEW.branch_id, NEW.plan_id, NEW.id, previous, NEW.status, clock_timestamp(), NEW.updated_by,
            clock_timestamp(), clock_timestamp(), NEW.updated_by);
    RETURN NULL;
END
$$;

CREATE TRIGGER task_status_history AFTER INSERT OR UPDATE OF status ON task
    FOR EACH ROW EXECUTE FUNCTION realtime.record_status_change();
