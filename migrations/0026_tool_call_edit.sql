-- 0026_tool_call_edit.sql — a gated tool call approved with corrected arguments.
--
-- A reviewer of a tool call's approval (0022) may approve it with the arguments it should
-- run with instead of the ones the agent proposed (POST /v1/approvals/{id}/decide with
-- "arguments"; the API checks them against the tool's JSON Schema, kept in the approval's
-- request.context.parameters). Changed from 0015:
--   agently_approval_vote     takes `arguments` (NULL: as proposed). An edit is 'invalid'
--                             (reason says why, nothing written) unless the approval is a
--                             tool call's, the decision is approve, the arguments are a JSON
--                             object and one approval decides (quorum 1: with more, earlier
--                             approvers would have approved another call). The vote, and so
--                             the decision, keeps both: "arguments" (what runs) and
--                             "proposed_arguments" (request.context.arguments, as the reviewer
--                             saw them); the approval.decided event carries both and
--                             "edited": true.
--   agently_decide_approval   passes `arguments` through.
--   agently_inbox             a tool call's answer form names the optional "arguments".
-- The agent (src/agent/agent_approval.c) runs the approved call with decision.arguments when
-- present; the call's journal row keeps the proposed request (its hash is what the agent
-- asked for, so a replay matches it) and its answer records the arguments that ran.

DROP FUNCTION agently_decide_approval(uuid, text, text, text);
DROP FUNCTION agently_approval_vote(uuid, text, text, text, boolean, text);

-- outcome: as in 0015, plus 'invalid' (an edit this approval does not allow; reason says
-- why).
CREATE FUNCTION agently_approval_vote(approval_id uuid, decision text, note text, voter text,
                                      voter_is_owner boolean, via text,
                                      arguments jsonb DEFAULT NULL)
RETURNS TABLE (outcome text, reason text, approval_status text)
LANGUAGE plpgsql
AS $$
DECLARE
    a        approvals%ROWTYPE;
    owner    text;
    run      uuid;
    approves integer;
    vote     jsonb;
    edited   boolean := agently_approval_vote.arguments IS NOT NULL;
BEGIN
    IF decision IS NULL OR decision NOT IN ('approve', 'reject') THEN
        RAISE EXCEPTION 'decision must be approve or reject, not %', coalesce(decision, '(none)')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT x.workflow_run_id INTO run FROM approvals x
    WHERE x.id = agently_approval_vote.approval_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found', NULL::text, NULL::text;
        RETURN;
    END IF;
    -- the global lock order: the run first (a worker's turn holds it), then the approval
    PERFORM 1 FROM workflow_runs w WHERE w.id = run FOR UPDATE;
    SELECT * INTO a FROM approvals x WHERE x.id = agently_approval_vote.approval_id FOR UPDATE;
    SELECT u.name INTO owner FROM users u WHERE u.id = a.user_id;
    IF NOT voter_is_owner AND NOT (a.reviewers @> ARRAY[lower(voter)]) THEN
        RETURN QUERY SELECT 'forbidden',
                            format('%s is not a reviewer of this approval', voter), a.status;
        RETURN;
    END IF;
    IF edited THEN
        IF a.agent_run_id IS NULL THEN
            RETURN QUERY SELECT 'invalid',
                                'arguments can only be edited on a tool call''s approval; '
                                'this is an approval node''s'::text, a.status;
            RETURN;
        ELSIF decision <> 'approve' THEN
            RETURN QUERY SELECT 'invalid',
                                'arguments go with "approve": a rejected call does not run'::text,
                                a.status;
            RETURN;
        ELSIF jsonb_typeof(agently_approval_vote.arguments) <> 'object' THEN
            RETURN QUERY SELECT 'invalid', 'arguments must be a JSON object'::text, a.status;
            RETURN;
        ELSIF a.quorum > 1 THEN
            RETURN QUERY SELECT 'invalid',
                                format('arguments can only be edited when one approval decides; '
                                       'this one needs %s (quorum)', a.quorum), a.status;
            RETURN;
        END IF;
    END IF;
    IF a.status <> 'pending' THEN
        RETURN QUERY SELECT 'conflict', format('the approval was already %s', a.status),
                            a.status;
        RETURN;
    END IF;
    IF decision = 'approve' AND a.forbid_self_approval AND lower(voter) = owner THEN
        RETURN QUERY SELECT 'forbidden',
                            'the person who started the run cannot approve it '
                            '(forbid_self_approval)', a.status;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(a.votes) v WHERE v ->> 'by' = lower(voter)) THEN
        RETURN QUERY SELECT 'already_voted', format('%s already voted', voter), a.status;
        RETURN;
    END IF;
    vote := jsonb_build_object('by', lower(voter), 'decision', decision, 'comment', note,
                               'via', via, 'at', now());
    IF edited THEN
        vote := vote || jsonb_build_object('arguments', agently_approval_vote.arguments,
                                           'proposed_arguments',
                                           a.request -> 'context' -> 'arguments');
    END IF;
    a.votes := a.votes || jsonb_build_array(vote);
    SELECT count(*) INTO approves FROM jsonb_array_elements(a.votes) v
    WHERE v ->> 'decision' = 'approve';
    IF decision = 'reject' OR approves >= a.quorum THEN
        UPDATE approvals x
        SET votes = a.votes,
            status = CASE agently_approval_vote.decision WHEN 'approve' THEN 'approved'
                                                         ELSE 'rejected' END,
            decision = vote || jsonb_build_object('votes', a.votes),
            decided_by = lower(voter), comment = note, decided_at = now(), decided_via = via
        WHERE x.id = a.id
        RETURNING * INTO a;
        PERFORM agently_wake_run(a.workflow_run_id);
        PERFORM pg_notify('agently_control', a.workflow_run_id::text);
        PERFORM agently_append_event_unfenced(
            a.workflow_run_id, 'approval.decided', a.node_id, a.node_attempt, 'info',
            format('%s%s by %s via %s', a.status,
                   CASE WHEN edited THEN ' with edited arguments' ELSE '' END, lower(voter), via),
            jsonb_build_object('approval_id', a.id, 'decision', decision, 'by', lower(voter),
                               'comment', note, 'via', via)
            || CASE WHEN edited THEN
                        jsonb_build_object('edited', true,
                                           'arguments', agently_approval_vote.arguments,
                                           'proposed_arguments', vote -> 'proposed_arguments')
                    ELSE '{}' END);
        RETURN QUERY SELECT 'decided', NULL::text, a.status;
        RETURN;
    END IF;
    UPDATE approvals x SET votes = a.votes WHERE x.id = a.id;
    PERFORM agently_append_event_unfenced(
        a.workflow_run_id, 'approval.voted', a.node_id, a.node_attempt, 'info',
        format('approved by %s via %s (%s of %s)', lower(voter), via, approves, a.quorum),
        jsonb_build_object('approval_id', a.id, 'decision', decision, 'by', lower(voter),
                           'comment', note, 'via', via, 'approvals', approves,
                           'quorum', a.quorum));
    RETURN QUERY SELECT 'recorded', NULL::text, a.status;
