-- 0066_turn_writes_one_sort.sql — the turn's writes sort their operations once where they
-- sorted them twice.
--
-- Why: agently_apply_write_rows' per_run (0055, 0063) counted each run's events and noted
-- whether it consumes a signal with window aggregates partitioned by run, which Postgres
-- sorts the operations for (by run), and then took each run's last operation with DISTINCT
-- ON, which it sorts them for again (by run and operation number, descending): two sorts of
-- a turn's every operation, each a copy of its row. The same window over the order DISTINCT
-- ON reads, its frame the run's whole partition, gives the same count and flag from the
-- one sort. Measured with bench/instructions (docs/performance.md, "Issue 9: a turn's events
-- in one row ...; one sort of the turn's operations"; each on its own cluster, 0063's
-- function applied again as the one to compare with): a no-op run in a turn of 256 659,710 -> 652,710 instructions (-1.1 %), a
-- run alone 4,626,227 -> 4,603,051 (-0.5 %).
--
-- Nothing else of 0063's function changes.

CREATE OR REPLACE FUNCTION agently_apply_write_rows(worker text, writes agently_write[])
RETURNS TABLE (lost_run_id uuid)
LANGUAGE plpgsql
AS $$
DECLARE
    lost       uuid[];
    released   uuid[];
    consuming  boolean := false;
    one_run    uuid;
    is_lost    boolean;
    is_release boolean;
    is_consume boolean;
    flag       text;
BEGIN
    IF worker IS NULL OR writes IS NULL THEN
        RAISE EXCEPTION 'invalid writes: a worker and an array of operations are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- the flag: this statement keeps its own runs' queue rows (dequeued below, and the
    -- released ones' after it). Set by an assignment, which PL/pgSQL evaluates as a simple
    -- expression, where PERFORM runs a query through the executor
    flag := set_config('agently.turn_writes', 'on', true);
    -- Its rows are the runs the statements after it need, and only those (none in a turn
    -- that finishes or keeps every run it writes): the runs refused by the fence, the
    -- released runs that passed it, those that consume a signal.
    FOR one_run, is_lost, is_release, is_consume IN
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
               count(*) FILTER (WHERE w.op <> 'consume') OVER run_ops AS nev,
               bool_or(w.op = 'consume') OVER run_ops AS consumes,
               CASE WHEN w.op IN ('finish', 'release') THEN w.op END AS op,
               w.status, w.output, w.error, w.run_at_ms, w.message, w.deadline_ms
        FROM w
        -- the window in the order DISTINCT ON reads the rows in, its frame the run's whole
        -- partition (the same count and flag): one sort of the operations, not two
        WINDOW run_ops AS (PARTITION BY w.run ORDER BY w.i DESC
                           ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
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
    )
    SELECT p.run, u.id IS NULL, p.op = 'release', p.consumes
    FROM per_run p
    LEFT JOIN u ON u.id = p.run
    WHERE u.id IS NULL OR p.op = 'release' OR p.consumes
    LOOP
        IF is_lost THEN
            lost := lost || one_run;
        ELSE
            IF is_release THEN
                released := released || one_run;
            END IF;
            consuming := consuming OR is_consume;
        END IF;
    END LOOP;
    flag := set_config('agently.turn_writes', 'off', true);

    -- ... a released one is due again at its time, or parked, and held by nobody: the
    -- record as the statement above left it (its final status, run_at and timeout_at;
    -- its queue row locked by that statement's fence)
    IF released IS NOT NULL THEN
        UPDATE run_queue q
        SET run_at = agently_queue_run_at(r.status, r.run_at),
            deadline = agently_queue_deadline(r.status, r.timeout_at),
            claimed_by = NULL,
            lease_expires_at = NULL
        FROM workflow_runs r
        WHERE r.id = ANY (released)
          AND q.run_id = r.id
          AND r.status NOT IN ('running', 'completed', 'failed', 'canceled');
    END IF;
    -- the signals consumed by the runs that passed the fence
    IF consuming THEN
        UPDATE signals s
        SET consumed_at = now(), consumed_by_node = c.node
        FROM agently_write_list(writes) c
        WHERE c.op = 'consume'
          AND NOT c.run = ANY (coalesce(lost, '{}'))
          AND s.id = c.signal
          AND s.workflow_run_id = c.run
          AND s.consumed_at IS NULL;
    END IF;
    IF lost IS NOT NULL THEN
        RETURN QUERY SELECT unnest(lost);
    END IF;
END;
$$;

COMMENT ON FUNCTION agently_apply_write_rows(text, agently_write[]) IS
    'A worker turn''s writes (0055, 0063, 0066): one statement for every turn''s rows, a release''s queue rows and consumed signals in statements of their own when the turn has them';
