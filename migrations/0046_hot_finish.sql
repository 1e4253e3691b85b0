-- 0046_hot_finish.sql — a run's finish is a HOT update: no index of workflow_runs holds the
-- status any more, and the row keeps room on its page for its finished version.
--
-- Why: a run's record is written once in its life by the worker's turn (0011: queued ->
-- completed in one new version), but that version changed `status`, which three indexes
-- held (workflow_runs_user_status_idx, and the predicates of workflow_runs_parked_idx and
-- workflow_runs_timeout_idx). An update that changes a column an index holds is never HOT,
-- so every finish added an entry to each of the table's seven full indexes (and later a
-- vacuum removed the old ones). Measured with bench/instructions (a single-user backend
-- under callgrind: an enqueue of 256 no-op runs and a worker's turn over them, per run;
-- docs/performance.md, "Issue 9: the finish as a HOT update"): 1,475,250 instructions and
-- 4,449 WAL bytes per no-op run before, 1,302,524 and 3,385 with this migration (-11.7 %,
-- -24 % WAL); with the indexes gone but the fill factor left at 80, 1,389,312 and 3,917.
--
-- What held the status, and where it is read from now:
--   * the run list by status (GET /v1/runs?status=, the dashboard's filter): a live status
--     (queued, running, waiting, needs_input, paused) through run_queue, which holds one row
--     per live run (src/api's h_runs_list); failed and canceled through the new partial index
--     workflow_runs_user_error_idx (every failed or canceled run carries its error, and a
--     run that completes leaves `error` NULL, so the index does not stop its finish being
--     HOT); completed through workflow_runs_user_created_idx, newest first;
--   * the deadline sweep (agently_fail_overdue_runs: a paused or needs_input run past its
--     timeout_at, which no worker looks at): a parked run's deadline is now also its queue
--     row's `deadline`, set by the trigger the queue row already follows the record by, and
--     the sweep walks run_queue_deadline_idx;
--   * the live gauges of /metrics (agently_api_metrics) and the inbox's questions
--     (agently_inbox): through run_queue. The gauges read the record's run_at and
--     lease_expires_at before, which since 0011 are the record of the holder as of its last
--     write, not the live queue: `agently_runs_lease_expired` counted every run whose worker
--     had not written it for a lease's time, and the three counts walked the whole history.
--     They are the queue's now.
--
-- The fill factor: a worker's turn finishes the runs of whole pages at once (runs enqueued
-- together sit together), and no old version can be pruned before the turn commits, so each
-- row's finished version needs room of its own on its page. At 80 (0001) about one in five
-- finishes found it; at 50 nearly all do. The price is the history's heap: a page holds
-- fewer runs (docs/performance.md has the figure). An operator who prefers a denser history
-- to a faster finish can set it back (ALTER TABLE workflow_runs SET (fillfactor = 80)); it
-- applies to pages filled from then on.

-- ---------------------------------------------------------------------------------------
-- 1. A parked run's deadline in its queue row
-- ---------------------------------------------------------------------------------------

ALTER TABLE run_queue ADD COLUMN deadline timestamptz;
COMMENT ON COLUMN run_queue.deadline IS
    'The record''s timeout_at while the run is paused or needs_input (no worker looks at it then); NULL otherwise. Kept by agently_run_queue_follow; read by agently_fail_overdue_runs (0046).';

UPDATE run_queue q
SET deadline = r.timeout_at
FROM workflow_runs r
WHERE r.id = q.run_id
  AND r.status IN ('paused', 'needs_input')
  AND r.timeout_at IS NOT NULL;

CREATE INDEX run_queue_deadline_idx ON run_queue (deadline) WHERE deadline IS NOT NULL;

-- As 0011's, and the deadline with the due time: every write of a status other than
-- 'running' (or of run_at or timeout_at) sets both from the record.
CREATE OR REPLACE FUNCTION agently_run_queue_follow()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    IF NEW.status IN ('completed', 'failed', 'canceled') THEN
        DELETE FROM run_queue q WHERE q.run_id = NEW.id;
    ELSE
        UPDATE run_queue q
        SET run_at = CASE WHEN NEW.status IN ('queued', 'waiting') THEN NEW.run_at
                          ELSE 'infinity'::timestamptz END,
            deadline = CASE WHEN NEW.status IN ('paused', 'needs_input') THEN NEW.timeout_at
                       END,
            claimed_by = CASE WHEN OLD.status <> NEW.status OR q.lease_epoch = NEW.lease_epoch
                              THEN NULL ELSE q.claimed_by END,
            lease_expires_at = CASE WHEN OLD.status <> NEW.status
                                      OR q.lease_epoch = NEW.lease_epoch
                                    THEN NULL ELSE q.lease_expires_at END
        WHERE q.run_id = NEW.id;
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER workflow_runs_queue_follow ON workflow_runs;
CREATE TRIGGER workflow_runs_queue_follow
    AFTER UPDATE OF status, run_at, timeout_at ON workflow_runs
    FOR EACH ROW
    WHEN (NEW.status <> 'running')
    EXECUTE FUNCTION agently_run_queue_follow();

-- 0009's sweep, from the queue's deadlines: the record is locked (SKIP LOCKED, as before)
-- and its status and timeout_at checked again at its latest version.
CREATE OR REPLACE FUNCTION agently_fail_overdue_runs(max_runs integer)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    failed    integer := 0;
    rec       record;
    run_error jsonb;
BEGIN
    FOR rec IN
        SELECT r.id, r.timeout_at
        FROM run_queue q
        JOIN workflow_runs r ON r.id = q.run_id
        WHERE q.deadline < now()
          AND r.timeout_at < now()
          AND r.status IN ('paused', 'needs_input')
        ORDER BY q.deadline
        LIMIT max_runs
        FOR UPDATE OF r SKIP LOCKED
    LOOP
        UPDATE workflow_runs r
        SET status = 'failed', finished_at = now(), updated_at = now(), wait_reason = NULL,
            error = jsonb_build_object(
                'class', 'timeout', 'node', NULL,
                'message', format('run exceeded its timeout (deadline %s)',
                                  to_char(rec.timeout_at AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD"T"HH24:MI:SS"Z"')))
        WHERE r.id = rec.id
        RETURNING r.error INTO run_error;
        PERFORM agently_append_event_unfenced(rec.id, 'run.failed', NULL, NULL, 'error',
                                              'run exceeded its timeout while nobody worked on it',
                                              run_error);
        failed := failed + 1;
    END LOOP;
    RETURN failed;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- 2. The live gauges from the queue
-- ---------------------------------------------------------------------------------------
-- Same names, help and labels as 0008's. Live runs by status: every live run has one queue
-- row (work in the number of live runs, not of the history). Queue depth and the oldest
-- due run: unclaimed queue rows due now (run_queue_due_idx). Leases expired: claimed queue
-- rows past their lease (run_queue_lease_idx), the live lease, not the record's copy.
CREATE OR REPLACE FUNCTION agently_api_metrics()
RETURNS TABLE (name text, kind text, help text, labels text, value double precision)
LANGUAGE sql
SECURITY DEFINER
STABLE
AS $$
    WITH live AS (
        SELECT r.status, count(*) AS n
        FROM run_queue q JOIN workflow_runs r ON r.id = q.run_id
        GROUP BY r.status
    ), due AS (
        SELECT count(*) AS n, min(q.run_at) AS oldest
        FROM run_queue q WHERE q.claimed_by IS NULL AND q.run_at <= now()
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
           '', d.n::double precision FROM due d
    UNION ALL
    SELECT 'agently_queue_oldest_age_seconds', 'gauge', 'Age of the oldest due, unclaimed run (0 when none).',
           '', coalesce(extract(epoch FROM now() - d.oldest), 0)::double precision FROM due d
    UNION ALL
    SELECT 'agently_runs_lease_expired', 'gauge', 'Running runs whose lease has expired (a worker died; the run awaits rescue).',
           '', count(*)::double precision
    FROM run_queue q WHERE q.claimed_by IS NOT NULL AND q.lease_expires_at < now()
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

-- ---------------------------------------------------------------------------------------
-- 3. The inbox's questions from the queue
-- ---------------------------------------------------------------------------------------
-- The view's definition as the catalog prints it, with its one status filter narrowed to the
-- live runs (a semi-join on run_queue, under the reader's own row security: the view is
-- security_invoker), so this file restates no body (as 0039 did).
DO $$
DECLARE
    def      text := pg_get_viewdef('agently_inbox'::regclass);
    filter   text := 'WHERE ((r.status)::text = ''needs_input''::text);';
    narrowed text;
BEGIN
    IF right(def, length(filter)) <> filter THEN
        RAISE EXCEPTION 'agently_inbox does not end in the filter 0046 narrows: %', right(def, 200);
    END IF;
    narrowed := left(def, length(def) - 1)
                || ' AND r.id IN (SELECT q.run_id FROM run_queue q)';
    EXECUTE 'CREATE OR REPLACE VIEW agently_inbox WITH (security_invoker = true) AS '
            || narrowed;
END
$$;

-- ---------------------------------------------------------------------------------------
-- 4. No index holds the status; room for the finished version
-- ---------------------------------------------------------------------------------------

DROP INDEX workflow_runs_user_status_idx;
DROP INDEX workflow_runs_parked_idx;
DROP INDEX workflow_runs_timeout_idx;

-- Failed and canceled runs, newest first (the run list's filter). Only runs that carry an
-- error are in it: failed and canceled ones, and the few live ones a person must answer or
-- whose last attempt failed.
CREATE INDEX workflow_runs_user_error_idx
    ON workflow_runs (user_id, created_at DESC, id DESC)
    WHERE error IS NOT NULL;

ALTER TABLE workflow_runs SET (fillfactor = 50);

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_run_queue_follow()',
                              'agently_fail_overdue_runs(integer)',
                              'agently_api_metrics()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
