-- 0011_run_queue.sql — the queue entry moves to a narrow table beside the run's record.
--
-- Until now workflow_runs was both the run's record and its queue entry: every claim and
-- every finish wrote a new, non-HOT version of a wide row with a dozen indexes, and every
-- lease renewal another one (docs/performance.md). From here on (DESIGN.md §2-3):
--
--   * run_queue holds one row per live (unfinished) run: its due time, priority, tenant,
--     the lease (claimed_by, lease_expires_at), the fencing token (lease_epoch), the number
--     of claims (attempt). Three indexes: the key, due unclaimed runs, claimed runs by
--     lease expiry. Claims and renewals touch only this table (but a rescue, below).
--   * workflow_runs stays the run's record. The worker writes it in its turn's one
--     statement (agently_apply_writes) as before; the first write of a claim also records
--     the claim there (status 'running', claimed_by, lease_epoch, attempt, started_at). A
--     run that finishes in its first turn thus goes from 'queued' to 'completed' in ONE new
--     version of its record, not two. Its claimed_by / lease_epoch / lease_expires_at are
--     the record of the holder as of its last write, for people; the live lease and the
--     fence are run_queue's.
--   * One home for the queue row's life: a row is inserted with the run (a statement
--     trigger) and follows every change of the record's status (a row trigger): a final
--     status deletes it; any other status sets its due time (run_at for queued and
--     waiting, 'infinity' for paused and needs_input) and drops the claim when the status
--     changed or its holder released the run. The status rules of 0009 (the transition
--     list, workflow_runs_ended, cancel / pause / resume, the escalation answer, the
--     deadline sweep) are unchanged: they set the record's status and the queue follows.
--   * Fencing: every worker write is conditioned on the queue row's lease_epoch, locked
--     in the same statement (agently_apply_writes, the worker's turn, the snapshot). The
--     record's lease_epoch stays a sound fence for writers that check the record (status
--     running at that epoch): a released run is not running until its next holder's first
--     write, and a rescue records its new holder on the record at once.
--   * A claimed run whose first write has not committed yet still reads 'queued' or
--     'waiting' in its record. A cancel or pause in that moment changes it at once (no
--     worker has done anything for the claim yet; nothing has left the worker), and the
--     queue row's claim is dropped with it, so the worker's first write is refused and it
--     forgets the run.
--
-- Lock order: per run, the workflow_runs row before its run_queue row; across runs, id
-- order (child before parent for the parent's wake-up, as before). The status functions
-- lock the record and the trigger then the queue row; the worker's turn locks both, per
-- run in that order, in one statement ordered by id; claims never wait (SKIP LOCKED);
-- renewals lock queue rows in id order.

-- ---------------------------------------------------------------------------------------
-- The table
-- ---------------------------------------------------------------------------------------

CREATE TABLE run_queue (
    run_id            uuid PRIMARY KEY,
    user_id           uuid NOT NULL,
    -- Due time: the earliest start (queued), the wake-up (waiting), 'infinity' for a run
    -- that only an event brings back (waiting without a timer, paused, needs_input).
    run_at            timestamptz NOT NULL,
    priority          integer NOT NULL DEFAULT 0,
    claimed_by        text CHECK (char_length(claimed_by) <= 200),
    lease_expires_at  timestamptz,
    -- Fencing token: incremented by every claim; every worker write is conditioned on it.
    lease_epoch       bigint NOT NULL DEFAULT 0 CHECK (lease_epoch >= 0),
    attempt           integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),   -- number of claims
    FOREIGN KEY (run_id, user_id) REFERENCES workflow_runs (id, user_id) ON DELETE CASCADE,
    CHECK ((claimed_by IS NULL) = (lease_expires_at IS NULL))
) WITH (fillfactor = 70,
        autovacuum_vacuum_scale_factor = 0,
        autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_insert_scale_factor = 0,
        autovacuum_vacuum_insert_threshold = 1000,
        autovacuum_vacuum_cost_delay = 0);

COMMENT ON TABLE run_queue IS
    'The queue entry of each live run (0011): due time, lease, fencing epoch. Claims and renewals write only here; a finished run has no row.';

-- Unclaimed runs by due time: the claim walks it from the oldest and stops after N rows.
CREATE INDEX run_queue_due_idx ON run_queue (run_at) WHERE claimed_by IS NULL;
-- Claimed runs by lease expiry: the rescue of a lost worker's runs.
CREATE INDEX run_queue_lease_idx ON run_queue (lease_expires_at) WHERE claimed_by IS NOT NULL;

-- The record no longer carries the claim indexes.
DROP INDEX workflow_runs_due_idx;
DROP INDEX workflow_runs_lease_idx;

