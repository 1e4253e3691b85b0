-- 0012_agent_journal.sql — the agent session's writes (src/agent/README.md).
--
-- An agent step journals every effect its executor asks for (agent_journal) and the totals
-- its budgets are checked against (agent_runs). Each answered call is ONE statement,
-- agently_agent_record(): fenced on the run's lease epoch like every worker write (it
-- locks the run row and takes its event seqs as agently_apply_writes does), it appends the journal row, adds the
-- call's tokens, cost and counts to the agent run, and appends the call's events — so an
-- LLM call costs one commit, and a stale worker can write none of it.
--
-- A person's input (an ask_human answer, a raised budget) reaches a run waiting in
-- needs_input through agently_answer_run_input(), the API's one entry point here.

ALTER TABLE agent_runs
    ADD COLUMN budget jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(budget) = 'object'),
    ADD COLUMN llm_calls integer NOT NULL DEFAULT 0 CHECK (llm_calls >= 0),
    ADD COLUMN cached_tokens_in bigint NOT NULL DEFAULT 0 CHECK (cached_tokens_in >= 0),
    -- why the agent waits (status waiting): {"kind": "ask_human", "question": ...} or
    -- {"kind": "budget", "budget": "max_cost_usd", ...}; NULL otherwise
    ADD COLUMN waiting_for jsonb;
COMMENT ON COLUMN agent_runs.budget IS
    'The budgets in force (max_tokens, max_cost_usd, max_wall_clock_ms, max_llm_calls, max_tool_calls): the definition''s at creation, raised by a person through agently_answer_run_input().';

-- agently_answer_run_input() runs as the owner, whom FORCE ROW LEVEL SECURITY holds to
-- policies unless it bypasses them: it may touch its caller's agent rows (as 0005 does for
-- the run rows).
DO $$
BEGIN
    EXECUTE format('CREATE POLICY agently_owner_input ON agent_runs FOR ALL TO %I '
                   'USING (user_id = agently_current_user_id()) '
                   'WITH CHECK (user_id = agently_current_user_id())', current_user);
    EXECUTE format('CREATE POLICY agently_owner_input ON agent_journal FOR ALL TO %I '
                   'USING (user_id = agently_current_user_id()) '
                   'WITH CHECK (user_id = agently_current_user_id())', current_user);
END
$$;

CREATE INDEX agent_runs_waiting_idx ON agent_runs (workflow_run_id) WHERE status = 'waiting';

-- One answered call of an agent session. Returns the journal seq, or NULL when the lease
-- is lost (nothing written). events: [{"kind", "message", "level", "data"}].
CREATE FUNCTION agently_agent_record(run_id uuid, epoch bigint, agent_run_id uuid, kind text,
                                     request jsonb, response jsonb, request_sha256 text,
                                     tokens_in bigint, tokens_out bigint, cached_in bigint,
                                     cost numeric, llm_calls integer, tool_calls integer,
                                     node_id text, attempt integer, events jsonb)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    nev          integer := jsonb_array_length(coalesce(events, '[]'::jsonb));
    last_seq     bigint;
    run_user     uuid;
    run_created  timestamptz;
    new_seq      integer;
BEGIN
    -- the fence: the run row at this epoch in status running, locked; the event seqs come
    -- from its counter under that lock (as agently_apply_writes takes them)
    UPDATE workflow_runs r SET event_seq = r.event_seq + nev
    WHERE r.id = agently_agent_record.run_id AND r.lease_epoch = agently_agent_record.epoch
      AND r.status = 'running'
    RETURNING r.event_seq, r.user_id, r.created_at INTO last_seq, run_user, run_created;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind, node_id, attempt,
                      level, message, data)
    SELECT run_created, agently_agent_record.run_id, last_seq - nev + e.n, run_user,
           e.ev ->> 'kind', agently_agent_record.node_id, agently_agent_record.attempt,
           coalesce(e.ev ->> 'level', 'info'), e.ev ->> 'message', e.ev -> 'data'
    FROM jsonb_array_elements(coalesce(events, '[]'::jsonb)) WITH ORDINALITY AS e(ev, n);

    IF agently_agent_record.kind IS NOT NULL THEN
        SELECT coalesce(max(j.seq), 0) + 1 INTO new_seq
        FROM agent_journal j WHERE j.agent_run_id = agently_agent_record.agent_run_id;
        INSERT INTO agent_journal (user_id, agent_run_id, seq, kind, request, response,
                                   request_sha256)
        SELECT a.user_id, a.id, new_seq, agently_agent_record.kind, agently_agent_record.request,
               agently_agent_record.response, agently_agent_record.request_sha256
        FROM agent_runs a WHERE a.id = agently_agent_record.agent_run_id;
    END IF;
    UPDATE agent_runs a
    SET tokens_in = a.tokens_in + coalesce(agently_agent_record.tokens_in, 0),
        tokens_out = a.tokens_out + coalesce(agently_agent_record.tokens_out, 0),
        cached_tokens_in = a.cached_tokens_in + coalesce(cached_in, 0),
        cost_usd = a.cost_usd + coalesce(cost, 0),
        llm_calls = a.llm_calls + coalesce(agently_agent_record.llm_calls, 0),
        tool_calls = a.tool_calls + coalesce(agently_agent_record.tool_calls, 0)
    WHERE a.id = agently_agent_record.agent_run_id;
    RETURN coalesce(new_seq, 0);
