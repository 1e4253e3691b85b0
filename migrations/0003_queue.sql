-- 0003_queue.sql — the durable queue: claim indexes, claim/lease/fencing functions, the
-- step checkpoint, run completion and release, and the wake-up notification.
--
-- workflow_runs is the queue (DESIGN.md §3). The rules these functions implement:
--   * claim: FOR UPDATE SKIP LOCKED under READ COMMITTED, up to N runs per statement,
--     over runs that are queued/waiting and due, or running with an expired lease. A claim
--     sets claimed_by, lease_expires_at = now() + lease, and increments lease_epoch (the
--     fencing token) and attempt.
--   * lease renewal is absolute (now() + lease, never +=) and idempotent, one statement
--     for all the leases a worker holds.
--   * fencing: every worker write is conditioned on lease_epoch = <the epoch it was given>
--     AND status = 'running'. NULL / zero rows means the lease is lost: the worker stops
--     that run and writes nothing more for it.
--   * all times are the database's now() (transaction start), never a worker's clock.
--     Call these functions in short transactions: a lease computed from a stale now() is
--     shorter, never longer, so staleness is safe but wasteful.
--   * waiting holds nothing: agently_release_run() drops the lease; the run sits in the
--     table with a run_at (timer) or waits for agently_wake_run().
--   * lock order: a transaction that locks several runs locks them in id order (renewal
--     does), and a child run before its parent (agently_finish_run wakes the parent).
--     Anything else can deadlock; Postgres then aborts one transaction (SQLSTATE 40P01),
--     which the caller retries.
--
-- All functions here are SECURITY INVOKER: the worker's (or API's) own grants and
-- policies apply. EXECUTE is revoked from PUBLIC and granted per role at the end.

-- ---------------------------------------------------------------------------------------
-- Claim indexes
-- ---------------------------------------------------------------------------------------
-- Partial, so they hold only the live part of the queue: completed runs (the vast
-- majority, kept for history) never enter them and cannot slow a claim.

-- Due runs in run_at order; the claim walks it from the oldest and stops after N rows.
-- Runs waiting on an event with no timer have run_at = 'infinity' and sit at the far end.
CREATE INDEX workflow_runs_due_idx
    ON workflow_runs (run_at)
    WHERE status IN ('queued', 'waiting');

