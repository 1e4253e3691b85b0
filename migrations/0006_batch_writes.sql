-- 0006_batch_writes.sql — a worker's whole loop turn written in one statement, and the
-- vacuum settings that keep the claim indexes small under a constant stream of runs.
--
-- agently_apply_writes() does, set-based and for many runs at once, exactly what
-- agently_checkpoint_node / agently_append_event / agently_finish_run / agently_release_run
-- (0003_queue.sql) do one row at a time, with the same fencing: a run's writes happen only
-- if its lease_epoch is still the one the worker holds and it is still running, and then
-- all of them or none. The per-row functions stay: they are the reference semantics, and
-- what tools and tests call.

-- writes is a JSON array of operations, applied in array order per run:
--   {"op":"node",    "run", "epoch", "node", "attempt", "status", "input"?, "output"?,
--                    "error"?, "key"?, "kind"?, "message"?, "data"?}
--        upsert node_runs (run, node, attempt) + event (kind default 'node.<status>')
--   {"op":"event",   "run", "epoch", "kind", "node"?, "attempt"?, "level"?, "message"?,
--                    "data"?}
--   {"op":"finish",  "run", "epoch", "status" (completed|failed|canceled), "output"?,
--                    "error"?}                       drops the lease, wakes a parent run
--   {"op":"release", "run", "epoch", "status" (queued|waiting|paused|needs_input),
--                    "run_at_ms"?, "message"? (the wait reason), "error"? (kept on the run)}
--   {"op":"consume", "run", "epoch", "signal", "node"} marks a signal consumed by a node
-- Each run's ops carry the epoch it holds. At most one finish or release per run, and it
-- is the run's last op; at most one node op per (run, node, attempt) (the caller splits a
-- turn into several calls otherwise).
--
-- Returns the runs whose writes were refused (lease lost: nothing of theirs was written).
-- Event seqs are allocated by one fenced UPDATE per run (event_seq += the run's number of
-- events) and numbered in op order, so they stay gap-free per run.
CREATE FUNCTION agently_apply_writes(worker text, writes jsonb)
RETURNS TABLE (lost_run_id uuid)
LANGUAGE plpgsql
AS $$
DECLARE
    bad     record;
    rec     record;
    parents uuid[] := '{}';
