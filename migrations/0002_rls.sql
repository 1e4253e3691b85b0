-- 0002_rls.sql — roles, row-level security, grants and the few SECURITY DEFINER entry points.
--
-- The model (DESIGN.md §6, docs/data-model.md):
--   * agently_api (control plane) serves users. It sees only the rows of the user named by
--     the transaction-local setting agently.user_id, which the API sets per transaction
--     with set_config('agently.user_id', <id>, true). No setting means no rows: a query
--     that forgot to set it fails closed, not open.
--   * agently_worker (data plane: worker and dispatcher) is trusted. It claims runs of
--     every user, batches many users' checkpoints into one commit and delivers every
--     user's notifications, so per-user RLS cannot express its job; it gets explicit
--     "all rows" policies on exactly the tables it works on, and grants only for the
--     commands it needs. The executor — the untrusted part, which reads hostile web
--     content — never connects to the database at all.
--   * neither role owns anything, is a superuser or BYPASSRLS, and neither may create
--     objects, so RLS and grants are the whole story for them. Every user-owned table is
--     FORCE ROW LEVEL SECURITY, so even the owner goes through policies.
--   * the few operations that must work before a user is known (authenticate a token,
--     fire a webhook trigger) or across users (admin functions) are SECURITY DEFINER
--     functions with a pinned search_path, executable by agently_api only.
--
-- Roles are cluster-global while this file runs once per database, so they are created
-- only if missing (tests create many databases in one cluster).

-- ---------------------------------------------------------------------------------------
-- Roles
-- ---------------------------------------------------------------------------------------

