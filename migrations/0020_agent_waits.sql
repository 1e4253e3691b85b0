-- 0020_agent_waits.sql — an agent tree waits holding nothing (src/agent/README.md).
--
-- * agent_journal gets three kinds of rows without an effect, written in the same statement
--   as what they stand for (agently_agent_record), so a replay after a crash finds them
--   and records nothing twice: 'event' (an executor's event request), 'refusal' (a refused
--   tool call's agent.tool_refused event), 'result' (the agent.finished event). Each is
--   matched by kind, request hash and occurrence like the others.
-- * A parent agent whose executor was stopped while it waits for its sub-agents is
--   'waiting' with waiting_for {"kind": "sub_agents", ...}; a sub-agent may wait for a
--   person (ask_human, a budget) while its parents wait for it. agently_answer_run_input
--   (copied from 0012) now answers the agent run that asks — the one the run's needs_input
--   names (error.waiting_for.agent_run_id), else the latest waiting for a person — never a
--   parent waiting for its sub-agents.

ALTER TABLE agent_journal DROP CONSTRAINT agent_journal_kind_check;
ALTER TABLE agent_journal ADD CONSTRAINT agent_journal_kind_check
    CHECK (kind IN ('llm', 'tool', 'spawn', 'ask_human', 'event', 'refusal', 'result'));
COMMENT ON COLUMN agent_runs.waiting_for IS
    'Why the agent waits (status waiting): {"kind": "ask_human", "question"}, {"kind": "budget", "budget", "detail"} or {"kind": "sub_agents", "agent_run_ids"} (its executor stopped until they end); NULL otherwise.';

CREATE OR REPLACE FUNCTION agently_answer_run_input(run_id uuid, answer jsonb, budget jsonb)
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
    -- the agent run that asks (a sub-agent's parents wait too, for their sub-agents): the
    -- one the run's needs_input names, else the latest that waits for a person
    SELECT * INTO a FROM agent_runs x
    WHERE x.workflow_run_id = r.id AND x.status = 'waiting'
      AND coalesce(x.waiting_for ->> 'kind', 'ask_human') IN ('ask_human', 'budget')
    ORDER BY coalesce(x.id::text = r.error -> 'waiting_for' ->> 'agent_run_id', false) DESC,
             x.started_at DESC
    LIMIT 1;
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

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_answer_run_input(uuid, jsonb, jsonb) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
