-- 0057_snapshot_leaves_out_empty.sql — a run's snapshot leaves out its empty parts.
--
-- Why: the worker parses every claimed run's snapshot with jansson, which spends ~2 K
-- instructions on each key and each object it builds. A run claimed for the first time had
-- six parts that are always or almost always empty ("engine_state": {}, "nodes": {},
-- "signals": {}, "children": {}, "approvals": {}, "agents": {}) and "time_scale": 1: of
-- the 44 K instructions its snapshot's parse took, 20 K went to them (callgrind of the
-- worker, docs/performance.md).
--
-- Now a part that is empty is not written: "engine_state" and "agents" when they are {},
-- "time_scale" when it is 1, "nodes", "signals", "children" and "approvals" when the run has
-- none. The planner reads an absent part as empty (src/engine/engine.h, wf_plan), and the
-- worker adds "nodes" when it records its first node (snapshot_note). A partial read
-- (whole = false) still writes "input": null and "nodes": null: not read, the worker's own
-- copy stands. Everything else is 0053's: the same reads, the same text for a part that is
-- there. tests/isolation/test_worker_turn.c (snapshot_text_is_the_document) compares it with
-- the document of the same columns, less its empty parts.

CREATE OR REPLACE FUNCTION agently_run_snapshot(run uuid, whole boolean)
RETURNS TABLE (snapshot text, cancel_requested boolean, pause_requested boolean)
LANGUAGE sql
STABLE
AS $$
    SELECT '{"run_id":"' || r.id::text
        || '","input":' || CASE WHEN whole THEN r.input::text ELSE 'null' END
        || ',"now_ms":' || ((extract(epoch FROM now()) * 1000)::bigint)::text
        || ',"started_at_ms":' || ((extract(epoch FROM coalesce(r.started_at, now())) * 1000)::bigint)::text
        || CASE WHEN r.engine_state = '{}' THEN ''
                ELSE ',"engine_state":' || r.engine_state::text END
        || CASE WHEN r.time_scale = 1 THEN '' ELSE ',"time_scale":' || r.time_scale::text END
        || CASE WHEN NOT whole THEN ',"nodes":null'
                WHEN f.fresh THEN ''
                ELSE coalesce(',"nodes":' || (
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
            FROM agently_node_latest n WHERE n.workflow_run_id = r.id)::text, '') END
        || coalesce(',"signals":' || (
            SELECT jsonb_object_agg(s.name, s.list)
            FROM (SELECT g.name, jsonb_agg(jsonb_build_object('id', g.id, 'payload', g.payload)
                                           ORDER BY g.created_at, g.id) AS list
                  FROM signals g
                  WHERE g.workflow_run_id = r.id AND g.consumed_at IS NULL
                  GROUP BY g.name) s)::text, '')
        || CASE WHEN f.fresh THEN '' ELSE coalesce(',"children":' || (
            SELECT jsonb_object_agg(c.parent_node_id,
                       jsonb_build_object('run_id', c.id, 'status', c.status, 'output', c.output,
                                          'error', c.error, 'attempt',
                                          (regexp_match(c.idempotency_key, ':([0-9]+)$'))[1]::integer))
            FROM (SELECT DISTINCT ON (k.parent_node_id) k.*
                  FROM workflow_runs k
                  WHERE k.parent_run_id = r.id AND k.parent_node_id IS NOT NULL
                  ORDER BY k.parent_node_id, k.created_at DESC) c)::text, '') END
        || CASE WHEN f.fresh THEN '' ELSE coalesce(',"approvals":' || (
            SELECT jsonb_object_agg(a.node_id,
                       jsonb_build_object('id', a.id, 'attempt', a.node_attempt,
                                          'status', a.status, 'decision', a.decision,
                                          'expires_at_ms',
                                          (extract(epoch FROM a.expires_at) * 1000)::bigint))
            FROM (SELECT DISTINCT ON (p.node_id) p.*
                  FROM approvals p
                  WHERE p.workflow_run_id = r.id
                  ORDER BY p.node_id, p.node_attempt DESC) a)::text, '') END
        || CASE WHEN r.agent_versions = '{}' THEN '' ELSE coalesce(',"agents":' || (
            SELECT jsonb_object_agg(v.key, jsonb_build_object('version', a.version,
                                                              'definition', a.definition))
            FROM jsonb_each(r.agent_versions) v
            JOIN agents a ON a.user_id = r.user_id
                         AND a.name = split_part(v.key, '@', 1)
                         AND a.version = (v.value)::integer)::text, '') END
        || '}',
        r.cancel_requested, r.pause_requested
    FROM workflow_runs r
    -- a run no turn has worked on has no node rows, child runs or approvals (0051)
    CROSS JOIN LATERAL (SELECT r.started_at IS NULL AND r.rerun_of IS NULL AS fresh) f
    WHERE r.id = run
$$;
