-- 0008_metrics_counters.sql — /metrics without scanning history.
--
-- 0004's agently_api_metrics() counted runs by status over the whole of workflow_runs,
-- retries over the whole of node_runs and lease losses over a month of logs, on every
-- scrape: seconds of work against the database that is the source of truth once there are
-- millions of rows — and the lease-loss count looked for event kinds nothing writes, so it
-- was always 0. Now:
--   * counters (claims, rescues, retries, finished runs by status) are kept as events are
--     written: a statement-level trigger on logs adds up the transition table of each
--     insert into one row per database backend (no two transactions ever update the same
--     row, so workers never wait for each other), and the metrics sum the rows;
--   * gauges count only live runs, through the small partial indexes (the claim indexes of
--     0003 and a new one for runs parked for a person or paused).

CREATE TABLE agently_event_counters (
    backend_pid   integer PRIMARY KEY,
    claims        bigint NOT NULL DEFAULT 0 CHECK (claims >= 0),
    rescues       bigint NOT NULL DEFAULT 0 CHECK (rescues >= 0),
    retries       bigint NOT NULL DEFAULT 0 CHECK (retries >= 0),
    completed     bigint NOT NULL DEFAULT 0 CHECK (completed >= 0),
    failed        bigint NOT NULL DEFAULT 0 CHECK (failed >= 0),
    canceled      bigint NOT NULL DEFAULT 0 CHECK (canceled >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE agently_event_counters IS
    'Totals of run events, one row per database backend that wrote events (summed by agently_api_metrics). Written only by the agently_count_events trigger. No user data.';
REVOKE ALL ON TABLE agently_event_counters FROM PUBLIC;

-- SECURITY DEFINER: the trigger fires in the api's and the worker's transactions, neither
-- of which may write this table directly.
CREATE FUNCTION agently_count_events()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    c record;
BEGIN
    SELECT count(*) FILTER (WHERE kind IN ('run.started', 'run.resumed', 'run.recovered')) AS claims,
           count(*) FILTER (WHERE kind = 'run.recovered') AS rescues,
           count(*) FILTER (WHERE kind = 'node.retry_scheduled') AS retries,
           count(*) FILTER (WHERE kind = 'run.completed') AS completed,
           count(*) FILTER (WHERE kind = 'run.failed') AS failed,
           count(*) FILTER (WHERE kind = 'run.canceled') AS canceled
    INTO c
    FROM inserted_events;
    IF c.claims + c.retries + c.completed + c.failed + c.canceled = 0 THEN
        RETURN NULL;
    END IF;
    INSERT INTO agently_event_counters AS t (backend_pid, claims, rescues, retries, completed,
                                              failed, canceled)
    VALUES (pg_backend_pid(), c.claims, c.rescues, c.retries, c.completed, c.failed,
            c.canceled)
    ON CONFLICT (backend_pid) DO UPDATE
    SET claims     = t.claims + EXCLUDED.claims,
        rescues    = t.rescues + EXCLUDED.rescues,
        retries    = t.retries + EXCLUDED.retries,
        completed  = t.completed + EXCLUDED.completed,
        failed     = t.failed + EXCLUDED.failed,
        canceled   = t.canceled + EXCLUDED.canceled,
        updated_at = now();
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION agently_count_events() FROM PUBLIC;

CREATE TRIGGER logs_count_events
    AFTER INSERT ON logs
    REFERENCING NEW TABLE AS inserted_events
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_count_events();

-- Runs parked for a person or paused: the only live statuses without a small index.
CREATE INDEX workflow_runs_parked_idx
    ON workflow_runs (status)
    WHERE status IN ('needs_input', 'paused');

-- Same signature and samples as 0004's, but bounded work: live gauges through partial
-- indexes, totals from agently_event_counters.
CREATE OR REPLACE FUNCTION agently_api_metrics()
RETURNS TABLE (name text, kind text, help text, labels text, value double precision)
LANGUAGE sql
SECURITY DEFINER
STABLE
AS $$
    WITH live AS (
        SELECT r.status, count(*) AS n FROM workflow_runs r
        WHERE r.status IN ('queued', 'waiting') GROUP BY r.status
        UNION ALL
        SELECT 'running', count(*) FROM workflow_runs r WHERE r.status = 'running'
        UNION ALL
        SELECT r.status, count(*) FROM workflow_runs r
        WHERE r.status IN ('needs_input', 'paused') GROUP BY r.status
    ), totals AS (
        SELECT coalesce(sum(claims), 0) AS claims, coalesce(sum(rescues), 0) AS rescues,
               coalesce(sum(retries), 0) AS retries, coalesce(sum(completed), 0) AS completed,
               coalesce(sum(failed), 0) AS failed, coalesce(sum(canceled), 0) AS canceled
        FROM agently_event_counters
    )
    SELECT 'agently_runs', 'gauge', 'Live runs by status (finished runs: agently_runs_finished_total).',
           format('status="%s"', s.status), coalesce(sum(l.n), 0)::double precision
    FROM unnest(ARRAY['queued', 'running', 'waiting', 'needs_input', 'paused']) AS s(status)
    LEFT JOIN live l ON l.status = s.status
    GROUP BY s.status
    UNION ALL
    SELECT 'agently_runs_finished_total', 'counter', 'Runs that reached a final status.',
           format('status="%s"', f.status), f.n::double precision
    FROM totals t,
         LATERAL (VALUES ('completed', t.completed), ('failed', t.failed),
                         ('canceled', t.canceled)) AS f(status, n)
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
    SELECT 'agently_run_claims_total', 'counter', 'Claims of runs by workers (first starts, wake-ups and rescues).',
           '', t.claims::double precision FROM totals t
    UNION ALL
    SELECT 'agently_lease_losses_total', 'counter', 'Leases that expired and were taken over by another claim (a worker died, stalled or lost the database).',
           '', t.rescues::double precision FROM totals t
    UNION ALL
    SELECT 'agently_node_retries_total', 'counter', 'Node retries scheduled after a failed attempt.',
           '', t.retries::double precision FROM totals t
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_count_events() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION agently_api_metrics() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
