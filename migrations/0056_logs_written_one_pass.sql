-- 0056_logs_written_one_pass.sql — the logs' statement trigger reads the statement's new
-- events once.
--
-- Why: agently_logs_written (0043) read its transition table three times: a first query
-- counted the counted kinds and gathered the distinct users and the distinct runs (two
-- sorts: a no-op turn of 256 runs writes 768 events), a second counted the six counters'
-- kinds, each `count(*) FILTER (WHERE kind IN (...))` comparing every event's kind with a
-- list. Its cost on such a turn: 23.5 K instructions per run (docs/performance.md, "Issue 9:
-- the claim's snapshot as text").
--
-- Now one pass groups the events by user and kind (a handful of groups); the users and the
-- six counters are read from the groups. The watched runs (0018) are looked up by a
-- semi-join with the events, which costs nothing when nobody watches a run, instead of an
-- array of every run the statement wrote. The checks, the notifications and the counters
-- are 0043's. Measured with bench/instructions' loop: 706,093 -> 693,610 instructions per
-- no-op run. tests/integration/test_logs_writes.c (counters_and_notifications) holds the
-- behaviour.

CREATE OR REPLACE FUNCTION agently_logs_written()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    s      record;
    locked integer;
BEGIN
    SELECT array_agg(DISTINCT g.user_id) AS users,
           coalesce(sum(g.n) FILTER (WHERE g.kind IN ('run.started', 'run.resumed',
                                                     'run.recovered')), 0) AS claims,
           coalesce(sum(g.n) FILTER (WHERE g.kind = 'run.recovered'), 0) AS rescues,
           coalesce(sum(g.n) FILTER (WHERE g.kind = 'node.retry_scheduled'), 0) AS retries,
           coalesce(sum(g.n) FILTER (WHERE g.kind = 'run.completed'), 0) AS completed,
           coalesce(sum(g.n) FILTER (WHERE g.kind = 'run.failed'), 0) AS failed,
           coalesce(sum(g.n) FILTER (WHERE g.kind = 'run.canceled'), 0) AS canceled
    INTO s
    FROM (SELECT e.user_id, e.kind, count(*) AS n
          FROM new_events e
          GROUP BY e.user_id, e.kind) g;
    IF s.users IS NULL THEN
        RETURN NULL; -- no rows
    END IF;
    -- the key's check: each user named, locked as the key locked it; one that does not
    -- exist (or was deleted before the lock was granted) has no row to lock
    PERFORM FROM users u WHERE u.id = ANY (s.users) FOR KEY SHARE OF u;
    GET DIAGNOSTICS locked = ROW_COUNT;
    IF locked < cardinality(s.users) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = format('%s of the users the events name do not exist',
                             cardinality(s.users) - locked),
            HINT = 'take an event''s user_id from its run row';
    END IF;
    -- 0018: one NOTIFY per watched run written (folded within the transaction, sent at
    -- commit; an update notifies as well: its readers re-read)
    PERFORM pg_notify('agently_events', w.run_id::text)
    FROM agently_watched_runs w
    WHERE w.expires_at > now()
      AND EXISTS (SELECT 1 FROM new_events e WHERE e.workflow_run_id = w.run_id);
    IF TG_OP <> 'INSERT' OR s.claims + s.retries + s.completed + s.failed + s.canceled = 0 THEN
        RETURN NULL;
    END IF;
    INSERT INTO agently_event_counters AS t (backend_pid, claims, rescues, retries, completed,
                                              failed, canceled)
    VALUES (pg_backend_pid(), s.claims, s.rescues, s.retries, s.completed, s.failed,
            s.canceled)
    ON CONFLICT (backend_pid) DO UPDATE
    SET claims     = t.claims + EXCLUDED.claims,
        rescues    = t.rescues + EXCLUDED.rescues,
        retries    = t.retries + EXCLUDED.retries,
        completed  = t.completed + EXCLUDED.completed,
        failed     = t.failed + EXCLUDED.failed,
        canceled   = t.canceled + EXCLUDED.canceled,
        updated_at = now();
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_logs_written() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
