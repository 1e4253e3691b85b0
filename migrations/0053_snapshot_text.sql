-- 0053_snapshot_text.sql — a claimed run's snapshot is written as JSON text, in the claim's
-- own statement, without a JSON document between the claim and the read.
--
-- Why: a worker's turn opens with agently_claim_turn (0033), and until now it built the
-- claimed runs into a JSON document (jsonb_agg of an object per run), read it back with
-- jsonb_to_recordset, handed it to agently_snapshots, which read it again, and built each
-- snapshot with jsonb_build_object — a binary document the server then wrote out as text
-- for the worker, who parses text. Measured with callgrind (bench/instructions' loop; the
-- claim alone, rolled back): the claim's JSON round trip cost 72 K instructions per run and
-- the binary snapshot's build 68 K, where the claim itself costs ~95 K. Written as text by
-- concatenation (each part that is a document is jsonb's own output, so it is valid JSON)
-- and handed over as arrays, the claim with its snapshots takes 124 K fewer instructions
-- per run: a no-op run 1,035 K -> 916 K (docs/performance.md, "Issue 9: the claim's
-- snapshot as text").
--
-- The snapshot's shape has one home: agently_run_snapshot(run, whole), a SQL function that
-- the planner inlines into each caller's query (a SQL function with no SET clause and one
-- SELECT is inlined as a subquery: its index probes are planned with the caller's join), so
-- it costs no call per run. agently_claim_turn reads it after its claim, in a second
-- statement (it sees what was committed up to the claim's locks, as before); agently_snapshots
-- reads it for the runs a worker still holds. Both now return the snapshot as text: the
-- worker parses it as before (json_loads of the column's text), and the keys and values are
-- those of 0051's document.

CREATE FUNCTION agently_run_snapshot(run uuid, whole boolean)
RETURNS TABLE (snapshot text, cancel_requested boolean, pause_requested boolean)
LANGUAGE sql
STABLE
AS $$
    SELECT '{"run_id":"' || r.id::text
        || '","input":' || CASE WHEN whole THEN r.input::text ELSE 'null' END
        || ',"now_ms":' || ((extract(epoch FROM now()) * 1000)::bigint)::text
        || ',"started_at_ms":' || ((extract(epoch FROM coalesce(r.started_at, now())) * 1000)::bigint)::text
        || ',"engine_state":' || r.engine_state::text
        || ',"time_scale":' || r.time_scale::text
        || ',"nodes":' || CASE WHEN NOT whole THEN 'null'
                      WHEN f.fresh THEN '{}'
                      ELSE coalesce((
            SELECT jsonb_object_agg(n.node_id,
                       jsonb_build_object('status', n.status, 'attempt', n.attempt,
                                          'output', n.output, 'error', n.error,
                                          'started_at_ms',
                                          (extract(epoch FROM n.started_at) * 1000)::bigint)
                       || CASE WHEN n.status = 'waiting' AND n.input ? 'wake_at_ms'
                               THEN jsonb_build_object('wake_at_ms', n.input -> 'wake_at_ms')
                               ELSE '{}' END
                       || CASE WHEN n.status = 'waiting' AND n.input ? 'event'
                               THEN jsonb_build_object('event', n.input -> 'event')
                               ELSE '{}' END
                       || CASE WHEN jsonb_typeof(n.error) = 'object' AND n.error ? 'retry_at_ms'
                               THEN jsonb_build_object('retry_at_ms', n.error -> 'retry_at_ms')
                               ELSE '{}' END)
            FROM agently_node_latest n WHERE n.workflow_run_id = r.id)::text, '{}') END
        || ',"signals":' || coalesce((
            SELECT jsonb_object_agg(s.name, s.list)
            FROM (SELECT g.name, jsonb_agg(jsonb_build_object('id', g.id, 'payload', g.payload)
                                           ORDER BY g.created_at, g.id) AS list
                  FROM signals g
                  WHERE g.workflow_run_id = r.id AND g.consumed_at IS NULL
                  GROUP BY g.name) s)::text, '{}')
        || ',"children":' || CASE WHEN f.fresh THEN '{}' ELSE coalesce((
            SELECT jsonb_object_agg(c.parent_node_id,
                       jsonb_build_object('run_id', c.id, 'status', c.status, 'output', c.output,
                                          'error', c.error, 'attempt',
                                          (regexp_match(c.idempotency_key, ':([0-9]+)$'))[1]::integer))
            FROM (SELECT DISTINCT ON (k.parent_node_id) k.*
                  FROM workflow_runs k
                  WHERE k.parent_run_id = r.id AND k.parent_node_id IS NOT NULL
                  ORDER BY k.parent_node_id, k.created_at DESC) c)::text, '{}') END
        || ',"approvals":' || CASE WHEN f.fresh THEN '{}' ELSE coalesce((
            SELECT jsonb_object_agg(a.node_id,
                       jsonb_build_object('id', a.id, 'attempt', a.node_attempt,
                                          'status', a.status, 'decision', a.decision,
                                          'expires_at_ms',
                                          (extract(epoch FROM a.expires_at) * 1000)::bigint))
            FROM (SELECT DISTINCT ON (p.node_id) p.*
                  FROM approvals p
                  WHERE p.workflow_run_id = r.id
                  ORDER BY p.node_id, p.node_attempt DESC) a)::text, '{}') END
        || ',"agents":' || CASE WHEN r.agent_versions = '{}' THEN '{}' ELSE coalesce((
            SELECT jsonb_object_agg(v.key, jsonb_build_object('version', a.version,
                                                              'definition', a.definition))
            FROM jsonb_each(r.agent_versions) v
            JOIN agents a ON a.user_id = r.user_id
                         AND a.name = split_part(v.key, '@', 1)
                         AND a.version = (v.value)::integer)::text, '{}') END
        || '}',
        r.cancel_requested, r.pause_requested
    FROM workflow_runs r
    -- a run no turn has worked on has no node rows, child runs or approvals (0051)
    CROSS JOIN LATERAL (SELECT r.started_at IS NULL AND r.rerun_of IS NULL AS fresh) f
    WHERE r.id = run
$$;
REVOKE ALL ON FUNCTION agently_run_snapshot(uuid, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_run_snapshot(uuid, boolean) TO agently_worker;

-- the result types change (jsonb -> text): dropped and created again, the callers first
DROP FUNCTION agently_claim_turn(text, interval, integer, uuid[]);
DROP FUNCTION agently_snapshots(jsonb);

CREATE FUNCTION agently_snapshots(runs jsonb)
RETURNS TABLE (id uuid, snapshot text, cancel_requested boolean, pause_requested boolean,
               lease_epoch bigint)
LANGUAGE plpgsql
STABLE
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT h.id, s.snapshot, s.cancel_requested, s.pause_requested, q.lease_epoch
    FROM jsonb_to_recordset(runs) AS h(id uuid, epoch bigint, whole boolean)
    -- the fence: still held at the epoch the worker knows
    JOIN run_queue q ON q.run_id = h.id AND q.lease_epoch = h.epoch
    CROSS JOIN LATERAL agently_run_snapshot(h.id, h.whole) s
    WHERE q.claimed_by IS NOT NULL;
END;
$$;

REVOKE ALL ON FUNCTION agently_snapshots(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_snapshots(jsonb) TO agently_worker;

CREATE FUNCTION agently_claim_turn(worker text, lease interval, max_runs integer,
                                   held uuid[] DEFAULT '{}')
RETURNS TABLE (id uuid, user_id uuid, workflow_id uuid, lease_epoch bigint, attempt integer,
               status_before text, snapshot text, cancel_requested boolean,
               pause_requested boolean)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    ids      uuid[];
    users    uuid[];
    versions uuid[];
    epochs   bigint[];
    attempts integer[];
    befores  text[];
BEGIN
    SELECT array_agg(c.id), array_agg(c.user_id), array_agg(c.workflow_id),
           array_agg(c.lease_epoch), array_agg(c.attempt), array_agg(c.status_before)
    INTO ids, users, versions, epochs, attempts, befores
    FROM agently_claim_runs(worker, lease, max_runs, held) c;
    IF ids IS NULL THEN
        RETURN;   -- an idle poll reads nothing
    END IF;

    -- A second statement: it sees every change committed up to the claim's locks (a cancel
    -- request, a signal). The claim made each run's queue row this transaction's, so no
    -- fence is needed here.
    RETURN QUERY
    SELECT c.id, c.user_id, c.workflow_id, c.epoch, c.attempt, c.before, s.snapshot,
           s.cancel_requested, s.pause_requested
    FROM unnest(ids, users, versions, epochs, attempts, befores)
         AS c(id, user_id, workflow_id, epoch, attempt, before)
    LEFT JOIN LATERAL agently_run_snapshot(c.id, true) s ON true;
END;
$$;

REVOKE ALL ON FUNCTION agently_claim_turn(text, interval, integer, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_claim_turn(text, interval, integer, uuid[]) TO agently_worker;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_snapshots(jsonb) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION agently_claim_turn(text, interval, integer, uuid[]) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;

-- One plan for every claim, made once per session. The snapshot read's estimate follows its
-- arrays' length in a custom plan (1 for a single run) and is 10 in the generic plan, so the
-- plan cache found the generic plan dearer than a one-run claim's custom plans and planned
-- the statement again on every call: a claim of one run took ~3 ms where it had taken
-- 0.6 ms, and a 5-step run's latency grew by as much. The generic plan (a nested loop over
-- the arrays, an index probe per run) is the plan for any number of runs.
ALTER FUNCTION agently_claim_turn(text, interval, integer, uuid[])
    SET plan_cache_mode = force_generic_plan;