-- Expired leases of crashed workers. Trade-off, measured later by bench/: because
-- lease_expires_at is indexed, a lease renewal is not a HOT update (it adds entries to the
-- run's indexes). Renewals are one statement per worker per heartbeat, so this is
-- accepted in exchange for finding expired leases without scanning every running run.
CREATE INDEX workflow_runs_lease_idx
    ON workflow_runs (lease_expires_at)
    WHERE status = 'running';

-- ---------------------------------------------------------------------------------------
-- Claim
-- ---------------------------------------------------------------------------------------

-- Claims up to max_runs runs for worker, with a lease of the given length.
--
-- Rescues (running, lease expired) are taken first, oldest expiry first, then due runs in
-- run_at order. Two separate locking scans instead of one "a OR b" scan, so each walks its
-- own small partial index in order and stops after max_runs rows; an OR would read every
-- due row and sort them. Every LIMIT is the plain max_runs, so even a generic plan knows
-- the batch is small and joins back to workflow_runs through its primary key.
--
-- Safety under READ COMMITTED: every condition is in the WHERE clause of the locking
-- SELECT. FOR UPDATE re-evaluates that WHERE clause on the newest version of a row it had
-- to wait for, so a run that its owner renewed, released or finished between our snapshot
-- and our lock no longer qualifies and is not taken. SKIP LOCKED means claimers never
-- wait for each other or for a worker that is checkpointing. The UPDATE then touches only
-- rows this statement holds locked.
--
-- Runs with cancel_requested or pause_requested set are claimed like any other: the engine
-- applies the request (it must hold the lease to write the outcome).
--
-- status_before is 'queued' (first start), 'waiting' (wake-up) or 'running' (rescue from a
-- crashed or partitioned worker: resume from the last checkpoint). run_created_at is what
-- the caller needs for nothing but convenience (the partition key of the run's logs).
CREATE FUNCTION agently_claim_runs(worker text, lease interval, max_runs integer)
RETURNS TABLE (id uuid, user_id uuid, workflow_id uuid, lease_epoch bigint, attempt integer,
               status_before text, run_created_at timestamptz)
LANGUAGE plpgsql
AS $$
BEGIN
    IF worker IS NULL OR lease IS NULL OR lease <= interval '0'
       OR max_runs IS NULL OR max_runs < 1 OR max_runs > 10000 THEN
        RAISE EXCEPTION 'invalid claim: worker and a positive lease are required, max_runs must be 1..10000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    RETURN QUERY
    WITH rescue AS (
        SELECT r.id AS run_id, r.status AS before
        FROM workflow_runs r
        WHERE r.status = 'running'
          AND r.lease_expires_at < now()
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
        -- A SELECT in WITH is evaluated only as far as its reader pulls, so this LIMIT
        -- makes "due" lock just the rows still needed after the rescues. (Were it ever
        -- evaluated eagerly, up to 2 x max_runs rows would stay locked until commit —
        -- slower for other claimers, never incorrect.)
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
        -- The engine reads signals/approvals after this claim commits, so anything that
        -- arrived before is seen then; anything after sets the flag again.
        wake_requested   = false
    FROM picked p
    WHERE r.id = p.run_id
    RETURNING r.id, r.user_id, r.workflow_id, r.lease_epoch, r.attempt, p.before, r.created_at;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Lease renewal (heartbeat)
-- ---------------------------------------------------------------------------------------

-- Renews every lease a worker holds in one statement. run_ids[i] is held with epochs[i].
-- Absolute and idempotent: running it twice gives the same expiry as once, and a missed
-- heartbeat is simply skipped. Returns the runs still held, with the control-plane
-- requests the engine must apply; a run not returned has been lost (another worker holds
-- it, or it is no longer running): stop it at once and write nothing more for it.
-- A lease that expired but was not yet taken by anyone is renewed: the epoch is unchanged,
-- so nobody else has written the run.
CREATE FUNCTION agently_renew_leases(worker text, run_ids uuid[], epochs bigint[], lease interval)
RETURNS TABLE (id uuid, cancel_requested boolean, pause_requested boolean)
LANGUAGE plpgsql
AS $$
BEGIN
    IF worker IS NULL OR lease IS NULL OR lease <= interval '0'
       OR cardinality(run_ids) IS DISTINCT FROM cardinality(epochs) THEN
        RAISE EXCEPTION 'invalid renewal: worker, a positive lease and run_ids/epochs of equal length are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    RETURN QUERY
    WITH held AS (
        -- Lock in id order, the global lock order for multi-run transactions, so a
        -- renewal cannot deadlock with a batched checkpoint that does the same.
        SELECT r.id AS run_id
        FROM workflow_runs r
        JOIN unnest(run_ids, epochs) AS h(run_id, epoch)
          ON h.run_id = r.id AND h.epoch = r.lease_epoch
        WHERE r.status = 'running'
          AND r.claimed_by = worker
        ORDER BY r.id
        FOR UPDATE OF r
    )
    UPDATE workflow_runs r
    SET lease_expires_at = now() + lease
    FROM held
    WHERE r.id = held.run_id
    RETURNING r.id, r.cancel_requested, r.pause_requested;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Events
-- ---------------------------------------------------------------------------------------

-- Appends one event for a run the caller holds. Fenced: the seq is allocated by an UPDATE
-- conditioned on the lease epoch, so a worker that lost its lease gets NULL and writes
-- nothing; otherwise returns the new seq (gap-free per run, starting at 1).
CREATE FUNCTION agently_append_event(run_id uuid, epoch bigint, kind text, node_id text,
                                     attempt integer, level text, message text, data jsonb)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    new_seq      bigint;
    run_user     uuid;
    run_created  timestamptz;
BEGIN
    UPDATE workflow_runs r
    SET event_seq = r.event_seq + 1
    WHERE r.id = run_id
      AND r.lease_epoch = epoch
      AND r.status = 'running'
    RETURNING r.event_seq, r.user_id, r.created_at
    INTO new_seq, run_user, run_created;
    IF NOT FOUND THEN
        RETURN NULL;   -- lease lost
    END IF;

    INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind, node_id, attempt,
                      level, message, data)
    VALUES (run_created, run_id, new_seq, run_user, kind, node_id, attempt,
            coalesce(level, 'info'), message, data);
    RETURN new_seq;
END;
$$;

-- The control plane's variant (cancel requested, signal received, approval decided...):
-- not fenced, since the API holds no lease, and valid in any status. SECURITY INVOKER, so
-- under the API's RLS it can only touch a run of the current user; returns NULL if the
-- run is not visible. The seq comes from the same counter under the same row lock, so it
-- interleaves safely with the worker's events.
CREATE FUNCTION agently_append_event_unfenced(run_id uuid, kind text, node_id text,
                                              attempt integer, level text, message text,
                                              data jsonb)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    new_seq      bigint;
    run_user     uuid;
    run_created  timestamptz;
BEGIN
    UPDATE workflow_runs r
    SET event_seq = r.event_seq + 1
    WHERE r.id = run_id
    RETURNING r.event_seq, r.user_id, r.created_at
    INTO new_seq, run_user, run_created;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind, node_id, attempt,
                      level, message, data)
    VALUES (run_created, run_id, new_seq, run_user, kind, node_id, attempt,
            coalesce(level, 'info'), message, data);
    RETURN new_seq;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Step checkpoint
-- ---------------------------------------------------------------------------------------

-- One round trip per step checkpoint:
--   1. fenced seq allocation on the run (and engine_state, unless NULL = unchanged);
--      if the lease is lost, return NULL before writing anything else;
--   2. upsert node_runs (run, node, attempt) with the status, output and error;
--      finished_at is set for terminal node statuses only ('started' and 'waiting' are
--      not terminal); input and idempotency_key keep their earlier value when NULL;
--   3. append the event (kind defaults to 'node.<status>').
-- Returns the event's seq. For an at_most_once node the engine checkpoints 'started'
-- (and commits) before running it; a row still 'started' after a crash is interrupted.
CREATE FUNCTION agently_checkpoint_node(run_id uuid, epoch bigint, node_id text, attempt integer,
                                        status text, input jsonb, output jsonb, error jsonb,
                                        worker text, idempotency_key text,
                                        event_kind text, event_message text, event_data jsonb,
                                        engine_state jsonb)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    new_seq      bigint;
    run_user     uuid;
    run_created  timestamptz;
    terminal     boolean;
BEGIN
    UPDATE workflow_runs r
    SET event_seq    = r.event_seq + 1,
        engine_state = coalesce(agently_checkpoint_node.engine_state, r.engine_state),
        updated_at   = now()
    WHERE r.id = run_id
      AND r.lease_epoch = epoch
      AND r.status = 'running'
    RETURNING r.event_seq, r.user_id, r.created_at
    INTO new_seq, run_user, run_created;
    IF NOT FOUND THEN
        RETURN NULL;   -- lease lost: nothing was written
    END IF;

    terminal := agently_checkpoint_node.status NOT IN ('started', 'waiting');

    INSERT INTO node_runs AS n (user_id, workflow_run_id, node_id, attempt, status, input,
                                output, error, worker, lease_epoch, idempotency_key,
                                finished_at)
    VALUES (run_user, run_id, agently_checkpoint_node.node_id, agently_checkpoint_node.attempt,
            agently_checkpoint_node.status, agently_checkpoint_node.input,
            agently_checkpoint_node.output, agently_checkpoint_node.error,
            agently_checkpoint_node.worker, epoch, agently_checkpoint_node.idempotency_key,
            CASE WHEN terminal THEN now() END)
    ON CONFLICT ON CONSTRAINT node_runs_run_node_attempt_key DO UPDATE
    SET status          = EXCLUDED.status,
        input           = coalesce(EXCLUDED.input, n.input),
        output          = EXCLUDED.output,
        error           = EXCLUDED.error,
        worker          = EXCLUDED.worker,
        lease_epoch     = EXCLUDED.lease_epoch,
        idempotency_key = coalesce(EXCLUDED.idempotency_key, n.idempotency_key),
        finished_at     = EXCLUDED.finished_at;

    INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind, node_id, attempt,
                      level, message, data)
    VALUES (run_created, run_id, new_seq, run_user,
            coalesce(event_kind, 'node.' || agently_checkpoint_node.status),
            agently_checkpoint_node.node_id, agently_checkpoint_node.attempt,
            CASE agently_checkpoint_node.status
                WHEN 'failed' THEN 'error'
                WHEN 'interrupted' THEN 'warn'
                ELSE 'info'
            END,
            event_message, event_data);
    RETURN new_seq;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Finishing and releasing a run