END;
$$;

-- The current user decides: as the run's owner, or as a listed reviewer. An approval the
-- user may not see (another user's, not naming them) is 'not_found'.
CREATE FUNCTION agently_decide_approval(approval_id uuid, decision text, note text, via text,
                                        arguments jsonb DEFAULT NULL)
RETURNS TABLE (outcome text, reason text, approval_status text)
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    me     uuid := agently_current_user_id();
    myname text;
    a      approvals%ROWTYPE;
BEGIN
    IF me IS NULL THEN
        RAISE EXCEPTION 'no user set' USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT u.name INTO myname FROM users u WHERE u.id = me;
    SELECT * INTO a FROM approvals x WHERE x.id = agently_decide_approval.approval_id;
    IF NOT FOUND OR (a.user_id <> me AND NOT (a.reviewers @> ARRAY[myname])) THEN
        RETURN QUERY SELECT 'not_found', NULL::text, NULL::text;
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM agently_approval_vote(a.id, decision, note, myname,
                                                     a.user_id = me, coalesce(via, 'api'),
                                                     agently_decide_approval.arguments);
END;
$$;

-- As in 0015; a tool call's approval names the optional "arguments" in its answer form.
CREATE OR REPLACE VIEW agently_inbox WITH (security_invoker = true) AS
SELECT 'approval'::text AS kind, a.id::text AS id, a.workflow_run_id AS run_id,
       a.node_id, a.title, a.created_at, a.expires_at,
       jsonb_build_object('request', a.request, 'reviewers', to_jsonb(a.reviewers),
                          'quorum', a.quorum, 'votes', a.votes, 'level', a.level) AS detail,
       jsonb_build_object('method', 'POST', 'path', '/v1/approvals/' || a.id || '/decide',
                          'body', jsonb_build_object('decision', 'approve | reject',
                                                     'comment', 'text (optional)')
                                  || CASE WHEN a.agent_run_id IS NOT NULL AND a.quorum = 1 THEN
                                              jsonb_build_object(
                                                  'arguments',
                                                  'object (optional, with approve): run the '
                                                  'tool with these instead of the proposed ones')
                                          ELSE '{}' END)
           AS answer
FROM approvals a
WHERE a.status = 'pending'
UNION ALL
SELECT CASE WHEN r.error ->> 'class' IS DISTINCT FROM 'needs_input' THEN 'escalation'
            WHEN r.error -> 'waiting_for' ->> 'kind' = 'budget' THEN 'budget'
            ELSE 'question' END,
       r.id::text, r.id,
       (SELECT l.node_id FROM logs l
        WHERE l.run_created_at = r.created_at AND l.workflow_run_id = r.id
          AND l.kind IN ('run.escalated', 'agent.needs_input')
        ORDER BY l.seq DESC LIMIT 1),
       left(coalesce(r.wait_reason, r.error ->> 'message', 'waiting for a person'), 500),
       r.updated_at, r.timeout_at,
       jsonb_build_object('error', r.error, 'workflow', r.workflow_name,
                          'waiting_for', r.error -> 'waiting_for'),
       CASE WHEN r.error ->> 'class' IS DISTINCT FROM 'needs_input' THEN
                jsonb_build_object('method', 'POST', 'path', '/v1/runs/' || r.id || '/resolve',
                                   'body', jsonb_build_object('action', 'retry | skip | stop',
                                                              'comment', 'text (optional)'))
            WHEN r.error -> 'waiting_for' ->> 'kind' = 'budget' THEN
                jsonb_build_object('method', 'POST', 'path', '/v1/runs/' || r.id || '/input',
                                   'body', jsonb_build_object('budget',
                                                              '{"max_cost_usd": n, ...}'))
            ELSE
                jsonb_build_object('method', 'POST', 'path', '/v1/runs/' || r.id || '/input',
                                   'body', jsonb_build_object('answer', 'any JSON'))
       END
FROM workflow_runs r
WHERE r.status = 'needs_input';

REVOKE ALL ON FUNCTION agently_approval_vote(uuid, text, text, text, boolean, text, jsonb)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_decide_approval(uuid, text, text, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_decide_approval(uuid, text, text, text, jsonb) TO agently_api;

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_approval_vote(uuid, text, text, text, boolean, text, jsonb)',
                              'agently_decide_approval(uuid, text, text, text, jsonb)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
