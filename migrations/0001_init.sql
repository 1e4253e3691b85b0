-- 0001_init.sql — the agently data model (tables, constraints, indexes).
--
-- Postgres is the source of truth: every run, step, event, approval and secret lives here,
-- and workflow_runs doubles as the durable queue (see DESIGN.md §2–§3 and
-- docs/data-model.md). This file creates the schema only; row-level security, roles and
-- grants are in 0002_rls.sql, queue functions and claim indexes in 0003_queue.sql.
--
-- `agently migrate` applies this file inside one transaction as the database owner, into
-- whatever schema is first on its search_path (normally "public"). No extension is needed:
-- gen_random_uuid() is built into Postgres 13+.
--
-- Conventions used throughout:
--   * user-facing objects have uuid keys, so ids are unguessable and can be minted anywhere;
--   * every user-owned row carries user_id (denormalised onto child tables) so that an RLS
--     policy is a plain equality on the row itself, never a join;
--   * child rows reference their parent by (parent_id, user_id) — a composite foreign key —
--     so the database itself refuses a row that points at another tenant's parent (for
--     example a signal for someone else's run). RLS alone checks only the row's own user_id;
--   * statuses are text with CHECK constraints; text a user controls has a length cap.

-- ---------------------------------------------------------------------------------------
-- Users and credentials
-- ---------------------------------------------------------------------------------------

CREATE TABLE users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Lower-case login name; the API rejects (rather than silently folds) other spellings,
    -- so "Alice" and "alice" can never be two different accounts.
    name        text NOT NULL UNIQUE
                CHECK (name ~ '^[a-z0-9][a-z0-9_.@-]{0,62}$'),
    is_admin    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- A disabled user keeps their data but can no longer authenticate.
    disabled_at timestamptz
);
COMMENT ON TABLE users IS
    'Accounts. Every user-owned row in the database roots here (user_id ... ON DELETE CASCADE).';

CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    -- sha256 of the bearer token. The token itself is never stored: a database dump
    -- must not be a set of working credentials. Unique across all users because a request
    -- is authenticated by this hash alone, before the user is known.
    token_hash   bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    -- The first characters of the token, shown in listings so a user can tell tokens apart.
    token_prefix text NOT NULL CHECK (char_length(token_prefix) BETWEEN 1 AND 16),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    expires_at   timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_tokens_user_idx ON api_tokens (user_id, created_at DESC);
COMMENT ON COLUMN api_tokens.last_used_at IS
    'Updated by agently_authenticate() at most once a minute, so a busy token does not turn every request into a write.';

-- ---------------------------------------------------------------------------------------
-- Definitions (immutable, versioned)
-- ---------------------------------------------------------------------------------------

CREATE TABLE agents (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name              text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    version           integer NOT NULL CHECK (version >= 1),
    -- model, system prompt, tools, budgets: validated by the engine, opaque here.
    definition        jsonb NOT NULL CHECK (jsonb_typeof(definition) = 'object'),
    definition_sha256 text NOT NULL CHECK (definition_sha256 ~ '^[0-9a-f]{64}$'),
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, name, version),
    UNIQUE (id, user_id)   -- target of tenant-consistent composite foreign keys
);
COMMENT ON TABLE agents IS
    'Reusable agent definitions. One immutable row per (user, name, version); a change is a new version.';

CREATE TABLE workflows (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name              text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    version           integer NOT NULL CHECK (version >= 1),
    -- DAG + control flow + triggers, validated by the engine before insert.
    definition        jsonb NOT NULL CHECK (jsonb_typeof(definition) = 'object'),
    definition_sha256 text NOT NULL CHECK (definition_sha256 ~ '^[0-9a-f]{64}$'),
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, name, version),
    UNIQUE (id, user_id)
);
COMMENT ON TABLE workflows IS
    'Workflow definitions, one immutable row per version. A run references the exact version row it started with, so editing a workflow never changes a run in flight.';

-- ---------------------------------------------------------------------------------------
-- Runs: one execution AND its durable queue entry
-- ---------------------------------------------------------------------------------------

