-- 0009_run_status.sql — one home for every change of a run's status, and one definition of
-- a worker's writes.
--
-- Until now a run's status was changed in five places (the claim and the per-row functions
-- of 0003, the escalation answer of 0005, the batched writes of 0006, the API's cancel /
-- pause / resume and the worker's cancel), each remembering some of the side effects that
-- belong to it. Three defects came from the ones that forgot: a parent never woken when its
-- child was canceled by the API, children left running after their parent ended, nodes
-- shown 'waiting' in a finished run. From here on:
--
--   * agently_run_transition_list() is THE list of allowed status changes (shown as the
--     view agently_run_transitions). A row trigger on workflow_runs refuses any UPDATE
--     that makes another one (SQLSTATE 55000, object_not_in_prerequisite_state), whoever
--     runs it.
--   * Another row trigger performs what must happen when a run reaches a final status
--     (completed, failed, canceled), whoever finished it:
--       - every node attempt still 'started' or 'waiting' becomes 'canceled', with the
--         reason ("the run failed before this node finished");
--       - pending approvals of the run are canceled;
--       - its non-final child runs are canceled (agently_cancel_run: at once when no
--         worker holds them, by request when one does), and so on down the tree;
--       - its parent run, if any, is woken (agently_wake_run).
--     Writers set the status; they never repeat these rules.
--   * A node attempt that had started a child run and ends without it (timeout, failure,
--     cancel) cancels that child: a retried subworkflow node never leaves its previous
--     child running (a row trigger on node_runs, restricted by its WHEN clause to the
--     attempts of subworkflow nodes).
--   * The control plane changes a run's status only through agently_cancel_run,
--     agently_pause_run and agently_resume_run (and agently_resolve_escalation of 0005,
--     replaced below); the dispatcher through agently_fail_overdue_runs.
--   * The worker's writes have one definition: agently_apply_writes (redefined here without
--     its own parent wake-up, which the trigger now does, and with the run's deadline kept
--     on release). The per-row functions of 0003 that restated its rules are dropped; the C
--     per-row calls (queue.c) send one-operation batches through it.
--   * agently_node_latest is the one definition of "the latest attempt of each node".
--
-- Cost: the triggers' WHEN clauses are plain expressions (the transition check is an
-- inlined SQL function), so a claim, a release or a run completing without a parent calls
-- no function at all; measured with bench/run, see docs/performance.md.

-- ---------------------------------------------------------------------------------------
-- The allowed changes of status
-- ---------------------------------------------------------------------------------------

-- "from>to" for every allowed change, and who makes it:
--   queued>running, waiting>running         a claim (agently_claim_runs)
--   queued>paused, waiting>paused,
--   needs_input>paused                      a pause of a run no worker holds (agently_pause_run)
--   queued>canceled, waiting>canceled,
--   paused>canceled, needs_input>canceled   a cancel of a run no worker holds
--                                           (agently_cancel_run, also for children)
--   running>queued|waiting|paused|needs_input   a release by the lease holder
--   running>completed|failed|canceled           a finish by the lease holder
--                                               (both through agently_apply_writes)
--   paused>queued                           a resume (agently_resume_run)
--   needs_input>queued, needs_input>failed  a person's answer (agently_resolve_escalation)
--   paused>failed, needs_input>failed       the run's deadline passed while nobody held it
--                                           (agently_fail_overdue_runs)
-- A rescue (running>running, a new epoch) is no change of status. A final status is never
-- left: a run is re-run as a new run.
CREATE FUNCTION agently_run_transition_list()
RETURNS text[]
LANGUAGE sql
IMMUTABLE
AS $$
SELECT ARRAY['queued>running', 'queued>paused', 'queued>canceled',
             'waiting>running', 'waiting>paused', 'waiting>canceled',
             'running>queued', 'running>waiting', 'running>paused', 'running>needs_input',
             'running>completed', 'running>failed', 'running>canceled',
             'paused>queued', 'paused>canceled', 'paused>failed',
             'needs_input>queued', 'needs_input>paused', 'needs_input>canceled',
             'needs_input>failed']
