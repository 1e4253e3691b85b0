-- 0038_run_inserted.sql — a new run's queue row and its wake-up hint in one statement
-- trigger, one query.
--
-- Every INSERT into workflow_runs (the API's agently_create_run, a child run, a rerun, the
-- bench's raw enqueue) fired two statement triggers over the same transition table:
-- workflow_runs_queue_insert (0011: the run's run_queue row) and
-- workflow_runs_notify_insert (0003: NOTIFY agently_runs when one of the new runs is due
-- now). Each was a PL/pgSQL call of its own, the second with two queries (the EXISTS over
-- the new runs and the pg_notify). Now one trigger, workflow_runs_inserted, does both in
-- one query: the queue rows are inserted and, when one of them is due now, the hint is
-- sent. On the enqueue's path to its commit, that is one trigger call and two queries
-- less (docs/performance.md, "The enqueue's triggers in one").
--
-- Unchanged: the queue row of every run that is not final (due at its run_at when queued
-- or waiting, 'infinity' otherwise: 0011), and the hint — a run is due now exactly when its
-- new queue row's run_at is not after now() (a queue row of a run neither queued nor
-- waiting is due at 'infinity'), so the same statements notify as before, at most once
-- each (Postgres folds identical notifications within a transaction as well).
-- SECURITY DEFINER as 0011's: the API inserts runs but never writes the queue itself.
CREATE FUNCTION agently_run_inserted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    hinted bigint;
BEGIN
    WITH queued AS (
        INSERT INTO run_queue (run_id, user_id, run_at, priority, lease_epoch, attempt)
        SELECT n.id, n.user_id,
               CASE WHEN n.status IN ('queued', 'waiting') THEN n.run_at ELSE 'infinity' END,
               n.priority, n.lease_epoch, n.attempt
        FROM inserted_runs n
        WHERE n.status NOT IN ('completed', 'failed', 'canceled')
        RETURNING run_at
    )
    SELECT count(pg_notify('agently_runs', '')) INTO hinted
    FROM (SELECT FROM queued q WHERE q.run_at <= now() LIMIT 1) due;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION agently_run_inserted() FROM PUBLIC;

DROP TRIGGER workflow_runs_queue_insert ON workflow_runs;
DROP TRIGGER workflow_runs_notify_insert ON workflow_runs;
DROP FUNCTION agently_run_queue_insert();
DROP FUNCTION agently_notify_runs_inserted();

CREATE TRIGGER workflow_runs_inserted
    AFTER INSERT ON workflow_runs
    REFERENCING NEW TABLE AS inserted_runs
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_run_inserted();

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_run_inserted() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
