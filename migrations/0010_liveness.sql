-- 0010_liveness.sql — a claim never rescues a run its own claimer still holds.
--
-- A worker's lease on a run it is still working on can expire without anybody else
-- being involved: a loop turn that holds the run's row locked longer than the lease makes
-- the heartbeat's renewal wait behind it. Until now the same worker's next claim could
-- then "rescue" that run from itself: a new epoch, a second copy of the run in its memory,
-- the first copy's in-flight requests aborted (an at_most_once one then found
-- started-but-unfinished: interrupted). The renewal renews an expired lease that nobody
-- took (0003), so the right thing for the holder is to keep the run and renew it.
--
-- held lists the runs the claimer still holds (the worker passes every run it tracks); a
-- rescue skips a run claimed by this worker that is in the list. A run this worker gave
-- up (abandoned after a database error: it no longer tracks it) is not in the list, so
-- this worker can rescue it too — with a single worker, nobody else would.
--
-- Otherwise exactly the function of 0003 (with the join settings of 0006).

DROP FUNCTION agently_claim_runs(text, interval, integer);

CREATE FUNCTION agently_claim_runs(worker text, lease interval, max_runs integer,
                                   held uuid[] DEFAULT '{}')
RETURNS TABLE (id uuid, user_id uuid, workflow_id uuid, lease_epoch bigint, attempt integer,
               status_before text, run_created_at timestamptz)
LANGUAGE plpgsql
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
BEGIN
    IF worker IS NULL OR lease IS NULL OR lease <= interval '0'
       OR max_runs IS NULL OR max_runs < 1 OR max_runs > 10000 OR held IS NULL THEN
        RAISE EXCEPTION 'invalid claim: worker, a positive lease and a held list are required, max_runs must be 1..10000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    RETURN QUERY
    WITH rescue AS (
        SELECT r.id AS run_id, r.status AS before
        FROM workflow_runs r
        WHERE r.status = 'running'
          AND r.lease_expires_at < now()
          AND (r.claimed_by IS DISTINCT FROM worker OR r.id <> ALL (held))
        ORDER BY r.lease_expires_at
        LIMIT max_runs
        FOR UPDATE SKIP LOCKED
    ), due AS (
        SELECT r.id AS run_id, r.status AS before
        FROM workflow_runs r
        WHERE r.status IN ('queued', 'waiting')
          AND r.run_at <= now()
        ORDER BY r.run_at
        LIMIT max_runs
        FOR UPDATE SKIP LOCKED
    ), picked AS (
        SELECT run_id, before FROM rescue
        UNION ALL
        SELECT run_id, before FROM due
        LIMIT max_runs
    )
    UPDATE workflow_runs r
    SET status           = 'running',
        claimed_by       = worker,
        lease_expires_at = now() + lease,
        lease_epoch      = r.lease_epoch + 1,
        attempt          = r.attempt + 1,
        started_at       = coalesce(r.started_at, now()),
        updated_at       = now(),
        wait_reason      = NULL,
        wake_requested   = false
    FROM picked p
    WHERE r.id = p.run_id
    RETURNING r.id, r.user_id, r.workflow_id, r.lease_epoch, r.attempt, p.before, r.created_at;
END;
$$;

REVOKE ALL ON FUNCTION agently_claim_runs(text, interval, integer, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_claim_runs(text, interval, integer, uuid[]) TO agently_worker;