$$;

-- Inlined where it is used (a trigger's WHEN clause), so checking a change costs an
-- expression, not a function call.
CREATE FUNCTION agently_run_transition_allowed(from_status text, to_status text)
RETURNS boolean
LANGUAGE sql
IMMUTABLE
AS $$
SELECT from_status = to_status
       OR (from_status || '>' || to_status) = ANY (agently_run_transition_list())
$$;

-- The same list as a table, for people and for the test that walks it.
CREATE VIEW agently_run_transitions WITH (security_invoker = true) AS
SELECT split_part(t, '>', 1) AS from_status, split_part(t, '>', 2) AS to_status
FROM unnest(agently_run_transition_list()) AS t;

GRANT SELECT ON agently_run_transitions TO agently_api, agently_worker;

-- ---------------------------------------------------------------------------------------
-- The latest attempt of each node
-- ---------------------------------------------------------------------------------------
-- A filter on workflow_run_id (a DISTINCT ON and PARTITION BY column) is pushed down into
-- the view, so reading one run's nodes walks node_runs_run_node_attempt_key for that run
-- only.
-- security_invoker: the reader's row-level security applies, not the view owner's.

-- first_started_at is when the node's first attempt started (the order people read a
-- run's nodes in).
CREATE VIEW agently_node_latest WITH (security_invoker = true) AS
SELECT DISTINCT ON (n.workflow_run_id, n.node_id)
       n.*,
       min(n.started_at) OVER (PARTITION BY n.workflow_run_id, n.node_id) AS first_started_at
FROM node_runs n
ORDER BY n.workflow_run_id, n.node_id, n.attempt DESC;

GRANT SELECT ON agently_node_latest TO agently_api, agently_worker;

-- agently_api_copy_node_runs (0004) reads the latest attempts through the view: a node is
-- reused by a rerun when its latest attempt completed.
CREATE OR REPLACE FUNCTION agently_api_copy_node_runs(source_run uuid, target_run uuid,
                                                      node_ids text[])
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    tenant  uuid := agently_current_user_id();
    copied  integer;
BEGIN
    IF tenant IS NULL OR NOT EXISTS (
        SELECT 1 FROM workflow_runs t
        WHERE t.id = target_run AND t.user_id = tenant AND t.rerun_of = source_run
          AND t.status = 'queued' AND t.attempt = 0)
       OR NOT EXISTS (SELECT 1 FROM workflow_runs s WHERE s.id = source_run AND s.user_id = tenant)
       OR EXISTS (SELECT 1 FROM node_runs n WHERE n.workflow_run_id = target_run) THEN
        RAISE EXCEPTION 'cannot copy node results into run %', target_run
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status, input, output,
                           error, worker, idempotency_key, started_at, finished_at)
    SELECT tenant, target_run, n.node_id, n.attempt, n.status, n.input, n.output, n.error,
           'rerun:' || source_run::text, n.idempotency_key, n.started_at, n.finished_at
    FROM agently_node_latest n
    WHERE n.workflow_run_id = source_run
      AND n.user_id = tenant
      AND n.status = 'completed'
      AND (n.node_id = ANY (node_ids)
           OR substring(n.node_id FROM '^([^\[#]+)[\[#]') = ANY (node_ids));
    GET DIAGNOSTICS copied = ROW_COUNT;
    RETURN copied;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Cancel, pause, resume: the control plane's three status changes
-- ---------------------------------------------------------------------------------------
-- Each locks the run, then either changes its status (no worker holds it) or records a
-- request for the worker that does (only the lease holder may end a running run; it sees
-- the request at its next renewal, hastened by NOTIFY agently_control). Each appends the
-- event that says what happened, with data (who asked, why). SECURITY INVOKER: under the
-- API's row-level security they see only the current user's runs.
--
-- Returns what became of the run: 'done' (its status changed), 'requested' (a worker holds
-- it and will apply the request), its unchanged status when there was nothing to do (a
-- finished run, a run already paused, a resume of a run that is neither paused nor asked
-- to pause), or NULL when the run does not exist or is not visible.