-- fillfactor < 100 leaves room on each page for HOT updates: a run row is rewritten on
-- every checkpoint (event_seq, engine_state, updated_at), none of which is indexed, so
-- those updates can stay on the page without touching any index.
CREATE TABLE workflow_runs (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    workflow_id       uuid NOT NULL,
    -- Copied from the version row so listings and logs need no join.
    workflow_name     text NOT NULL CHECK (workflow_name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    workflow_version  integer NOT NULL CHECK (workflow_version >= 1),
    status            text NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'waiting', 'needs_input',
                                        'paused', 'completed', 'failed', 'canceled')),
    -- Informational for now: agently_claim_runs() orders by run_at only, so the claim can
    -- walk the small partial run_at index and stop after max_runs rows.
    priority          integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    -- Earliest start (queued) or wake-up time (waiting). 'infinity' = no timer, only an
    -- event (signal, approval, child run) will wake the run.
    run_at            timestamptz NOT NULL DEFAULT now(),
    claimed_by        text CHECK (char_length(claimed_by) <= 200),
    lease_expires_at  timestamptz,
    -- Fencing token: incremented by every claim. Every worker write is conditioned on the
    -- epoch it was given, so a worker that lost its lease (paused, partitioned, slow)
    -- can never overwrite the progress of the worker that took the run over.
    lease_epoch       bigint NOT NULL DEFAULT 0 CHECK (lease_epoch >= 0),
    attempt           integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),   -- number of claims
    idempotency_key   text CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
    input             jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(input) = 'object'),
    output            jsonb,
    error             jsonb,
    -- Small engine checkpoint (frontier, loop counters). Node results live in node_runs.
    engine_state      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(engine_state) = 'object'),
    -- Last seq allocated in logs for this run. Allocating under the run's row lock gives
    -- gap-free, strictly increasing per-run sequence numbers (SSE Last-Event-ID resumes
    -- exactly) and, for workers, fences the event on the lease epoch at the same time.
    event_seq         bigint NOT NULL DEFAULT 0 CHECK (event_seq >= 0),
    -- Requests from the control plane; the worker owning the run sees them on its next
    -- lease renewal and applies them. They never change status directly.
    cancel_requested  boolean NOT NULL DEFAULT false,
    pause_requested   boolean NOT NULL DEFAULT false,
    -- Set by agently_wake_run() when something the run may be waiting for happens (signal,
    -- approval decision, child run finished); cleared by each claim. agently_release_run()
    -- turns a release into "claimable now" when it is set, which closes the lost-wake-up
    -- race between a run deciding to wait and the event arriving. See 0003_queue.sql.
    wake_requested    boolean NOT NULL DEFAULT false,
    wait_reason       text CHECK (char_length(wait_reason) <= 1000),
    timeout_at        timestamptz,                               -- run deadline
    parent_run_id     uuid,                                      -- set for subworkflow runs
    parent_node_id    text CHECK (char_length(parent_node_id) BETWEEN 1 AND 200),
    rerun_of          uuid,                                      -- set for "re-run from node"
    rerun_from_node   text CHECK (char_length(rerun_from_node) BETWEEN 1 AND 200),
    budgets           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(budgets) = 'object'),
    cost_usd          numeric(18, 6) NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    tokens_in         bigint NOT NULL DEFAULT 0 CHECK (tokens_in >= 0),
    tokens_out        bigint NOT NULL DEFAULT 0 CHECK (tokens_out >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    -- Maintained by the queue functions and the API (no trigger: a per-row trigger on the
    -- hottest table would tax every heartbeat).
    updated_at        timestamptz NOT NULL DEFAULT now(),

    UNIQUE (id, user_id),
    UNIQUE (user_id, idempotency_key),
    FOREIGN KEY (workflow_id, user_id) REFERENCES workflows (id, user_id),
    -- PG15 "SET NULL (column)": clear only the reference, never the row's user_id.
    FOREIGN KEY (parent_run_id, user_id) REFERENCES workflow_runs (id, user_id)
        ON DELETE SET NULL (parent_run_id),
    FOREIGN KEY (rerun_of, user_id) REFERENCES workflow_runs (id, user_id)
        ON DELETE SET NULL (rerun_of),

    -- A running run is always owned by exactly one lease; any other status holds none
    -- (waiting costs a row, not a worker). This also stops anyone who may not write the
    -- lease columns (the API role) from moving a running run to another status: the
    -- owning worker must do it, fenced on its epoch.
    CONSTRAINT workflow_runs_lease_matches_status CHECK (
        CASE WHEN status = 'running'
             THEN claimed_by IS NOT NULL AND lease_expires_at IS NOT NULL
             ELSE claimed_by IS NULL AND lease_expires_at IS NULL
        END),
    -- finished_at is set exactly when the run is terminal.
    CONSTRAINT workflow_runs_finished_iff_terminal CHECK (
        (status IN ('completed', 'failed', 'canceled')) = (finished_at IS NOT NULL)),
    CHECK (parent_node_id IS NULL OR parent_run_id IS NOT NULL),
    CHECK (rerun_from_node IS NULL OR rerun_of IS NOT NULL)
) WITH (fillfactor = 80);

