-- 0041_journal_write_checks.sql — less checking work per journal write, the same checks:
-- a journal row's user is checked through its agent run only, and the logs trigger checks
-- and notifies with two plain statements instead of one query with two subplans.
--
-- Where an LLM call's write (agently_agent_write: the run row, 4 events, 1 journal row)
-- spends its instructions, measured with callgrind on a single-user backend
-- (docs/performance.md, "The journal write's instructions"): ~3.0 M per call, of it the
-- CHECK constraints of the three tables written ~36 %, the logs trigger ~8 %, the journal
-- row's two foreign keys ~3 %.
--
-- 1. The key agent_journal.user_id → users is dropped. agent_journal had two foreign keys,
--    each checked per row inserted (an SPI query, an index probe, a KEY SHARE lock):
--    (agent_run_id, user_id) → agent_runs (id, user_id) ON DELETE CASCADE (0001), and
--    user_id → users ON DELETE CASCADE. The second adds nothing the first does not hold,
--    since both columns are NOT NULL and agent_runs.user_id is itself a key to users
--    (ON DELETE CASCADE):
--      * a journal row names an existing user: its (agent_run_id, user_id) is an agent
--        run's, whose user exists;
--      * deleting a user deletes its journal rows: its agent runs go by their key, their
--        journal rows by the composite key; a writer that inserted a row meanwhile holds
--        the agent run's row FOR KEY SHARE (the composite key's check), so the deletion
--        waits for its commit and then deletes what it wrote, as before;
--      * a user's id does not change under its rows: agent_runs' key refuses it.
--    −1.2 % of the call's write.
-- 2. agently_logs_written() (0035) does the same three jobs per statement on logs, with
--    the same locks, SQLSTATE, notifications and counters: one pass over the transition
--    table collects the counted kinds and the distinct users and runs (arrays), then one
--    statement locks the users FOR KEY SHARE (fewer rows locked than users named: some do
--    not exist, 23503 as before) and one sends the NOTIFY of each watched run. The query
--    it replaces (DISTINCT users joined LATERAL to their locked rows, and the watched runs
--    semi-joined to the events, as two subplans of the aggregate) cost more to start and
--    run than the three plain statements: −1.5 % of the call's write.
-- tests/integration/test_llm_costs.c (a_journal_rows_user_is_its_agent_runs) and
-- tests/integration/test_logs_writes.c check what each guarded.

ALTER TABLE agent_journal DROP CONSTRAINT agent_journal_user_id_fkey;

CREATE OR REPLACE FUNCTION agently_logs_written()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    s      record;
    locked integer;
BEGIN
    SELECT count(*) FILTER (WHERE kind IN ('run.started', 'run.resumed', 'run.recovered')) AS claims,
           count(*) FILTER (WHERE kind = 'run.recovered') AS rescues,
           count(*) FILTER (WHERE kind = 'node.retry_scheduled') AS retries,
           count(*) FILTER (WHERE kind = 'run.completed') AS completed,
           count(*) FILTER (WHERE kind = 'run.failed') AS failed,
           count(*) FILTER (WHERE kind = 'run.canceled') AS canceled,
           array_agg(DISTINCT user_id) AS users,
           array_agg(DISTINCT workflow_run_id) AS runs
    INTO s
    FROM new_events;
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
    WHERE w.run_id = ANY (s.runs) AND w.expires_at > now();
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
