-- 0027_agent_write.sql — an agent session's writes as ONE statement per answered call
-- (src/agent/README.md, "The journal and replay").
--
-- agently_agent_write() is the one home of how an agent session writes its journal: fenced
-- on the run's lease epoch (the run row at this epoch in status running, locked; its event
-- seqs taken under that lock, as agently_apply_writes does), it writes several rows in one
-- transaction — the rows a session held since its last write (the `event` and `refusal`
-- stubs with their events, the streamed text's `agent.text` events) and the answer's own
-- journal row with its events, tokens, cost and counts and the artifacts a tool kept — so
-- an LLM call costs one commit, and a stale worker writes none of it. A sub-agent's answer
-- goes into its parent's `spawn` row with the `agent.spawn_result` event in the same
-- statement (before, the event was a second statement a crash could lose).
--
-- agently_agent_record() (0012) keeps its arguments and result and writes through it.

-- rows: [{
--   "kind"?, "request"?, "response"?, "sha256"?   a new journal row (seq: the next ones, in
--                                                  the order of rows)
--   "answer_seq"?, "response"                      ... or the answer to a row without one
--                                                  (raises when it has one already)
--   "tokens_in"?, "tokens_out"?, "cached_in"?, "cost"?, "llm_calls"?, "tool_calls"?
--                                                  added to the agent run's totals
--   "events"?: [{"kind", "message", "level"?, "data"?}]   appended in the order of rows
--   "artifacts"?: [...]                            agently_record_artifacts() (0025)
-- }]
-- Returns the seq of the last new journal row (0 for none), or NULL when the lease is lost
-- (nothing written).
CREATE FUNCTION agently_agent_write(run_id uuid, epoch bigint, agent_run_id uuid, node_id text,
                                    attempt integer, rows jsonb)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    nev         integer;
    last_seq    bigint;
    run_user    uuid;
    run_created timestamptz;
    next_seq    integer;
    added       integer := 0;
    x           jsonb;
BEGIN
    IF jsonb_typeof(rows) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'rows must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT coalesce(sum(jsonb_array_length(coalesce(w.r -> 'events', '[]'::jsonb))), 0)
    INTO nev FROM jsonb_array_elements(rows) AS w(r);
    UPDATE workflow_runs r SET event_seq = r.event_seq + nev
    WHERE r.id = agently_agent_write.run_id AND r.lease_epoch = agently_agent_write.epoch
      AND r.status = 'running'
    RETURNING r.event_seq, r.user_id, r.created_at INTO last_seq, run_user, run_created;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

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

    IF nev > 0 THEN
        INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind, node_id, attempt,
                          level, message, data)
        SELECT run_created, agently_agent_write.run_id,
               last_seq - nev + row_number() OVER (ORDER BY w.n, e.n), run_user,
               e.ev ->> 'kind', agently_agent_write.node_id, agently_agent_write.attempt,
               coalesce(e.ev ->> 'level', 'info'), e.ev ->> 'message', e.ev -> 'data'
        FROM jsonb_array_elements(rows) WITH ORDINALITY AS w(r, n),
             jsonb_array_elements(coalesce(w.r -> 'events', '[]'::jsonb))
                 WITH ORDINALITY AS e(ev, n);
    END IF;

    IF EXISTS (SELECT 1 FROM jsonb_array_elements(rows) AS w(r) WHERE w.r ? 'kind') THEN
        SELECT coalesce(max(j.seq), 0) INTO next_seq
        FROM agent_journal j WHERE j.agent_run_id = agently_agent_write.agent_run_id;
        INSERT INTO agent_journal (user_id, agent_run_id, seq, kind, request, response,
                                   request_sha256)
        SELECT a.user_id, a.id, next_seq + row_number() OVER (ORDER BY w.n), w.r ->> 'kind',
               w.r -> 'request', nullif(w.r -> 'response', 'null'::jsonb), w.r ->> 'sha256'
        FROM agent_runs a, jsonb_array_elements(rows) WITH ORDINALITY AS w(r, n)
        WHERE a.id = agently_agent_write.agent_run_id AND w.r ? 'kind';
        GET DIAGNOSTICS added = ROW_COUNT;
    END IF;

    UPDATE agent_runs a
    SET tokens_in = a.tokens_in + t.tokens_in, tokens_out = a.tokens_out + t.tokens_out,
        cached_tokens_in = a.cached_tokens_in + t.cached_in, cost_usd = a.cost_usd + t.cost,
        llm_calls = a.llm_calls + t.llm_calls, tool_calls = a.tool_calls + t.tool_calls
    FROM (SELECT coalesce(sum((w.r ->> 'tokens_in')::bigint), 0) AS tokens_in,
                 coalesce(sum((w.r ->> 'tokens_out')::bigint), 0) AS tokens_out,
                 coalesce(sum((w.r ->> 'cached_in')::bigint), 0) AS cached_in,
                 coalesce(sum((w.r ->> 'cost')::numeric), 0) AS cost,
                 coalesce(sum((w.r ->> 'llm_calls')::integer), 0) AS llm_calls,
                 coalesce(sum((w.r ->> 'tool_calls')::integer), 0) AS tool_calls
          FROM jsonb_array_elements(rows) AS w(r)) t
    WHERE a.id = agently_agent_write.agent_run_id
      AND (t.tokens_in, t.tokens_out, t.cached_in, t.cost, t.llm_calls, t.tool_calls)
          IS DISTINCT FROM (0::bigint, 0::bigint, 0::bigint, 0::numeric, 0::bigint, 0::bigint);

    FOR x IN SELECT w.r -> 'artifacts' FROM jsonb_array_elements(rows) AS w(r)
             WHERE jsonb_array_length(coalesce(w.r -> 'artifacts', '[]'::jsonb)) > 0 LOOP
        PERFORM agently_record_artifacts(agently_agent_write.run_id, agently_agent_write.node_id,
                                         x);
    END LOOP;
    RETURN CASE WHEN added > 0 THEN next_seq + added ELSE 0 END;