COMMENT ON TABLE workflow_runs IS
    'One workflow execution and its durable queue entry. Status machine: queued -> running -> (waiting | needs_input | paused) -> running -> completed | failed | canceled. Workers write it only through the fenced functions of 0003_queue.sql.';
COMMENT ON COLUMN workflow_runs.lease_epoch IS
    'Fencing token, incremented by every claim; every worker write is conditioned on it.';
COMMENT ON COLUMN workflow_runs.event_seq IS
    'Last log seq allocated for this run (gap-free, allocated under the row lock).';

-- Keyset pagination: WHERE user_id = $1 AND (created_at, id) < ($2, $3)
--                    ORDER BY created_at DESC, id DESC LIMIT n
CREATE INDEX workflow_runs_user_created_idx
    ON workflow_runs (user_id, created_at DESC, id DESC);
CREATE INDEX workflow_runs_user_status_idx
    ON workflow_runs (user_id, status, created_at DESC, id DESC);
CREATE INDEX workflow_runs_user_workflow_idx
    ON workflow_runs (user_id, workflow_name, created_at DESC, id DESC);
-- Foreign-key lookups (delete of a workflow version must find runs using it).
CREATE INDEX workflow_runs_workflow_idx ON workflow_runs (workflow_id);
CREATE INDEX workflow_runs_parent_idx
    ON workflow_runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX workflow_runs_rerun_of_idx
    ON workflow_runs (rerun_of) WHERE rerun_of IS NOT NULL;
-- Deadline sweep for runs that hold no lease and may sleep past their deadline.
CREATE INDEX workflow_runs_timeout_idx
    ON workflow_runs (timeout_at)
    WHERE timeout_at IS NOT NULL AND status IN ('queued', 'waiting', 'needs_input', 'paused');
-- The claim indexes (due runs, expired leases) are in 0003_queue.sql.

-- One row per attempt of one node. "What happened on this file?" is a query on this table.
CREATE TABLE node_runs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    workflow_run_id  uuid NOT NULL,
    -- "fetch", or "fanout[123]" for one item of a map node.
    node_id          text NOT NULL CHECK (char_length(node_id) BETWEEN 1 AND 200),
    attempt          integer NOT NULL CHECK (attempt >= 1),
    status           text NOT NULL
                     CHECK (status IN ('started', 'completed', 'failed', 'skipped',
                                       'interrupted', 'canceled', 'waiting')),
    input            jsonb,
    output           jsonb,
    error            jsonb,
    worker           text CHECK (char_length(worker) <= 200),
    -- Epoch of the lease under which the row was last written (audit of who wrote what).
    lease_epoch      bigint CHECK (lease_epoch >= 0),
    -- Stable key derived from (run id, node id), sent with the node's side effects
    -- (e.g. the Idempotency-Key header of an http node); the same on every re-execution.
    idempotency_key  text CHECK (char_length(idempotency_key) <= 255),
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    -- Named: agently_checkpoint_node() upserts with ON CONFLICT ON CONSTRAINT.
    CONSTRAINT node_runs_run_node_attempt_key UNIQUE (workflow_run_id, node_id, attempt),
    FOREIGN KEY (workflow_run_id, user_id) REFERENCES workflow_runs (id, user_id)
        ON DELETE CASCADE,
    -- Terminal node statuses always carry their finish time.
    CHECK (status IN ('started', 'waiting') OR finished_at IS NOT NULL)
);
COMMENT ON TABLE node_runs IS
    'One row per node attempt (input, output, error, timing). Written by agently_checkpoint_node(). A row left in status started after a crash is how an at_most_once node is detected as interrupted.';
-- No separate user_id index: the user_id foreign key is only checked when a user is
-- deleted (rare), and node_runs is among the most written tables.