BEGIN
    IF worker IS NULL OR jsonb_typeof(writes) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'invalid writes: a worker and a JSON array of operations are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT x.i, x.op, x.status INTO bad
    FROM jsonb_to_recordset(writes) AS x(i integer, op text, run uuid, epoch bigint,
                                         status text, kind text, node text, attempt integer,
                                         signal uuid)
    WHERE x.i IS NULL OR x.run IS NULL OR x.epoch IS NULL
       OR NOT CASE x.op
                  WHEN 'node' THEN x.node IS NOT NULL AND x.attempt >= 1
                                   AND x.status IN ('started', 'waiting', 'completed', 'failed',
                                                    'skipped', 'interrupted', 'canceled')
                  WHEN 'event' THEN x.kind IS NOT NULL
                  WHEN 'finish' THEN x.status IN ('completed', 'failed', 'canceled')
                  WHEN 'release' THEN x.status IN ('queued', 'waiting', 'paused', 'needs_input')
                  WHEN 'consume' THEN x.signal IS NOT NULL AND x.node IS NOT NULL
                  ELSE false
              END
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'invalid write #%: op % with status % (see 0006_batch_writes.sql)',
                        bad.i, coalesce(bad.op, '(none)'), coalesce(bad.status, '(none)')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Rows of the statement: (false, run) for a run refused by the fence, (true, parent)
    -- for the parent of a run finished here.
    FOR rec IN
    WITH w AS (
        SELECT *
        FROM jsonb_to_recordset(writes) AS x(
            i integer, op text, run uuid, epoch bigint, node text, attempt integer,
            status text, input jsonb, output jsonb, error jsonb, key text, kind text,
            level text, message text, data jsonb, run_at_ms bigint, signal uuid)
    ), per_run AS (
        -- One row per run: its epoch, its number of events, and its last operation, which
        -- is its finish or release if it has one (that must be a run's last operation).
        -- One sort, no join back to w per run.
        SELECT DISTINCT ON (w.run)
               w.run, w.epoch,
               count(*) FILTER (WHERE w.op <> 'consume') OVER (PARTITION BY w.run) AS nev,
               CASE WHEN w.op IN ('finish', 'release') THEN w.op END AS op,
               w.status, w.output, w.error, w.run_at_ms, w.message
        FROM w
        ORDER BY w.run, w.i DESC
    ), u AS (
        -- The fence and the seq allocation, one row update per run. The run rows are
        -- normally locked already (the worker locks its turn's runs in id order first).
        UPDATE workflow_runs r
        SET event_seq = r.event_seq + f.nev,
            status = CASE f.op
                         WHEN 'finish' THEN f.status
                         WHEN 'release' THEN CASE WHEN r.cancel_requested THEN 'queued'
                                                  ELSE f.status END
                         ELSE r.status
                     END,
            output = CASE WHEN f.op = 'finish' THEN f.output ELSE r.output END,
            error = CASE f.op
                        WHEN 'finish' THEN f.error
                        WHEN 'release' THEN coalesce(f.error, r.error)
                        ELSE r.error
                    END,
            finished_at = CASE WHEN f.op = 'finish' THEN now() ELSE r.finished_at END,
            -- the release rules of agently_release_run(): never strand a cancel, pause or
            -- wake-up request that arrived while the run was held
            run_at = CASE
                         WHEN f.op IS DISTINCT FROM 'release' THEN r.run_at
                         WHEN r.cancel_requested
                           OR (r.pause_requested AND f.status <> 'paused')
                           OR (r.wake_requested AND f.status IN ('queued', 'waiting'))
                         THEN now()
                         WHEN f.run_at_ms IS NOT NULL THEN to_timestamp(f.run_at_ms / 1000.0)
                         WHEN f.status = 'queued' THEN now()
                         ELSE 'infinity'::timestamptz
                     END,
            wait_reason = CASE f.op
                              WHEN 'release' THEN f.message
                              WHEN 'finish' THEN NULL
                              ELSE r.wait_reason
                          END,
            pause_requested = CASE WHEN f.op = 'release'
                                   THEN r.pause_requested AND f.status <> 'paused'
                                   ELSE r.pause_requested END,
            claimed_by = CASE WHEN f.op IS NULL THEN r.claimed_by END,
            lease_expires_at = CASE WHEN f.op IS NULL THEN r.lease_expires_at END,
            updated_at = now()
        FROM per_run f
        WHERE r.id = f.run
          AND r.lease_epoch = f.epoch
          AND r.status = 'running'
        RETURNING r.id, r.event_seq - f.nev AS base, r.user_id, r.created_at,
                  r.status AS final_status, r.run_at AS final_run_at, r.parent_run_id,
                  f.op AS final_op
    ), ev AS (
        SELECT w.*, u.user_id, u.created_at, u.final_status, u.final_run_at,
               u.base + row_number() OVER (PARTITION BY w.run ORDER BY w.i) AS seq
        FROM w
        JOIN u ON u.id = w.run
        WHERE w.op <> 'consume'
    ), nr AS (
        INSERT INTO node_runs AS n (user_id, workflow_run_id, node_id, attempt, status, input,
                                    output, error, worker, lease_epoch, idempotency_key,
                                    finished_at)
        SELECT ev.user_id, ev.run, ev.node, ev.attempt, ev.status, ev.input, ev.output,
               ev.error, agently_apply_writes.worker, ev.epoch, ev.key,
               CASE WHEN ev.status NOT IN ('started', 'waiting') THEN now() END
        FROM ev
        WHERE ev.op = 'node'
        ON CONFLICT ON CONSTRAINT node_runs_run_node_attempt_key DO UPDATE
        SET status          = EXCLUDED.status,
            input           = coalesce(EXCLUDED.input, n.input),
            output          = EXCLUDED.output,
            error           = EXCLUDED.error,
            worker          = EXCLUDED.worker,
            lease_epoch     = EXCLUDED.lease_epoch,
            idempotency_key = coalesce(EXCLUDED.idempotency_key, n.idempotency_key),
            finished_at     = EXCLUDED.finished_at
    ), lg AS (
        INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind, node_id, attempt,
                          level, message, data)
        SELECT ev.created_at, ev.run, ev.seq, ev.user_id,
               CASE ev.op
                   WHEN 'node' THEN coalesce(ev.kind, 'node.' || ev.status)
                   WHEN 'event' THEN ev.kind
                   WHEN 'finish' THEN 'run.' || ev.status
                   ELSE 'run.' || ev.final_status
               END,
               CASE WHEN ev.op IN ('node', 'event') THEN ev.node END,
               CASE WHEN ev.op IN ('node', 'event') THEN ev.attempt END,
               CASE ev.op
                   WHEN 'node' THEN CASE ev.status WHEN 'failed' THEN 'error'
                                                   WHEN 'interrupted' THEN 'warn'
                                                   ELSE 'info' END
                   WHEN 'event' THEN coalesce(ev.level, 'info')
                   WHEN 'finish' THEN CASE WHEN ev.status = 'failed' THEN 'error'
                                           ELSE 'info' END
                   ELSE 'info'
               END,
               CASE WHEN ev.op = 'finish' THEN NULL ELSE ev.message END,
               CASE ev.op
                   WHEN 'finish' THEN CASE WHEN ev.status = 'failed' THEN ev.error END
                   WHEN 'release' THEN jsonb_build_object('run_at', ev.final_run_at,
                                                          'requested_status', ev.status)
                   ELSE ev.data
               END
        FROM ev
    ), consumed AS (
        -- consumed in the same statement as the node that consumed it: both or neither
        UPDATE signals s
        SET consumed_at = now(), consumed_by_node = w.node
        FROM w
        JOIN u ON u.id = w.run
        WHERE w.op = 'consume'
          AND s.id = w.signal
          AND s.workflow_run_id = w.run
          AND s.consumed_at IS NULL
    )
    SELECT false AS wake, p.run AS id
    FROM per_run p WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.id = p.run)
    UNION ALL
    SELECT true, u.parent_run_id
    FROM u WHERE u.final_op = 'finish' AND u.parent_run_id IS NOT NULL
    LOOP
        IF rec.wake THEN
            parents := parents || rec.id;
        ELSE
            lost_run_id := rec.id;
            RETURN NEXT;
        END IF;
    END LOOP;

    -- A finished subworkflow wakes its parent (agently_finish_run does the same), after
    -- the child rows: the lock order is child before parent, parents in id order.
    PERFORM agently_wake_run(x.parent)
    FROM (SELECT DISTINCT p AS parent FROM unnest(parents) AS p ORDER BY 1) x;