-- Tenancy as for every user-owned table: RLS enabled and forced; the API reads its own
-- users' rows only (it never writes here: its status changes go through the record and
-- the trigger); the worker all rows; the owner (the SECURITY DEFINER triggers below) all.
ALTER TABLE run_queue ENABLE ROW LEVEL SECURITY;
ALTER TABLE run_queue FORCE ROW LEVEL SECURITY;
CREATE POLICY agently_api_tenant ON run_queue FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_worker_all ON run_queue FOR ALL TO agently_worker
    USING (true) WITH CHECK (true);
DO $$
BEGIN
    EXECUTE format('CREATE POLICY agently_owner_definer ON run_queue FOR ALL TO %I '
                   'USING (true) WITH CHECK (true)', current_user);
END
$$;
GRANT SELECT ON run_queue TO agently_api;
GRANT SELECT, UPDATE ON run_queue TO agently_worker;

-- ---------------------------------------------------------------------------------------
-- Existing live runs move in, as they are: queued and waiting with their due time,
-- running with their lease and epoch, paused and needs_input parked.
-- ---------------------------------------------------------------------------------------

INSERT INTO run_queue (run_id, user_id, run_at, priority, claimed_by, lease_expires_at,
                       lease_epoch, attempt)
SELECT r.id, r.user_id,
       CASE WHEN r.status IN ('queued', 'waiting') THEN r.run_at ELSE 'infinity' END,
       r.priority, r.claimed_by, r.lease_expires_at, r.lease_epoch, r.attempt
FROM workflow_runs r
WHERE r.status NOT IN ('completed', 'failed', 'canceled');

-- ---------------------------------------------------------------------------------------
-- The queue row follows the record
-- ---------------------------------------------------------------------------------------

-- A new run gets its queue row in the statement that inserts it (one trigger call per
-- statement, however many runs: a batch insert costs one). SECURITY DEFINER: the API
-- inserts runs but never writes the queue itself.
CREATE FUNCTION agently_run_queue_insert()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    INSERT INTO run_queue (run_id, user_id, run_at, priority, lease_epoch, attempt)
    SELECT n.id, n.user_id,
           CASE WHEN n.status IN ('queued', 'waiting') THEN n.run_at ELSE 'infinity' END,
           n.priority, n.lease_epoch, n.attempt
    FROM inserted_runs n
    WHERE n.status NOT IN ('completed', 'failed', 'canceled');
    RETURN NULL;
END;
$$;

CREATE TRIGGER workflow_runs_queue_insert
    AFTER INSERT ON workflow_runs
    REFERENCING NEW TABLE AS inserted_runs
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_run_queue_insert();

-- Every write of a status other than 'running' (a release, a finish, the control plane's
-- changes, a wake-up's new due time): a final status deletes the queue row; otherwise the
-- row's due time follows the record and the claim is dropped when the status changed (a
-- cancel, pause or resume by the control plane; a release by the holder) or the holder's
-- own write released it (same epoch). A wake-up of a run claimed a moment ago, before the
-- claim's first write, changes neither status nor epoch: the claim stays.
-- Writes that keep 'running' (the worker's checkpoints) do not fire it (WHEN clause).
CREATE FUNCTION agently_run_queue_follow()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    IF NEW.status IN ('completed', 'failed', 'canceled') THEN
        DELETE FROM run_queue q WHERE q.run_id = NEW.id;
    ELSE
        UPDATE run_queue q
        SET run_at = CASE WHEN NEW.status IN ('queued', 'waiting') THEN NEW.run_at
                          ELSE 'infinity'::timestamptz END,
            claimed_by = CASE WHEN OLD.status <> NEW.status OR q.lease_epoch = NEW.lease_epoch
                              THEN NULL ELSE q.claimed_by END,
            lease_expires_at = CASE WHEN OLD.status <> NEW.status
                                      OR q.lease_epoch = NEW.lease_epoch
                                    THEN NULL ELSE q.lease_expires_at END
        WHERE q.run_id = NEW.id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER workflow_runs_queue_follow
    AFTER UPDATE OF status, run_at ON workflow_runs
    FOR EACH ROW
    WHEN (NEW.status <> 'running')
    EXECUTE FUNCTION agently_run_queue_follow();

-- ---------------------------------------------------------------------------------------
-- The transition guard: a claim's first write records the claim and its outcome at once
-- ---------------------------------------------------------------------------------------
-- The list (agently_run_transition_list, 0009) is unchanged and still the one home of
-- which changes exist. A claim no longer writes the record; the claim's first write (the
-- one that carries its new lease_epoch, which only the worker may write) records it, so
-- that write is checked as the two changes it stands for: OLD -> running (the claim) and
-- running -> NEW (what the first turn did). A run completing in its first turn goes from
-- queued to completed in one row version. Still plain expressions, inlined.
DROP TRIGGER workflow_runs_transition_guard ON workflow_runs;
CREATE TRIGGER workflow_runs_transition_guard
    BEFORE UPDATE OF status ON workflow_runs
    FOR EACH ROW
    WHEN (NOT agently_run_transition_allowed(OLD.status, NEW.status)
          AND NOT (NEW.lease_epoch > OLD.lease_epoch
                   AND agently_run_transition_allowed(OLD.status, 'running')
                   AND agently_run_transition_allowed('running', NEW.status)))
    EXECUTE FUNCTION agently_run_transition_refused();