CREATE TABLE agent_runs (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id              uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    workflow_run_id      uuid NOT NULL,
    node_id              text NOT NULL CHECK (char_length(node_id) BETWEEN 1 AND 200),
    -- Attempt of the node this agent step belongs to (node_runs.attempt).
    attempt              integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    -- Sub-agents (spawn) point at the agent run that spawned them.
    parent_agent_run_id  uuid,
    status               text NOT NULL DEFAULT 'running'
                         CHECK (status IN ('running', 'completed', 'failed', 'canceled', 'waiting')),
    model                text CHECK (char_length(model) <= 200),
    tokens_in            bigint NOT NULL DEFAULT 0 CHECK (tokens_in >= 0),
    tokens_out           bigint NOT NULL DEFAULT 0 CHECK (tokens_out >= 0),
    cost_usd             numeric(18, 6) NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    tool_calls           integer NOT NULL DEFAULT 0 CHECK (tool_calls >= 0),
    started_at           timestamptz NOT NULL DEFAULT now(),
    finished_at          timestamptz,
    error                jsonb,
    UNIQUE (id, user_id),
    FOREIGN KEY (workflow_run_id, user_id) REFERENCES workflow_runs (id, user_id)
        ON DELETE CASCADE,
    FOREIGN KEY (parent_agent_run_id, user_id) REFERENCES agent_runs (id, user_id)
        ON DELETE CASCADE,
    CHECK (status IN ('running', 'waiting') OR finished_at IS NOT NULL)
);
CREATE INDEX agent_runs_run_node_idx ON agent_runs (workflow_run_id, node_id, attempt);
CREATE INDEX agent_runs_parent_idx
    ON agent_runs (parent_agent_run_id) WHERE parent_agent_run_id IS NOT NULL;

-- The journal of one agent step's effects. The worker writes the request (and later its
-- response) before answering the executor; after a crash it replays answers from here
-- while the executor's requests match request_sha256, so no journaled LLM call or tool
-- effect is ever paid or done twice.
CREATE TABLE agent_journal (
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_run_id    uuid NOT NULL,
    seq             integer NOT NULL CHECK (seq >= 1),
    kind            text NOT NULL CHECK (kind IN ('llm', 'tool', 'spawn', 'ask_human')),
    request         jsonb NOT NULL,
    -- NULL while the effect is in flight (request journaled, no answer yet).
    response        jsonb,
    request_sha256  text NOT NULL CHECK (request_sha256 ~ '^[0-9a-f]{64}$'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_run_id, seq),
    FOREIGN KEY (agent_run_id, user_id) REFERENCES agent_runs (id, user_id)
        ON DELETE CASCADE
);