-- ---------------------------------------------------------------------------------------

-- Finishes a run the caller holds: status completed | failed | canceled, output, error,
-- finished_at; drops the lease; appends 'run.<status>'. Returns the seq, or NULL if the
-- lease was lost (nothing written). If the run is a subworkflow, its parent is woken
-- (agently_wake_run semantics) in the same transaction, so a parent that is just deciding
-- to wait for this child cannot miss it.
CREATE FUNCTION agently_finish_run(run_id uuid, epoch bigint, status text, output jsonb,
                                   error jsonb)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    new_seq      bigint;
    run_user     uuid;
    run_created  timestamptz;
    parent       uuid;
BEGIN
    IF agently_finish_run.status IS NULL
       OR agently_finish_run.status NOT IN ('completed', 'failed', 'canceled') THEN
        RAISE EXCEPTION 'invalid final status %: expected completed, failed or canceled',
                        agently_finish_run.status
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    UPDATE workflow_runs r
    SET status           = agently_finish_run.status,
        output           = agently_finish_run.output,
        error            = agently_finish_run.error,
        finished_at      = now(),
        claimed_by       = NULL,
        lease_expires_at = NULL,
        wait_reason      = NULL,
        event_seq        = r.event_seq + 1,
        updated_at       = now()
    WHERE r.id = run_id
      AND r.lease_epoch = epoch
      AND r.status = 'running'
    RETURNING r.event_seq, r.user_id, r.created_at, r.parent_run_id
    INTO new_seq, run_user, run_created, parent;
    IF NOT FOUND THEN
        RETURN NULL;   -- lease lost
    END IF;

    INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind, level, data)
    VALUES (run_created, run_id, new_seq, run_user,
            'run.' || agently_finish_run.status,
            CASE WHEN agently_finish_run.status = 'failed' THEN 'error' ELSE 'info' END,
            CASE WHEN agently_finish_run.status = 'failed' THEN agently_finish_run.error END);

    IF parent IS NOT NULL THEN
        PERFORM agently_wake_run(parent);
    END IF;
    RETURN new_seq;
