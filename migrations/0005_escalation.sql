-- 0005_escalation.sql — a person's answer to an escalated node (on_failure: escalate).
--
-- The worker parks such a run in needs_input with the node's error on the run and a
-- run.escalated event naming the node. A person then chooses (POST /v1/runs/{id}/resolve):
--   retry — record the node's next attempt as 'waiting' (effect kinds get wake_at_ms = now,
--           so the planner executes it at once; wait_event and subworkflow get no deadline:
--           they wait for their signal or start a new child), and queue the run;
--   skip  — record a 'skipped' attempt (dependents see the node skipped), queue the run;
--   stop  — fail the run, keeping the node's error.
-- node_runs is written by workers only (agently_api has SELECT), so this is one narrow
-- SECURITY DEFINER function that checks tenant and state itself, under the run's row lock:
-- two people answering at once get one success and one "not waiting for a person".

DO $$
BEGIN
    EXECUTE format('CREATE POLICY agently_owner_resolve ON workflow_runs FOR UPDATE TO %I '
                   'USING (user_id = agently_current_user_id()) '
                   'WITH CHECK (user_id = agently_current_user_id())', current_user);
    EXECUTE format('CREATE POLICY agently_owner_resolve_read ON workflows FOR SELECT TO %I '
                   'USING (user_id = agently_current_user_id())', current_user);
    EXECUTE format('CREATE POLICY agently_owner_resolve_log ON logs FOR INSERT TO %I '
                   'WITH CHECK (user_id = agently_current_user_id())', current_user);
END
$$;

CREATE FUNCTION agently_resolve_escalation(run_id uuid, action text, node text, note text)
RETURNS TABLE (resolved_node text, attempt integer, run_status text)
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    tenant    uuid := agently_current_user_id();
    r         workflow_runs%ROWTYPE;
    target    text;
    last      integer;
    base      text;
    kind      text;
    new_state text;
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'no user set' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF action NOT IN ('retry', 'skip', 'stop') THEN
        RAISE EXCEPTION 'action must be retry, skip or stop, not %', action
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO r FROM workflow_runs w
    WHERE w.id = agently_resolve_escalation.run_id AND w.user_id = tenant FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % not found', agently_resolve_escalation.run_id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF r.status <> 'needs_input' THEN
        RAISE EXCEPTION 'run % is %, not waiting for a person', r.id, r.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    target := coalesce(agently_resolve_escalation.node,
                       (SELECT l.node_id FROM logs l
                        WHERE l.run_created_at = r.created_at AND l.workflow_run_id = r.id
                          AND l.kind = 'run.escalated'
                        ORDER BY l.seq DESC LIMIT 1));
    SELECT max(n.attempt) INTO last FROM node_runs n
    WHERE n.workflow_run_id = r.id AND n.node_id = target;
    IF target IS NULL OR last IS NULL THEN
        RAISE EXCEPTION 'node % has no record in run %', coalesce(target, '(none)'), r.id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    IF action = 'stop' THEN
        UPDATE workflow_runs w SET status = 'failed', finished_at = now(), updated_at = now(),
               wait_reason = NULL
        WHERE w.id = r.id;
        new_state := 'failed';
    ELSE
        -- map items ("m[3]") and loop bodies ("l#2") take their template's kind
        base := substring(target FROM '^([^\[#]+)[\[#]');
        SELECT CASE WHEN base IS NULL THEN d.node ->> 'type' ELSE d.node -> 'node' ->> 'type' END
        INTO kind
        FROM workflows wf, jsonb_array_elements(wf.definition -> 'nodes') AS d(node)
        WHERE wf.id = r.workflow_id AND d.node ->> 'id' = coalesce(base, target);

        last := last + 1;
        IF action = 'retry' THEN
            INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status, input,
                                   worker)
            VALUES (tenant, r.id, target, last, 'waiting',
                    CASE WHEN kind IN ('wait_event', 'subworkflow') THEN '{}'::jsonb
                         ELSE jsonb_build_object('wake_at_ms',
                                                 (extract(epoch FROM now()) * 1000)::bigint) END,
                    'person');
        ELSE
            INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status, error,
                                   worker, finished_at)
            VALUES (tenant, r.id, target, last, 'skipped',
                    jsonb_build_object('class', 'skipped_by_person', 'message',
                                       coalesce(note, 'skipped by a person')),
                    'person', now());
        END IF;
        UPDATE workflow_runs w SET status = 'queued', run_at = now(), error = NULL,
               wait_reason = NULL, updated_at = now()
        WHERE w.id = r.id;
        new_state := 'queued';
    END IF;

    PERFORM agently_append_event_unfenced(r.id, 'run.resolved', target, last, 'info',
                                          format('a person chose %s for node %s', action, target),
                                          jsonb_build_object('action', action, 'node', target,
                                                             'comment', note));
    IF new_state = 'failed' THEN
        PERFORM agently_append_event_unfenced(r.id, 'run.failed', target, NULL, 'error',
                                              'stopped by a person', r.error);
    END IF;
    RETURN QUERY SELECT target, last, new_state;
END;
$$;

REVOKE ALL ON FUNCTION agently_resolve_escalation(uuid, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_resolve_escalation(uuid, text, text, text) TO agently_api;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_resolve_escalation(uuid, text, text, text) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
