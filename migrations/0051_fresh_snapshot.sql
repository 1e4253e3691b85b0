-- 0051_fresh_snapshot.sql — the snapshot of a run no turn has worked on skips the reads
-- that can only find nothing.
--
-- Why: a worker's claim returns each claimed run's snapshot (agently_claim_turn, 0033, from
-- agently_snapshots, 0030), and for every run it looked up the run's latest node rows, its
-- child runs and its approvals: three correlated subqueries, each an index probe and an
-- aggregate, run for each of the 256 runs a claim takes. A run claimed for the first time
-- has none of them, and a no-op run is always claimed for the first time. Measured with
-- bench/instructions (callgrind, load-free): 1,176,843 -> 1,148,480 instructions per no-op
-- run, -28 K, the claim's snapshot about a third cheaper (docs/performance.md, "The
-- bench's own poll; a fresh run's snapshot").
--
-- Why a run with started_at NULL and no rerun_of has no node rows, child runs or
-- approvals: every turn's writes go through agently_apply_writes, which sets started_at on
-- each run it writes (coalesce(started_at, now())), and a turn that writes nothing commits
-- nothing of its own: its node rows, the child runs its subworkflow steps create and the
-- approvals its steps request are all in the transaction that carries those writes, or
-- rolled back with it. Nothing else writes them for a run no turn has worked on: an
-- escalation's retry (agently_resolve_escalation) needs the run in needs_input, which only
-- a worker's release reaches; the rerun's copy of node results (agently_api_copy_node_runs)
-- writes only into a run whose rerun_of names the source, and that run keeps the lookups.
-- Signals can arrive for a run before it starts, so their lookup stays for every run.

CREATE OR REPLACE FUNCTION agently_snapshots(runs jsonb)
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
        'nodes', CASE WHEN NOT h.whole THEN NULL
                      WHEN f.fresh THEN '{}'
                      ELSE coalesce((
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
        'children', CASE WHEN f.fresh THEN '{}' ELSE coalesce((
            SELECT jsonb_object_agg(c.parent_node_id,
                       jsonb_build_object('run_id', c.id, 'status', c.status, 'output', c.output,
                                          'error', c.error, 'attempt',
                                          (regexp_match(c.idempotency_key, ':([0-9]+)$'))[1]::integer))
            FROM (SELECT DISTINCT ON (k.parent_node_id) k.*
                  FROM workflow_runs k
                  WHERE k.parent_run_id = r.id AND k.parent_node_id IS NOT NULL
                  ORDER BY k.parent_node_id, k.created_at DESC) c), '{}') END,
        'approvals', CASE WHEN f.fresh THEN '{}' ELSE coalesce((
            SELECT jsonb_object_agg(a.node_id,
                       jsonb_build_object('id', a.id, 'attempt', a.node_attempt,
                                          'status', a.status, 'decision', a.decision,
                                          'expires_at_ms',
                                          (extract(epoch FROM a.expires_at) * 1000)::bigint))
            FROM (SELECT DISTINCT ON (p.node_id) p.*
                  FROM approvals p
                  WHERE p.workflow_run_id = r.id
                  ORDER BY p.node_id, p.node_attempt DESC) a), '{}') END,
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
    -- a run no turn has worked on has no node rows, child runs or approvals (the header)
    CROSS JOIN LATERAL (SELECT r.started_at IS NULL AND r.rerun_of IS NULL AS fresh) f
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
