-- 0055_write_rows.sql — a turn's writes reach the database as an array of rows, not as a
-- JSON document.
--
-- Why: agently_apply_writes (0011, 0045, 0054) took the turn's operations as one JSON
-- array, which the server parsed into a binary jsonb document (jsonb_in: every object's keys
-- sorted, every value copied) and then took apart again (jsonb_to_recordset: each of the 18
-- columns of each operation looked up by key and converted through text). Measured on a
-- no-op turn of 256 runs (768 operations, the worker's own text; callgrind, one statement):
-- 90 K instructions per run, where the same operations as the text of an array of a
-- composite type (array_in, record_in: each field read once, in place, by its type's input
-- function) cost 47 K (docs/performance.md, "Issue 9: the claim's snapshot as text").
--
-- agently_write is the operation's row: the 18 fields the JSON objects carried, in one
-- order; a field the operation does not have is NULL. agently_apply_write_rows is the
-- statement, the one home of what a write is (0054's body, reading agently_write_list(writes)
-- where it read jsonb_to_recordset(writes)); agently_apply_writes(worker, jsonb) stays, for the
-- callers that speak JSON (tests, an operator's psql), as a door to it: the same objects
-- read into rows by jsonb_populate_recordset. The worker sends the rows' text
-- (src/queue/queue_writes.c).

CREATE TYPE agently_write AS (
    i           integer,
    op          text,
    run         uuid,
    epoch       bigint,
    node        text,
    attempt     integer,
    status      text,
    input       jsonb,
    output      jsonb,
    error       jsonb,
    key         text,
    kind        text,
    level       text,
    message     text,
    data        jsonb,
    run_at_ms   bigint,
    signal      uuid,
    deadline_ms bigint
);

-- The operations of a writes array as rows, with a fixed estimate of their number. The
-- statement below is planned once per session for every call (a plan for any array): an
-- unnest() of the array parameter would be estimated at 10 rows in that generic plan and at
-- the array's length in the first calls' custom plans, and the generic plan's nested loops
-- over 10 estimated operations read a 256-run turn's 768 operations hundreds of times
-- (1.46 M instructions per no-op run against 0.89 M). STRICT keeps the function from being
-- inlined, so the estimate stays ROWS: the 100 that jsonb_to_recordset gave the statement
-- before 0055, whose plans are the ones measured.
CREATE FUNCTION agently_write_list(writes agently_write[])
RETURNS SETOF agently_write
LANGUAGE sql
IMMUTABLE
STRICT
ROWS 100
AS $$
    SELECT * FROM unnest(writes)
$$;

REVOKE ALL ON FUNCTION agently_write_list(agently_write[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_write_list(agently_write[]) TO agently_worker;

CREATE FUNCTION agently_apply_write_rows(worker text, writes agently_write[])
RETURNS TABLE (lost_run_id uuid)
LANGUAGE plpgsql
AS $$
BEGIN
    IF worker IS NULL OR writes IS NULL THEN
        RAISE EXCEPTION 'invalid writes: a worker and an array of operations are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- the flag: this statement keeps its own runs' queue rows (dequeued, requeued below)
    PERFORM set_config('agently.turn_writes', 'on', true);
    RETURN QUERY
    WITH w AS (
        SELECT *
        FROM agently_write_list(writes) AS x
        -- every operation checked before anything is written: per_run reads all of w
        -- before the fence and the writes below take a row
        WHERE CASE WHEN coalesce(x.i IS NULL OR x.run IS NULL OR x.epoch IS NULL
                                 OR NOT CASE x.op
                                            WHEN 'node' THEN x.node IS NOT NULL AND x.attempt >= 1
                                                             AND x.status IN ('started', 'waiting', 'completed',
                                                                              'failed', 'skipped',
                                                                              'interrupted', 'canceled')
                                            WHEN 'event' THEN x.kind IS NOT NULL
                                            WHEN 'finish' THEN x.status IN ('completed', 'failed', 'canceled')
                                            WHEN 'release' THEN x.status IN ('queued', 'waiting', 'paused',
                                                                             'needs_input')
                                            WHEN 'consume' THEN x.signal IS NOT NULL AND x.node IS NOT NULL
                                            ELSE false
                                        END, false)
                   THEN agently_write_refused(x.i, x.op, x.status)
                   ELSE true
              END
    ), per_run AS (
        SELECT DISTINCT ON (w.run)
               w.run, w.epoch,
               count(*) FILTER (WHERE w.op <> 'consume') OVER (PARTITION BY w.run) AS nev,
               CASE WHEN w.op IN ('finish', 'release') THEN w.op END AS op,
               w.status, w.output, w.error, w.run_at_ms, w.message, w.deadline_ms
        FROM w
        ORDER BY w.run, w.i DESC
    ), fence AS (
        -- The fence: the queue row at the epoch the worker holds, still claimed. Locked
        -- with the record, per run the record first, in id order (already held by the
        -- worker's turn: then no wait). A rescuer's claim skips them until commit.
        SELECT f.run, q.lease_epoch, q.attempt, q.claimed_by, q.lease_expires_at
        FROM per_run f
        JOIN workflow_runs r ON r.id = f.run
        JOIN run_queue q ON q.run_id = f.run
        WHERE q.lease_epoch = f.epoch
          AND q.claimed_by IS NOT NULL
        ORDER BY f.run
        FOR UPDATE OF r, q
    ), u AS (
        UPDATE workflow_runs r
        SET event_seq = r.event_seq + f.nev,
            status = CASE f.op
                         WHEN 'finish' THEN f.status
                         WHEN 'release' THEN CASE WHEN r.cancel_requested THEN 'queued'
                                                  ELSE f.status END
                         ELSE 'running'
                     END,
            output = CASE WHEN f.op = 'finish' THEN f.output ELSE r.output END,
            error = CASE f.op
                        WHEN 'finish' THEN f.error
                        WHEN 'release' THEN coalesce(f.error, r.error)
                        ELSE r.error
                    END,
            finished_at = CASE WHEN f.op = 'finish' THEN now() ELSE r.finished_at END,
            run_at = CASE
                         WHEN f.op IS DISTINCT FROM 'release' THEN r.run_at
                         WHEN r.cancel_requested
                           OR (r.pause_requested AND f.status <> 'paused')
                           OR (r.wake_requested AND r.lease_epoch = fq.lease_epoch
                               AND f.status IN ('queued', 'waiting'))
                         THEN now()
                         WHEN f.run_at_ms IS NOT NULL THEN to_timestamp(f.run_at_ms / 1000.0)
                         WHEN f.status = 'queued' THEN now()
                         ELSE 'infinity'::timestamptz
                     END,
            timeout_at = CASE WHEN f.op = 'release' AND f.deadline_ms IS NOT NULL
                              THEN to_timestamp(f.deadline_ms / 1000.0)
                              ELSE r.timeout_at END,
            wait_reason = CASE WHEN f.op = 'release' THEN f.message END,
            pause_requested = CASE WHEN f.op = 'release'
                                   THEN r.pause_requested AND f.status <> 'paused'
                                   ELSE r.pause_requested END,
            wake_requested = r.wake_requested AND r.lease_epoch = fq.lease_epoch,
            -- the record of the claim (the live lease is the queue row's)
            claimed_by = CASE WHEN f.op IS NULL THEN fq.claimed_by END,
            lease_expires_at = CASE WHEN f.op IS NULL THEN fq.lease_expires_at END,
            lease_epoch = fq.lease_epoch,
            attempt = fq.attempt,
            started_at = coalesce(r.started_at, now()),
            updated_at = now()
        FROM per_run f
        JOIN fence fq ON fq.run = f.run
        WHERE r.id = f.run
        RETURNING r.id, r.event_seq - f.nev AS base, r.user_id, r.created_at,
                  r.status AS final_status, r.run_at AS final_run_at,
                  r.timeout_at AS final_timeout_at
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
               ev.error, agently_apply_write_rows.worker, ev.epoch, ev.key,
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
    ), dequeued AS (
        -- The queue follows the record (agently_run_queue_follow's rule, here for this
        -- statement's own runs, whose trigger calls the flag below leaves out): an ended
        -- run leaves the queue ...
        DELETE FROM run_queue q
        USING u
        WHERE q.run_id = u.id
          AND u.final_status IN ('completed', 'failed', 'canceled')
    ), requeued AS (
        -- ... a released one is due again at its time, or parked, and held by nobody
        UPDATE run_queue q
        SET run_at = agently_queue_run_at(u.final_status, u.final_run_at),
            deadline = agently_queue_deadline(u.final_status, u.final_timeout_at),
            claimed_by = NULL,
            lease_expires_at = NULL
        FROM u
        WHERE q.run_id = u.id
          AND u.final_status NOT IN ('running', 'completed', 'failed', 'canceled')
    ), consumes AS MATERIALIZED (
        -- the few consume operations by themselves (MATERIALIZED: not folded back into the
        -- join below): whichever side of that join the planner scans per row of the other,
        -- it is never the whole turn's operations (joined to u directly, with u first as
        -- the planner's estimate of one run a turn put it, a no-op turn of 256 runs read
        -- its 768 operations 256 times)
        SELECT w.run, w.signal, w.node FROM w WHERE w.op = 'consume'
    ), consumed AS (
        UPDATE signals s
        SET consumed_at = now(), consumed_by_node = c.node
        FROM consumes c
        JOIN u ON u.id = c.run
        WHERE s.id = c.signal
          AND s.workflow_run_id = c.run
          AND s.consumed_at IS NULL
    )
    SELECT p.run
    FROM per_run p WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.id = p.run);
    PERFORM set_config('agently.turn_writes', 'off', true);
END;
$$;

CREATE OR REPLACE FUNCTION agently_apply_writes(worker text, writes jsonb)
RETURNS TABLE (lost_run_id uuid)
LANGUAGE plpgsql
AS $$
BEGIN
    IF worker IS NULL OR jsonb_typeof(writes) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'invalid writes: a worker and a JSON array of operations are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT l.lost_run_id
    FROM agently_apply_write_rows(
             worker,
             ARRAY(SELECT x FROM jsonb_populate_recordset(NULL::agently_write, writes) AS x)) l;
END;
$$;

REVOKE ALL ON FUNCTION agently_apply_write_rows(text, agently_write[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_apply_write_rows(text, agently_write[]) TO agently_worker;
GRANT USAGE ON TYPE agently_write TO agently_worker;

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_apply_writes(text, jsonb)',
                              'agently_apply_write_rows(text, agently_write[])'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
