-- 0052_pin_per_statement.sql — a new run's pinned agents and notification flag are written
-- once per INSERT statement, and only into the runs that have any.
--
-- Why: since 0019 (0030, 0048) a BEFORE INSERT row trigger, agently_run_pin_agents, looked
-- up each new run's workflow version to pin the versions of the stored agents it uses
-- (workflow_runs.agent_versions) and to note whether it has notification subscriptions
-- (workflow_runs.notifies). Most workflows have neither, and the trigger ran its query and
-- a SECURITY DEFINER call for every run all the same: 117 K of an enqueue's 259 K
-- instructions per no-op run (bench/instructions' loop with the enqueue alone; the
-- trigger dropped: 142,518; docs/performance.md, "The bench's own poll; a fresh run's
-- snapshot; the enqueue's pins"). The statement trigger agently_run_inserted (0038, 0048)
-- already reads the versions an INSERT names, once each, for their key; it now also
-- computes each version's pins once and writes them into the runs of the versions that
-- have agents or subscriptions, in one UPDATE (a HOT update of rows the statement just
-- wrote: no index holds either column, and no trigger watches them). A run of any other
-- version is written once, with the defaults: agent_versions '{}' and notifies false
-- (notifies defaulted to true since 0030, so that runs from before it kept notifying; the
-- trigger set it on every insert since, so the default is now the common case's).
--
-- The pins are what the row trigger wrote: the latest version of each referenced agent,
-- or the version the reference names, at the INSERT. They are written before the
-- statement ends, so the run is never seen without them outside the inserting statement;
-- inside it, an INSERT's RETURNING shows the defaults, so agently_create_run (0032), whose
-- returned row the API answers POST /v1/runs with, reads its run back after the INSERT.

ALTER TABLE workflow_runs ALTER COLUMN notifies SET DEFAULT false;

DROP TRIGGER workflow_runs_pin_agents ON workflow_runs;
DROP FUNCTION agently_run_pin_agents();

-- As 0048, with the pins.
CREATE OR REPLACE FUNCTION agently_run_inserted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    hinted  bigint;
    unknown bigint;
    pinned  uuid[];
BEGIN
    SELECT count(*) INTO unknown
    FROM (SELECT DISTINCT n.workflow_id, n.user_id, n.workflow_name FROM inserted_runs n) n
    LEFT JOIN LATERAL (SELECT w.id FROM workflows w
                       WHERE w.id = n.workflow_id AND w.user_id = n.user_id
                         AND w.name = n.workflow_name
                       FOR KEY SHARE OF w) k ON true
    WHERE k.id IS NULL;
    IF unknown > 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = format('%s of the workflow versions the runs name do not exist for their user',
                             unknown),
            HINT = 'a run names a workflow version of its own user, and that version''s name';
    END IF;
    -- The versions of the stored agents the runs use, and whether their workflow version
    -- has notification subscriptions: only for the versions the statement names that have
    -- agent references or a notifications list (most have neither, and then nothing more
    -- is written: the runs keep the defaults, '{}' and false), once per version (a version
    -- belongs to one user, and its runs pin the same agents).
    SELECT array_agg(w.id) INTO pinned
    FROM workflows w
    WHERE w.id IN (SELECT DISTINCT i.workflow_id FROM inserted_runs i)
      AND (jsonb_array_length(w.agent_refs) > 0
           OR jsonb_typeof(w.definition->'notifications') = 'array');
    IF pinned IS NOT NULL THEN
        UPDATE workflow_runs r
        SET agent_versions = v.agent_versions, notifies = v.notifies
        FROM inserted_runs n
        JOIN (SELECT w.id,
                     coalesce((SELECT jsonb_object_agg(ref->>'name'
                                                       || coalesce('@' || (ref->>'version'), ''),
                                                       a.version)
                               FROM jsonb_array_elements(w.agent_refs) ref
                               CROSS JOIN LATERAL (
                                   SELECT ag.version FROM agents ag
                                   WHERE ag.user_id = w.user_id AND ag.name = ref->>'name'
                                     AND (jsonb_typeof(ref->'version') IS DISTINCT FROM 'number'
                                          OR ag.version = (ref->>'version')::integer)
                                   ORDER BY ag.version DESC LIMIT 1) a),
                              '{}') AS agent_versions,
                     coalesce(jsonb_array_length(
                         CASE WHEN jsonb_typeof(w.definition->'notifications') = 'array'
                              THEN w.definition->'notifications' END), 0) > 0 AS notifies
              FROM workflows w
              WHERE w.id = ANY (pinned)) v
          ON v.id = n.workflow_id
        WHERE r.id = n.id
          AND (v.agent_versions <> '{}' OR v.notifies);
    END IF;
    WITH queued AS (
        INSERT INTO run_queue (run_id, user_id, run_at, priority, lease_epoch, attempt)
        SELECT n.id, n.user_id,
               CASE WHEN n.status IN ('queued', 'waiting') THEN n.run_at ELSE 'infinity' END,
               n.priority, n.lease_epoch, n.attempt
        FROM inserted_runs n
        WHERE n.status NOT IN ('completed', 'failed', 'canceled')
        RETURNING run_at
    )
    SELECT count(pg_notify('agently_runs', '')) INTO hinted
    FROM (SELECT FROM queued q WHERE q.run_at <= now() LIMIT 1) due;
    RETURN NULL;
END;
$$;

-- As 0032, the run read back after its INSERT (the pins are written by the INSERT's
-- statement trigger, after RETURNING was computed).
CREATE OR REPLACE FUNCTION agently_create_run(workflow text, version integer, input jsonb,
                                              idempotency_key text,
                                              time_scale double precision)
RETURNS SETOF workflow_runs
LANGUAGE plpgsql
AS $$
DECLARE
    wf_id  uuid;
    wf_ver integer;
    run_id uuid;
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
    RETURNING id INTO run_id;
    SELECT * INTO run FROM workflow_runs r WHERE r.id = run_id;
    -- the control plane's one way to append an event (0003); its seq is the run's first
    run.event_seq := agently_append_event_unfenced(run.id, 'run.created', NULL, NULL, 'info',
                                                   'run created', NULL);
    RETURN NEXT run;
END;
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_run_inserted() SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
    -- a statement of many runs would otherwise be costed above jit_above_cost and compiled
    -- (~30 ms) for a query that takes a fraction of a millisecond
    ALTER FUNCTION agently_run_inserted() SET jit = off;
    EXECUTE format('ALTER FUNCTION agently_create_run(text, integer, jsonb, text, double precision) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
