-- 0001: the planning data model.
--
-- Every data table has a uuid primary key, and every row of a branch's data carries
-- branch_id, created_at, updated_at and updated_by. The database itself enforces the
-- relations the API promises: a task's branch is its plan's branch, a task ends after it
-- starts, and an attachment has exactly one parent in its own branch.

CREATE SCHEMA IF NOT EXISTS realtime;

CREATE TABLE branch (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by uuid
);

CREATE TABLE app_user (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    created_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by uuid
);

CREATE TABLE branch_member (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    branch_id uuid NOT NULL REFERENCES branch (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES app_user (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by uuid,
    UNIQUE (branch_id, user_id)
);
CREATE INDEX branch_member_user_id_idx ON branch_member (user_id);

CREATE TABLE plan (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    branch_id uuid NOT NULL REFERENCES branch (id) ON DELETE CASCADE,
    title text NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    period_start date NOT NULL,
    period_end date NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by uuid,
    CONSTRAINT plan_period_check CHECK (period_end >= period_start),
    UNIQUE (id, branch_id)
);
CREATE INDEX plan_branch_id_idx ON plan (branch_id);
CREATE INDEX plan_period_start_idx ON plan (period_start);
CREATE INDEX plan_updated_at_idx ON plan (updated_at);

CREATE TABLE client_card (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    branch_id uuid NOT NULL REFERENCES branch (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 500),
    phone text CHECK (length(phone) <= 50),
    notes text CHECK (length(notes) <= 10000),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by uuid,
    UNIQUE (id, branch_id)
);
CREATE INDEX client_card_branch_id_idx ON client_card (branch_id);
CREATE INDEX client_card_updated_at_idx ON client_card (updated_at);

CREATE TABLE task (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    branch_id uuid NOT NULL,
    plan_id uuid NOT NULL,
    title text NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    starts_at timestamptz NOT NULL,
    ends_at timestamptz NOT NULL,
    status text NOT NULL DEFAULT 'taken' CHECK (status IN ('taken', 'done', 'posted', 'edited')),
    client_card_id uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by uuid,
    CONSTRAINT task_period_check CHECK (ends_at > starts_at),
    -- A task's branch is its plan's branch: the pair must exist in plan.
    CONSTRAINT task_plan_fkey FOREIGN KEY (plan_id, branch_id)
        REFERENCES plan (id, branch_id) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT task_client_card_fkey FOREIGN KEY (client_card_id, branch_id)
        REFERENCES client_card (id, branch_id) ON DELETE SET NULL (client_card_id),
    UNIQUE (id, branch_id)
);
CREATE INDEX task_branch_id_idx ON task (branch_id);
CREATE INDEX task_plan_id_idx ON task (plan_id, starts_at);
CREATE INDEX task_client_card_id_idx ON task (client_card_id) WHERE client_card_id IS NOT NULL;
CREATE INDEX task_status_idx ON task (plan_id, status);
CREATE INDEX task_updated_at_idx ON task (updated_at);

CREATE TABLE status_history (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    branch_id uuid NOT NULL,
    plan_id uuid NOT NULL,
    task_id uuid NOT NULL,
    from_status text CHECK (from_status IN ('taken', 'done', 'posted', 'edited')),
    to_status text NOT NULL CHECK (to_status IN ('taken', 'done', 'posted', 'edited')),
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by uuid,
    CONSTRAINT status_history_task_fkey FOREIGN KEY (task_id, branch_id)
        REFERENCES task (id, branch_id) ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE INDEX status_history_task_id_idx ON status_history (task_id, changed_at);
CREATE INDEX status_history_plan_id_idx ON status_history (plan_id, changed_at);
CREATE INDEX status_history_branch_id_idx ON status_history (branch_id);

CREATE TABLE attachment (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    branch_id uuid NOT NULL REFERENCES branch (id) ON DELETE CASCADE,
    plan_id uuid,
    task_id uuid,
    client_card_id uuid,
    file_name text NOT NULL CHECK (length(file_name) BETWEEN 1 AND 255),
    content_type text NOT NULL CHECK (length(content_type) BETWEEN 1 AND 255),
    byte_size bigint NOT NULL CHECK (byte_size >= 0),
    storage_url text NOT NULL CHECK (length(storage_url) BETWEEN 1 AND 2048),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by uuid,
    -- Exactly one parent, and that parent lives in the attachment's branch.
    CONSTRAINT attachment_one_parent_check CHECK (num_nonnulls(plan_id, task_id, client_card_id) = 1),
    CONSTRAINT attachment_plan_fkey FOREIGN KEY (plan_id, branch_id)
        REFERENCES plan (id, branch_id) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT attachment_task_fkey FOREIGN KEY (task_id, branch_id)
        REFERENCES task (id, branch_id) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT attachment_client_card_fkey FOREIGN KEY (client_card_id, branch_id)
        REFERENCES client_card (id, branch_id) ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE INDEX attachment_branch_id_idx ON attachment (branch_id);
CREATE INDEX attachment_plan_id_idx ON attachment (plan_id) WHERE plan_id IS NOT NULL;
CREATE INDEX attachment_task_id_idx ON attachment (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX attachment_client_card_id_idx ON attachment (client_card_id) WHERE client_card_id IS NOT NULL;

-- Idempotent POSTs: the first response to a key is kept and replayed.
CREATE TABLE realtime.idempotency_key (
    owner text NOT NULL,
    key text NOT NULL,
    request_hash text NOT NULL,
    status integer,
    response text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_key_created_at_idx ON realtime.idempotency_key (created_at);