END;
$$;

REVOKE ALL ON FUNCTION agently_apply_writes(text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_apply_writes(text, jsonb) TO agently_worker;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_apply_writes(text, jsonb) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;

-- workflow_runs only grows (finished runs are kept for history) while every claim,
-- renewal and finish leaves dead entries in the small partial claim indexes. The default
-- trigger, 20 % of the table, fires more and more rarely as the table grows, so those
-- indexes bloat. Vacuum after a fixed number of dead rows instead; leave room on each page
-- for the updated versions of a run's row.
ALTER TABLE workflow_runs SET (autovacuum_vacuum_scale_factor = 0,
                               autovacuum_vacuum_threshold = 10000,
                               autovacuum_vacuum_cost_delay = 0,
                               fillfactor = 80);

-- node_runs is the most written table after logs. Its user_id foreign key to users is
-- redundant: (workflow_run_id, user_id) already references workflow_runs (id, user_id),
-- whose user_id references users, and deleting a user cascades users -> workflow_runs ->
-- node_runs through them. Dropping it saves a foreign-key check (a row lock on the user's
-- row, shared by every concurrent writer of that user) per node row written.
ALTER TABLE node_runs DROP CONSTRAINT node_runs_user_id_fkey;

-- agently_claim_runs (0003) joins the picked runs back to workflow_runs by primary key.
-- With custom plans on a table of some tens of thousands of rows the planner preferred to
-- hash the whole table instead: a sequential scan per claim, 8 of the 16 ms a claim of 256
-- runs took on 20,000 rows. The batch is at most max_runs rows: always look them up by key.
ALTER FUNCTION agently_claim_runs(text, interval, integer) SET enable_hashjoin = off;
ALTER FUNCTION agently_claim_runs(text, interval, integer) SET enable_mergejoin = off;