-- ---------------------------------------------------------------------------------------
-- Claim and renewal: the queue only
-- ---------------------------------------------------------------------------------------
-- As 0010 (rescues first, never a run the claimer still holds; then due runs by run_at;
-- FOR UPDATE SKIP LOCKED with every condition in the locking scan), over run_queue. The
-- record is only read, for what the caller needs (user, workflow, the status before).
-- status_before is 'running' for a rescue (a lost worker's claim: resume from the last
-- checkpoint), else the record's status: queued (a first start) or waiting (a wake-up).
DROP FUNCTION agently_claim_runs(text, interval, integer, uuid[]);

CREATE FUNCTION agently_claim_runs(worker text, lease interval, max_runs integer,
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
    ), claimed AS (
        UPDATE run_queue q
        SET claimed_by       = worker,
            lease_expires_at = now() + lease,
            lease_epoch      = q.lease_epoch + 1,
            attempt          = q.attempt + 1
        FROM picked p
        WHERE q.run_id = p.run_id
        RETURNING q.run_id, q.lease_epoch, q.attempt, q.claimed_by, q.lease_expires_at, p.before
    ), rescued AS (
        -- The one claim that writes the record: the rescue of a run a lost worker had
        -- written (its record says running, under the lost worker's epoch). The new holder
        -- is recorded at once, so a fence on the record (the agent journal's, 0012) refuses
        -- the lost worker from this moment, not from the new holder's first write. Rare (a
        -- worker died), and HOT: no status, no indexed column. Nobody else locks a running
        -- run's record and then its queue row (only its holder changes its status), so
        -- this wait cannot deadlock.
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

-- As 0003, over run_queue: absolute, idempotent, one statement, locks in id order; the
-- control-plane requests are read from the record.
CREATE OR REPLACE FUNCTION agently_renew_leases(worker text, run_ids uuid[], epochs bigint[],
                                                lease interval)
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
        SELECT q.run_id
        FROM run_queue q
        JOIN unnest(run_ids, epochs) AS h(run_id, epoch)
          ON h.run_id = q.run_id AND h.epoch = q.lease_epoch
        WHERE q.claimed_by = worker
        ORDER BY q.run_id
        FOR UPDATE OF q
    )
    UPDATE run_queue q
    SET lease_expires_at = now() + lease
    FROM held
    JOIN workflow_runs r ON r.id = held.run_id
    WHERE q.run_id = held.run_id
    RETURNING q.run_id, r.cancel_requested, r.pause_requested;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- The worker's writes: one definition, fenced on the queue row
-- ---------------------------------------------------------------------------------------
-- As 0009, with three changes: the fence is the queue row (locked, with its record, in
-- the lock order: per run the record first, in id order); the first write of a claim
-- records it on the record (status running unless the write ends the run's time here,
-- claimed_by, lease_epoch, attempt, started_at; wake_requested cleared: the claim's
-- snapshot was read after it); a finish or release is applied to the record only, and
-- the queue row follows (workflow_runs_queue_follow). A wake-up counts for a release only
-- when it came during this claim (the record already carries this epoch): one that came
-- before the claim was seen by the claim's snapshot.
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
        RAISE EXCEPTION 'invalid write #%: op % with status % (see 0011_run_queue.sql)',
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

-- ---------------------------------------------------------------------------------------
-- Privileges and search paths
-- ---------------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION agently_claim_runs(text, interval, integer, uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_run_queue_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_run_queue_follow() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_claim_runs(text, interval, integer, uuid[]) TO agently_worker;

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_claim_runs(text, interval, integer, uuid[])',
                              'agently_renew_leases(text, uuid[], bigint[], interval)',
                              'agently_apply_writes(text, jsonb)',
                              'agently_run_queue_insert()',
                              'agently_run_queue_follow()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
