-- 0004_api.sql — what the control plane (agently api) needs beyond 0002/0003:
--   * /readyz compares the applied migrations with the binary's: agently_api may read
--     agently_schema_migrations (names and checksums only);
--   * "re-run from a node" copies the recorded results of the nodes before it into the new
--     run. node_runs is written only by the worker (agently_api has SELECT only), so the copy
--     is one narrow SECURITY DEFINER function that checks everything it touches;
--   * /metrics aggregates across all users (runs by status, queue depth and age, claims,
--     retries, lease losses): a SECURITY DEFINER function returning numbers only, never
--     a row of anybody's data.
-- The definer functions run as the owner, who is subject to FORCE ROW LEVEL SECURITY like
-- everyone else (see 0002), so the owner gets policies for exactly what they read/write:
-- node_runs of the current tenant (agently.user_id) only, and SELECT on workflow_runs,
-- node_runs and logs for the metrics aggregates.

GRANT SELECT ON agently_schema_migrations TO agently_api;

DO $$
BEGIN
    EXECUTE format('CREATE POLICY agently_owner_api_tenant ON node_runs FOR ALL TO %I '
                   'USING (user_id = agently_current_user_id()) '
                   'WITH CHECK (user_id = agently_current_user_id())', current_user);
    EXECUTE format('CREATE POLICY agently_owner_api_metrics ON workflow_runs FOR SELECT TO %I '
                   'USING (true)', current_user);
    EXECUTE format('CREATE POLICY agently_owner_api_metrics ON node_runs FOR SELECT TO %I '
                   'USING (true)', current_user);
    EXECUTE format('CREATE POLICY agently_owner_api_metrics ON logs FOR SELECT TO %I '
                   'USING (true)', current_user);
END
$$;

-- Copies into target_run the latest completed attempt of each node of source_run whose id
-- (or, for dynamic ids such as "fanout[3]" and "poll#2", whose static prefix) is in
-- node_ids. Both runs must belong to the current user (agently.user_id), target_run must
-- be a fresh rerun of source_run (rerun_of = source_run, queued, never claimed) with no
-- node records yet. Returns the number of rows copied. Raises insufficient_privilege
-- (42501) when a check fails, so a caller can never write into someone else's run or
-- rewrite the history of a run that has started.
CREATE FUNCTION agently_api_copy_node_runs(source_run uuid, target_run uuid, node_ids text[])
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    tenant  uuid := agently_current_user_id();
    copied  integer;
BEGIN
    IF tenant IS NULL OR NOT EXISTS (
        SELECT 1 FROM workflow_runs t
        WHERE t.id = target_run AND t.user_id = tenant AND t.rerun_of = source_run
          AND t.status = 'queued' AND t.attempt = 0)
       OR NOT EXISTS (SELECT 1 FROM workflow_runs s WHERE s.id = source_run AND s.user_id = tenant)
       OR EXISTS (SELECT 1 FROM node_runs n WHERE n.workflow_run_id = target_run) THEN
        RAISE EXCEPTION 'cannot copy node results into run %', target_run
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status, input, output,
                           error, worker, idempotency_key, started_at, finished_at)
    SELECT DISTINCT ON (n.node_id)
           tenant, target_run, n.node_id, n.attempt, n.status, n.input, n.output, n.error,
           'rerun:' || source_run::text, n.idempotency_key, n.started_at, n.finished_at
    FROM node_runs n
    WHERE n.workflow_run_id = source_run
      AND n.user_id = tenant
      AND n.status = 'completed'
      AND (n.node_id = ANY (node_ids)
           OR substring(n.node_id FROM '^([^\[#]+)[\[#]') = ANY (node_ids))
    ORDER BY n.node_id, n.attempt DESC;
    GET DIAGNOSTICS copied = ROW_COUNT;
    RETURN copied;
END;
$$;

-- Prometheus samples: (metric name, type, help, label text, value). Aggregates only.
-- "claims" is the sum of attempt over runs (each claim increments it), "retries" the node
-- attempts beyond the first, "lease losses" the events of kind run.lease_lost /
-- run.lease_expired written by the queue (counted over runs created in the last 30 days so
-- the scan stays on recent log partitions).
CREATE FUNCTION agently_api_metrics()
RETURNS TABLE (name text, kind text, help text, labels text, value double precision)
LANGUAGE sql
SECURITY DEFINER
STABLE
AS $$
    SELECT 'agently_runs', 'gauge', 'Runs by status.',
           format('status="%s"', s.status), count(r.id)::double precision
    FROM unnest(ARRAY['queued', 'running', 'waiting', 'needs_input', 'paused', 'completed',
                      'failed', 'canceled']) AS s(status)
    LEFT JOIN workflow_runs r ON r.status = s.status
    GROUP BY s.status
    UNION ALL
    SELECT 'agently_queue_depth', 'gauge', 'Runs due now and not claimed (queued or waiting with run_at <= now()).',
           '', count(*)::double precision
    FROM workflow_runs WHERE status IN ('queued', 'waiting') AND run_at <= now()
    UNION ALL
    SELECT 'agently_queue_oldest_age_seconds', 'gauge', 'Age of the oldest due, unclaimed run (0 when none).',
           '', coalesce(extract(epoch FROM now() - min(run_at)), 0)::double precision
    FROM workflow_runs WHERE status IN ('queued', 'waiting') AND run_at <= now()
    UNION ALL
    SELECT 'agently_runs_lease_expired', 'gauge', 'Running runs whose lease has expired (a worker died; the run awaits rescue).',
           '', count(*)::double precision
    FROM workflow_runs WHERE status = 'running' AND lease_expires_at < now()
    UNION ALL
    SELECT 'agently_run_claims_total', 'counter', 'Claims of runs by workers (sum of run attempts).',
           '', coalesce(sum(attempt), 0)::double precision FROM workflow_runs
    UNION ALL
    SELECT 'agently_node_retries_total', 'counter', 'Node attempts beyond the first.',
           '', count(*)::double precision FROM node_runs WHERE attempt > 1
    UNION ALL
    SELECT 'agently_lease_losses_total', 'counter', 'Lease losses recorded as events (runs of the last 30 days).',
           '', count(*)::double precision FROM logs
    WHERE run_created_at > now() - interval '30 days'
      AND kind IN ('run.lease_lost', 'run.lease_expired', 'lease.lost')
$$;

REVOKE ALL ON FUNCTION agently_api_copy_node_runs(uuid, uuid, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_api_metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_api_copy_node_runs(uuid, uuid, text[]) TO agently_api;
GRANT EXECUTE ON FUNCTION agently_api_metrics() TO agently_api;

-- Pin search_path on the functions added here (see the same block in 0002_rls.sql).
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_api_copy_node_runs(uuid, uuid, text[]) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION agently_api_metrics() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