END;
$$;

-- Releases a run the caller holds without finishing it: new_status is
--   queued       run again as soon as possible (run_at NULL = now), e.g. after a retry delay
--   waiting      sleep until run_at (NULL = 'infinity': only agently_wake_run wakes it)
--   paused       until the API resumes it (sets status 'queued'); clears pause_requested
--   needs_input  until the API records the answer and re-queues it
-- The lease is dropped (a waiting run holds nothing), engine_state is saved unless NULL,
-- and a 'run.<status>' event is appended. Returns the seq, or NULL if the lease was lost.
--
-- A release never strands a request that arrived while the run was held and that the
-- engine may not have seen yet:
--   * cancel_requested set   -> the run is re-queued instead, due now, so the engine
--                               claims it again and cancels it;
--   * pause_requested set    -> unless pausing now, due now (the engine will pause it);
--   * wake_requested set     -> a queued/waiting release is due now (a signal, approval
--                               or child result arrived after the claim: re-evaluate).
-- That closes the lost-wake-up race between "nothing to do, wait" and the event arriving.
CREATE FUNCTION agently_release_run(run_id uuid, epoch bigint, new_status text,
                                    run_at timestamptz, wait_reason text, engine_state jsonb)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    new_seq      bigint;
    run_user     uuid;
    run_created  timestamptz;
    final_status text;
    final_run_at timestamptz;
