-- 0037_agent_journal_stubs.sql — the event, refusal and result records of an agent session
-- share the journal row they are written with, instead of a row each.
--
-- An `event` (an executor's reasoning or trace event), a `refusal` (a refused tool call's
-- agent.tool_refused event) and a `result` (agent.finished) are journaled only so that a
-- replay records their events once (0020): a stub row with the request's kind and hash,
-- matched by kind, hash and occurrence. The session holds the event and refusal stubs for
-- its next write (0027), so a model turn that says something and makes a refused call wrote
-- three journal rows with its LLM call's (docs/performance.md, "Where the write's time
-- goes": the journal INSERT 0.43 ms of the write, 3 rows). Now a stub written in the same
-- statement as a new journal row is kept in that row's `stubs` ([{"kind", "sha256"}], in
-- the order they were recorded, all before the row), and the worker reads them back as
-- entries of their own (src/agent/agent_journal.c, agent_db_load_journal): replay matches
-- them exactly as before. Stubs written with no new row (held rows written by their timer,
-- before a status) are still rows of their own; old journals are read as they are. The
-- events themselves are unchanged (logs).

ALTER TABLE agent_journal ADD COLUMN stubs jsonb;
COMMENT ON COLUMN agent_journal.stubs IS
    'The event, refusal and result records (0020) written with this row, before it: [{"kind", "sha256"}] in order, each matched on replay as a row of its own would be (0037).';

-- rows: as 0036, and on a new journal row
--   "stubs"?: [{"kind", "sha256"}]   the records written with it (stored in agent_journal.stubs)
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

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_agent_write(uuid, bigint, uuid, text, integer, jsonb) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
ALTER FUNCTION agently_agent_write(uuid, bigint, uuid, text, integer, jsonb)
    SET plan_cache_mode = force_generic_plan;
