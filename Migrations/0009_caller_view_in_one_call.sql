-- 0009: the first round trip of a REST write, with kept plans.
--
-- Before a write, the server reads the caller's memberships and the branch of each row the write names, and decides
-- the Swift policy with them. It sent that as one statement whose text varied with the rows named, so PostgreSQL
-- parsed and planned it for every write: `perf` on the request backends under W put 16 % of their CPU there, more than
-- its execution (5 %). `realtime.read_caller` is called by the same prepared statement every time; the memberships'
-- query is static PL/pgSQL (planned once per connection), and each table's lookup is prepared once per connection by
-- `realtime.prepared` (migration 0007).
--
-- It runs as the connecting role, as the statement did. `located_tables` come from the table registry's names only;
-- the ids reach the lookups as parameters. `branches` is a JSON array in the order of `located_tables`, with null for a
-- row that does not exist.

CREATE FUNCTION realtime.read_caller(
    caller_id text,
    located_tables text[],
    located_ids uuid[],
    OUT memberships text,
    OUT branches text
)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
DECLARE
    found uuid[] := '{}';
    branch uuid;
BEGIN
    SELECT coalesce(json_object_agg(m.branch_id, m.role), '{}')::text INTO memberships
    FROM branch_member AS m WHERE m.user_id = nullif(caller_id, '')::uuid;
    FOR i IN 1 .. coalesce(array_length(located_tables, 1), 0) LOOP
        EXECUTE realtime.prepared(format('SELECT branch_id FROM %I WHERE id = $1[1]::uuid', located_tables[i]),
                                  ARRAY[located_ids[i]::text])
        INTO branch;
        found := array_append(found, branch);
    END LOOP;
    branches := to_json(found)::text;
END
$$;

REVOKE EXECUTE ON FUNCTION realtime.read_caller(text, text[], uuid[]) FROM PUBLIC;
