-- 0032_enqueue.sql — a run's creation in fewer steps (docs/performance.md, "The enqueue").
--
-- 1. POST /v1/runs as one statement. The API looked the workflow version up, inserted the
--    run, appended its run.created event and read the run back as four statements (with
--    BEGIN, the token's check, the tenant's setting and COMMIT, eight round trips), each
--    text parsed and planned on every request. agently_create_run does the first three
--    with plans kept per session, and returns the run it inserted, which the API turns
--    into its answer in the same statement (src/api/api_routes.c, h_runs_create: the
--    run's JSON is still built by the one definition GET /v1/runs/{id} uses). The rules
--    are the ones the API had: the user's own workflows only (row-level security; the
--    function is SECURITY INVOKER), the version asked for or else the latest, nothing
--    returned when there is none (the API's 404), a unique violation for an
--    Idempotency-Key a run already has (its 409).
CREATE FUNCTION agently_create_run(workflow text, version integer, input jsonb,
                                   idempotency_key text, time_scale double precision)
RETURNS SETOF workflow_runs
LANGUAGE plpgsql
AS $$
DECLARE
    wf_id  uuid;
    wf_ver integer;
    run    workflow_runs;
BEGIN
    SELECT w.id, w.version INTO wf_id, wf_ver
    FROM workflows w
    WHERE w.name = agently_create_run.workflow
      AND (agently_create_run.version IS NULL OR w.version = agently_create_run.version)
    ORDER BY w.version DESC
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, workflow_version, input,
                               idempotency_key, time_scale)
    VALUES (agently_current_user_id(), wf_id, agently_create_run.workflow, wf_ver,
            agently_create_run.input, agently_create_run.idempotency_key,
            coalesce(agently_create_run.time_scale, 1))
    RETURNING * INTO run;
    -- the control plane's one way to append an event (0003); its seq is the run's first
    run.event_seq := agently_append_event_unfenced(run.id, 'run.created', NULL, NULL, 'info',
                                                   'run created', NULL);
    RETURN NEXT run;
END;
$$;

REVOKE ALL ON FUNCTION agently_create_run(text, integer, jsonb, text, double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_create_run(text, integer, jsonb, text, double precision)
    TO agently_api;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_create_run(text, integer, jsonb, text, double precision) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