BEGIN
    IF new_status IS NULL OR new_status NOT IN ('queued', 'waiting', 'paused', 'needs_input') THEN
        RAISE EXCEPTION 'invalid release status %: expected queued, waiting, paused or needs_input',
                        new_status
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    UPDATE workflow_runs r
    SET status = CASE WHEN r.cancel_requested THEN 'queued' ELSE new_status END,
        run_at = CASE
                     WHEN r.cancel_requested
                       OR (r.pause_requested AND new_status <> 'paused')
                       OR (r.wake_requested AND new_status IN ('queued', 'waiting'))
                     THEN now()
                     ELSE coalesce(agently_release_run.run_at,
                                   CASE WHEN new_status = 'queued' THEN now()
                                        ELSE 'infinity'::timestamptz END)
                 END,
        wait_reason      = agently_release_run.wait_reason,
        engine_state     = coalesce(agently_release_run.engine_state, r.engine_state),
        pause_requested  = r.pause_requested AND new_status <> 'paused',
        claimed_by       = NULL,
        lease_expires_at = NULL,
        event_seq        = r.event_seq + 1,
        updated_at       = now()
    WHERE r.id = run_id
      AND r.lease_epoch = epoch
      AND r.status = 'running'
    RETURNING r.event_seq, r.user_id, r.created_at, r.status, r.run_at
    INTO new_seq, run_user, run_created, final_status, final_run_at;
    IF NOT FOUND THEN
        RETURN NULL;   -- lease lost
    END IF;

    INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind, level, message, data)
    VALUES (run_created, run_id, new_seq, run_user, 'run.' || final_status, 'info',
            agently_release_run.wait_reason,
            jsonb_build_object('run_at', final_run_at, 'requested_status', new_status));
    RETURN new_seq;
END;
$$;

-- Something a run may be waiting for has happened: a signal was stored, an approval
-- decided, a child run finished. Call it in the same transaction as that write.
-- Sets wake_requested on any non-terminal run (so a run that is running right now and
-- about to wait re-evaluates instead, see agently_release_run) and makes a waiting run due
-- now. Row-locks the run, which is what orders it against a concurrent release. Returns
-- false if the run is finished or not visible to the caller (RLS).
CREATE FUNCTION agently_wake_run(run_id uuid)
RETURNS boolean
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE workflow_runs r
    SET wake_requested = true,
        run_at         = CASE WHEN r.status = 'waiting' THEN least(r.run_at, now())
                              ELSE r.run_at END,
        updated_at     = now()
    WHERE r.id = run_id
      AND r.status NOT IN ('completed', 'failed', 'canceled');
    RETURN FOUND;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Wake-up notifications
-- ---------------------------------------------------------------------------------------
-- pg_notify('agently_runs', '') when a run becomes claimable now. A hint only: workers
-- also poll (<= 1 s), so a lost or extra notification is harmless. Notifications are sent
-- at commit, and identical ones within a transaction are collapsed into one.
--
-- INSERT: one statement-level trigger with a transition table, so a batch insert of N runs
-- costs one check and at most one notification.
-- UPDATE: a row-level trigger restricted to UPDATE OF status, run_at with a WHEN clause.
-- Postgres does not allow transition tables on a trigger with a column list, and a
-- statement-level UPDATE trigger without one would capture every row of every heartbeat
-- and checkpoint. The WHEN clause is evaluated in the executor without calling the
-- function, so claims (status -> running), renewals and checkpoints cost nothing here.

