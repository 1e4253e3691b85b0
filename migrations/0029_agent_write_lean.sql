-- 0029_agent_write_lean.sql — an agent session's write (0027) with less work per call.
--
-- agently_agent_write() keeps its arguments, its result and what it writes: the journal
-- rows, the events, the agent run's totals, the run's and the user's (0013), the artifacts
-- rows, all fenced on the run's lease epoch in one statement. Measured per LLM call
-- (docs/performance.md, "The journal write"), most of its 2.4 ms was not the rows but the
-- way they were written:
--   * 0013's row trigger on agent_runs (agently_count_llm_usage) added each call's usage to
--     the run row a SECOND time in the transaction (after the fence's event_seq update): a
--     second row version of the wide run row, its ~20 CHECK constraints compiled and run
--     again, its foreign keys checked again (a row this transaction wrote is always
--     re-checked), and a PL/pgSQL trigger call with two to_jsonb() of the agent run;
--   * the events' INSERT was planned anew on every call (the cached plan kept custom
--     plans), and six more statements each walked the rows to find what was in them.
-- Now one pass over the rows finds the counts and the totals; the fence's one UPDATE of
-- the run row takes the event seqs and adds the run's totals; the agent run and the
-- user's counters row are written by the function itself, and the trigger is gone: this
-- function is the one writer of an agent run's usage (only workers write agent_runs, and
-- every worker write of it goes through here: 0022's gated calls and 0025's artifacts call
-- agently_agent_record(), which writes through it). An agent run inserted with usage in it
-- is still counted by 0013's insert trigger. Plans are generic (plan_cache_mode), made once
-- per connection.

DROP TRIGGER agent_runs_count_usage ON agent_runs;
DROP FUNCTION agently_count_llm_usage();

-- rows: as 0027 (events, journal rows or answers, totals, artifacts). Returns the seq of
-- the last new journal row (0 for none), or NULL when the lease is lost (nothing written).
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
    -- what the rows hold, in one pass; usage only grows (as 0013 counted it)
    SELECT coalesce(sum(jsonb_array_length(coalesce(w.r -> 'events', '[]'::jsonb))), 0)::integer
               AS nev,
           count(*) FILTER (WHERE w.r ? 'kind') AS new_rows,
           count(*) FILTER (WHERE w.r ? 'answer_seq') AS answers,
           count(*) FILTER (WHERE jsonb_array_length(coalesce(w.r -> 'artifacts', '[]'::jsonb)) > 0)
               AS artifacts,
           greatest(coalesce(sum((w.r ->> 'tokens_in')::bigint), 0), 0) AS tokens_in,
           greatest(coalesce(sum((w.r ->> 'tokens_out')::bigint), 0), 0) AS tokens_out,
           greatest(coalesce(sum((w.r ->> 'cached_in')::bigint), 0), 0) AS cached_in,
           greatest(coalesce(sum((w.r ->> 'cost')::numeric), 0), 0) AS cost,
           greatest(coalesce(sum((w.r ->> 'llm_calls')::integer), 0), 0) AS llm_calls,
           greatest(coalesce(sum((w.r ->> 'tool_calls')::integer), 0), 0) AS tool_calls
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
        WITH ins AS (
            INSERT INTO agent_journal (user_id, agent_run_id, seq, kind, request, response,
                                       request_sha256)
            SELECT a.user_id, a.id,
                   (SELECT coalesce(max(j.seq), 0) FROM agent_journal j
                    WHERE j.agent_run_id = agently_agent_write.agent_run_id)
                   + row_number() OVER (ORDER BY w.n),
                   w.r ->> 'kind', w.r -> 'request', nullif(w.r -> 'response', 'null'::jsonb),
                   w.r ->> 'sha256'
            FROM agent_runs a, jsonb_array_elements(rows) WITH ORDINALITY AS w(r, n)
            WHERE a.id = agently_agent_write.agent_run_id AND w.r ? 'kind'
            RETURNING seq)
        SELECT count(*), max(seq) INTO added, new_last FROM ins;
    END IF;

    IF t.tokens_in + t.tokens_out + t.cached_in + t.llm_calls + t.tool_calls > 0 OR t.cost > 0
    THEN
        -- the agent run's totals, and the user's counters row of this backend (0013)
        UPDATE agent_runs a
        SET tokens_in = a.tokens_in + t.tokens_in, tokens_out = a.tokens_out + t.tokens_out,
            cached_tokens_in = a.cached_tokens_in + t.cached_in, cost_usd = a.cost_usd + t.cost,
            llm_calls = a.llm_calls + t.llm_calls, tool_calls = a.tool_calls + t.tool_calls
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
            VALUES (pg_backend_pid(), run_user, t.tokens_in, t.tokens_out, t.cached_in, t.cost,
                    t.llm_calls, t.tool_calls)
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

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_agent_write(uuid, bigint, uuid, text, integer, jsonb) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
ALTER FUNCTION agently_agent_write(uuid, bigint, uuid, text, integer, jsonb)
    SET plan_cache_mode = force_generic_plan;
