-- 0028_claim_in_turn.sql — a claim that can open a worker's loop turn.
--
-- The worker claims inside the transaction of the turn that works on what it claimed
-- (src/worker/README.md, "Claims"): the claim, the first turn's writes and, for a run done
-- in its first turn, its end commit together — one commit per run instead of two. The
-- claimed rows then stay locked until that commit, so the claim takes every lock the turn
-- needs on them, the record as well as the queue row, and waits for none: a run whose
-- record somebody else holds locked (the API cancelling a queued run, a finishing child
-- waking it) is left for a later claim instead of being waited for while the claimed queue
-- rows are held (the API's transaction would be waiting for those: a deadlock). As 0011
-- otherwise; a claim in its own transaction, as before, behaves the same.
CREATE OR REPLACE FUNCTION agently_claim_runs(worker text, lease interval, max_runs integer,
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
        SELECT q.run_id, 'running'::text AS before
        FROM run_queue q
        WHERE q.claimed_by IS NOT NULL
          AND q.lease_expires_at < now()
          AND (q.claimed_by IS DISTINCT FROM worker OR q.run_id <> ALL (held))
        ORDER BY q.lease_expires_at
        LIMIT max_runs
        FOR UPDATE SKIP LOCKED
    ), due AS (
        SELECT q.run_id, NULL::text AS before
        FROM run_queue q
        WHERE q.claimed_by IS NULL
          AND q.run_at <= now()
        ORDER BY q.run_at
        LIMIT max_runs
        FOR UPDATE SKIP LOCKED
    ), picked AS (
        SELECT run_id, before FROM rescue
        UNION ALL
        SELECT run_id, before FROM due
        LIMIT max_runs
    ), records AS (
        -- the records of the picked runs, locked without waiting (see above)
        SELECT r.id, p.before
        FROM picked p
        JOIN workflow_runs r ON r.id = p.run_id
        FOR UPDATE OF r SKIP LOCKED
    ), claimed AS (
        UPDATE run_queue q
        SET claimed_by       = worker,
            lease_expires_at = now() + lease,
            lease_epoch      = q.lease_epoch + 1,
            attempt          = q.attempt + 1
        FROM records p
        WHERE q.run_id = p.id
        RETURNING q.run_id, q.lease_epoch, q.attempt, q.claimed_by, q.lease_expires_at, p.before
    ), rescued AS (
        -- As 0011: the rescue of a run a lost worker had written records the new holder
        -- at once (the record is locked by this statement already).
        UPDATE workflow_runs r
        SET claimed_by       = c.claimed_by,
            lease_expires_at = c.lease_expires_at,
            lease_epoch      = c.lease_epoch,
            attempt          = c.attempt,
            wake_requested   = false,
            updated_at       = now()
        FROM claimed c
        WHERE r.id = c.run_id
          AND c.before = 'running'
          AND r.status = 'running'
    )
    SELECT c.run_id, r.user_id, r.workflow_id, c.lease_epoch, c.attempt,
           coalesce(c.before, r.status), r.created_at
    FROM claimed c
    JOIN workflow_runs r ON r.id = c.run_id;
END;
$$;

ALTER FUNCTION agently_claim_runs(text, interval, integer, uuid[])
    SET search_path = pg_catalog, public, pg_temp;
