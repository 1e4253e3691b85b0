-- 0064_run_inserted_one_read.sql — an INSERT of runs reads the workflow versions it names
-- once: their key's check and which of them pin agents, in one statement.
--
-- Why: agently_run_inserted (0038, 0048, 0052), the statement trigger of every enqueue,
-- read the versions twice: a first statement locked each (the key's check) and a second
-- looked for agent references or notification subscriptions among them, in every INSERT,
-- where most versions have neither. Each statement a PL/pgSQL function runs is planned once
-- per session but started and ended by the executor at every call. The pins' test is now
-- read beside the key's lock (the same rows, already fetched). Measured with
-- bench/instructions-style loops (one run enqueued per iteration, callgrind;
-- docs/performance.md, "Issue 9: the turn's writes without the parts it does not use; the
-- enqueue's one read"): 802,664 -> 737,867 instructions an enqueue (-8.1 %), and
-- bench/instructions --mode alone 4,719,911 -> 4,626,619. The enqueue's own work is part of
-- enqueue_to_start and of POST /v1/runs.
--
-- Everything else is 0052's: the key's refusal (23503, its message and hint), the pins
-- written into the runs of the versions that have any, the queue rows and the hint.

-- As 0052, the versions read once.
CREATE OR REPLACE FUNCTION agently_run_inserted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    hinted   bigint;
    unknown  bigint;
    pinned   uuid[];
BEGIN
    -- The key's check, each version named locked as the key locks it (one that does not
    -- exist has no row to lock), and in the same read the versions whose runs pin agents or
    -- note notification subscriptions: those with agent references or a notifications list
    -- (most have neither, and then nothing more is written: the runs keep the defaults,
    -- '{}' and false), once per version (a version belongs to one user, and its runs pin
    -- the same agents).
    SELECT count(*) FILTER (WHERE k.id IS NULL), array_agg(k.id) FILTER (WHERE k.pins)
    INTO unknown, pinned
    FROM (SELECT DISTINCT n.workflow_id, n.user_id, n.workflow_name FROM inserted_runs n) n
    LEFT JOIN LATERAL (SELECT w.id,
                              jsonb_array_length(w.agent_refs) > 0
                              OR jsonb_typeof(w.definition->'notifications') = 'array' AS pins
                       FROM workflows w
                       WHERE w.id = n.workflow_id AND w.user_id = n.user_id
                         AND w.name = n.workflow_name
                       FOR KEY SHARE OF w) k ON true;
    IF unknown > 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = format('%s of the workflow versions the runs name do not exist for their user',
                             unknown),
            HINT = 'a run names a workflow version of its own user, and that version''s name';
    END IF;
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

DO $$
BEGIN
    -- CREATE OR REPLACE sets the function's settings anew: 0052's again
    EXECUTE format('ALTER FUNCTION agently_run_inserted() SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
    ALTER FUNCTION agently_run_inserted() SET jit = off;
END
$$;