CREATE FUNCTION agently_cancel_run(run_id uuid, reason text, data jsonb)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    cur text;
BEGIN
    SELECT r.status INTO cur FROM workflow_runs r WHERE r.id = run_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    ELSIF cur IN ('completed', 'failed', 'canceled') THEN
        RETURN cur;
    ELSIF cur = 'running' THEN
        UPDATE workflow_runs r SET cancel_requested = true, updated_at = now()
        WHERE r.id = run_id AND NOT r.cancel_requested;
        IF FOUND THEN
            PERFORM agently_append_event_unfenced(run_id, 'run.cancel_requested', NULL, NULL,
                                                  'info', reason, data);
            PERFORM pg_notify('agently_control', run_id::text);
        END IF;
        RETURN 'requested';
    END IF;
    UPDATE workflow_runs r
    SET status = 'canceled', finished_at = now(), updated_at = now(), cancel_requested = true,
        wait_reason = NULL,
        error = jsonb_build_object('class', 'canceled', 'message', coalesce(reason, 'canceled'))
    WHERE r.id = run_id;
    PERFORM agently_append_event_unfenced(run_id, 'run.canceled', NULL, NULL, 'info', reason,
                                          data);
    RETURN 'done';
END;
$$;

CREATE FUNCTION agently_pause_run(run_id uuid, reason text, data jsonb)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    cur text;
BEGIN
    SELECT r.status INTO cur FROM workflow_runs r WHERE r.id = run_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    ELSIF cur IN ('completed', 'failed', 'canceled', 'paused') THEN
        RETURN cur;
    ELSIF cur = 'running' THEN
        UPDATE workflow_runs r SET pause_requested = true, updated_at = now()
        WHERE r.id = run_id AND NOT r.pause_requested;
        IF FOUND THEN
            PERFORM agently_append_event_unfenced(run_id, 'run.pause_requested', NULL, NULL,
                                                  'info', reason, data);
            PERFORM pg_notify('agently_control', run_id::text);
        END IF;
        RETURN 'requested';
    END IF;
    UPDATE workflow_runs r
    SET status = 'paused', pause_requested = false, updated_at = now(),
        wait_reason = coalesce(reason, 'paused')
    WHERE r.id = run_id;
    PERFORM agently_append_event_unfenced(run_id, 'run.paused', NULL, NULL, 'info', reason,
                                          data);
    RETURN 'done';
END;
$$;

CREATE FUNCTION agently_resume_run(run_id uuid, reason text, data jsonb)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    cur    text;
    asked  boolean;