-- ---------------------------------------------------------------------------------------
-- Logs: append-only events, partitioned by the owning run's creation time
-- ---------------------------------------------------------------------------------------
--
-- Why PARTITION BY RANGE (run_created_at) and not by the event's own created_at:
--   * a unique constraint on a partitioned table must include the partition key. The
--     uniqueness we need is (workflow_run_id, seq). run_created_at is a function of
--     workflow_run_id (the run's created_at, copied onto each event), so the primary key
--     (workflow_run_id, seq, run_created_at) is exactly that uniqueness — no weaker.
--   * all events of one run land in one partition, however long the run lives, so reading
--     a run's log touches one partition and an SSE resume is one index range scan.
--   * retention drops whole months of runs' events with DROP TABLE on a partition —
--     instant, no bloat — instead of a mass DELETE (DESIGN.md §3).
-- No foreign key to workflow_runs: a partitioned table referencing the run would make every
-- event insert lock the run row's key and would tie log retention to run deletion; logs
-- are written only by the queue functions, which take the run's user_id and created_at
-- from the run row itself.
CREATE TABLE logs (
    run_created_at   timestamptz NOT NULL,
    workflow_run_id  uuid NOT NULL,
    seq              bigint NOT NULL CHECK (seq >= 1),
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Open vocabulary ('run.queued', 'node.completed', 'llm.response', ...): new event
    -- kinds must not need a migration, so no CHECK on the values.
    kind             text NOT NULL CHECK (char_length(kind) BETWEEN 1 AND 100),
    node_id          text CHECK (char_length(node_id) <= 200),
    attempt          integer CHECK (attempt >= 0),
    level            text NOT NULL DEFAULT 'info'
                     CHECK (level IN ('debug', 'info', 'warn', 'error')),
    message          text CHECK (char_length(message) <= 65536),
    -- Small payloads inline; large ones go to the object store and are named by blob_ref.
    data             jsonb,
    blob_ref         text CHECK (char_length(blob_ref) <= 2000),
    -- Column order (workflow_run_id, seq, ...) makes this index serve "events of run X
    -- after seq N" directly.
    PRIMARY KEY (workflow_run_id, seq, run_created_at)
) PARTITION BY RANGE (run_created_at);

COMMENT ON TABLE logs IS
    'Append-only run events, unique per (workflow_run_id, seq). Partitioned monthly (UTC) by the owning run''s created_at so retention is DROP TABLE of a partition. No FK to workflow_runs by design.';

-- Catches rows for which no monthly partition exists (maintenance lapsed). It is normally
-- empty; agently_ensure_log_partitions() keeps months ahead created.
CREATE TABLE logs_default PARTITION OF logs DEFAULT;
ALTER TABLE logs_default ENABLE ROW LEVEL SECURITY;
ALTER TABLE logs_default FORCE ROW LEVEL SECURITY;
REVOKE ALL ON TABLE logs_default FROM PUBLIC;

-- Creates the monthly partitions logs_YYYYMM (UTC months) from the current month through
-- months_ahead months ahead, skipping those that exist; returns how many it created.
--
-- SECURITY DEFINER because creating a partition is DDL on a table the worker role (which
-- runs the periodic maintenance) does not own and must never own. Its search_path is
-- pinned at the end of 0002_rls.sql to (pg_catalog, <this schema>, pg_temp); EXECUTE is
-- revoked from PUBLIC below and granted to agently_worker in 0002.
--
-- Month boundaries are computed in UTC, never in the session time zone: two sessions in
-- different time zones must agree on the bounds, or their partitions would overlap.
--
-- Each partition is created standalone and then ATTACHed: ATTACH PARTITION takes only a
-- SHARE UPDATE EXCLUSIVE lock on logs, whereas CREATE TABLE ... PARTITION OF takes ACCESS
-- EXCLUSIVE and would stall every event insert behind in-flight transactions.
--
-- Each partition gets ENABLE + FORCE ROW LEVEL SECURITY and no grants: reading it directly
-- (instead of through logs, whose policies apply) is refused to every role but the owner,
-- and the owner sees no rows either.
CREATE FUNCTION agently_ensure_log_partitions(months_ahead integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    schema_name  text;
    month_start  timestamp;   -- UTC wall-clock month start
    part_name    text;
    created      integer := 0;
    role_name    text;
BEGIN
    IF months_ahead IS NULL OR months_ahead < 0 OR months_ahead > 36 THEN
        RAISE EXCEPTION 'months_ahead must be between 0 and 36, got %', months_ahead
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Partitions go next to logs. (Not current_schema(): under the pinned search_path,
    -- which starts with pg_catalog, that would name pg_catalog.)
    SELECT n.nspname INTO schema_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = 'logs'::regclass;

    -- Serialise concurrent maintainers (several dispatchers may run it at once).
    PERFORM pg_advisory_xact_lock(hashtext('agently_ensure_log_partitions'));

    FOR i IN 0 .. months_ahead LOOP
        month_start := date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => i);
        part_name := 'logs_' || to_char(month_start, 'YYYYMM');
        CONTINUE WHEN to_regclass(format('%I.%I', schema_name, part_name)) IS NOT NULL;

        BEGIN
            EXECUTE format('CREATE TABLE %I.%I (LIKE %I.logs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           schema_name, part_name, schema_name);
            EXECUTE format('ALTER TABLE %I.%I ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                           schema_name, 'logs', schema_name, part_name,
                           to_char(month_start, 'YYYY-MM-DD HH24:MI:SS') || '+00',
                           to_char(month_start + interval '1 month', 'YYYY-MM-DD HH24:MI:SS') || '+00');
            EXECUTE format('ALTER TABLE %I.%I ENABLE ROW LEVEL SECURITY', schema_name, part_name);
            EXECUTE format('ALTER TABLE %I.%I FORCE ROW LEVEL SECURITY', schema_name, part_name);
            -- No grants at all, even if default privileges would hand some out.
            EXECUTE format('REVOKE ALL ON TABLE %I.%I FROM PUBLIC', schema_name, part_name);
            FOR role_name IN
                SELECT rolname FROM pg_roles WHERE rolname IN ('agently_api', 'agently_worker')
            LOOP
                EXECUTE format('REVOKE ALL ON TABLE %I.%I FROM %I', schema_name, part_name, role_name);
            END LOOP;
            created := created + 1;
        EXCEPTION WHEN check_violation THEN
            -- logs_default already holds events of runs created in that month (partition
            -- maintenance lapsed). They stay in logs_default, still readable through logs;
            -- moving them is an operator decision, not something to do behind a lock here.
            RAISE WARNING 'could not create log partition %: logs_default holds rows for that month',
                part_name;
        END;
    END LOOP;
    RETURN created;
END;
$$;
REVOKE ALL ON FUNCTION agently_ensure_log_partitions(integer) FROM PUBLIC;
COMMENT ON FUNCTION agently_ensure_log_partitions(integer) IS
    'Create missing monthly (UTC) log partitions logs_YYYYMM for the current month .. months_ahead; returns the number created. RLS enabled+forced, no grants.';

-- Retention is DROP TABLE of whole partitions, run by an operator or the dispatcher with
-- the owner's connection; deliberately not granted to the worker or API roles (a
-- compromised worker must not be able to erase history).
CREATE FUNCTION agently_drop_log_partitions(older_than timestamptz)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    part     record;
    dropped  integer := 0;
BEGIN
    FOR part IN
        SELECT c.oid::regclass AS rel,
               -- Upper bound from the name (logs_YYYYMM = that UTC month), which this
               -- file's partition function chose; logs_default is never dropped.
               (to_date(substr(c.relname, 6), 'YYYYMM') + interval '1 month')::timestamp
                   AT TIME ZONE 'UTC' AS upper_bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'logs'::regclass
          AND c.relname ~ '^logs_[0-9]{6}$'
    LOOP
        IF part.upper_bound <= older_than THEN
            EXECUTE format('DROP TABLE %s', part.rel);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END;
$$;
REVOKE ALL ON FUNCTION agently_drop_log_partitions(timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION agently_drop_log_partitions(timestamptz) IS
    'Retention: drop every monthly log partition whose whole range ends at or before older_than; returns the number dropped. Owner only.';

-- ---------------------------------------------------------------------------------------
-- Human-in-the-loop and external events
-- ---------------------------------------------------------------------------------------

-- A signal may arrive before the run reaches its wait_event node: it is kept, unconsumed,
-- until a node consumes it (consumed_by_node, consumed_at).
CREATE TABLE signals (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    workflow_run_id   uuid NOT NULL,
    name              text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    payload           jsonb NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    consumed_by_node  text CHECK (char_length(consumed_by_node) <= 200),
    consumed_at       timestamptz,
    FOREIGN KEY (workflow_run_id, user_id) REFERENCES workflow_runs (id, user_id)
        ON DELETE CASCADE,
    CHECK ((consumed_at IS NULL) = (consumed_by_node IS NULL))
);
-- "Oldest unconsumed signal named X for run R" — the wait_event node's lookup.
CREATE INDEX signals_pending_idx
    ON signals (workflow_run_id, name, created_at) WHERE consumed_at IS NULL;
-- Full index for listing and for ON DELETE CASCADE from workflow_runs.
CREATE INDEX signals_run_idx ON signals (workflow_run_id, created_at);

CREATE TABLE approvals (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    workflow_run_id  uuid NOT NULL,
    node_id          text NOT NULL CHECK (char_length(node_id) BETWEEN 1 AND 200),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'approved', 'rejected', 'expired', 'canceled')),
    title            text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 500),
    -- Context for the reviewer: the agent's reasoning, tool outputs, proposed action.
    request          jsonb NOT NULL DEFAULT '{}',
    decision         jsonb,
    decided_by       text CHECK (char_length(decided_by) <= 200),
    comment          text CHECK (char_length(comment) <= 10000),
    decided_at       timestamptz,
    expires_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (workflow_run_id, user_id) REFERENCES workflow_runs (id, user_id)
        ON DELETE CASCADE,
    CHECK (status NOT IN ('approved', 'rejected') OR decided_at IS NOT NULL)
);
-- At most one open approval per node of a run: an approval node re-executed after a crash
-- finds its request (INSERT ... ON CONFLICT DO NOTHING) instead of asking twice.
CREATE UNIQUE INDEX approvals_one_pending_idx
    ON approvals (workflow_run_id, node_id) WHERE status = 'pending';
