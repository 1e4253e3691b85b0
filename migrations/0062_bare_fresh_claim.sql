-- 0062_bare_fresh_claim.sql — a fresh run whose snapshot would be its input alone is claimed
-- with its input, not with a snapshot written as text.
--
-- Why: a fresh run's snapshot (0057, 0058) is four keys for almost every run: its id, its
-- input and the clock twice ({"run_id":…,"input":…,"now_ms":…,"started_at_ms":…}). The
-- claim wrote it by concatenation in a second read of the run's record (a lateral call of
-- agently_run_snapshot per run), and the worker parsed the text back with jansson, ~240
-- instructions a byte. Measured (docs/performance.md, "Issue 9: the bare claim"): per no-op
-- run in a turn of 256, the server 677,536 -> 662,156 instructions (bench/instructions
-- --mode noop; -15.4 K, the second read and the text) and the worker 97.4 K -> 80.6 K (the
-- parse); a run alone 4,952,267 -> 4,821,134.
--
-- A run is bare (agently_run_bare) when it is fresh (agently_run_fresh: no turn has worked on
-- it), its engine state is empty, its clock runs at 1, it pins no agents, no signal waits
-- for it and it does not ask to be woken (below): then agently_run_snapshot leaves out
-- every part but those four. The claim
-- locks the run's record already (agently_claim_runs' `records`); it returns the locked
-- version's two flags and, for a bare run, its input as text, and agently_claim_turn
-- returns the run with `snapshot` NULL, `input` and the statement's `now_ms` (the
-- database's clock, as the snapshot had it). The worker makes the same document of them
-- (src/queue/queue.c, bare_snapshot); every other run's snapshot comes as before.
--
-- What the claim's own statement sees: 0053 read the snapshots in the statement after the
-- claim, which sees everything committed before the claim's locks. The claim's statement
-- takes its snapshot when it starts, but the record's columns here are those of the version
-- it locked (FOR UPDATE follows a change committed in between and rechecks it), so a cancel
-- or pause request committed before the lock is seen, as before. A signal stored in that
-- moment may be missed by the statement's look for one, but a stored signal wakes its run
-- (agently_wake_run sets wake_requested, in the signal's transaction or after it): a run
-- whose locked record asks to be woken is not bare (its snapshot is read as text, by the
-- next statement, which sees the signal), and a wake that comes after the lock waits for
-- the claim's commit and wakes the run again, as any wake of a held run does.
-- test_worker_turn holds both documents equal to the turn's own read of the same run.

-- The result types change: dropped and created again, the caller first.
DROP FUNCTION agently_claim_turn(text, interval, integer, uuid[]);
DROP FUNCTION agently_claim_runs(text, interval, integer, uuid[]);
DROP TYPE agently_claimed_run;

-- The one home of "its snapshot is its input and the clock": every part
-- agently_run_snapshot leaves out when it is empty, read from the record (the signals are
-- a table of their own: the claim asks for them beside this). An SQL function of one
-- expression, inlined where it is called.
CREATE FUNCTION agently_run_bare(started_at timestamptz, rerun_of uuid,
                                 engine_state agently_json_object,
                                 time_scale agently_time_scale,
                                 agent_versions agently_json_object)
RETURNS boolean
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT agently_run_fresh(started_at, rerun_of)
           AND engine_state = '{}' AND time_scale = 1 AND agent_versions = '{}'
$$;

-- As 0058 (and 0061's setting below), and for each claimed run the locked record's two flags
-- and, for a bare one, its input.
CREATE FUNCTION agently_claim_runs(worker text, lease interval, max_runs integer,
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
        -- turn's snapshot needs of the version locked (this file's header)
        SELECT r.id, p.before, r.cancel_requested, r.pause_requested,
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
                  p.cancel_requested, p.pause_requested, p.bare_input
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
           coalesce(c.before, r.status), r.created_at,
           agently_run_fresh(r.started_at, r.rerun_of), c.cancel_requested, c.pause_requested,
           CASE WHEN w.id IS NULL THEN c.bare_input::text END
    FROM claimed c
    JOIN workflow_runs r ON r.id = c.run_id
    -- a signal waiting: one probe of the pending index per bare run (LIMIT 1: never a read
    -- of every pending signal)
    LEFT JOIN LATERAL (SELECT g.id
                       FROM signals g
                       WHERE c.bare_input IS NOT NULL
                         AND g.workflow_run_id = c.run_id AND g.consumed_at IS NULL
                       LIMIT 1) w ON true;
END;
$$;

CREATE TYPE agently_claimed_run AS (
    id               uuid,
    user_id          uuid,
    workflow_id      uuid,
    lease_epoch      bigint,
    attempt          integer,
    status_before    text,
    fresh            boolean,
    cancel_requested boolean,
    pause_requested  boolean,
    bare_input       text
);

-- As 0058, and the bare runs first, straight from the claim: `snapshot` NULL, `input` and
-- `now_ms` set (NULL for every other run). The other fresh runs' snapshots, without the
-- history parts, and the worked-on runs', whole, each only when the claim took any.
CREATE FUNCTION agently_claim_turn(worker text, lease interval, max_runs integer,
                                   held uuid[] DEFAULT '{}')
RETURNS TABLE (id uuid, user_id uuid, workflow_id uuid, lease_epoch bigint, attempt integer,
               status_before text, snapshot text, cancel_requested boolean,
               pause_requested boolean, input text, now_ms bigint)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    claimed        agently_claimed_run[];
    any_fresh_text boolean;
    any_worked     boolean;
BEGIN
    SELECT array_agg(ROW(c.id, c.user_id, c.workflow_id, c.lease_epoch, c.attempt,
                         c.status_before, c.fresh, c.cancel_requested, c.pause_requested,
                         c.bare_input)::agently_claimed_run),
           bool_or(c.fresh AND c.bare_input IS NULL),
           bool_or(NOT c.fresh)
    INTO claimed, any_fresh_text, any_worked
    FROM agently_claim_runs(worker, lease, max_runs, held) c;
    IF claimed IS NULL THEN
        RETURN;   -- an idle poll reads nothing
    END IF;

    RETURN QUERY
    SELECT c.id, c.user_id, c.workflow_id, c.lease_epoch, c.attempt, c.status_before,
           NULL::text, c.cancel_requested, c.pause_requested, c.bare_input,
           (extract(epoch FROM now()) * 1000)::bigint
    FROM unnest(claimed) AS c
    WHERE c.bare_input IS NOT NULL;
    IF any_fresh_text THEN
        RETURN QUERY
        SELECT c.id, c.user_id, c.workflow_id, c.lease_epoch, c.attempt, c.status_before,
               s.snapshot, s.cancel_requested, s.pause_requested, NULL::text, NULL::bigint
        FROM unnest(claimed) AS c
        LEFT JOIN LATERAL agently_run_snapshot(c.id, true, false) s ON true
        WHERE c.fresh AND c.bare_input IS NULL;
    END IF;
    IF any_worked THEN
        RETURN QUERY
        SELECT c.id, c.user_id, c.workflow_id, c.lease_epoch, c.attempt, c.status_before,
               s.snapshot, s.cancel_requested, s.pause_requested, NULL::text, NULL::bigint
        FROM unnest(claimed) AS c
        LEFT JOIN LATERAL agently_run_snapshot(c.id, true) s ON true
        WHERE NOT c.fresh;
    END IF;
END;
$$;

REVOKE ALL ON FUNCTION agently_run_bare(timestamptz, uuid, agently_json_object,
                                        agently_time_scale, agently_json_object) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_run_bare(timestamptz, uuid, agently_json_object,
                                           agently_time_scale, agently_json_object)
    TO agently_worker;
REVOKE ALL ON FUNCTION agently_claim_runs(text, interval, integer, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_claim_runs(text, interval, integer, uuid[]) TO agently_worker;
REVOKE ALL ON FUNCTION agently_claim_turn(text, interval, integer, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_claim_turn(text, interval, integer, uuid[]) TO agently_worker;
GRANT USAGE ON TYPE agently_claimed_run TO agently_worker;

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_claim_runs(text, interval, integer, uuid[])',
                              'agently_claim_turn(text, interval, integer, uuid[])'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;

-- As 0006/0028 and 0061: the claim's reads are index reads; as 0053: one plan a session.
ALTER FUNCTION agently_claim_runs(text, interval, integer, uuid[])
    SET enable_hashjoin = off;
ALTER FUNCTION agently_claim_runs(text, interval, integer, uuid[])
    SET enable_mergejoin = off;
ALTER FUNCTION agently_claim_runs(text, interval, integer, uuid[])
    SET enable_seqscan = off;
ALTER FUNCTION agently_claim_turn(text, interval, integer, uuid[])
    SET plan_cache_mode = force_generic_plan;