END;
$$;

-- 0012's function, now one row of the above (arguments and result unchanged: the gated
-- calls' statements of 0022 and 0025's agently_agent_record_artifacts() call it).
CREATE OR REPLACE FUNCTION agently_agent_record(run_id uuid, epoch bigint, agent_run_id uuid,
                                                kind text, request jsonb, response jsonb,
                                                request_sha256 text, tokens_in bigint,
                                                tokens_out bigint, cached_in bigint,
                                                cost numeric, llm_calls integer,
                                                tool_calls integer, node_id text,
                                                attempt integer, events jsonb)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    r jsonb := jsonb_build_object('tokens_in', coalesce(tokens_in, 0),
                                  'tokens_out', coalesce(tokens_out, 0),
                                  'cached_in', coalesce(cached_in, 0),
                                  'cost', coalesce(cost, 0),
                                  'llm_calls', coalesce(llm_calls, 0),
                                  'tool_calls', coalesce(tool_calls, 0),
                                  'events', coalesce(events, '[]'::jsonb));
BEGIN
    IF kind IS NOT NULL THEN
        r := r || jsonb_build_object('kind', kind, 'request', request, 'response', response,
                                     'sha256', request_sha256);
    END IF;
    RETURN agently_agent_write(run_id, epoch, agent_run_id, node_id, attempt,
                               jsonb_build_array(r));
END;
$$;

REVOKE ALL ON FUNCTION agently_agent_write(uuid, bigint, uuid, text, integer, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_agent_write(uuid, bigint, uuid, text, integer, jsonb)
    TO agently_worker;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_agent_write(uuid, bigint, uuid, text, integer, jsonb) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION agently_agent_record(uuid, bigint, uuid, text, jsonb, jsonb, '
                   'text, bigint, bigint, bigint, numeric, integer, integer, text, integer, '
                   'jsonb) SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