CREATE INDEX approvals_run_idx ON approvals (workflow_run_id, created_at);
CREATE INDEX approvals_user_status_idx ON approvals (user_id, status, created_at DESC);
CREATE INDEX approvals_expiry_idx
    ON approvals (expires_at) WHERE status = 'pending' AND expires_at IS NOT NULL;

-- Outbox: a notification is committed with the step that caused it and delivered later by
-- the dispatcher, so a crash can neither lose it nor (with idempotency_key) send it twice.
CREATE TABLE notifications (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    workflow_run_id  uuid,
    channel          text NOT NULL CHECK (channel IN ('email', 'slack', 'webhook')),
    target           text NOT NULL CHECK (char_length(target) BETWEEN 1 AND 2000),
    payload          jsonb NOT NULL DEFAULT '{}',
    -- Optional dedupe key, e.g. derived from (run id, node id): a notify node re-executed
    -- after a crash inserts with ON CONFLICT DO NOTHING.
    idempotency_key  text CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
    -- 'sending' rows are leased: next_attempt_at is the deadline after which a crashed
    -- dispatcher's delivery is retried.
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text CHECK (char_length(last_error) <= 10000),
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    UNIQUE (user_id, idempotency_key),
    -- MATCH SIMPLE: a notification without a run is not checked against workflow_runs.
    FOREIGN KEY (workflow_run_id, user_id) REFERENCES workflow_runs (id, user_id)
        ON DELETE CASCADE,
    CHECK (status <> 'sent' OR sent_at IS NOT NULL)
);
-- Due deliveries, kept small by the predicate (sent and failed rows drop out).
CREATE INDEX notifications_due_idx
    ON notifications (next_attempt_at) WHERE status IN ('pending', 'sending');
