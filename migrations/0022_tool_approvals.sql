-- 0022_tool_approvals.sql — an agent's gated tool calls through the approvals of 0015.
--
-- An agent whose definition names a tool (or its effect class) in `approve_tools` asks a
-- person before such a call runs (src/agent/README.md, "Tool calls that need a person").
-- The call is journaled without an answer and its approval created in ONE statement
-- (agently_request_tool_approval), fenced like every worker write; the approval is an
-- ordinary row of `approvals` (reviewers, quorum, channels through the notification outbox,
-- signed links, the deadline's on_timeout and escalation ladder, reassignment: all of 0015),
-- tied to the call by (agent_run_id, journal_seq). The run waits holding nothing; a
-- decision wakes it (agently_approval_vote), and the resumed agent finds the approval
-- through the journal row it replays, so nobody is asked twice.
--
-- An approved call runs at most once: agently_tool_approval_start marks it started (fenced,
-- committed) before the request leaves, and a resumed agent that finds the mark without an
-- answer does not send it again (the agent is told the call was interrupted). The answer
-- (the tool's result, the rejection, the interruption) goes into the journal row with its
-- events and counts in one statement (agently_agent_answer_tool).

ALTER TABLE approvals
    -- a tool call's approval: the agent run and the journal row of the call (NULL for the
    -- approval node's)
    ADD COLUMN agent_run_id uuid REFERENCES agent_runs (id) ON DELETE CASCADE,
    ADD COLUMN journal_seq integer CHECK (journal_seq >= 1),
    -- when the approved call was started (at most once)
    ADD COLUMN tool_started_at timestamptz,
    ADD CHECK ((agent_run_id IS NULL) = (journal_seq IS NULL));

-- One approval per approval-node attempt (0015) and one open per approval node (0001) —
-- an agent node may ask about one call after another, so these hold for the approval
-- node's rows only; a tool call has one approval.
DROP INDEX approvals_node_attempt_idx;
CREATE UNIQUE INDEX approvals_node_attempt_idx
    ON approvals (workflow_run_id, node_id, node_attempt) WHERE agent_run_id IS NULL;
DROP INDEX approvals_one_pending_idx;
CREATE UNIQUE INDEX approvals_one_pending_idx
    ON approvals (workflow_run_id, node_id) WHERE status = 'pending' AND agent_run_id IS NULL;
CREATE UNIQUE INDEX approvals_tool_call_idx ON approvals (agent_run_id, journal_seq)
    WHERE agent_run_id IS NOT NULL;

-- The gated call: its journal row (no answer), its approval with links and notifications,
-- and the events, in one statement. request: the executor's tool request (as journaled,
-- without v and id); spec: the agent's approve_tools as the engine normalised it (the
-- approval node's fields: reviewers, channels, quorum, forbid_self_approval, timeout_ms,
-- on_timeout, escalation, title) plus "title", "context" and "proposed_action" of this
-- call. Returns the approval (NULL when the lease is lost: nothing written).
CREATE FUNCTION agently_request_tool_approval(run_id uuid, epoch bigint, agent_run_id uuid,
                                              node text, node_attempt integer, request jsonb,
                                              request_sha256 text, spec jsonb, public_url text,
                                              events jsonb)
