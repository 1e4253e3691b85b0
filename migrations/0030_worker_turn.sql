-- 0030_worker_turn.sql — two costs of a worker's loop turn that were not its work
-- (docs/performance.md, "The turn's snapshot and writes": a 5-step run done in one turn).
--
-- 1. The snapshot read as a function, planned once per session. Every turn reads the
--    snapshots of the runs it works on in one statement (src/worker/README.md, "The
--    per-run state machine"). Sent as text, that statement — seven subqueries building
--    JSON, a view, row-level security — was parsed, analysed and planned on every turn, and
--    the planning was most of what reading a fresh run's snapshot cost. In a PL/pgSQL
--    function the plan is made once per session and kept, as agently_apply_writes' are.
--    What it returns is what the statement returned: for each run of
--    runs = [{"id", "epoch", "whole"}, ...] still held at that epoch (its queue row claimed
--    at it; a run missing from the result is lost) the planner's snapshot; its nodes
--    (O(nodes) rows) and its input only where whole is true — a run held in memory keeps
--    its own and reads what others may change (signals, children, approvals, the control
--    requests, now).
--
-- 2. A run notifies only if its workflow version subscribes to something. The trigger
--    workflow_runs_notify (0016) called agently_run_notify for every run reaching
--    completed, failed or needs_input, which looked up the workflow's "notifications" and
--    built a message before finding, for most workflows, that there are none: two PL/pgSQL
--    calls and a query in the finishing statement of every run (a fifth of a 5-step run's
--    writes statement). A workflow version never changes, so whether it has subscriptions
--    is known when a run is created: workflow_runs.notifies, set with the pinned agent
--    versions (agently_run_pin_agents, 0019), and the trigger's WHEN clause tests it. Runs
--    created before this migration keep true: the trigger looks, as it did.
CREATE FUNCTION agently_snapshots(runs jsonb)
RETURNS TABLE (id uuid, snapshot jsonb, cancel_requested boolean, pause_requested boolean,
               lease_epoch bigint)
LANGUAGE plpgsql
STABLE
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT r.id, jsonb_build_object(
        'run_id', r.id, 'input', CASE WHEN h.whole THEN r.input END,
        'now_ms', (extract(epoch FROM now()) * 1000)::bigint,
        'started_at_ms', (extract(epoch FROM coalesce(r.started_at, now())) * 1000)::bigint,
        'engine_state', r.engine_state, 'time_scale', r.time_scale,
        'nodes', CASE WHEN h.whole THEN coalesce((
            SELECT jsonb_object_agg(n.node_id,
                       jsonb_build_object('status', n.status, 'attempt', n.attempt,
                                          'output', n.output, 'error', n.error,
                                          'started_at_ms',
                                          (extract(epoch FROM n.started_at) * 1000)::bigint)
                       || CASE WHEN n.status = 'waiting' AND n.input ? 'wake_at_ms'
                               THEN jsonb_build_object('wake_at_ms', n.input -> 'wake_at_ms')
                               ELSE '{}' END
                       || CASE WHEN n.status = 'waiting' AND n.input ? 'event'
                               THEN jsonb_build_object('event', n.input -> 'event')
                               ELSE '{}' END
                       || CASE WHEN jsonb_typeof(n.error) = 'object' AND n.error ? 'retry_at_ms'
                               THEN jsonb_build_object('retry_at_ms', n.error -> 'retry_at_ms')
                               ELSE '{}' END)
            FROM agently_node_latest n WHERE n.workflow_run_id = r.id), '{}') END,
        'signals', coalesce((
            SELECT jsonb_object_agg(s.name, s.list)
            FROM (SELECT g.name, jsonb_agg(jsonb_build_object('id', g.id, 'payload', g.payload)
                                           ORDER BY g.created_at, g.id) AS list
                  FROM signals g
                  WHERE g.workflow_run_id = r.id AND g.consumed_at IS NULL
                  GROUP BY g.name) s), '{}'),
        'children', coalesce((
            SELECT jsonb_object_agg(c.parent_node_id,
                       jsonb_build_object('run_id', c.id, 'status', c.status, 'output', c.output,
                                          'error', c.error, 'attempt',
                                          (regexp_match(c.idempotency_key, ':([0-9]+)$'))[1]::integer))
            FROM (SELECT DISTINCT ON (k.parent_node_id) k.*
                  FROM workflow_runs k
                  WHERE k.parent_run_id = r.id AND k.parent_node_id IS NOT NULL
                  ORDER BY k.parent_node_id, k.created_at DESC) c), '{}'),
        'approvals', coalesce((
            SELECT jsonb_object_agg(a.node_id,
                       jsonb_build_object('id', a.id, 'attempt', a.node_attempt,
                                          'status', a.status, 'decision', a.decision,
                                          'expires_at_ms',
                                          (extract(epoch FROM a.expires_at) * 1000)::bigint))
            FROM (SELECT DISTINCT ON (p.node_id) p.*
                  FROM approvals p
                  WHERE p.workflow_run_id = r.id
                  ORDER BY p.node_id, p.node_attempt DESC) a), '{}'),
        -- the stored agents' versions the run pinned when it was created (0019)
        'agents', CASE WHEN r.agent_versions = '{}' THEN '{}' ELSE coalesce((
            SELECT jsonb_object_agg(v.key, jsonb_build_object('version', a.version,
                                                              'definition', a.definition))
            FROM jsonb_each(r.agent_versions) v
            JOIN agents a ON a.user_id = r.user_id
                         AND a.name = split_part(v.key, '@', 1)
                         AND a.version = (v.value)::integer), '{}') END),
        r.cancel_requested, r.pause_requested, q.lease_epoch
    FROM jsonb_to_recordset(runs) AS h(id uuid, epoch bigint, whole boolean)
    JOIN run_queue q ON q.run_id = h.id AND q.lease_epoch = h.epoch
    JOIN workflow_runs r ON r.id = q.run_id
    WHERE q.claimed_by IS NOT NULL;
END;
$$;

REVOKE ALL ON FUNCTION agently_snapshots(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_snapshots(jsonb) TO agently_worker;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_snapshots(jsonb) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;

-- ---------------------------------------------------------------------------------------
-- 2. workflow_runs.notifies
-- ---------------------------------------------------------------------------------------

ALTER TABLE workflow_runs ADD COLUMN notifies boolean NOT NULL DEFAULT true;
COMMENT ON COLUMN workflow_runs.notifies IS
    'Whether the run''s workflow version has notification subscriptions (its definition''s "notifications" list is not empty), set when the run is created (agently_run_pin_agents); the notification trigger fires only when true.';

-- As 0019, and the run's notifies from the same workflow version.
CREATE OR REPLACE FUNCTION agently_run_pin_agents()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    SELECT coalesce((SELECT jsonb_object_agg(ref->>'name' || coalesce('@' || (ref->>'version'), ''),
                                             a.version)
                     FROM jsonb_array_elements(w.agent_refs) ref
                     CROSS JOIN LATERAL (SELECT ag.version FROM agents ag
                                         WHERE ag.user_id = NEW.user_id AND ag.name = ref->>'name'
                                           AND (jsonb_typeof(ref->'version') IS DISTINCT FROM 'number'
                                                OR ag.version = (ref->>'version')::integer)
                                         ORDER BY ag.version DESC LIMIT 1) a), '{}'),
           coalesce(jsonb_array_length(CASE WHEN jsonb_typeof(w.definition->'notifications') = 'array'
                                            THEN w.definition->'notifications' END), 0) > 0
    INTO NEW.agent_versions, NEW.notifies
    FROM workflows w
    WHERE w.id = NEW.workflow_id AND w.user_id = NEW.user_id;
    IF NOT FOUND THEN
        -- no such workflow version of this user: the foreign key refuses the row
        NEW.agent_versions := '{}';
    END IF;
    RETURN NEW;
END;
$$;

-- As 0016, for runs whose workflow version has subscriptions only.
DROP TRIGGER workflow_runs_notify ON workflow_runs;
CREATE TRIGGER workflow_runs_notify
    AFTER UPDATE OF status ON workflow_runs
    FOR EACH ROW
    WHEN (NEW.notifies
          AND NEW.status IN ('completed', 'failed', 'needs_input')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION agently_run_notify();

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_run_pin_agents() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