CREATE INDEX notifications_run_idx
    ON notifications (workflow_run_id) WHERE workflow_run_id IS NOT NULL;
CREATE INDEX notifications_user_idx ON notifications (user_id, created_at DESC);

-- ---------------------------------------------------------------------------------------
-- Outputs and resources
-- ---------------------------------------------------------------------------------------

CREATE TABLE artifacts (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    workflow_run_id  uuid NOT NULL,
    node_id          text CHECK (char_length(node_id) BETWEEN 1 AND 200),
    name             text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    content_type     text NOT NULL DEFAULT 'application/octet-stream'
                     CHECK (char_length(content_type) BETWEEN 1 AND 255),
    size_bytes       bigint NOT NULL CHECK (size_bytes >= 0),
    sha256           text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    -- Exactly one of: a reference into the object store, or small content inline (<= 1 MiB;
    -- anything larger belongs in the object store, not in a table row).
    storage_uri      text CHECK (char_length(storage_uri) BETWEEN 1 AND 2000),
    inline_data      bytea CHECK (octet_length(inline_data) <= 1048576),
    created_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (workflow_run_id, user_id) REFERENCES workflow_runs (id, user_id)
        ON DELETE CASCADE,
    CHECK ((storage_uri IS NULL) <> (inline_data IS NULL))
);
CREATE INDEX artifacts_run_idx ON artifacts (workflow_run_id, created_at);

CREATE TABLE browser_sessions (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    workflow_run_id  uuid NOT NULL,
    agent_run_id     uuid,
    provider         text NOT NULL CHECK (char_length(provider) BETWEEN 1 AND 100),
    status           text NOT NULL DEFAULT 'starting'
                     CHECK (status IN ('starting', 'active', 'ended', 'failed')),
    live_url         text CHECK (char_length(live_url) <= 2000),
    replay_uri       text CHECK (char_length(replay_uri) <= 2000),
    started_at       timestamptz NOT NULL DEFAULT now(),
    ended_at         timestamptz,
    -- Billable minutes (budgets count browser minutes).
    minutes          numeric(12, 3) NOT NULL DEFAULT 0 CHECK (minutes >= 0),
    FOREIGN KEY (workflow_run_id, user_id) REFERENCES workflow_runs (id, user_id)
        ON DELETE CASCADE,
    FOREIGN KEY (agent_run_id, user_id) REFERENCES agent_runs (id, user_id)
        ON DELETE SET NULL (agent_run_id),
    CHECK (status IN ('starting', 'active') OR ended_at IS NOT NULL)
);
CREATE INDEX browser_sessions_run_idx ON browser_sessions (workflow_run_id, started_at);
CREATE INDEX browser_sessions_agent_run_idx
    ON browser_sessions (agent_run_id) WHERE agent_run_id IS NOT NULL;