-- Both roles start NOLOGIN: the embedded setup (agently up) ALTERs them to LOGIN, external
-- deployments GRANT them to their own login roles. Creating them needs CREATEROLE (or
-- superuser); a cluster where they already exist needs neither.
--
-- Migrations of two databases of one cluster may run at the same time (parallel tests):
-- both see the role missing, the second CREATE ROLE waits for the first transaction and
-- then fails with unique_violation (or duplicate_object). Either way the role now exists,
-- which is all this block needs.
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['agently_api', 'agently_worker'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB '
                               'NOCREATEROLE NOREPLICATION', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;   -- created concurrently by another database's migration
            END;
        END IF;
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------
-- The tenant of the current transaction
-- ---------------------------------------------------------------------------------------

-- NULL when agently.user_id is unset or empty (a setting made with set_config(..., true)
-- reverts to '' at the end of the transaction, not to "unset"), and "user_id = NULL" is
-- never true: no setting, no rows. A malformed value raises an error rather than matching.
--
-- Deliberately a plain, STABLE, SECURITY INVOKER SQL function with no SET clause so the
-- planner inlines it into policies: "user_id = agently_current_user_id()" then becomes an
-- index condition evaluated once per scan, not a function call per row. Its body names
-- pg_catalog explicitly because it runs under the caller's search_path.
CREATE FUNCTION agently_current_user_id()
RETURNS uuid
LANGUAGE sql
STABLE
PARALLEL SAFE
AS $$
    SELECT NULLIF(pg_catalog.current_setting('agently.user_id', true), '')::pg_catalog.uuid
$$;
REVOKE ALL ON FUNCTION agently_current_user_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_current_user_id() TO agently_api, agently_worker;
COMMENT ON FUNCTION agently_current_user_id() IS
    'Tenant of the current transaction: NULLIF(current_setting(''agently.user_id'', true), '''')::uuid. NULL (no rows) when unset.';

-- ---------------------------------------------------------------------------------------
-- Row-level security on every user-owned table
-- ---------------------------------------------------------------------------------------

ALTER TABLE users            ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_tokens       ENABLE ROW LEVEL SECURITY;
ALTER TABLE agents           ENABLE ROW LEVEL SECURITY;
ALTER TABLE workflows        ENABLE ROW LEVEL SECURITY;
ALTER TABLE workflow_runs    ENABLE ROW LEVEL SECURITY;
ALTER TABLE node_runs        ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_runs       ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_journal    ENABLE ROW LEVEL SECURITY;
ALTER TABLE logs             ENABLE ROW LEVEL SECURITY;
ALTER TABLE signals          ENABLE ROW LEVEL SECURITY;
ALTER TABLE approvals        ENABLE ROW LEVEL SECURITY;
ALTER TABLE notifications    ENABLE ROW LEVEL SECURITY;
ALTER TABLE artifacts        ENABLE ROW LEVEL SECURITY;
ALTER TABLE browser_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE secrets          ENABLE ROW LEVEL SECURITY;
ALTER TABLE schedules        ENABLE ROW LEVEL SECURITY;
ALTER TABLE triggers         ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_idempotency  ENABLE ROW LEVEL SECURITY;

-- FORCE: the table owner is subject to the policies too, so a query run with the owner's
-- connection by mistake sees nothing instead of everything.
ALTER TABLE users            FORCE ROW LEVEL SECURITY;
ALTER TABLE api_tokens       FORCE ROW LEVEL SECURITY;
ALTER TABLE agents           FORCE ROW LEVEL SECURITY;
ALTER TABLE workflows        FORCE ROW LEVEL SECURITY;
ALTER TABLE workflow_runs    FORCE ROW LEVEL SECURITY;
ALTER TABLE node_runs        FORCE ROW LEVEL SECURITY;
ALTER TABLE agent_runs       FORCE ROW LEVEL SECURITY;
ALTER TABLE agent_journal    FORCE ROW LEVEL SECURITY;
ALTER TABLE logs             FORCE ROW LEVEL SECURITY;
ALTER TABLE signals          FORCE ROW LEVEL SECURITY;
ALTER TABLE approvals        FORCE ROW LEVEL SECURITY;
ALTER TABLE notifications    FORCE ROW LEVEL SECURITY;
ALTER TABLE artifacts        FORCE ROW LEVEL SECURITY;
ALTER TABLE browser_sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE secrets          FORCE ROW LEVEL SECURITY;
ALTER TABLE schedules        FORCE ROW LEVEL SECURITY;
ALTER TABLE triggers         FORCE ROW LEVEL SECURITY;
ALTER TABLE api_idempotency  FORCE ROW LEVEL SECURITY;

-- Log partitions (logs_default and the monthly ones) were given ENABLE + FORCE and no
-- policies when 0001 created them: read through logs, the parent's policies apply (Postgres
-- ignores a partition's own RLS then); read directly, nobody but the owner has a grant,
-- and the owner is refused every row. Re-assert it here in case of hand-made partitions.
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'logs'::regclass LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', part);
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', part);
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Policies for agently_api: the current user's rows, nothing else
-- ---------------------------------------------------------------------------------------
-- FOR ALL with the same expression in USING and WITH CHECK: a user can neither see, nor
-- update, nor delete another user's rows, nor insert or move a row into another user.
-- What the role may do at all (SELECT only, INSERT, ...) is decided by the grants below.

CREATE POLICY agently_api_self ON users
    FOR ALL TO agently_api
    USING (id = agently_current_user_id())
    WITH CHECK (id = agently_current_user_id());

CREATE POLICY agently_api_tenant ON api_tokens FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON agents FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON workflows FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON workflow_runs FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON node_runs FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON agent_runs FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON agent_journal FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON signals FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON approvals FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON notifications FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON artifacts FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON browser_sessions FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON secrets FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON schedules FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON triggers FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant ON api_idempotency FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());

-- logs has no foreign key to workflow_runs (see 0001), so the tenant check alone would let
-- a user insert an event carrying someone else's run id under their own user_id — invisible
-- to the victim, but taking the victim's next seq and breaking their run's event stream.
-- The insert policy therefore also requires the run to be the user's own (the subquery runs
-- under the API's own workflow_runs policy). Reads need no join.
CREATE POLICY agently_api_tenant_read ON logs
    FOR SELECT TO agently_api
    USING (user_id = agently_current_user_id());
CREATE POLICY agently_api_tenant_append ON logs
    FOR INSERT TO agently_api
    WITH CHECK (
        user_id = agently_current_user_id()
        AND EXISTS (SELECT 1
                    FROM workflow_runs r
                    WHERE r.id = logs.workflow_run_id
                      AND r.user_id = logs.user_id
                      AND r.created_at = logs.run_created_at));

-- ---------------------------------------------------------------------------------------
-- Policies for agently_worker: the trusted data plane sees every user's rows
-- ---------------------------------------------------------------------------------------
-- Why not per-user RLS for the worker too: a claim takes the oldest due runs of all users
-- in one statement, a lease renewal covers every run a worker holds, checkpoints of many
-- users' runs share one commit, and the dispatcher delivers every user's notifications and
-- fires every user's schedules. Tenant isolation on the data plane comes from the process
-- split instead: the worker acts only for the run it holds a lease on (fenced by epoch),
-- and the untrusted executor has no database access. The grants below still limit the
-- worker to the commands it needs (no DELETE on history, no write to definitions/secrets).

CREATE POLICY agently_worker_all ON workflow_runs    FOR ALL TO agently_worker USING (true) WITH CHECK (true);
CREATE POLICY agently_worker_all ON node_runs        FOR ALL TO agently_worker USING (true) WITH CHECK (true);
CREATE POLICY agently_worker_all ON agent_runs       FOR ALL TO agently_worker USING (true) WITH CHECK (true);
CREATE POLICY agently_worker_all ON agent_journal    FOR ALL TO agently_worker USING (true) WITH CHECK (true);
CREATE POLICY agently_worker_all ON logs             FOR ALL TO agently_worker USING (true) WITH CHECK (true);
CREATE POLICY agently_worker_all ON signals          FOR ALL TO agently_worker USING (true) WITH CHECK (true);
CREATE POLICY agently_worker_all ON approvals        FOR ALL TO agently_worker USING (true) WITH CHECK (true);
CREATE POLICY agently_worker_all ON notifications    FOR ALL TO agently_worker USING (true) WITH CHECK (true);
CREATE POLICY agently_worker_all ON artifacts        FOR ALL TO agently_worker USING (true) WITH CHECK (true);
CREATE POLICY agently_worker_all ON browser_sessions FOR ALL TO agently_worker USING (true) WITH CHECK (true);
CREATE POLICY agently_worker_all ON schedules        FOR ALL TO agently_worker USING (true) WITH CHECK (true);
CREATE POLICY agently_worker_all ON triggers         FOR ALL TO agently_worker USING (true) WITH CHECK (true);
-- Read-only for the worker: definitions it executes, secrets it decrypts at the moment of
-- use, users (e.g. to skip runs of disabled users). SELECT-only policies, so even a wrong
-- grant could not turn into a write.
CREATE POLICY agently_worker_read ON users     FOR SELECT TO agently_worker USING (true);
CREATE POLICY agently_worker_read ON workflows FOR SELECT TO agently_worker USING (true);
CREATE POLICY agently_worker_read ON agents    FOR SELECT TO agently_worker USING (true);
CREATE POLICY agently_worker_read ON secrets   FOR SELECT TO agently_worker USING (true);
-- The dispatcher purges expired idempotency keys of all users (agently_purge_api_idempotency).
CREATE POLICY agently_worker_read ON api_idempotency  FOR SELECT TO agently_worker USING (true);
CREATE POLICY agently_worker_purge ON api_idempotency FOR DELETE TO agently_worker USING (true);

-- ---------------------------------------------------------------------------------------
-- Policies for the owner, used only by the SECURITY DEFINER functions below
-- ---------------------------------------------------------------------------------------
-- A SECURITY DEFINER function runs as the table owner, and FORCE ROW LEVEL SECURITY makes
-- the owner subject to policies — with none, a non-superuser owner would see no rows and
-- agently_authenticate() could never find a token. (A superuser owner, as in the embedded
-- setup, bypasses RLS anyway.) So the owner gets access to exactly the tables those
-- functions and the first-admin bootstrap read or write: users, api_tokens, triggers.
-- The owner's name is only known at migration time, hence the dynamic SQL.
DO $$
DECLARE
    table_name text;
BEGIN
    FOREACH table_name IN ARRAY ARRAY['users', 'api_tokens', 'triggers'] LOOP
        EXECUTE format('CREATE POLICY agently_owner_definer ON %I FOR ALL TO %I '
                       'USING (true) WITH CHECK (true)', table_name, current_user);
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Grants
-- ---------------------------------------------------------------------------------------
-- Nothing is granted to PUBLIC. No TRUNCATE (it ignores RLS), no REFERENCES, no TRIGGER,
-- no CREATE on the schema. Log partitions get no grants (access goes through logs).

DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO agently_api, agently_worker', current_schema());
    -- Clusters upgraded from before Postgres 15 still let PUBLIC create in "public".
    IF has_schema_privilege('agently_api', current_schema(), 'CREATE')
       OR has_schema_privilege('agently_worker', current_schema(), 'CREATE') THEN
        EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
    END IF;
END
$$;

-- agently_api -------------------------------------------------------------------------

GRANT SELECT ON users TO agently_api;   -- its own row; user admin goes through functions
-- Tokens are created by agently_admin_create_token() (one place decides who may mint a
-- token for whom); the API lists, renames, revokes and deletes its own.
GRANT SELECT, DELETE ON api_tokens TO agently_api;
GRANT UPDATE (name, revoked_at) ON api_tokens TO agently_api;
-- Definitions are immutable versions: insert a new version, never update one.
GRANT SELECT, INSERT, DELETE ON agents TO agently_api;
GRANT SELECT, INSERT, DELETE ON workflows TO agently_api;
-- Runs: the API creates runs and records requests (cancel, pause, resume, budget raise,
-- wake-up), but may not write the lease and fencing columns (claimed_by, lease_expires_at,
-- lease_epoch, attempt), engine_state, output, cost or token totals: only the worker
-- holding the lease writes those. Together with the CHECK that ties status 'running' to a
-- lease, this means the API cannot forge or steal a lease, nor move a running run out of
-- 'running' behind its worker's back.
GRANT SELECT ON workflow_runs TO agently_api;
GRANT INSERT (id, user_id, workflow_id, workflow_name, workflow_version, status, priority,
              run_at, idempotency_key, input, timeout_at, rerun_of, rerun_from_node, budgets)
    ON workflow_runs TO agently_api;
GRANT UPDATE (status, run_at, priority, cancel_requested, pause_requested, wake_requested,
              wait_reason, error, finished_at, updated_at, event_seq, budgets, timeout_at)
    ON workflow_runs TO agently_api;
GRANT SELECT ON node_runs, agent_runs, agent_journal, artifacts, browser_sessions TO agently_api;
-- INSERT for control-plane events (agently_append_event_unfenced, SECURITY INVOKER).
GRANT SELECT, INSERT ON logs TO agently_api;
GRANT SELECT, INSERT ON signals TO agently_api;
GRANT SELECT, UPDATE ON approvals TO agently_api;
GRANT SELECT, INSERT ON notifications TO agently_api;
-- Secrets: the API encrypts and stores values but can never read ciphertext, nonce or
-- wrapped key back: only names and metadata. A compromised control plane cannot even
-- exfiltrate ciphertext; only the worker reads it, to decrypt at the moment of use.
GRANT SELECT (id, user_id, name, key_version, created_at, updated_at) ON secrets TO agently_api;
GRANT INSERT, UPDATE, DELETE ON secrets TO agently_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON schedules, triggers, api_idempotency TO agently_api;
GRANT SELECT ON agently_workers TO agently_api;

-- agently_worker ----------------------------------------------------------------------

GRANT SELECT ON users, workflows, agents, secrets TO agently_worker;
GRANT SELECT, INSERT, UPDATE ON workflow_runs, node_runs, agent_runs, agent_journal,
                                signals, approvals, notifications, browser_sessions
    TO agently_worker;
GRANT SELECT, INSERT ON logs, artifacts TO agently_worker;   -- append-only
GRANT SELECT, UPDATE ON schedules, triggers TO agently_worker;
GRANT SELECT, DELETE ON api_idempotency TO agently_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON agently_workers TO agently_worker;

-- Log partition maintenance is the dispatcher's job (SECURITY DEFINER, see 0001).
GRANT EXECUTE ON FUNCTION agently_ensure_log_partitions(integer) TO agently_worker;

-- ---------------------------------------------------------------------------------------
-- SECURITY DEFINER entry points for the API
-- ---------------------------------------------------------------------------------------
-- Each runs as the owner, has its search_path pinned to (pg_catalog, <schema>, pg_temp) at
-- the end of this file (pg_temp last, so nobody can shadow a table with a temporary one),
-- is revoked from PUBLIC and executable by agently_api only. Parameters that share a name
-- with a column are always written function-qualified (agently_authenticate.token_hash):
-- in a SQL function an unqualified name would silently mean the column.

-- Looks a bearer token up by its sha256 before the user is known (which is why it cannot
-- be an ordinary RLS query). Zero rows for an unknown, revoked or expired token or a
-- disabled user. last_used_at is written at most once a minute per token, and never
-- waited for: if another request is updating the same token right now, this one skips.
CREATE FUNCTION agently_authenticate(token_hash bytea)
RETURNS TABLE (user_id uuid, user_name text, is_admin boolean, token_id uuid)
LANGUAGE sql
SECURITY DEFINER
AS $$
    WITH found AS (
        SELECT t.id AS token_id, u.id AS user_id, u.name AS user_name, u.is_admin
        FROM api_tokens t
        JOIN users u ON u.id = t.user_id
        WHERE t.token_hash = agently_authenticate.token_hash
          AND t.revoked_at IS NULL
          AND (t.expires_at IS NULL OR t.expires_at > now())
          AND u.disabled_at IS NULL
    ), touched AS (
        UPDATE api_tokens t
        SET last_used_at = now()
        WHERE t.id IN (SELECT l.id
                       FROM api_tokens l
                       JOIN found f ON f.token_id = l.id
                       WHERE l.last_used_at IS NULL
                          OR l.last_used_at < now() - interval '1 minute'
                       FOR UPDATE OF l SKIP LOCKED)
    )
    SELECT f.user_id, f.user_name, f.is_admin, f.token_id FROM found f
$$;

-- Raises insufficient_privilege (42501) unless caller is an enabled admin; a duplicate name
-- raises unique_violation (23505), a malformed one check_violation (23514).
CREATE FUNCTION agently_admin_create_user(caller uuid, name text, is_admin boolean)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    new_id uuid;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM users u
                   WHERE u.id = caller AND u.is_admin AND u.disabled_at IS NULL) THEN
        RAISE EXCEPTION 'permission denied: only an administrator can create users'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO users (name, is_admin)
    VALUES (agently_admin_create_user.name, coalesce(agently_admin_create_user.is_admin, false))
    RETURNING users.id INTO new_id;
    RETURN new_id;
END;
$$;

CREATE FUNCTION agently_admin_list_users(caller uuid)
RETURNS TABLE (id uuid, name text, is_admin boolean, created_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
STABLE
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM users u
                   WHERE u.id = caller AND u.is_admin AND u.disabled_at IS NULL) THEN
        RAISE EXCEPTION 'permission denied: only an administrator can list users'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN QUERY
        SELECT u.id, u.name, u.is_admin, u.created_at
        FROM users u
        ORDER BY u.name;
END;
$$;

-- A user may mint a token for themselves; only an admin for someone else. The caller must
-- be enabled. An unknown for_user raises foreign_key_violation (23503).
CREATE FUNCTION agently_admin_create_token(caller uuid, for_user uuid, name text,
                                           token_hash bytea, token_prefix text,
                                           expires_at timestamptz)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    caller_is_admin boolean;
    new_id uuid;
BEGIN
    SELECT u.is_admin INTO caller_is_admin
    FROM users u
    WHERE u.id = caller AND u.disabled_at IS NULL;
    IF NOT FOUND OR for_user IS NULL OR (for_user <> caller AND NOT caller_is_admin) THEN
        RAISE EXCEPTION 'permission denied: cannot create a token for another user'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO api_tokens (user_id, name, token_hash, token_prefix, expires_at)
    VALUES (for_user,
            agently_admin_create_token.name,
            agently_admin_create_token.token_hash,
            agently_admin_create_token.token_prefix,
            agently_admin_create_token.expires_at)
    RETURNING api_tokens.id INTO new_id;
    RETURN new_id;
END;
$$;

-- Webhook triggers are called by outside systems with no API token: the trigger id and
-- the sha256 of its secret are all the API has before it knows the user. Returns the
-- owner and workflow to start (the API then sets agently.user_id and creates the run),
-- or zero rows for an unknown/disabled trigger, a wrong secret or a disabled user.
CREATE FUNCTION agently_fire_trigger(trigger_id uuid, secret_hash bytea)
RETURNS TABLE (user_id uuid, workflow_name text)
LANGUAGE sql
SECURITY DEFINER
AS $$
    UPDATE triggers t
    SET last_fired_at = now()
    FROM users u
    WHERE t.id = agently_fire_trigger.trigger_id
      AND t.secret_hash = agently_fire_trigger.secret_hash
      AND t.enabled
      AND u.id = t.user_id
      AND u.disabled_at IS NULL
    RETURNING t.user_id, t.workflow_name
$$;

-- First start (agently up): create the first administrator and its token. Does nothing and
-- returns NULL once any admin exists, so it is safe to call on every start. Owner only
-- (the same connection that runs migrations); not granted to any role.
CREATE FUNCTION agently_bootstrap_admin(name text, token_hash bytea, token_prefix text)
RETURNS uuid
LANGUAGE plpgsql
AS $$
DECLARE
    new_id uuid;
BEGIN
    -- Two first starts racing must not both create an admin.
    PERFORM pg_advisory_xact_lock(hashtext('agently_bootstrap_admin'));
    IF EXISTS (SELECT 1 FROM users u WHERE u.is_admin) THEN
        RETURN NULL;
    END IF;
    INSERT INTO users (name, is_admin)
    VALUES (agently_bootstrap_admin.name, true)
    RETURNING users.id INTO new_id;
    INSERT INTO api_tokens (user_id, name, token_hash, token_prefix)
    VALUES (new_id, 'bootstrap', agently_bootstrap_admin.token_hash,
            agently_bootstrap_admin.token_prefix);
    RETURN new_id;
END;
$$;

REVOKE ALL ON FUNCTION agently_authenticate(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_admin_create_user(uuid, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_admin_list_users(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_admin_create_token(uuid, uuid, text, bytea, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_fire_trigger(uuid, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_bootstrap_admin(text, bytea, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_authenticate(bytea) TO agently_api;
GRANT EXECUTE ON FUNCTION agently_admin_create_user(uuid, text, boolean) TO agently_api;
GRANT EXECUTE ON FUNCTION agently_admin_list_users(uuid) TO agently_api;
GRANT EXECUTE ON FUNCTION agently_admin_create_token(uuid, uuid, text, bytea, text, timestamptz) TO agently_api;
GRANT EXECUTE ON FUNCTION agently_fire_trigger(uuid, bytea) TO agently_api;

-- ---------------------------------------------------------------------------------------
-- Pin search_path on every agently_* function of this schema
-- ---------------------------------------------------------------------------------------
-- Done here rather than with a literal SET clause on each CREATE FUNCTION because the
-- schema is whatever `agently migrate` ran in (normally "public"). pg_catalog first so
-- built-ins cannot be shadowed; pg_temp last so a temporary table cannot stand in for one
-- of ours. agently_current_user_id() is skipped on purpose: a SET clause would stop the
-- planner from inlining it into every policy (its body is schema-independent anyway).
-- 0003 and later migrations repeat this block for the functions they add.
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure
        FROM pg_proc p
        WHERE p.pronamespace = current_schema()::regnamespace
          AND p.proname LIKE 'agently\_%'
          AND p.proname <> 'agently_current_user_id'
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp',
                       fn, current_schema());
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Self-checks: refuse to commit a database that breaks the isolation model
-- ---------------------------------------------------------------------------------------
DO $$
DECLARE
    bad text;
BEGIN
    -- Every table with a user_id column (partitions included) has RLS enabled and forced.
    SELECT string_agg(c.oid::regclass::text, ', ') INTO bad
    FROM pg_class c
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped
    WHERE c.relnamespace = current_schema()::regnamespace
      AND c.relkind IN ('r', 'p')
      AND NOT (c.relrowsecurity AND c.relforcerowsecurity);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'tables without enabled and forced row-level security: %', bad;
    END IF;

    -- No SECURITY DEFINER function of ours is executable by PUBLIC.
    SELECT string_agg(p.oid::regprocedure::text, ', ') INTO bad
    FROM pg_proc p
    WHERE p.pronamespace = current_schema()::regnamespace
      AND p.prosecdef
      AND (p.proacl IS NULL   -- NULL acl = the default, which includes PUBLIC EXECUTE
           OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) x
                      WHERE x.grantee = 0 AND x.privilege_type = 'EXECUTE'));
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'SECURITY DEFINER functions executable by PUBLIC: %', bad;
    END IF;

    -- The runtime roles (possibly created earlier, by someone else) cannot bypass RLS.
    IF EXISTS (SELECT 1 FROM pg_roles
               WHERE rolname IN ('agently_api', 'agently_worker')
                 AND (rolsuper OR rolbypassrls)) THEN
        RAISE EXCEPTION 'agently_api and agently_worker must be NOSUPERUSER NOBYPASSRLS';
    END IF;

    -- The runtime roles own nothing and cannot create objects here.
    IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
               WHERE r.rolname IN ('agently_api', 'agently_worker'))
       OR EXISTS (SELECT 1 FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
                  WHERE r.rolname IN ('agently_api', 'agently_worker'))
       OR has_schema_privilege('agently_api', current_schema(), 'CREATE')
       OR has_schema_privilege('agently_worker', current_schema(), 'CREATE') THEN
        RAISE EXCEPTION 'agently_api or agently_worker owns objects or may create them';
    END IF;
END
$$;