CREATE FUNCTION agently_notify_runs_inserted()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted_runs i
               WHERE i.status IN ('queued', 'waiting') AND i.run_at <= now()) THEN
        PERFORM pg_notify('agently_runs', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION agently_notify_runs_updated()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('agently_runs', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER workflow_runs_notify_insert
    AFTER INSERT ON workflow_runs
    REFERENCING NEW TABLE AS inserted_runs
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_notify_runs_inserted();

CREATE TRIGGER workflow_runs_notify_update
    AFTER UPDATE OF status, run_at ON workflow_runs
    FOR EACH ROW
    WHEN (NEW.status IN ('queued', 'waiting') AND NEW.run_at <= now())
    EXECUTE FUNCTION agently_notify_runs_updated();

-- ---------------------------------------------------------------------------------------
-- Housekeeping
-- ---------------------------------------------------------------------------------------

-- Deletes Idempotency-Key records older than older_than (at least 24 hours: a client may
-- retry a request for a day and must get the first answer). Returns the number deleted.
-- Called by the dispatcher (worker role: all users' keys).
CREATE FUNCTION agently_purge_api_idempotency(older_than interval)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    deleted integer;
BEGIN
    IF older_than IS NULL OR older_than < interval '24 hours' THEN
        RAISE EXCEPTION 'idempotency keys must be kept at least 24 hours, got %', older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM api_idempotency k WHERE k.created_at < now() - older_than;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Privileges
-- ---------------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION agently_claim_runs(text, interval, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_renew_leases(text, uuid[], bigint[], interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_append_event(uuid, bigint, text, text, integer, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_append_event_unfenced(uuid, text, text, integer, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_checkpoint_node(uuid, bigint, text, integer, text, jsonb, jsonb, jsonb, text, text, text, text, jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_finish_run(uuid, bigint, text, jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_release_run(uuid, bigint, text, timestamptz, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_wake_run(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_notify_runs_inserted() FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_notify_runs_updated() FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_purge_api_idempotency(interval) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION agently_claim_runs(text, interval, integer) TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_renew_leases(text, uuid[], bigint[], interval) TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_append_event(uuid, bigint, text, text, integer, text, text, jsonb) TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_append_event_unfenced(uuid, text, text, integer, text, text, jsonb) TO agently_api, agently_worker;
GRANT EXECUTE ON FUNCTION agently_checkpoint_node(uuid, bigint, text, integer, text, jsonb, jsonb, jsonb, text, text, text, text, jsonb, jsonb) TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_finish_run(uuid, bigint, text, jsonb, jsonb) TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_release_run(uuid, bigint, text, timestamptz, text, jsonb) TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_wake_run(uuid) TO agently_api, agently_worker;
GRANT EXECUTE ON FUNCTION agently_purge_api_idempotency(interval) TO agently_worker;

-- Pin search_path on the functions added here (see the same block in 0002_rls.sql).
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure
        FROM pg_proc p
        WHERE p.pronamespace = current_schema()::regnamespace
          AND p.proname LIKE 'agently\_%'
          AND p.proname <> 'agently_current_user_id'
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp',
                       fn, current_schema());
    END LOOP;
END
$$;

-- Self-check, as at the end of 0002: no SECURITY DEFINER function runnable by PUBLIC.
DO $$
DECLARE
    bad text;
BEGIN
    SELECT string_agg(p.oid::regprocedure::text, ', ') INTO bad
    FROM pg_proc p
    WHERE p.pronamespace = current_schema()::regnamespace
      AND p.prosecdef
      AND (p.proacl IS NULL
           OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) x
                      WHERE x.grantee = 0 AND x.privilege_type = 'EXECUTE'));
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'SECURITY DEFINER functions executable by PUBLIC: %', bad;
    END IF;
END
$$;