-- Envelope-encrypted secrets (libsodium): ciphertext under a per-secret data key, the data
-- key wrapped by a key-encryption key from the KMS provider (key_version names which).
-- Values are never readable in clear from the database: the plaintext exists only in the
-- worker's memory at the moment of use. The AEAD associated data binds (user_id, id,
-- key_version), so a ciphertext copied onto another row or user fails to decrypt.
CREATE TABLE secrets (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    -- At most 64 KiB of plaintext plus AEAD overhead.
    ciphertext   bytea NOT NULL CHECK (octet_length(ciphertext) BETWEEN 1 AND 65536 + 64),
    nonce        bytea NOT NULL CHECK (octet_length(nonce) BETWEEN 8 AND 64),
    wrapped_key  bytea NOT NULL CHECK (octet_length(wrapped_key) BETWEEN 16 AND 1024),
    key_version  integer NOT NULL CHECK (key_version >= 1),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, name)
);

-- ---------------------------------------------------------------------------------------
-- Starting runs without a person: schedules and triggers
-- ---------------------------------------------------------------------------------------

CREATE TABLE schedules (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- By name, not version: a schedule starts the newest version at each firing.
    workflow_name  text NOT NULL CHECK (workflow_name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    cron           text NOT NULL CHECK (char_length(cron) BETWEEN 1 AND 200),
    timezone       text NOT NULL DEFAULT 'UTC' CHECK (char_length(timezone) BETWEEN 1 AND 64),
    input          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(input) = 'object'),
    enabled        boolean NOT NULL DEFAULT true,
    -- Computed by the application from cron + timezone. The dispatcher starts the run with
    -- idempotency_key 'schedule:<id>:<next_run_at>' so a firing is never doubled.
    next_run_at    timestamptz,
    last_run_at    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due_idx ON schedules (next_run_at) WHERE enabled;
CREATE INDEX schedules_user_idx ON schedules (user_id, created_at DESC);

CREATE TABLE triggers (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    workflow_name  text NOT NULL CHECK (workflow_name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    kind           text NOT NULL DEFAULT 'webhook' CHECK (kind IN ('webhook')),
    -- sha256 of the webhook secret; only the hash is stored, like api_tokens.
    secret_hash    bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    enabled        boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_fired_at  timestamptz
);
CREATE INDEX triggers_user_idx ON triggers (user_id, created_at DESC);

-- ---------------------------------------------------------------------------------------
-- API bookkeeping
-- ---------------------------------------------------------------------------------------

-- Idempotency-Key support for mutating API requests: the first response is stored and
-- replayed for a retry with the same key. A retry with the same key but another request
-- body (request_sha256 differs) is refused. Keys are kept at least 24 h, then purged by
-- agently_purge_api_idempotency().
CREATE TABLE api_idempotency (
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key             text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    method          text NOT NULL CHECK (method ~ '^[A-Z]{1,10}$'),
    path            text NOT NULL CHECK (char_length(path) BETWEEN 1 AND 2000),
    request_sha256  text NOT NULL CHECK (request_sha256 ~ '^[0-9a-f]{64}$'),
    -- NULL while the first request is still being processed.
    status_code     integer CHECK (status_code BETWEEN 100 AND 599),
    response        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX api_idempotency_created_idx ON api_idempotency (created_at);

-- Worker registry, for metrics and the dashboard. Not user-owned: no user_id, no RLS.
-- Liveness of a run is decided by its lease, never by this table.
CREATE TABLE agently_workers (
    id            text PRIMARY KEY CHECK (char_length(id) BETWEEN 1 AND 200),
    hostname      text CHECK (char_length(hostname) <= 255),
    pid           integer CHECK (pid > 0),
    started_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    concurrency   integer NOT NULL DEFAULT 0 CHECK (concurrency >= 0)
);
CREATE INDEX agently_workers_last_seen_idx ON agently_workers (last_seen_at);

-- Partitions for this month and the next three, so the first runs have somewhere to log.
SELECT agently_ensure_log_partitions(3);