BEGIN
    SELECT r.status, r.pause_requested INTO cur, asked
    FROM workflow_runs r WHERE r.id = run_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    ELSIF cur = 'running' AND asked THEN
        -- the worker has not paused it yet: withdraw the request
        UPDATE workflow_runs r SET pause_requested = false, updated_at = now()
        WHERE r.id = run_id;
        PERFORM agently_append_event_unfenced(run_id, 'run.pause_withdrawn', NULL, NULL,
                                              'info', reason, data);
        RETURN 'requested';
    ELSIF cur <> 'paused' THEN
        RETURN cur;
    END IF;
    UPDATE workflow_runs r
    SET status = 'queued', run_at = now(), pause_requested = false, wait_reason = NULL,
        updated_at = now()
    WHERE r.id = run_id;
    PERFORM agently_append_event_unfenced(run_id, 'run.resumed', NULL, NULL, 'info', reason,
                                          data);
    RETURN 'done';
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Run deadlines while no worker looks at the run
-- ---------------------------------------------------------------------------------------
-- A run's workflow timeout is enforced by the planner whenever a worker holds the run
-- (waiting runs are woken at their deadline by the planner's timer). A run that is
-- paused or needs_input is not claimable, so nobody would: the worker records the
-- deadline (timeout_at) with each release, and the dispatcher calls this every few
-- seconds. Fails at most max_runs overdue runs (SKIP LOCKED: a run being answered or
-- resumed right now is left for the next sweep, which then sees its new status) and
-- returns how many it failed.

CREATE FUNCTION agently_fail_overdue_runs(max_runs integer)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    failed    integer := 0;
    rec       record;
    run_error jsonb;
BEGIN
    FOR rec IN
        SELECT r.id, r.timeout_at
        FROM workflow_runs r
        WHERE r.timeout_at < now()
          AND r.status IN ('paused', 'needs_input')
        ORDER BY r.timeout_at
        LIMIT max_runs
        FOR UPDATE SKIP LOCKED
    LOOP
        UPDATE workflow_runs r
        SET status = 'failed', finished_at = now(), updated_at = now(), wait_reason = NULL,
            error = jsonb_build_object(
                'class', 'timeout', 'node', NULL,
                'message', format('run exceeded its timeout (deadline %s)',
                                  to_char(rec.timeout_at AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD"T"HH24:MI:SS"Z"')))
        WHERE r.id = rec.id
        RETURNING r.error INTO run_error;
        PERFORM agently_append_event_unfenced(rec.id, 'run.failed', NULL, NULL, 'error',
                                              'run exceeded its timeout while nobody worked on it',
                                              run_error);
        failed := failed + 1;
    END LOOP;
    RETURN failed;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- The triggers: refuse what the list does not allow, do what a final status implies
-- ---------------------------------------------------------------------------------------
-- Row triggers whose WHEN clauses are plain expressions: the hot path (claims, releases,
-- a run completing with nothing left to clean up) evaluates them without calling any
-- function.

CREATE FUNCTION agently_run_transition_refused()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'run % cannot go from % to %', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'the allowed changes are listed in agently_run_transitions';
END;
$$;

CREATE TRIGGER workflow_runs_transition_guard
    BEFORE UPDATE OF status ON workflow_runs
    FOR EACH ROW
    WHEN (NOT agently_run_transition_allowed(OLD.status, NEW.status))
    EXECUTE FUNCTION agently_run_transition_refused();

-- What a run reaching completed, failed or canceled implies, whoever made it so:
--   * its node attempts still 'started' or 'waiting' are closed as 'canceled', with the
--     reason (a person reading a finished run sees no node still waiting);
--   * its pending approvals are canceled;
--   * its non-final children are canceled (agently_cancel_run: at once when no worker
--     holds them, by request when one does; each such cancel fires this trigger again for
--     its own children);
--   * its parent, if any, is woken (agently_wake_run).
-- The WHEN clause leaves out a run that completed and has no parent: a run completes only
-- when every node has settled, and a subworkflow node settles only when its child ended
-- (or was canceled by agently_node_child_ended), so such a run has nothing left to close.
--
-- SECURITY DEFINER: the node attempts of a run the API canceled must be closed although
-- the API may not write node_runs. A trigger function cannot be called directly, and this
-- one only acts on the run whose change fired it and on that run's own children.
--
-- Locks: children after their parent (the parent row is locked by the triggering update);
-- the parent's wake after the child. A child finishing while its parent is being ended in
-- another transaction can therefore deadlock; Postgres aborts one side and it is retried
-- (the API) or recovered through lease expiry (a worker's turn). Both are rare: they need
-- the parent and the child to end at the same moment.
CREATE FUNCTION agently_run_ended()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    child uuid;
BEGIN
    UPDATE node_runs x
    SET status = 'canceled', finished_at = now(),
        error = jsonb_build_object('class', 'canceled',
                                   'message', format('the run %s before this node finished',
                                                     NEW.status))
    WHERE x.workflow_run_id = NEW.id
      AND x.status IN ('started', 'waiting');

    UPDATE approvals a
    SET status = 'canceled'
    WHERE a.workflow_run_id = NEW.id
      AND a.status = 'pending';

    FOR child IN
        SELECT c.id
        FROM workflow_runs c
        WHERE c.parent_run_id = NEW.id
          AND c.status NOT IN ('completed', 'failed', 'canceled')
        ORDER BY c.id
    LOOP
        PERFORM agently_cancel_run(child, format('the parent run %s', NEW.status),
                                   jsonb_build_object('parent_run_id', NEW.id));
    END LOOP;

    IF NEW.parent_run_id IS NOT NULL THEN
        PERFORM agently_wake_run(NEW.parent_run_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER workflow_runs_ended
    AFTER UPDATE OF status ON workflow_runs
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed', 'canceled')
          AND OLD.status NOT IN ('completed', 'failed', 'canceled')
          AND (NEW.status <> 'completed' OR NEW.parent_run_id IS NOT NULL))
    EXECUTE FUNCTION agently_run_ended();

-- A child run is created by a subworkflow node's attempt, with the attempt's key
-- ("child:<run>:<node>:<attempt>") as its idempotency_key, and that node_runs row carries
-- the same key. When the attempt ends in anything but success, its child is canceled.
CREATE FUNCTION agently_node_child_ended()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    child uuid;
BEGIN
    SELECT c.id INTO child
    FROM workflow_runs c
    WHERE c.user_id = NEW.user_id
      AND c.idempotency_key = NEW.idempotency_key
      AND c.parent_run_id = NEW.workflow_run_id
      AND c.status NOT IN ('completed', 'failed', 'canceled');
    IF FOUND THEN
        PERFORM agently_cancel_run(child,
                                   format('node %s of the parent run ended %s', NEW.node_id,
                                          NEW.status),
                                   jsonb_build_object('parent_run_id', NEW.workflow_run_id,
                                                      'node', NEW.node_id,
                                                      'attempt', NEW.attempt));
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER node_runs_child_ended
    AFTER INSERT OR UPDATE OF status ON node_runs
    FOR EACH ROW
    WHEN (NEW.status IN ('failed', 'canceled', 'interrupted', 'skipped')
          AND NEW.idempotency_key LIKE 'child:%')
    EXECUTE FUNCTION agently_node_child_ended();

-- ---------------------------------------------------------------------------------------
-- The worker's writes: one definition
-- ---------------------------------------------------------------------------------------
-- As 0006_batch_writes.sql, with two changes: the parents of finished runs are woken by
-- the trigger above (not here), and a release may carry the run's deadline
-- ("deadline_ms", kept in timeout_at for agently_fail_overdue_runs).
--
-- writes is a JSON array of operations, applied in array order per run:
--   {"op":"node",    "run", "epoch", "node", "attempt", "status", "input"?, "output"?,
--                    "error"?, "key"?, "kind"?, "message"?, "data"?}
--        upsert node_runs (run, node, attempt) + event (kind default 'node.<status>')
--   {"op":"event",   "run", "epoch", "kind", "node"?, "attempt"?, "level"?, "message"?,
--                    "data"?}
--   {"op":"finish",  "run", "epoch", "status" (completed|failed|canceled), "output"?,
--                    "error"?}
--   {"op":"release", "run", "epoch", "status" (queued|waiting|paused|needs_input),
--                    "run_at_ms"?, "message"? (the wait reason), "error"? (kept on the run),
--                    "deadline_ms"? (the run's deadline, kept while nobody holds it)}
--   {"op":"consume", "run", "epoch", "signal", "node"} marks a signal consumed by a node
-- Each run's ops carry the epoch it holds. At most one finish or release per run, and it
-- is the run's last op; at most one node op per (run, node, attempt) (the caller splits a
-- turn into several calls otherwise).
--
-- Returns the runs whose writes were refused (lease lost: nothing of theirs was written).
-- Event seqs are allocated by one fenced UPDATE per run (event_seq += the run's number of
-- events) and numbered in op order, so they stay gap-free per run.
CREATE OR REPLACE FUNCTION agently_apply_writes(worker text, writes jsonb)
RETURNS TABLE (lost_run_id uuid)
LANGUAGE plpgsql
AS $$
DECLARE
    bad     record;
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
        RAISE EXCEPTION 'invalid write #%: op % with status % (see 0009_run_status.sql)',
                        bad.i, coalesce(bad.op, '(none)'), coalesce(bad.status, '(none)')
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
    ), per_run AS (
        -- One row per run: its epoch, its number of events, and its last operation, which
        -- is its finish or release if it has one (that must be a run's last operation).
        -- One sort, no join back to w per run.
        SELECT DISTINCT ON (w.run)
               w.run, w.epoch,
               count(*) FILTER (WHERE w.op <> 'consume') OVER (PARTITION BY w.run) AS nev,
               CASE WHEN w.op IN ('finish', 'release') THEN w.op END AS op,
               w.status, w.output, w.error, w.run_at_ms, w.message, w.deadline_ms
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
            -- never strand a cancel, pause or wake-up request that arrived while the run
            -- was held: such a release is due now, so the engine sees the request
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
            timeout_at = CASE WHEN f.op = 'release' AND f.deadline_ms IS NOT NULL
                              THEN to_timestamp(f.deadline_ms / 1000.0)
                              ELSE r.timeout_at END,
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
    SELECT p.run
    FROM per_run p WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.id = p.run);
END;
$$;

-- The per-row functions restated agently_apply_writes' rules and had already drifted
-- from them; their callers (src/queue/queue.c) now send one-operation batches.
DROP FUNCTION agently_checkpoint_node(uuid, bigint, text, integer, text, jsonb, jsonb, jsonb,
                                      text, text, text, text, jsonb, jsonb);
DROP FUNCTION agently_append_event(uuid, bigint, text, text, integer, text, text, jsonb);
DROP FUNCTION agently_finish_run(uuid, bigint, text, jsonb, jsonb);
DROP FUNCTION agently_release_run(uuid, bigint, text, timestamptz, text, jsonb);

-- ---------------------------------------------------------------------------------------
-- A person's answer to an escalated node (0005), with the documented error on stop
-- ---------------------------------------------------------------------------------------
-- As 0005_escalation.sql, except: 'stop' records the run's error in the shape every failed
-- run has, {node, class, message, error} (the node's own error inside), and the side
-- effects of the run ending (children, approvals, open nodes) come from the trigger.
CREATE OR REPLACE FUNCTION agently_resolve_escalation(run_id uuid, action text, node text,
                                                      note text)
RETURNS TABLE (resolved_node text, attempt integer, run_status text)
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    tenant    uuid := agently_current_user_id();
    r         workflow_runs%ROWTYPE;
    target    text;
    last      integer;
    base      text;
    kind      text;
    new_state text;
    run_error jsonb;
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'no user set' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF action IS NULL OR action NOT IN ('retry', 'skip', 'stop') THEN
        RAISE EXCEPTION 'action must be retry, skip or stop, not %', coalesce(action, '(none)')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO r FROM workflow_runs w
    WHERE w.id = agently_resolve_escalation.run_id AND w.user_id = tenant FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % not found', agently_resolve_escalation.run_id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF r.status <> 'needs_input' THEN
        RAISE EXCEPTION 'run % is %, not waiting for a person', r.id, r.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    target := coalesce(agently_resolve_escalation.node,
                       (SELECT l.node_id FROM logs l
                        WHERE l.run_created_at = r.created_at AND l.workflow_run_id = r.id
                          AND l.kind = 'run.escalated'
                        ORDER BY l.seq DESC LIMIT 1));
    SELECT max(n.attempt) INTO last FROM node_runs n
    WHERE n.workflow_run_id = r.id AND n.node_id = target;
    IF target IS NULL OR last IS NULL THEN
        RAISE EXCEPTION 'node % has no record in run %', coalesce(target, '(none)'), r.id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    IF action = 'stop' THEN
        run_error := jsonb_build_object(
            'node', target,
            'class', coalesce(r.error ->> 'class', 'error'),
            'message', format('node ''%s'' failed: %s; a person stopped the run', target,
                              coalesce(r.error ->> 'message', 'no message')),
            'error', r.error);
        UPDATE workflow_runs w SET status = 'failed', finished_at = now(), updated_at = now(),
               wait_reason = NULL, error = run_error
        WHERE w.id = r.id;
        new_state := 'failed';
    ELSE
        -- map items ("m[3]") and loop bodies ("l#2") take their template's kind
        base := substring(target FROM '^([^\[#]+)[\[#]');
        SELECT CASE WHEN base IS NULL THEN d.node ->> 'type' ELSE d.node -> 'node' ->> 'type' END
        INTO kind
        FROM workflows wf, jsonb_array_elements(wf.definition -> 'nodes') AS d(node)
        WHERE wf.id = r.workflow_id AND d.node ->> 'id' = coalesce(base, target);

        last := last + 1;
        IF action = 'retry' THEN
            INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status, input,
                                   worker)
            VALUES (tenant, r.id, target, last, 'waiting',
                    CASE WHEN kind IN ('wait_event', 'subworkflow') THEN '{}'::jsonb
                         ELSE jsonb_build_object('wake_at_ms',
                                                 (extract(epoch FROM now()) * 1000)::bigint) END,
                    'person');
        ELSE
            INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status, error,
                                   worker, finished_at)
            VALUES (tenant, r.id, target, last, 'skipped',
                    jsonb_build_object('class', 'skipped_by_person', 'message',
                                       coalesce(note, 'skipped by a person')),
                    'person', now());
        END IF;
        UPDATE workflow_runs w SET status = 'queued', run_at = now(), error = NULL,
               wait_reason = NULL, updated_at = now()
        WHERE w.id = r.id;
        new_state := 'queued';
    END IF;

    PERFORM agently_append_event_unfenced(r.id, 'run.resolved', target, last, 'info',
                                          format('a person chose %s for node %s', action, target),
                                          jsonb_build_object('action', action, 'node', target,
                                                             'comment', note));
    IF new_state = 'failed' THEN
        PERFORM agently_append_event_unfenced(r.id, 'run.failed', target, NULL, 'error',
                                              'stopped by a person', run_error);
    END IF;
    RETURN QUERY SELECT target, last, new_state;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Privileges and search paths
-- ---------------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION agently_cancel_run(uuid, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_pause_run(uuid, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_resume_run(uuid, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_fail_overdue_runs(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_run_ended() FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_run_transition_refused() FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_node_child_ended() FROM PUBLIC;

GRANT EXECUTE ON FUNCTION agently_cancel_run(uuid, text, jsonb) TO agently_api, agently_worker;
GRANT EXECUTE ON FUNCTION agently_pause_run(uuid, text, jsonb) TO agently_api, agently_worker;
GRANT EXECUTE ON FUNCTION agently_resume_run(uuid, text, jsonb) TO agently_api, agently_worker;
GRANT EXECUTE ON FUNCTION agently_fail_overdue_runs(integer) TO agently_worker;

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_cancel_run(uuid, text, jsonb)',
                              'agently_pause_run(uuid, text, jsonb)',
                              'agently_resume_run(uuid, text, jsonb)',
                              'agently_fail_overdue_runs(integer)',
                              'agently_run_ended()',
                              'agently_run_transition_refused()',
                              'agently_node_child_ended()',
                              'agently_apply_writes(text, jsonb)',
                              'agently_api_copy_node_runs(uuid, uuid, text[])',
                              'agently_resolve_escalation(uuid, text, text, text)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
