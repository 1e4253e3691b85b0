-- 0036_agent_usage_on_stop.sql — an LLM call's write no longer touches the agent run's row
-- or the user's counters row: the usage stays in the call's journal row until the agent
-- run stops (or every 64 journal rows), and is added to both then.
--
-- Until now every answered call (agently_agent_write, 0029) updated three rows besides its
-- journal rows and events: the run row (the fence, which it must take anyway), the agent
-- run's totals and the user's row of agently_llm_usage_counters (0013) — two statements,
-- two tables, their constraints and WAL, ~0.17 of the write's ~2 ms (docs/performance.md,
-- "Where the write's time goes"). The worker keeps the agent run's totals in memory for
-- its budget checks, so the database needs them only when someone reads them. Now:
--   * a new journal row keeps the usage it carries (agent_journal.tokens_in, tokens_out,
--     cached_tokens_in, cost_usd, llm_calls, tool_calls; NULL is 0);
--   * agent_runs.usage_seq marks the journal rows already added to the agent run's
--     totals and to the user's counters (those up to it). agently_agent_unflushed() sums
--     the rows after it — the one home of "what is not added yet";
--   * the row trigger agent_runs_usage_flush adds them (to the agent run's totals, in
--     the same row version, and to the user's counters row) and moves the mark to the last
--     journal row, whenever an agent run leaves `running` (completed, failed, waiting for a
--     person, a sub-agent or an approval: every session's stop writes its status) or its
--     mark is moved (agently_agent_write, when the session asks it to: every 64 journal
--     rows, so a long-running agent leaves at most that many rows to sum);
--   * whoever reads totals adds the unflushed usage: the worker when it opens an agent run
--     (a session that resumes after a SIGKILL starts with every journaled call counted),
--     the run view (agent_runs' totals), /metrics and /v1/me (agently_llm_usage_live(): the
--     counters plus the unflushed usage of the agent runs still `running`; an agent run that
--     is not running has none, since leaving `running` flushes it).
-- The run's own totals (workflow_runs.cost_usd, tokens_in, tokens_out) are still added by
-- every call, in the fence's update of the run row the call makes anyway. Usage carried by
-- a row that is not a new journal row (a gated tool call's answer, 0022) is still added at
-- once, as before.

ALTER TABLE agent_journal
    ADD COLUMN tokens_in bigint,
    ADD COLUMN tokens_out bigint,
    ADD COLUMN cached_tokens_in bigint,
    ADD COLUMN cost_usd numeric(18, 6),
    ADD COLUMN llm_calls integer,
    ADD COLUMN tool_calls integer;
COMMENT ON COLUMN agent_journal.tokens_in IS
    'The usage this row carries (tokens_in, tokens_out, cached_tokens_in, cost_usd, llm_calls, tool_calls; NULL is 0): added to its agent run''s totals and the user''s counters once agent_runs.usage_seq passes the row (0036).';

ALTER TABLE agent_runs ADD COLUMN usage_seq integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN agent_runs.usage_seq IS
    'The journal rows up to this seq are in the totals (and the user''s counters); the usage of later rows is added when the agent run leaves running or the mark is moved (trigger agent_runs_usage_flush, 0036).';

COMMENT ON TABLE agently_llm_usage_counters IS
    'LLM usage totals, one row per (database backend, user) that recorded agent work (summed by agently_api_llm_metrics and agently_user_llm_usage with the usage not yet added of running agent runs). Written by the agent_runs_usage_flush trigger (0036), agently_agent_write (a usage without a new journal row) and the agent_runs_count_usage_insert trigger.';

-- /metrics and /v1/me add the unflushed usage of the agent runs still running
CREATE INDEX agent_runs_running_idx ON agent_runs (user_id) WHERE status = 'running';

-- The usage of an agent run's journal rows after after_seq, and the last seq (after_seq
-- when there is none). Read as the caller (row-level security applies).
CREATE FUNCTION agently_agent_unflushed(agent_run_id uuid, after_seq integer)
RETURNS TABLE (tokens_in bigint, tokens_out bigint, cached_tokens_in bigint, cost_usd numeric,
               llm_calls bigint, tool_calls bigint, last_seq integer)
LANGUAGE sql
STABLE
AS $$
    SELECT coalesce(sum(j.tokens_in), 0)::bigint, coalesce(sum(j.tokens_out), 0)::bigint,
           coalesce(sum(j.cached_tokens_in), 0)::bigint, coalesce(sum(j.cost_usd), 0),
           coalesce(sum(j.llm_calls), 0)::bigint, coalesce(sum(j.tool_calls), 0)::bigint,
           coalesce(max(j.seq), $2)
    FROM agent_journal j
    WHERE j.agent_run_id = $1 AND j.seq > $2
$$;
REVOKE ALL ON FUNCTION agently_agent_unflushed(uuid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_agent_unflushed(uuid, integer) TO agently_worker, agently_api;

-- Leaving `running`, or a moved mark: the unflushed usage into this row version's totals
-- and the user's counters row of this backend (as 0013 counted it), the mark to the last
-- journal row. Runs as the worker (only workers write agent_runs' status and mark).
CREATE FUNCTION agently_agent_usage_flush()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    u record;
BEGIN
    IF NEW.usage_seq < OLD.usage_seq THEN
        RAISE EXCEPTION 'the usage mark of agent run % cannot move back', OLD.id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO u FROM agently_agent_unflushed(OLD.id, OLD.usage_seq);
    NEW.usage_seq := u.last_seq;
    IF u.tokens_in + u.tokens_out + u.cached_tokens_in + u.llm_calls + u.tool_calls = 0
       AND u.cost_usd = 0 THEN
        RETURN NEW;
    END IF;
    NEW.tokens_in := NEW.tokens_in + u.tokens_in;
    NEW.tokens_out := NEW.tokens_out + u.tokens_out;
    NEW.cached_tokens_in := NEW.cached_tokens_in + u.cached_tokens_in;
    NEW.cost_usd := NEW.cost_usd + u.cost_usd;
    NEW.llm_calls := NEW.llm_calls + u.llm_calls;
    NEW.tool_calls := NEW.tool_calls + u.tool_calls;
    INSERT INTO agently_llm_usage_counters AS c (backend_pid, user_id, tokens_in, tokens_out,
                                                 cached_tokens_in, cost_usd, llm_calls,
                                                 tool_calls)
    VALUES (pg_backend_pid(), NEW.user_id, u.tokens_in, u.tokens_out, u.cached_tokens_in,
            u.cost_usd, u.llm_calls, u.tool_calls)
    ON CONFLICT (backend_pid, user_id) DO UPDATE
    SET tokens_in = c.tokens_in + EXCLUDED.tokens_in,
        tokens_out = c.tokens_out + EXCLUDED.tokens_out,
        cached_tokens_in = c.cached_tokens_in + EXCLUDED.cached_tokens_in,
        cost_usd = c.cost_usd + EXCLUDED.cost_usd,
        llm_calls = c.llm_calls + EXCLUDED.llm_calls,
        tool_calls = c.tool_calls + EXCLUDED.tool_calls,
        updated_at = now();
    RETURN NEW;
END;
$$;
REVOKE ALL ON FUNCTION agently_agent_usage_flush() FROM PUBLIC;

CREATE TRIGGER agent_runs_usage_flush
    BEFORE UPDATE ON agent_runs
    FOR EACH ROW
    WHEN ((OLD.status = 'running' AND NEW.status <> 'running')
          OR NEW.usage_seq <> OLD.usage_seq)
    EXECUTE FUNCTION agently_agent_usage_flush();

-- rows: as 0027, and
--   "usage_flush": true      after the new journal rows, move the agent run's mark to the
--                            last of them (the trigger above adds their usage)
-- The usage of a new journal row ("kind") is kept in that row, not added to the agent run
-- or the user's counters; the usage of any other row (an answer) is added at once, as in
-- 0029. Both are added to the run's totals in the fence's update. Returns the seq of the
-- last new journal row (0 for none), or NULL when the lease is lost (nothing written).
CREATE OR REPLACE FUNCTION agently_agent_write(run_id uuid, epoch bigint, agent_run_id uuid,
                                               node_id text, attempt integer, rows jsonb)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    t           record;
    last_seq    bigint;
    run_user    uuid;
    run_created timestamptz;
    new_last    integer;
    added       integer := 0;
    x           jsonb;
BEGIN
    IF jsonb_typeof(rows) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'rows must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- what the rows hold, in one pass; usage only grows (as 0013 counted it); a_* is the
    -- usage of the rows that are not new journal rows (added to the agent run at once)
    SELECT coalesce(sum(jsonb_array_length(coalesce(w.r -> 'events', '[]'::jsonb))), 0)::integer
               AS nev,
           count(*) FILTER (WHERE w.r ? 'kind') AS new_rows,
           count(*) FILTER (WHERE w.r ? 'answer_seq') AS answers,
           count(*) FILTER (WHERE jsonb_array_length(coalesce(w.r -> 'artifacts', '[]'::jsonb)) > 0)
               AS artifacts,
           coalesce(bool_or(w.r -> 'usage_flush' = 'true'::jsonb), false) AS flush,
           greatest(coalesce(sum((w.r ->> 'tokens_in')::bigint), 0), 0) AS tokens_in,
           greatest(coalesce(sum((w.r ->> 'tokens_out')::bigint), 0), 0) AS tokens_out,
           greatest(coalesce(sum((w.r ->> 'cost')::numeric), 0), 0) AS cost,
           greatest(coalesce(sum((w.r ->> 'tokens_in')::bigint)
                                 FILTER (WHERE NOT w.r ? 'kind'), 0), 0) AS a_tokens_in,
           greatest(coalesce(sum((w.r ->> 'tokens_out')::bigint)
                                 FILTER (WHERE NOT w.r ? 'kind'), 0), 0) AS a_tokens_out,
           greatest(coalesce(sum((w.r ->> 'cached_in')::bigint)
                                 FILTER (WHERE NOT w.r ? 'kind'), 0), 0) AS a_cached_in,
           greatest(coalesce(sum((w.r ->> 'cost')::numeric)
                                 FILTER (WHERE NOT w.r ? 'kind'), 0), 0) AS a_cost,
           greatest(coalesce(sum((w.r ->> 'llm_calls')::integer)
                                 FILTER (WHERE NOT w.r ? 'kind'), 0), 0) AS a_llm_calls,
           greatest(coalesce(sum((w.r ->> 'tool_calls')::integer)
                                 FILTER (WHERE NOT w.r ? 'kind'), 0), 0) AS a_tool_calls
    INTO t FROM jsonb_array_elements(rows) AS w(r);

    -- the fence, the event seqs and the run's totals: one new version of the run row
    UPDATE workflow_runs r
    SET event_seq = r.event_seq + t.nev,
        cost_usd = r.cost_usd + CASE WHEN agently_agent_write.agent_run_id IS NULL THEN 0
                                     ELSE t.cost END,
        tokens_in = r.tokens_in + CASE WHEN agently_agent_write.agent_run_id IS NULL THEN 0
                                       ELSE t.tokens_in END,
        tokens_out = r.tokens_out + CASE WHEN agently_agent_write.agent_run_id IS NULL THEN 0
                                         ELSE t.tokens_out END
    WHERE r.id = agently_agent_write.run_id AND r.lease_epoch = agently_agent_write.epoch
      AND r.status = 'running'
    RETURNING r.event_seq, r.user_id, r.created_at INTO last_seq, run_user, run_created;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    IF t.answers > 0 THEN
        FOR x IN SELECT w.r FROM jsonb_array_elements(rows) AS w(r) WHERE w.r ? 'answer_seq' LOOP
            UPDATE agent_journal j SET response = x -> 'response'
            WHERE j.agent_run_id = agently_agent_write.agent_run_id
              AND j.seq = (x ->> 'answer_seq')::integer AND j.response IS NULL;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'journal row % of agent run % has an answer already',
                    x ->> 'answer_seq', agently_agent_write.agent_run_id
                    USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
        END LOOP;
    END IF;

    IF t.nev > 0 THEN
        INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind, node_id, attempt,
                          level, message, data)
        SELECT run_created, agently_agent_write.run_id,
               last_seq - t.nev + row_number() OVER (ORDER BY w.n, e.n), run_user,
               e.ev ->> 'kind', agently_agent_write.node_id, agently_agent_write.attempt,
               coalesce(e.ev ->> 'level', 'info'), e.ev ->> 'message', e.ev -> 'data'
        FROM jsonb_array_elements(rows) WITH ORDINALITY AS w(r, n),
             jsonb_array_elements(coalesce(w.r -> 'events', '[]'::jsonb))
                 WITH ORDINALITY AS e(ev, n);
    END IF;

    IF t.new_rows > 0 THEN
        -- each row with the usage it carries (NULL for none); only into an agent run of
        -- this run (the run's totals above took the usage)
        WITH ins AS (
            INSERT INTO agent_journal (user_id, agent_run_id, seq, kind, request, response,
                                       request_sha256, tokens_in, tokens_out, cached_tokens_in,
                                       cost_usd, llm_calls, tool_calls)
            SELECT a.user_id, a.id,
                   (SELECT coalesce(max(j.seq), 0) FROM agent_journal j
                    WHERE j.agent_run_id = agently_agent_write.agent_run_id)
                   + row_number() OVER (ORDER BY w.n),
                   w.r ->> 'kind', w.r -> 'request', nullif(w.r -> 'response', 'null'::jsonb),
                   w.r ->> 'sha256',
                   nullif(greatest((w.r ->> 'tokens_in')::bigint, 0), 0),
                   nullif(greatest((w.r ->> 'tokens_out')::bigint, 0), 0),
                   nullif(greatest((w.r ->> 'cached_in')::bigint, 0), 0),
                   nullif(greatest((w.r ->> 'cost')::numeric, 0), 0),
                   nullif(greatest((w.r ->> 'llm_calls')::integer, 0), 0),
                   nullif(greatest((w.r ->> 'tool_calls')::integer, 0), 0)
            FROM agent_runs a, jsonb_array_elements(rows) WITH ORDINALITY AS w(r, n)
            WHERE a.id = agently_agent_write.agent_run_id
              AND a.workflow_run_id = agently_agent_write.run_id AND w.r ? 'kind'
            RETURNING seq)
        SELECT count(*), max(seq) INTO added, new_last FROM ins;
        IF added < t.new_rows AND agently_agent_write.agent_run_id IS NOT NULL THEN
            RAISE EXCEPTION 'agent run % is not an agent run of run %',
                agently_agent_write.agent_run_id, agently_agent_write.run_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        IF t.flush AND added > 0 THEN
            UPDATE agent_runs a SET usage_seq = new_last
            WHERE a.id = agently_agent_write.agent_run_id AND a.usage_seq < new_last;
        END IF;
    END IF;

    IF t.a_tokens_in + t.a_tokens_out + t.a_cached_in + t.a_llm_calls + t.a_tool_calls > 0
       OR t.a_cost > 0 THEN
        -- the agent run's totals, and the user's counters row of this backend (0013)
        UPDATE agent_runs a
        SET tokens_in = a.tokens_in + t.a_tokens_in, tokens_out = a.tokens_out + t.a_tokens_out,
            cached_tokens_in = a.cached_tokens_in + t.a_cached_in,
            cost_usd = a.cost_usd + t.a_cost, llm_calls = a.llm_calls + t.a_llm_calls,
            tool_calls = a.tool_calls + t.a_tool_calls
        WHERE a.id = agently_agent_write.agent_run_id
          AND a.workflow_run_id = agently_agent_write.run_id;
        IF NOT FOUND AND agently_agent_write.agent_run_id IS NOT NULL THEN
            -- the run's totals above took it: never a usage the agent run does not have
            RAISE EXCEPTION 'agent run % is not an agent run of run %',
                agently_agent_write.agent_run_id, agently_agent_write.run_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        IF FOUND THEN
            INSERT INTO agently_llm_usage_counters AS c (backend_pid, user_id, tokens_in,
                                                         tokens_out, cached_tokens_in, cost_usd,
                                                         llm_calls, tool_calls)
            VALUES (pg_backend_pid(), run_user, t.a_tokens_in, t.a_tokens_out, t.a_cached_in,
                    t.a_cost, t.a_llm_calls, t.a_tool_calls)
            ON CONFLICT (backend_pid, user_id) DO UPDATE
            SET tokens_in = c.tokens_in + EXCLUDED.tokens_in,
                tokens_out = c.tokens_out + EXCLUDED.tokens_out,
                cached_tokens_in = c.cached_tokens_in + EXCLUDED.cached_tokens_in,
                cost_usd = c.cost_usd + EXCLUDED.cost_usd,
                llm_calls = c.llm_calls + EXCLUDED.llm_calls,
                tool_calls = c.tool_calls + EXCLUDED.tool_calls,
                updated_at = now();
        END IF;
    END IF;

    IF t.artifacts > 0 THEN
        FOR x IN SELECT w.r -> 'artifacts' FROM jsonb_array_elements(rows) AS w(r)
                 WHERE jsonb_array_length(coalesce(w.r -> 'artifacts', '[]'::jsonb)) > 0 LOOP
            PERFORM agently_record_artifacts(agently_agent_write.run_id,
                                             agently_agent_write.node_id, x);
        END LOOP;
    END IF;
    RETURN CASE WHEN added > 0 THEN new_last ELSE 0 END;
END;
$$;

-- Every user's LLM usage as rows to sum (target: one user's; NULL: everyone's): the
-- counters (0013) and the unflushed usage of the agent runs still running. Called by the
-- SECURITY DEFINER readers below, as the owner.
CREATE FUNCTION agently_llm_usage_live(target uuid)
RETURNS TABLE (user_id uuid, tokens_in bigint, tokens_out bigint, cached_tokens_in bigint,
               cost_usd numeric, llm_calls bigint, tool_calls bigint)
LANGUAGE sql
STABLE
AS $$
    SELECT c.user_id, c.tokens_in, c.tokens_out, c.cached_tokens_in, c.cost_usd, c.llm_calls,
           c.tool_calls
    FROM agently_llm_usage_counters c
    WHERE $1 IS NULL OR c.user_id = $1
    UNION ALL
    SELECT a.user_id, u.tokens_in, u.tokens_out, u.cached_tokens_in, u.cost_usd, u.llm_calls,
           u.tool_calls
    FROM agent_runs a, LATERAL agently_agent_unflushed(a.id, a.usage_seq) u
    WHERE a.status = 'running' AND ($1 IS NULL OR a.user_id = $1)
$$;
REVOKE ALL ON FUNCTION agently_llm_usage_live(uuid) FROM PUBLIC;

-- The owner reads every user's agent runs and journal rows in the two readers below (its
-- policies of 0012 let it see only the current user's).
DO $$
BEGIN
    EXECUTE format('CREATE POLICY agently_owner_usage ON agent_runs FOR SELECT TO %I '
                   'USING (true)', current_user);
    EXECUTE format('CREATE POLICY agently_owner_usage ON agent_journal FOR SELECT TO %I '
                   'USING (true)', current_user);
END
$$;

-- As 0013, over agently_llm_usage_live(NULL).
CREATE OR REPLACE FUNCTION agently_api_llm_metrics()
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
        FROM agently_llm_usage_live(NULL) c JOIN users u ON u.id = c.user_id
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

-- As 0013, over agently_llm_usage_live(target).
CREATE OR REPLACE FUNCTION agently_user_llm_usage(target uuid)
RETURNS TABLE (cost_usd numeric, tokens_in bigint, tokens_out bigint, cached_tokens_in bigint,
               llm_calls bigint, tool_calls bigint)
LANGUAGE sql
SECURITY DEFINER
STABLE
AS $$
    SELECT coalesce(sum(c.cost_usd), 0), coalesce(sum(c.tokens_in), 0)::bigint,
           coalesce(sum(c.tokens_out), 0)::bigint, coalesce(sum(c.cached_tokens_in), 0)::bigint,
           coalesce(sum(c.llm_calls), 0)::bigint, coalesce(sum(c.tool_calls), 0)::bigint
    FROM agently_llm_usage_live(target) c
    WHERE target = agently_current_user_id()
       OR EXISTS (SELECT 1 FROM users u WHERE u.id = agently_current_user_id() AND u.is_admin)
$$;

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_agent_unflushed(uuid, integer)',
                              'agently_agent_usage_flush()',
                              'agently_agent_write(uuid, bigint, uuid, text, integer, jsonb)',
                              'agently_llm_usage_live(uuid)', 'agently_api_llm_metrics()',
                              'agently_user_llm_usage(uuid)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
ALTER FUNCTION agently_agent_write(uuid, bigint, uuid, text, integer, jsonb)
    SET plan_cache_mode = force_generic_plan;
