-- 0045_turn_writes.sql — a worker's turn does the same writes with two per-row costs gone:
-- the key of node_runs to its run is checked once per statement, and the turn's operations
-- are read once.
--
-- Measured with bench/instructions (a single-user backend under callgrind: an enqueue of
-- 256 no-op runs and a worker's turn over them, per run; docs/performance.md, "Issue 9: the
-- turn's per-row costs"): 1,530,366 instructions per no-op run before, 1,473,170 after
-- (-3.7 %; the turn's share, ~1,131,000 of them, -5.1 %). The WAL per run does not change
-- (4,476 against 4,481 bytes).
--
-- 1. node_runs' key to workflow_runs (id, user_id). The foreign key checked every node row
--    on its own (an SPI query, an index probe and a KEY SHARE lock: -43,207 instructions
--    per no-op run with no check at all); a turn inserts the node rows of hundreds of runs
--    in one statement. As 0035 did for logs' key to users, a statement trigger now checks what
--    the key checked, once per statement:
--      * a node row names an existing run of its user: checked at the end of every INSERT
--        statement on node_runs (the moment a NOT DEFERRABLE key is checked), with the
--        key's lock (FOR KEY SHARE on the run's row, held to commit, so a concurrent
--        deletion of the run waits for the writer and then deletes what it wrote) and
--        the key's SQLSTATE (23503 foreign_key_violation); an UPDATE that changes a node
--        row's run or user is checked the same way, row by row (nothing does it);
--      * ON DELETE CASCADE: a statement trigger on workflow_runs deletes the deleted runs'
--        node rows (as the owner, under a DELETE policy of its own: the key's cascade
--        ignored row security), and TRUNCATE workflow_runs truncates node_runs as the
--        key's cascade would have demanded;
--      * NO ACTION on a change of a run's id or user: refused (at the end of the statement,
--        as the key's check was) while node rows name the old pair.
--    The writers take user_id from the run row itself (agently_apply_writes joins it), so
--    tenancy is not touched. tests/integration/test_turn_writes.c checks each guarantee.
-- 2. agently_apply_writes read its operations twice with jsonb_to_recordset: once to
--    check them all before writing anything, once to write them (-31,180 instructions per
--    no-op run when read once, alone). The check is now in the one read: a refused operation
--    raises from agently_write_refused as the first pass did (22023, the same words but
--    where to look),
--    and nothing is written, since every write of the statement waits on per_run, which
--    sorts all of the operations first.

-- ---------------------------------------------------------------------------------------
-- 1. node_runs' key to its run, once per statement
-- ---------------------------------------------------------------------------------------

ALTER TABLE node_runs DROP CONSTRAINT node_runs_workflow_run_id_user_id_fkey;

-- AFTER INSERT on node_runs once per statement (transition table new_nodes), and AFTER an
-- UPDATE of a row's run or user, row by row: each distinct (run, user) pair named, locked
-- FOR KEY SHARE as the key's check locked it; a pair with no run has no row to lock.
-- SECURITY DEFINER: the key's check saw every run, whoever wrote the node row.
CREATE FUNCTION agently_node_runs_written()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    unknown bigint;
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        PERFORM FROM workflow_runs r
        WHERE r.id = NEW.workflow_run_id AND r.user_id = NEW.user_id
        FOR KEY SHARE OF r;
        unknown := CASE WHEN FOUND THEN 0 ELSE 1 END;
    ELSE
        SELECT count(*) INTO unknown
        FROM (SELECT DISTINCT n.workflow_run_id, n.user_id FROM new_nodes n) n
        LEFT JOIN LATERAL (SELECT r.id FROM workflow_runs r
                           WHERE r.id = n.workflow_run_id AND r.user_id = n.user_id
                           FOR KEY SHARE OF r) k ON true
        WHERE k.id IS NULL;
    END IF;
    IF unknown > 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = format('%s of the runs the node rows name do not exist for their user',
                             unknown),
            HINT = 'take a node row''s workflow_run_id and user_id from its run row';
    END IF;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION agently_node_runs_written() FROM PUBLIC;

CREATE TRIGGER node_runs_written
    AFTER INSERT ON node_runs
    REFERENCING NEW TABLE AS new_nodes
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_node_runs_written();

CREATE TRIGGER node_runs_run_changed
    AFTER UPDATE OF workflow_run_id, user_id ON node_runs
    FOR EACH ROW
    WHEN (OLD.workflow_run_id IS DISTINCT FROM NEW.workflow_run_id
          OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION agently_node_runs_written();

-- The key's ON DELETE CASCADE and its NO ACTION on a change of a run's key, from the runs'
-- side. Deleting runs is rare (retention, a user's deletion through the users key's
-- cascade, which runs its DELETE as a statement and so fires this): one DELETE per
-- statement, by node_runs' (workflow_run_id, node_id, attempt) key.
CREATE FUNCTION agently_runs_removed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM node_runs n
        WHERE n.workflow_run_id IN (SELECT o.id FROM removed_runs o);
    ELSIF TG_OP = 'TRUNCATE' THEN
        TRUNCATE node_runs;
    ELSIF NOT EXISTS (SELECT FROM workflow_runs r WHERE r.id = OLD.id AND r.user_id = OLD.user_id)
          AND EXISTS (SELECT FROM node_runs n
                      WHERE n.workflow_run_id = OLD.id AND n.user_id = OLD.user_id) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = 'cannot change the id or user of a run that has node rows',
            DETAIL = format('run %s of user %s has node rows', OLD.id, OLD.user_id),
            HINT = 'a run''s id and user never change; start a new run instead';
    END IF;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION agently_runs_removed() FROM PUBLIC;

CREATE TRIGGER workflow_runs_deleted_nodes
    AFTER DELETE ON workflow_runs
    REFERENCING OLD TABLE AS removed_runs
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_runs_removed();

CREATE TRIGGER workflow_runs_key_changed_nodes
    AFTER UPDATE OF id, user_id ON workflow_runs
    FOR EACH ROW
    WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION agently_runs_removed();

CREATE TRIGGER workflow_runs_truncated_nodes
    AFTER TRUNCATE ON workflow_runs
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_runs_removed();

-- The owner's cascade under node_runs' forced row security: its other policies there
-- (0004's) read every row or write a user's own only.
DO $$
BEGIN
    EXECUTE format('CREATE POLICY agently_owner_runs_removed ON node_runs FOR DELETE TO %I '
                   'USING (true)', current_user);
END
$$;

-- ---------------------------------------------------------------------------------------
-- 2. The turn's operations read once
-- ---------------------------------------------------------------------------------------

-- As 0011's first pass: one operation that cannot be written refuses the whole statement.
CREATE FUNCTION agently_write_refused(i integer, op text, status text)
RETURNS boolean
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'invalid write #%: op % with status % (see agently_apply_writes)',
                    i, coalesce(op, '(none)'), coalesce(status, '(none)')
        USING ERRCODE = 'invalid_parameter_value';
END;
$$;
REVOKE ALL ON FUNCTION agently_write_refused(integer, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_write_refused(integer, text, text) TO agently_worker;

-- As 0011, the operations checked in w.
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
    WITH w AS (
        SELECT *
        FROM jsonb_to_recordset(writes) AS x(
            i integer, op text, run uuid, epoch bigint, node text, attempt integer,
            status text, input jsonb, output jsonb, error jsonb, key text, kind text,
            level text, message text, data jsonb, run_at_ms bigint, signal uuid,
            deadline_ms bigint)
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
                  r.status AS final_status, r.run_at AS final_run_at
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
        UPDATE signals s
        SET consumed_at = now(), consumed_by_node = w.node
        FROM w
        JOIN u ON u.id = w.run
        WHERE w.op = 'consume'
          AND s.id = w.signal
          AND s.workflow_run_id = w.run
          AND s.consumed_at IS NULL
    )
    SELECT p.run
    FROM per_run p WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.id = p.run);
END;
$$;

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_apply_writes(text, jsonb)',
                              'agently_write_refused(integer, text, text)',
                              'agently_node_runs_written()',
                              'agently_runs_removed()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
