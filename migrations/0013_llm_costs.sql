-- 0013_llm_costs.sql — what LLM calls cost, totalled per agent run, per run and per user.
--
-- Each LLM call adds its tokens and cost to its agent run (agent_runs, written by the worker
-- in the call's one commit). From there:
--   * per run: a row trigger on agent_runs adds the change to the run's own totals
--     (workflow_runs.cost_usd, tokens_in, tokens_out: the columns the run view shows), in
--     the same transaction, so a run's totals are always the sum of its agent runs,
--     sub-agents included;
--   * per user: the same trigger adds it to one row per (database backend, user), like
--     agently_event_counters (0008): no two transactions update the same row, so workers
--     never wait for each other; agently_api_llm_metrics() sums the rows for /metrics and
--     agently_user_llm_usage() for the API.
-- Nothing here scans history: /metrics reads the counters, the run view its own row.

CREATE TABLE agently_llm_usage_counters (
    backend_pid        integer NOT NULL,
    user_id            uuid NOT NULL,
    tokens_in          bigint NOT NULL DEFAULT 0 CHECK (tokens_in >= 0),
    tokens_out         bigint NOT NULL DEFAULT 0 CHECK (tokens_out >= 0),
    cached_tokens_in   bigint NOT NULL DEFAULT 0 CHECK (cached_tokens_in >= 0),
    cost_usd           numeric(20, 6) NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    llm_calls          bigint NOT NULL DEFAULT 0 CHECK (llm_calls >= 0),
    tool_calls         bigint NOT NULL DEFAULT 0 CHECK (tool_calls >= 0),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (backend_pid, user_id)
);
COMMENT ON TABLE agently_llm_usage_counters IS
    'LLM usage totals, one row per (database backend, user) that recorded agent work (summed by agently_api_llm_metrics and agently_user_llm_usage). Written only by the agent_runs_count_usage trigger.';
REVOKE ALL ON TABLE agently_llm_usage_counters FROM PUBLIC;
-- Per-user rows, so row-level security like every table with a user_id (0002): the worker
-- writes them (it acts for every user, as on agent_runs); the owner reads them for the
-- SECURITY DEFINER functions below; agently_api has no privilege at all.
ALTER TABLE agently_llm_usage_counters ENABLE ROW LEVEL SECURITY;
ALTER TABLE agently_llm_usage_counters FORCE ROW LEVEL SECURITY;
CREATE POLICY agently_worker_all ON agently_llm_usage_counters FOR ALL TO agently_worker
    USING (true) WITH CHECK (true);
DO $$
BEGIN
    EXECUTE format('CREATE POLICY agently_owner_definer ON agently_llm_usage_counters '
                   'FOR SELECT TO %I USING (true)', current_user);
END
$$;

-- Only workers write agent_runs, so these run as the worker (SECURITY INVOKER: a
-- non-superuser owner would be held to the row policies of workflow_runs, which it has
-- none of); the worker may write the counters and nothing else reads them but the SECURITY
-- DEFINER functions below. cached_tokens_in and llm_calls are read through to_jsonb, so
-- this works whatever columns agent_runs has at the time (0012 adds those two).
GRANT SELECT, INSERT, UPDATE ON TABLE agently_llm_usage_counters TO agently_worker;

CREATE FUNCTION agently_count_llm_usage()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    n jsonb := to_jsonb(NEW);
    o jsonb := to_jsonb(OLD);
    d_in bigint := NEW.tokens_in - OLD.tokens_in;
    d_out bigint := NEW.tokens_out - OLD.tokens_out;
    d_cost numeric := NEW.cost_usd - OLD.cost_usd;
    d_tools bigint := NEW.tool_calls - OLD.tool_calls;
    d_cached bigint := coalesce((n ->> 'cached_tokens_in')::bigint, 0)
                       - coalesce((o ->> 'cached_tokens_in')::bigint, 0);
    d_calls bigint := coalesce((n ->> 'llm_calls')::bigint, 0)
                      - coalesce((o ->> 'llm_calls')::bigint, 0);
BEGIN
    -- totals only grow; a correction downwards is not usage and is not counted
    d_in := greatest(d_in, 0);
    d_out := greatest(d_out, 0);
    d_cost := greatest(d_cost, 0);
    d_tools := greatest(d_tools, 0);
    d_cached := greatest(d_cached, 0);
    d_calls := greatest(d_calls, 0);
    IF d_in + d_out + d_tools + d_cached + d_calls = 0 AND d_cost = 0 THEN
        RETURN NULL;
    END IF;
    UPDATE workflow_runs r
    SET cost_usd = r.cost_usd + d_cost,
        tokens_in = r.tokens_in + d_in,
        tokens_out = r.tokens_out + d_out
    WHERE r.id = NEW.workflow_run_id;
    INSERT INTO agently_llm_usage_counters AS t (backend_pid, user_id, tokens_in, tokens_out,
                                                 cached_tokens_in, cost_usd, llm_calls,
                                                 tool_calls)
    VALUES (pg_backend_pid(), NEW.user_id, d_in, d_out, d_cached, d_cost, d_calls, d_tools)
    ON CONFLICT (backend_pid, user_id) DO UPDATE
    SET tokens_in = t.tokens_in + EXCLUDED.tokens_in,
        tokens_out = t.tokens_out + EXCLUDED.tokens_out,
        cached_tokens_in = t.cached_tokens_in + EXCLUDED.cached_tokens_in,
        cost_usd = t.cost_usd + EXCLUDED.cost_usd,
        llm_calls = t.llm_calls + EXCLUDED.llm_calls,
        tool_calls = t.tool_calls + EXCLUDED.tool_calls,
        updated_at = now();
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION agently_count_llm_usage() FROM PUBLIC;

-- The WHEN clause keeps the function out of status-only updates; llm_calls and
-- cached_tokens_in never change without tokens or cost changing with them.
CREATE TRIGGER agent_runs_count_usage
    AFTER UPDATE ON agent_runs
    FOR EACH ROW
    WHEN (NEW.tokens_in IS DISTINCT FROM OLD.tokens_in
          OR NEW.tokens_out IS DISTINCT FROM OLD.tokens_out
          OR NEW.cost_usd IS DISTINCT FROM OLD.cost_usd
          OR NEW.tool_calls IS DISTINCT FROM OLD.tool_calls)
    EXECUTE FUNCTION agently_count_llm_usage();

-- An agent run written with usage already in it (a copy, a test) counts the same way.
CREATE FUNCTION agently_count_llm_usage_insert()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    n jsonb := to_jsonb(NEW);
BEGIN
    UPDATE workflow_runs r
    SET cost_usd = r.cost_usd + NEW.cost_usd,
        tokens_in = r.tokens_in + NEW.tokens_in,
        tokens_out = r.tokens_out + NEW.tokens_out
    WHERE r.id = NEW.workflow_run_id;
    INSERT INTO agently_llm_usage_counters AS t (backend_pid, user_id, tokens_in, tokens_out,
                                                 cached_tokens_in, cost_usd, llm_calls,
                                                 tool_calls)
    VALUES (pg_backend_pid(), NEW.user_id, NEW.tokens_in, NEW.tokens_out,
            coalesce((n ->> 'cached_tokens_in')::bigint, 0), NEW.cost_usd,
            coalesce((n ->> 'llm_calls')::bigint, 0), NEW.tool_calls)
    ON CONFLICT (backend_pid, user_id) DO UPDATE
    SET tokens_in = t.tokens_in + EXCLUDED.tokens_in,
        tokens_out = t.tokens_out + EXCLUDED.tokens_out,
        cached_tokens_in = t.cached_tokens_in + EXCLUDED.cached_tokens_in,
        cost_usd = t.cost_usd + EXCLUDED.cost_usd,
        llm_calls = t.llm_calls + EXCLUDED.llm_calls,
        tool_calls = t.tool_calls + EXCLUDED.tool_calls,
        updated_at = now();
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION agently_count_llm_usage_insert() FROM PUBLIC;

CREATE TRIGGER agent_runs_count_usage_insert
    AFTER INSERT ON agent_runs
    FOR EACH ROW
    WHEN (NEW.tokens_in > 0 OR NEW.tokens_out > 0 OR NEW.cost_usd > 0 OR NEW.tool_calls > 0)
    EXECUTE FUNCTION agently_count_llm_usage_insert();

-- The LLM samples of /metrics, per user (by name): cost, tokens by kind, calls. A separate
-- function from agently_api_metrics so that each migration owns what it defines.
CREATE FUNCTION agently_api_llm_metrics()
RETURNS TABLE (name text, kind text, help text, labels text, value double precision)
LANGUAGE sql
SECURITY DEFINER
STABLE
AS $$
    WITH per_user AS (
        SELECT u.name AS user_name, sum(c.tokens_in) AS tokens_in,
               sum(c.tokens_out) AS tokens_out, sum(c.cached_tokens_in) AS cached,
               sum(c.cost_usd) AS cost, sum(c.llm_calls) AS calls,
               sum(c.tool_calls) AS tools
        FROM agently_llm_usage_counters c JOIN users u ON u.id = c.user_id
        GROUP BY u.name
    )
    SELECT 'agently_llm_cost_usd_total', 'counter',
           'US dollars spent on LLM calls (from the price list and its overrides), by user.',
           format('user="%s"', replace(replace(p.user_name, '\', '\\'), '"', '\"')),
           p.cost::double precision
    FROM per_user p
    UNION ALL
    SELECT 'agently_llm_tokens_total', 'counter',
           'LLM tokens by user and kind: input (cached included), cached_input, output.',
           format('user="%s",kind="%s"', replace(replace(p.user_name, '\', '\\'), '"', '\"'),
                  k.kind),
           k.n::double precision
    FROM per_user p,
         LATERAL (VALUES ('input', p.tokens_in), ('cached_input', p.cached),
                         ('output', p.tokens_out)) AS k(kind, n)
    UNION ALL
    SELECT 'agently_llm_calls_total', 'counter', 'LLM calls answered, by user.',
           format('user="%s"', replace(replace(p.user_name, '\', '\\'), '"', '\"')),
           p.calls::double precision
    FROM per_user p
    UNION ALL
    SELECT 'agently_agent_tool_calls_total', 'counter', 'Tool calls of agents, by user.',
           format('user="%s"', replace(replace(p.user_name, '\', '\\'), '"', '\"')),
           p.tools::double precision
    FROM per_user p
    ORDER BY 1, 4
$$;
REVOKE ALL ON FUNCTION agently_api_llm_metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_api_llm_metrics() TO agently_api;

-- One user's LLM totals (the API shows the caller's own in /v1/me).
CREATE FUNCTION agently_user_llm_usage(target uuid)
RETURNS TABLE (cost_usd numeric, tokens_in bigint, tokens_out bigint, cached_tokens_in bigint,
               llm_calls bigint, tool_calls bigint)
LANGUAGE sql
SECURITY DEFINER
STABLE
AS $$
    SELECT coalesce(sum(c.cost_usd), 0), coalesce(sum(c.tokens_in), 0)::bigint,
           coalesce(sum(c.tokens_out), 0)::bigint, coalesce(sum(c.cached_tokens_in), 0)::bigint,
           coalesce(sum(c.llm_calls), 0)::bigint, coalesce(sum(c.tool_calls), 0)::bigint
    FROM agently_llm_usage_counters c
    WHERE c.user_id = target
      AND (target = agently_current_user_id()
           OR EXISTS (SELECT 1 FROM users u WHERE u.id = agently_current_user_id()
                      AND u.is_admin))
$$;
REVOKE ALL ON FUNCTION agently_user_llm_usage(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_user_llm_usage(uuid) TO agently_api;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_count_llm_usage() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION agently_count_llm_usage_insert() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION agently_api_llm_metrics() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION agently_user_llm_usage(uuid) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
