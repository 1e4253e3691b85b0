-- 0058_turn_fixed_costs.sql — what a worker's turn costs per statement, whatever its size.
--
-- Why: a turn's claim and its writes are planned once per session, but Postgres still does
-- per statement what no number of runs changes: it starts the executor on the whole plan
-- (every subplan, run or not), reads back each trigger's WHEN clause from its stored text
-- and prepares it (stringToNode, ExecPrepareQual), and plans an SQL function's body at each
-- call. A turn of a hundred runs shares that; a run alone pays all of it, and a run alone is
-- what `workflow_5step_p50_ms` and `enqueue_to_start` measure. Measured with callgrind on a
-- single-user backend (`bench/instructions --mode alone`: enqueue one run, then one turn of
-- a 5-step run: the claim, its 7 writes, the commit; docs/performance.md, "Issue 9: a run
-- alone"): 6.03 M instructions an iteration, of which the writes statement 3.8 M and the
-- claim's transaction 1.4 M. Three changes take 0.66 M of it (-11 %), and 17.6 K of the
-- 691 K of a no-op run in a turn of 256 (-2.5 %; each change sized alone below on a copy
-- of one cluster):
--
--   * agently_write_list (0055) is PL/pgSQL: an SQL function that is not inlined (its ROWS
--     estimate is the reason it exists) has its body parsed and planned again in every
--     statement that calls it; a PL/pgSQL function keeps its plan for the session. It
--     returns the same rows, with the same estimate. -128 K an iteration, -8.9 K a run in a
--     turn of 256 (a tuplestore is cheaper per row than the SQL function's executor).
--   * The transition guard's WHEN clause (0034) holds the list of changes once, not three
--     times: its second test (a write that carries a new lease_epoch is the claim and its
--     outcome together) reads the statuses the list lets go to running and those it lets
--     running go to, two short constants made from the list by the same generator. The same
--     condition (allowed(o, running) is o in the first set, allowed(running, n) is n in the
--     second); its text 8,443 -> 5,336 characters, read back in every statement that writes a
--     run's status: -204 K an iteration.
--   * The claim's snapshots (0053, 0057): a run no turn has worked on (fresh) has no node rows,
--     child runs or approvals, and the snapshot already left those parts out for it at run
--     time, but their subplans were started in every claim. agently_claim_runs now says
--     which claimed runs are fresh (it reads their record already; the rule has one home,
--     agently_run_fresh, which the snapshot reads too), agently_run_snapshot
--     takes `history` (false: leave those parts out, known at plan time, so the plan has
--     none of them), and agently_claim_turn reads the fresh runs' snapshots without them
--     and the others' with them, the second statement only when there are others. The six
--     arrays the claim is carried in become one array of agently_claimed_run. -365 K an
--     iteration.
--
-- Nothing a caller sees changes: the same rows, the same snapshot text, the same refusals.

-- ---------------------------------------------------------------------------------------
-- The writes' rows, planned once per session
-- ---------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION agently_write_list(writes agently_write[])
RETURNS SETOF agently_write
LANGUAGE plpgsql
IMMUTABLE
STRICT
ROWS 100
AS $$
BEGIN
    RETURN QUERY SELECT * FROM unnest(writes);
END;
$$;

-- ---------------------------------------------------------------------------------------
-- The transition guard: the list once
-- ---------------------------------------------------------------------------------------
-- As 0034's generator, the one home of the guard's condition; test_run_status checks the
-- trigger's constants against agently_run_transition_list().
CREATE OR REPLACE FUNCTION agently_run_transition_guard_create()
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    list         text[] := agently_run_transition_list();
    -- the statuses the list lets go to running, and those it lets running go to
    into_running text[] := ARRAY(SELECT split_part(t, '>', 1) FROM unnest(list) t
                                 WHERE split_part(t, '>', 2) = 'running' ORDER BY 1);
    from_running text[] := ARRAY(SELECT split_part(t, '>', 2) FROM unnest(list) t
                                 WHERE split_part(t, '>', 1) = 'running' ORDER BY 1);
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE TRIGGER workflow_runs_transition_guard '
        '    BEFORE UPDATE OF status ON workflow_runs '
        '    FOR EACH ROW '
        '    WHEN (OLD.status <> NEW.status '
        '          AND NOT ((OLD.status || ''>'' || NEW.status) = ANY (%s::text[]) '
        '                   OR (NEW.lease_epoch > OLD.lease_epoch '
        '                       AND OLD.status = ANY (%s::text[]) '
        '                       AND NEW.status = ANY (%s::text[])))) '
        '    EXECUTE FUNCTION agently_run_transition_refused()',
        quote_literal(list::text), quote_literal(into_running::text),
        quote_literal(from_running::text));
END;
$$;

SELECT agently_run_transition_guard_create();

-- ---------------------------------------------------------------------------------------
-- The claim: which runs are fresh, and their snapshots without the history parts
-- ---------------------------------------------------------------------------------------
-- The result types change: dropped and created again, the callers first.
DROP FUNCTION agently_claim_turn(text, interval, integer, uuid[]);
DROP FUNCTION agently_claim_runs(text, interval, integer, uuid[]);
DROP FUNCTION agently_run_snapshot(uuid, boolean);

-- The one home of "no turn has worked on the run" (0051): every turn's writes set
-- started_at, and a rerun starts from its origin's node rows. An SQL function of one
-- expression, inlined where it is called: the claim (which runs it took are fresh) and the
-- snapshot (which parts a run can have).
CREATE FUNCTION agently_run_fresh(started_at timestamptz, rerun_of uuid)
RETURNS boolean
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT started_at IS NULL AND rerun_of IS NULL
$$;

-- As 0028, and `fresh`: no turn has worked on the run.
CREATE FUNCTION agently_claim_runs(worker text, lease interval, max_runs integer,
                                   held uuid[] DEFAULT '{}')
RETURNS TABLE (id uuid, user_id uuid, workflow_id uuid, lease_epoch bigint, attempt integer,
               status_before text, run_created_at timestamptz,
               fresh boolean)
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
           coalesce(c.before, r.status), r.created_at,
           agently_run_fresh(r.started_at, r.rerun_of)
    FROM claimed c
    JOIN workflow_runs r ON r.id = c.run_id;
END;
$$;

-- As 0057, and `history`: false leaves out the parts only a run that turns have worked on
-- can have (nodes, children, approvals). A caller passes false only for a fresh run, as a
-- constant: the function is inlined and those subqueries are gone from the plan.
CREATE FUNCTION agently_run_snapshot(run uuid, whole boolean, history boolean DEFAULT true)
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
                WHEN f.fresh OR NOT history THEN ''
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
        || CASE WHEN f.fresh OR NOT history THEN '' ELSE coalesce(',"children":' || (
            SELECT jsonb_object_agg(c.parent_node_id,
                       jsonb_build_object('run_id', c.id, 'status', c.status, 'output', c.output,
                                          'error', c.error, 'attempt',
                                          (regexp_match(c.idempotency_key, ':([0-9]+)$'))[1]::integer))
            FROM (SELECT DISTINCT ON (k.parent_node_id) k.*
                  FROM workflow_runs k
                  WHERE k.parent_run_id = r.id AND k.parent_node_id IS NOT NULL
                  ORDER BY k.parent_node_id, k.created_at DESC) c)::text, '') END
        || CASE WHEN f.fresh OR NOT history THEN '' ELSE coalesce(',"approvals":' || (
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
    CROSS JOIN LATERAL (SELECT agently_run_fresh(r.started_at, r.rerun_of) AS fresh) f
    WHERE r.id = run
$$;

CREATE TYPE agently_claimed_run AS (
    id            uuid,
    user_id       uuid,
    workflow_id   uuid,
    lease_epoch   bigint,
    attempt       integer,
    status_before text,
    fresh         boolean
);

-- As 0053: the claim, then the snapshots in a second statement (it sees every change
-- committed up to the claim's locks). The fresh runs' snapshots first, without the history
-- parts; the others', whole, only when the claim took any.
CREATE FUNCTION agently_claim_turn(worker text, lease interval, max_runs integer,
                                   held uuid[] DEFAULT '{}')
RETURNS TABLE (id uuid, user_id uuid, workflow_id uuid, lease_epoch bigint, attempt integer,
               status_before text, snapshot text, cancel_requested boolean,
               pause_requested boolean)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    claimed    agently_claimed_run[];
    any_worked boolean;
BEGIN
    SELECT array_agg(ROW(c.id, c.user_id, c.workflow_id, c.lease_epoch, c.attempt,
                         c.status_before, c.fresh)::agently_claimed_run),
           bool_or(NOT c.fresh)
    INTO claimed, any_worked
    FROM agently_claim_runs(worker, lease, max_runs, held) c;
    IF claimed IS NULL THEN
        RETURN;   -- an idle poll reads nothing
    END IF;

    RETURN QUERY
    SELECT c.id, c.user_id, c.workflow_id, c.lease_epoch, c.attempt, c.status_before,
           s.snapshot, s.cancel_requested, s.pause_requested
    FROM unnest(claimed) AS c
    LEFT JOIN LATERAL agently_run_snapshot(c.id, true, false) s ON true
    WHERE c.fresh;
    IF any_worked THEN
        RETURN QUERY
        SELECT c.id, c.user_id, c.workflow_id, c.lease_epoch, c.attempt, c.status_before,
               s.snapshot, s.cancel_requested, s.pause_requested
        FROM unnest(claimed) AS c
        LEFT JOIN LATERAL agently_run_snapshot(c.id, true) s ON true
        WHERE NOT c.fresh;
    END IF;
END;
$$;

REVOKE ALL ON FUNCTION agently_run_fresh(timestamptz, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_run_fresh(timestamptz, uuid) TO agently_worker;
REVOKE ALL ON FUNCTION agently_claim_runs(text, interval, integer, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_claim_runs(text, interval, integer, uuid[]) TO agently_worker;
REVOKE ALL ON FUNCTION agently_run_snapshot(uuid, boolean, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_run_snapshot(uuid, boolean, boolean) TO agently_worker;
REVOKE ALL ON FUNCTION agently_claim_turn(text, interval, integer, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_claim_turn(text, interval, integer, uuid[]) TO agently_worker;
GRANT USAGE ON TYPE agently_claimed_run TO agently_worker;

DO $$
DECLARE
    fn text;
BEGIN
    -- the generator's too: CREATE OR REPLACE above left it without one
    FOREACH fn IN ARRAY ARRAY['agently_claim_runs(text, interval, integer, uuid[])',
                              'agently_claim_turn(text, interval, integer, uuid[])',
                              'agently_run_transition_guard_create()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;

-- As 0028 and 0053.
ALTER FUNCTION agently_claim_runs(text, interval, integer, uuid[])
    SET enable_hashjoin = off;
ALTER FUNCTION agently_claim_runs(text, interval, integer, uuid[])
    SET enable_mergejoin = off;
ALTER FUNCTION agently_claim_turn(text, interval, integer, uuid[])
    SET plan_cache_mode = force_generic_plan;
