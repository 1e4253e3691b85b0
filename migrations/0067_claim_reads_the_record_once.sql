-- 0067_claim_reads_the_record_once.sql — the claim returns what it read of each run's record
-- where it locked it, without reading the record again.
--
-- Why: agently_claim_runs (0062) locks each picked run's record in `records` and then, in
-- its final SELECT, joined workflow_runs a second time for the columns it returns (the
-- owner, the workflow, the status, the creation time, whether the run is fresh): one more
-- probe of the primary key and one more heap fetch per claimed run, for columns the first
-- read had in hand. Measured with bench/instructions (docs/performance.md, "Issue 9: the
-- 30-minute soak's slow minutes; the claim reads the record once"; each on its own cluster,
-- 0062's function applied again as the one to compare): a no-op run in a turn of 256
-- 653,429 -> 648,046 instructions (-0.8 %); a run alone (enqueued, then its claim, its 7
-- writes and the commit) 4,599,542 -> 4,527,837 (-1.6 %).
--
-- What the returned columns are now: those of the record's version the claim locked, as
-- 0062 made the two flags and the bare input. The second read saw the version of the
-- statement's snapshot: the same one unless a turn committed a change to the record between
-- that snapshot and the lock (FOR UPDATE follows it and returns the newer version), and then
-- the locked version is the one the run is in. One version now answers for all of it, so a
-- run is never called fresh (its snapshot read without its history) by an older version than
-- the one whose bare input came with it.
--
-- Nothing else of 0062's function changes; its settings are set again below, as
-- CREATE OR REPLACE clears them.

-- As 0062, and `records` carries the columns the final SELECT returns.
CREATE OR REPLACE FUNCTION agently_claim_runs(worker text, lease interval, max_runs integer,
                                              held uuid[] DEFAULT '{}')
RETURNS TABLE (id uuid, user_id uuid, workflow_id uuid, lease_epoch bigint, attempt integer,
               status_before text, run_created_at timestamptz,
               fresh boolean, cancel_requested boolean, pause_requested boolean,
               bare_input text)
LANGUAGE plpgsql
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
        -- the records of the picked runs, locked without waiting (see above), and what the
        -- claim returns of each: all of it from the version locked (this file's header)
        SELECT r.id, p.before, r.cancel_requested, r.pause_requested,
               r.user_id, r.workflow_id, r.status, r.created_at,
               agently_run_fresh(r.started_at, r.rerun_of) AS fresh,
               CASE WHEN agently_run_bare(r.started_at, r.rerun_of, r.engine_state,
                                          r.time_scale, r.agent_versions)
                         AND NOT r.wake_requested
                    THEN r.input END AS bare_input
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
        RETURNING q.run_id, q.lease_epoch, q.attempt, q.claimed_by, q.lease_expires_at, p.before,
                  p.cancel_requested, p.pause_requested, p.bare_input,
                  p.user_id, p.workflow_id, p.status, p.created_at, p.fresh
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
    SELECT c.run_id, c.user_id, c.workflow_id, c.lease_epoch, c.attempt,
           coalesce(c.before, c.status), c.created_at, c.fresh,
           c.cancel_requested, c.pause_requested,
           CASE WHEN w.id IS NULL THEN c.bare_input::text END
    FROM claimed c
    -- a signal waiting: one probe of the pending index per bare run (LIMIT 1: never a read
    -- of every pending signal)
    LEFT JOIN LATERAL (SELECT g.id
                       FROM signals g
                       WHERE c.bare_input IS NOT NULL
                         AND g.workflow_run_id = c.run_id AND g.consumed_at IS NULL
                       LIMIT 1) w ON true;
END;
$$;

-- As 0062: the function's settings.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_claim_runs(text, interval, integer, uuid[]) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
ALTER FUNCTION agently_claim_runs(text, interval, integer, uuid[])
    SET enable_hashjoin = off;
ALTER FUNCTION agently_claim_runs(text, interval, integer, uuid[])
    SET enable_mergejoin = off;
ALTER FUNCTION agently_claim_runs(text, interval, integer, uuid[])
    SET enable_seqscan = off;
