-- 0035_logs_writes.sql — one statement trigger on logs instead of two, and its key to users
-- checked once per statement instead of once per row.
--
-- Every hot write appends events: a worker's turn (7 rows for a 5-step run), an LLM call's
-- journal write (4 rows), an http map's items (2 rows each). Each INSERT into logs paid
--   * the foreign key logs.user_id → users, a check per row (an SPI query, an index probe
--     and a KEY SHARE lock: 20,005 of them for a 10,000-item map, all of the same user);
--   * two statement triggers over the same transition table, each a SECURITY DEFINER call
--     of its own: agently_count_events (0008, the /metrics counters) and
--     agently_notify_watched_events (0018, the NOTIFY of runs streamed live).
-- Now one statement trigger, agently_logs_written(), does all three in one query over the
-- transition table: it checks and KEY SHARE-locks the distinct users the statement names
-- (usually one), NOTIFYs the watched runs among its runs, and adds up the counted kinds.
-- The counters and the notifications are unchanged (same rows, same channel and payload);
-- 0008's and 0018's functions are dropped with their triggers. What it saves grows with the
-- rows of a statement: little for a turn's 4–7 events, most of the trigger work for a map's
-- turn of ~150 (docs/performance.md, "The logs insert path").
--
-- What the foreign key guarded, and what guards it now:
--   * an event names an existing user: checked at the end of every INSERT or UPDATE
--     statement on logs (the same moment a NOT DEFERRABLE key is checked), with the same
--     lock (FOR KEY SHARE on the user's row, held to commit, so a concurrent deletion of the
--     user waits for the writer and then deletes what it wrote) and the same SQLSTATE
--     (23503 foreign_key_violation);
--   * ON DELETE CASCADE: a statement trigger on users deletes the deleted users' events
--     (as the owner; the owner's policy on logs is 0015's), and TRUNCATE users truncates
--     logs as the key's cascade would have demanded;
--   * NO ACTION on a change of users.id: refused (at the end of the statement, as the key's
--     check was) while events name an id no user has any more.
-- The writers take user_id from the run row itself (docs/data-model.md, "Logs and
-- partitioning"), and the API's insert policy still requires the run to be the user's own:
-- tenancy is not touched. tests/integration/test_logs_writes.c checks each guarantee.

ALTER TABLE logs DROP CONSTRAINT logs_user_id_fkey;

DROP TRIGGER logs_count_events ON logs;
DROP TRIGGER logs_notify_watched ON logs;
DROP FUNCTION agently_count_events();
DROP FUNCTION agently_notify_watched_events();

-- AFTER INSERT and AFTER UPDATE of logs, once per statement (transition table new_events).
-- One query does the three jobs, so the trigger costs one function call and one executor
-- start (plus the counters' upsert when a counted kind was written); each job is a
-- subquery over the statement's rows:
--   * unknown_users: the distinct users named, each locked FOR KEY SHARE as the key's check
--     locked it; a user that does not exist (or was deleted before the lock was granted)
--     has no row to lock;
--   * notified: one NOTIFY agently_events '<run id>' per watched run written (0018;
--     Postgres folds duplicates within a transaction and delivers them at commit; an
--     update of events notifies as well: its readers re-read);
--   * the counted kinds (0008), added up for inserts only.
-- SECURITY DEFINER: the api's and the worker's inserts fire it, and neither may write the
-- counters, read the watch registrations or lock users' rows.
CREATE FUNCTION agently_logs_written()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    s record;
BEGIN
    SELECT count(*) FILTER (WHERE kind IN ('run.started', 'run.resumed', 'run.recovered')) AS claims,
           count(*) FILTER (WHERE kind = 'run.recovered') AS rescues,
           count(*) FILTER (WHERE kind = 'node.retry_scheduled') AS retries,
           count(*) FILTER (WHERE kind = 'run.completed') AS completed,
           count(*) FILTER (WHERE kind = 'run.failed') AS failed,
           count(*) FILTER (WHERE kind = 'run.canceled') AS canceled,
           (SELECT count(*)
            FROM (SELECT DISTINCT n.user_id FROM new_events n) n
            LEFT JOIN LATERAL (SELECT u.id FROM users u WHERE u.id = n.user_id
                               FOR KEY SHARE OF u) k ON true
            WHERE k.id IS NULL) AS unknown_users,
           (SELECT count(pg_notify('agently_events', w.run_id::text))
            FROM agently_watched_runs w
            WHERE w.run_id IN (SELECT n.workflow_run_id FROM new_events n)
              AND w.expires_at > now()) AS notified
    INTO s
    FROM new_events;
    IF s.unknown_users > 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = format('%s of the users the events name do not exist', s.unknown_users),
            HINT = 'take an event''s user_id from its run row';
    END IF;
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
REVOKE ALL ON FUNCTION agently_logs_written() FROM PUBLIC;

CREATE TRIGGER logs_written
    AFTER INSERT ON logs
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_logs_written();

CREATE TRIGGER logs_rewritten
    AFTER UPDATE ON logs
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_logs_written();

-- The key's ON DELETE CASCADE and its NO ACTION on a change of users.id, from the users'
-- side. Both are rare operations by the owner (user administration) and scan every
-- partition, as the key's own cascade did (docs/data-model.md, "Operations").
CREATE FUNCTION agently_users_removed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM logs l WHERE l.user_id IN (SELECT o.id FROM removed_users o);
    ELSIF TG_OP = 'TRUNCATE' THEN
        TRUNCATE logs;
    ELSIF NOT EXISTS (SELECT FROM users u WHERE u.id = OLD.id)
          AND EXISTS (SELECT FROM logs l WHERE l.user_id = OLD.id) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = 'cannot change the id of a user that has events',
            DETAIL = format('user %s has events in logs', OLD.id),
            HINT = 'a user''s id never changes; create a new user instead';
    END IF;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION agently_users_removed() FROM PUBLIC;

CREATE TRIGGER users_deleted_logs
    AFTER DELETE ON users
    REFERENCING OLD TABLE AS removed_users
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_users_removed();

CREATE TRIGGER users_id_changed_logs
    AFTER UPDATE OF id ON users
    FOR EACH ROW
    WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION agently_users_removed();

CREATE TRIGGER users_truncated_logs
    AFTER TRUNCATE ON users
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_users_removed();

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_logs_written() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION agently_users_removed() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
