-- 0018_watched_runs.sql — a wake-up on commit for the runs someone is watching live.
--
-- The API's event-stream hub (src/api/api_sse.c) used to poll the logs of every open stream
-- every 250 ms: the database work grew with the viewers. Now it reads once per watched run,
-- shared by that run's streams, when a NOTIFY says the run has new events, with a slow poll
-- as the fallback. A NOTIFY on every commit that writes events would put a notification
-- (and Postgres' notify queue lock) on the commit path of every worker turn, watched or
-- not. So the hub registers the runs it watches here, and the trigger notifies only for
-- those: a turn that writes events of runs nobody watches pays one index probe per batch.
--
-- A registration lives for a minute unless the hub refreshes it (it does every 20 s while
-- the run has streams), so one left behind by a killed API process costs nothing for long.
-- NOTIFY is delivered at commit, and only then; the hub registers a run and commits BEFORE
-- its first read, so an event committed after that read is always notified.

CREATE TABLE agently_watched_runs (
    run_id     uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL
);

COMMENT ON TABLE agently_watched_runs IS
    'Runs an API process streams live (SSE); logs inserts NOTIFY agently_events for them.';

ALTER TABLE agently_watched_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE agently_watched_runs FORCE ROW LEVEL SECURITY;
CREATE POLICY agently_api_tenant ON agently_watched_runs FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
GRANT SELECT, INSERT, UPDATE, DELETE ON agently_watched_runs TO agently_api;
DO $$
BEGIN
    EXECUTE format('CREATE POLICY agently_owner_definer ON agently_watched_runs FOR ALL TO %I '
                   'USING (true) WITH CHECK (true)', current_user);
END
$$;

-- One NOTIFY agently_events '<run id>' per watched run an INSERT into logs wrote events
-- for (Postgres folds duplicates within a transaction and delivers them at commit).
-- SECURITY DEFINER: the worker role, whose inserts fire it, cannot read the registrations.
CREATE FUNCTION agently_notify_watched_events()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    PERFORM pg_notify('agently_events', w.run_id::text)
    FROM agently_watched_runs w
    WHERE w.run_id IN (SELECT DISTINCT n.workflow_run_id FROM new_rows n)
      AND w.expires_at > now();
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION agently_notify_watched_events() FROM PUBLIC;

CREATE TRIGGER logs_notify_watched
    AFTER INSERT ON logs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_notify_watched_events();

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_notify_watched_events() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
