-- 0040_llm_usage_add.sql — the user's LLM usage counters are added to in one place.
--
-- The upsert of a (backend, user) row of agently_llm_usage_counters (0013) was written out
-- three times: in 0013's agently_count_llm_usage_insert() (an agent run inserted with usage
-- in it), in 0036's flush trigger agently_agent_usage_flush() (an agent run leaving
-- `running`, or its mark moved) and in agently_agent_write()'s branch for usage that is not
-- a new journal row (a gated tool call's answer; 0029, as 0037 left it). Now
-- agently_llm_usage_add() is the one home of "add this usage to the user's counters" and
-- all three call it; what they add, and when, is unchanged (tests/integration/
-- test_llm_costs.c: the counters after a flush, a stop, a gated call and an insert, and that
-- one function writes the table).
--
-- Not on an LLM call's path: a call's write keeps its usage in its journal row (0036).

-- Adds the usage (each part >= 0, as the callers pass it) to user_id's counters row of
-- this database backend (one row per backend and user: no two transactions update the
-- same row, 0013). Runs as the caller: the worker, whose policy on the counters is 0013's.
CREATE FUNCTION agently_llm_usage_add(user_id uuid, tokens_in bigint, tokens_out bigint,
                                      cached_tokens_in bigint, cost_usd numeric,
                                      llm_calls bigint, tool_calls bigint)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO agently_llm_usage_counters AS c (backend_pid, user_id, tokens_in, tokens_out,
                                                 cached_tokens_in, cost_usd, llm_calls,
                                                 tool_calls)
    VALUES (pg_backend_pid(), agently_llm_usage_add.user_id, agently_llm_usage_add.tokens_in,
            agently_llm_usage_add.tokens_out, agently_llm_usage_add.cached_tokens_in,
            agently_llm_usage_add.cost_usd, agently_llm_usage_add.llm_calls,
            agently_llm_usage_add.tool_calls)
    ON CONFLICT (backend_pid, user_id) DO UPDATE
    SET tokens_in = c.tokens_in + EXCLUDED.tokens_in,
        tokens_out = c.tokens_out + EXCLUDED.tokens_out,
        cached_tokens_in = c.cached_tokens_in + EXCLUDED.cached_tokens_in,
        cost_usd = c.cost_usd + EXCLUDED.cost_usd,
        llm_calls = c.llm_calls + EXCLUDED.llm_calls,
        tool_calls = c.tool_calls + EXCLUDED.tool_calls,
        updated_at = now();
END;
$$;
REVOKE ALL ON FUNCTION agently_llm_usage_add(uuid, bigint, bigint, bigint, numeric, bigint, bigint)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_llm_usage_add(uuid, bigint, bigint, bigint, numeric, bigint,
                                                bigint) TO agently_worker;

-- As 0013: an agent run written with usage already in it (a copy, a test) counts the same
-- way.
CREATE OR REPLACE FUNCTION agently_count_llm_usage_insert()
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
    PERFORM agently_llm_usage_add(NEW.user_id, NEW.tokens_in, NEW.tokens_out,
                                  coalesce((n ->> 'cached_tokens_in')::bigint, 0),
                                  NEW.cost_usd, coalesce((n ->> 'llm_calls')::bigint, 0),
                                  NEW.tool_calls);
    RETURN NULL;
END;
$$;

-- As 0036.
CREATE OR REPLACE FUNCTION agently_agent_usage_flush()
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
    PERFORM agently_llm_usage_add(NEW.user_id, u.tokens_in, u.tokens_out, u.cached_tokens_in,
                                  u.cost_usd, u.llm_calls, u.tool_calls);
    RETURN NEW;
END;
$$;

-- As 0037, the counters through agently_llm_usage_add.
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
                                       cost_usd, llm_calls, tool_calls, stubs)
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
                   nullif(greatest((w.r ->> 'tool_calls')::integer, 0), 0),
                   nullif(w.r -> 'stubs', 'null'::jsonb)
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
        -- the agent run's totals, and the user's counters (agently_llm_usage_add)
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
            PERFORM agently_llm_usage_add(run_user, t.a_tokens_in::bigint,
                                          t.a_tokens_out::bigint, t.a_cached_in::bigint,
                                          t.a_cost, t.a_llm_calls::bigint,
                                          t.a_tool_calls::bigint);
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

COMMENT ON TABLE agently_llm_usage_counters IS
    'LLM usage totals, one row per (database backend, user) that recorded agent work (summed by agently_api_llm_metrics and agently_user_llm_usage with the usage not yet added of running agent runs). Written only by agently_llm_usage_add() (0040), which the agent_runs_usage_flush and agent_runs_count_usage_insert triggers and agently_agent_write call.';

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_llm_usage_add(uuid, bigint, bigint, bigint, numeric, bigint, bigint)',
                              'agently_count_llm_usage_insert()', 'agently_agent_usage_flush()',
                              'agently_agent_write(uuid, bigint, uuid, text, integer, jsonb)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
ALTER FUNCTION agently_agent_write(uuid, bigint, uuid, text, integer, jsonb)
    SET plan_cache_mode = force_generic_plan;