RETURNS TABLE (approval_id uuid, journal_seq integer, expires_at_ms bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    seq     integer;
    r       workflow_runs%ROWTYPE;
    revs    text[];
    new_id  uuid;
    timeout bigint := (spec ->> 'timeout_ms')::bigint;
    exp     timestamptz;
BEGIN
    -- the fence, the journal row and the agent's events (agently_agent_record, 0012)
    seq := agently_agent_record(run_id, epoch, agent_run_id, 'tool', request, NULL,
                                request_sha256, 0, 0, 0, 0, 0, 0, node, node_attempt, events);
    IF seq IS NULL THEN
        RETURN;
    END IF;
    SELECT * INTO r FROM workflow_runs w WHERE w.id = agently_request_tool_approval.run_id;
    SELECT coalesce(array_agg(DISTINCT lower(v)), '{}') INTO revs
    FROM jsonb_array_elements_text(coalesce(spec -> 'reviewers', '[]')) AS v;
    INSERT INTO approvals (user_id, workflow_run_id, node_id, node_attempt, title, request,
                           reviewers, quorum, forbid_self_approval, policy, expires_at,
                           agent_run_id, journal_seq)
    VALUES (r.user_id, r.id, node, node_attempt,
            left(coalesce(nullif(spec ->> 'title', ''), 'Approve a tool call of ' || node), 500),
            jsonb_build_object('workflow', r.workflow_name, 'node', node, 'kind', 'tool_call',
                               'context', coalesce(spec -> 'context', '{}'),
                               'proposed_action', spec -> 'proposed_action'),
            revs, coalesce((spec ->> 'quorum')::integer, 1),
            coalesce((spec ->> 'forbid_self_approval')::boolean, false),
            jsonb_build_object('channels', coalesce(spec -> 'channels', '[]'),
                               'on_timeout', spec -> 'on_timeout',
                               'timeout_ms', spec -> 'timeout_ms',
                               'escalation', coalesce(spec -> 'escalation', '[]'),
                               'public_url', public_url),
            CASE WHEN timeout IS NOT NULL THEN now() + timeout * interval '1 millisecond' END,
            agently_request_tool_approval.agent_run_id, seq)
    RETURNING id, expires_at INTO new_id, exp;
    PERFORM agently_approval_notify(new_id, revs, 'approval.requested');
    PERFORM agently_append_event_unfenced(
        r.id, 'approval.requested', node, node_attempt, 'info',
        format('waiting for approval: %s',
               left(coalesce(nullif(spec ->> 'title', ''), 'a tool call'), 200)),
        jsonb_build_object('approval_id', new_id, 'reviewers', to_jsonb(revs),
                           'quorum', coalesce((spec ->> 'quorum')::integer, 1),
                           'expires_at', exp, 'agent_run_id', agently_request_tool_approval.agent_run_id,
                           'tool', request ->> 'name', 'call_id', request ->> 'call_id'));
    RETURN QUERY SELECT new_id, seq, (extract(epoch FROM exp) * 1000)::bigint;
END;
$$;

-- An approved call is about to leave: mark it started, once. 'started' (this caller sends
-- it; events appended with the mark), 'already' (it was started before: never send it
-- again), 'not_approved', or NULL when the lease is lost (nothing written).
CREATE FUNCTION agently_tool_approval_start(run_id uuid, epoch bigint, approval_id uuid,
                                            node text, node_attempt integer, events jsonb)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    a approvals%ROWTYPE;
BEGIN
    -- the global lock order: the run (the fence), then the approval
    PERFORM 1 FROM workflow_runs w
    WHERE w.id = agently_tool_approval_start.run_id AND w.lease_epoch = epoch
      AND w.status = 'running'
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO a FROM approvals x
    WHERE x.id = agently_tool_approval_start.approval_id
      AND x.workflow_run_id = agently_tool_approval_start.run_id
    FOR UPDATE;
    IF NOT FOUND OR a.status <> 'approved' THEN
        RETURN 'not_approved';
    END IF;
    IF a.tool_started_at IS NOT NULL THEN
        RETURN 'already';
    END IF;
    UPDATE approvals x SET tool_started_at = now() WHERE x.id = a.id;
    PERFORM agently_agent_record(run_id, epoch, NULL, NULL, NULL, NULL, NULL, 0, 0, 0, 0, 0, 0,
                                 node, node_attempt, events);
    RETURN 'started';
END;
$$;

-- The answer of a gated call's journal row (written without one), its events and counts,
-- in one fenced statement. Returns the seq, NULL when the lease is lost (nothing written);
-- a row that has an answer already is an error (nothing written either).
CREATE FUNCTION agently_agent_answer_tool(run_id uuid, epoch bigint, agent_run_id uuid, seq integer,
                                          response jsonb, tool_calls integer, node text,
                                          node_attempt integer, events jsonb)
RETURNS integer
LANGUAGE plpgsql
AS $$
BEGIN
    IF agently_agent_record(run_id, epoch, agent_run_id, NULL, NULL, NULL, NULL, 0, 0, 0, 0, 0,
                            tool_calls, node, node_attempt, events) IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE agent_journal j SET response = agently_agent_answer_tool.response
    WHERE j.agent_run_id = agently_agent_answer_tool.agent_run_id
      AND j.seq = agently_agent_answer_tool.seq AND j.kind = 'tool' AND j.response IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the journal row % of agent run % has an answer already', seq,
                        agent_run_id USING ERRCODE = 'unique_violation';
    END IF;
    RETURN seq;
END;
$$;

REVOKE ALL ON FUNCTION agently_request_tool_approval(uuid, bigint, uuid, text, integer, jsonb,
                                                     text, jsonb, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_tool_approval_start(uuid, bigint, uuid, text, integer, jsonb)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_agent_answer_tool(uuid, bigint, uuid, integer, jsonb, integer, text,
                                                 integer, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_request_tool_approval(uuid, bigint, uuid, text, integer, jsonb,
                                                        text, jsonb, text, jsonb) TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_tool_approval_start(uuid, bigint, uuid, text, integer, jsonb)
    TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_agent_answer_tool(uuid, bigint, uuid, integer, jsonb, integer,
                                                    text, integer, jsonb) TO agently_worker;

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_request_tool_approval(uuid, bigint, uuid, text, integer, '
                              'jsonb, text, jsonb, text, jsonb)',
                              'agently_tool_approval_start(uuid, bigint, uuid, text, integer, jsonb)',
                              'agently_agent_answer_tool(uuid, bigint, uuid, integer, jsonb, '
                              'integer, text, integer, jsonb)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