END;
$$;

-- A person's input to a run waiting in needs_input because of an agent: answer (the
-- answer to the agent's pending ask_human question) and/or budget (budgets to raise:
-- merged into the waiting agent runs' budgets). The run is queued; the agent resumes by
-- replaying its journal. SECURITY DEFINER like agently_resolve_escalation: agent_journal
-- and agent_runs are written by workers only, so this checks tenant and state itself, under
-- the run's row lock.
CREATE FUNCTION agently_answer_run_input(run_id uuid, answer jsonb, budget jsonb)
RETURNS TABLE (agent_run_id uuid, node_id text, run_status text)
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    tenant  uuid := agently_current_user_id();
    r       workflow_runs%ROWTYPE;
    a       agent_runs%ROWTYPE;
    answered integer := 0;
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'no user set' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF answer IS NULL AND budget IS NULL THEN
        RAISE EXCEPTION 'give an answer or a budget' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF budget IS NOT NULL AND jsonb_typeof(budget) <> 'object' THEN
        RAISE EXCEPTION 'budget must be an object such as {"max_cost_usd": 10}'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO r FROM workflow_runs w
    WHERE w.id = agently_answer_run_input.run_id AND w.user_id = tenant FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % not found', agently_answer_run_input.run_id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF r.status <> 'needs_input' THEN
        RAISE EXCEPTION 'run % is %, not waiting for input', r.id, r.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT * INTO a FROM agent_runs x
    WHERE x.workflow_run_id = r.id AND x.status = 'waiting'
    ORDER BY x.started_at DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % has no agent waiting for input', r.id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF answer IS NOT NULL THEN
        UPDATE agent_journal j SET response = jsonb_build_object('answer', answer)
        WHERE j.agent_run_id = a.id AND j.kind = 'ask_human' AND j.response IS NULL;
        GET DIAGNOSTICS answered = ROW_COUNT;
        IF answered = 0 THEN
            RAISE EXCEPTION 'the agent of run % asked no question; raise its budget instead', r.id
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
    END IF;
    UPDATE agent_runs x
    SET budget = x.budget || coalesce(agently_answer_run_input.budget, '{}'::jsonb),
        status = 'running', waiting_for = NULL
    WHERE x.id = a.id;
    UPDATE workflow_runs w SET status = 'queued', run_at = now(), error = NULL,
           wait_reason = NULL, updated_at = now()
    WHERE w.id = r.id;
    PERFORM agently_append_event_unfenced(r.id, 'run.input', a.node_id, a.attempt, 'info',
                                          CASE WHEN answer IS NOT NULL
                                               THEN 'a person answered the agent'
                                               ELSE 'a person raised the agent''s budget' END,
                                          jsonb_strip_nulls(jsonb_build_object(
                                              'agent_run_id', a.id, 'answer', answer,
                                              'budget', budget)));
    RETURN QUERY SELECT a.id, a.node_id, 'queued'::text;
END;
$$;

REVOKE ALL ON FUNCTION agently_agent_record(uuid, bigint, uuid, text, jsonb, jsonb, text, bigint,
                                            bigint, bigint, numeric, integer, integer, text,
                                            integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_answer_run_input(uuid, jsonb, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_agent_record(uuid, bigint, uuid, text, jsonb, jsonb, text,
                                               bigint, bigint, bigint, numeric, integer, integer,
                                               text, integer, jsonb) TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_answer_run_input(uuid, jsonb, jsonb) TO agently_api;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_agent_record(uuid, bigint, uuid, text, jsonb, jsonb, '
                   'text, bigint, bigint, bigint, numeric, integer, integer, text, integer, '
                   'jsonb) SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION agently_answer_run_input(uuid, jsonb, jsonb) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
