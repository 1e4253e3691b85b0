-- 0060_trigger_conditions_short.sql — the run's trigger conditions, shorter to read back.
--
-- Why: Postgres reads a row trigger's WHEN clause back from its stored node text
-- (stringToNode) and prepares it once per statement that writes a row the trigger can fire
-- on, whatever the number of rows; at ~35 instructions a character of that text. A worker's
-- turn of a hundred runs shares it; a run alone pays all of it, and a run alone is what
-- `workflow_5step_p50_ms` and `enqueue_to_start` measure. `bench/instructions --mode alone`
-- (one run enqueued, then its 5-step turn): the 13 WHEN clauses an iteration reads were
-- 0.91 M of its 5.24 M instructions, 20.8 K characters of node text, the transition guard's
-- 5.3 K of it (docs/performance.md, "Issue 9: the trigger conditions read back").
--
--   * The transition guard (0034, 0058): the list's test moves into
--     agently_run_change_allowed, a PL/pgSQL function the generator writes with the list as
--     its constants. Its expressions are compiled once per session, not read back per
--     statement; a call costs ~1 K instructions, made only for a row whose status changes
--     (the WHEN still tests OLD.status <> NEW.status first). Not an SQL function: that one
--     is inlined, which parses its text per statement (0034's reason to leave it).
--   * A list written IN ('a', 'b') is an array of constant nodes, each read back; written as
--     one array constant ('{a,b}'::text[]) it is one node of the same meaning:
--     workflow_runs_ended, workflow_runs_notify, workflow_runs_notify_update,
--     workflow_runs_zz_finished_iff_terminal, node_runs_child_ended.
--   * workflow_runs_queue_follow: coalesce(setting, '') = 'on' as setting IS NOT DISTINCT
--     FROM 'on' (the same truth for every value, NULL included).
--   * workflow_runs_zz_lease_matches_status: the CASE as two comparisons of the same truth:
--     running exactly when claimed_by is set, and claimed_by set exactly when
--     lease_expires_at is.
--
-- Together, on a copy of one cluster, 5.24 M -> 4.98 M instructions an iteration; the script
-- on its own clusters: 5,284,917 -> 5,063,744 (-4.2 %). A no-op run in a turn of 256 is
-- unchanged (673,366 -> 673,355: the guard's call costs what its clause's evaluation saves).
-- Nothing a writer sees changes: the same refusals (test_run_status walks every change),
-- the same firings.

-- ---------------------------------------------------------------------------------------
-- The transition guard: the list's test in a function, compiled once per session
-- ---------------------------------------------------------------------------------------
-- The one home of the guard's condition (0034, 0058), now writing two objects from
-- agently_run_transition_list(): agently_run_change_allowed(before, after, claimed), true when
-- before -> after is in the list or, for a write that carries a new lease_epoch (the claim
-- and its outcome together), before -> running and running -> after both are; and the
-- trigger that calls it. A migration that changes the list calls it again; test_run_status
-- checks the function's constants against the list.
CREATE OR REPLACE FUNCTION agently_run_transition_guard_create()
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    list         text[] := agently_run_transition_list();
    -- the statuses the list lets go to running, and those it lets running go to
    into_running text[] := ARRAY(SELECT split_part(t, '>', 1) FROM unnest(list) t
                                 WHERE split_part(t, '>', 2) = 'running' ORDER BY 1);
    from_running text[] := ARRAY(SELECT split_part(t, '>', 2) FROM unnest(list) t
                                 WHERE split_part(t, '>', 1) = 'running' ORDER BY 1);
    -- the function's schema named: this function's search_path starts with pg_catalog,
    -- where an unqualified CREATE would put it
    fn           text := format('%I.agently_run_change_allowed',
                                (SELECT n.nspname FROM pg_class c
                                 JOIN pg_namespace n ON n.oid = c.relnamespace
                                 WHERE c.oid = 'workflow_runs'::regclass));
BEGIN
    -- IMMUTABLE: its answer is a function of its arguments (the list is its text). No
    -- SET search_path: a SET clause is a save and restore of the setting at every call;
    -- the body names only pg_catalog's text operators, over arguments cast to text.
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION %s('
        '    before agently_run_status, after agently_run_status, claimed boolean) '
        'RETURNS boolean '
        'LANGUAGE plpgsql '
        'IMMUTABLE '
        'PARALLEL SAFE '
        'AS %L',
        fn,
        format('BEGIN RETURN (before::text || ''>'' || after::text) = ANY (%s::text[]) '
               'OR (claimed AND before::text = ANY (%s::text[]) '
               'AND after::text = ANY (%s::text[])); END',
               quote_literal(list::text), quote_literal(into_running::text),
               quote_literal(from_running::text)));
    EXECUTE format('REVOKE ALL ON FUNCTION %s(agently_run_status, agently_run_status, '
                   'boolean) FROM PUBLIC', fn);
    -- the roles that write a run's status
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s(agently_run_status, agently_run_status, '
                   'boolean) TO agently_api, agently_worker', fn);
    EXECUTE 'CREATE OR REPLACE TRIGGER workflow_runs_transition_guard '
            '    BEFORE UPDATE OF status ON workflow_runs '
            '    FOR EACH ROW '
            '    WHEN (OLD.status <> NEW.status '
            '          AND NOT agently_run_change_allowed(OLD.status, NEW.status, '
            '                                             NEW.lease_epoch > OLD.lease_epoch)) '
            '    EXECUTE FUNCTION agently_run_transition_refused()';
END;
$$;

-- CREATE OR REPLACE left it without the search_path 0058 gave it
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_run_transition_guard_create() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;

SELECT agently_run_transition_guard_create();

-- ---------------------------------------------------------------------------------------
-- Lists as one constant each; the same conditions
-- ---------------------------------------------------------------------------------------
-- As 0009 (0039's columns).
CREATE OR REPLACE TRIGGER workflow_runs_ended
    AFTER UPDATE OF status ON workflow_runs
    FOR EACH ROW
    WHEN (NEW.status = ANY ('{completed,failed,canceled}'::text[])
          AND OLD.status <> ALL ('{completed,failed,canceled}'::text[])
          AND (NEW.status <> 'completed' OR NEW.parent_run_id IS NOT NULL))
    EXECUTE FUNCTION agently_run_ended();

-- As 0030.
CREATE OR REPLACE TRIGGER workflow_runs_notify
    AFTER UPDATE OF status ON workflow_runs
    FOR EACH ROW
    WHEN (NEW.notifies
          AND NEW.status = ANY ('{completed,failed,needs_input}'::text[])
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION agently_run_notify();

-- As 0003.
CREATE OR REPLACE TRIGGER workflow_runs_notify_update
    AFTER UPDATE OF status, run_at ON workflow_runs
    FOR EACH ROW
    WHEN (NEW.status = ANY ('{queued,waiting}'::text[]) AND NEW.run_at <= now())
    EXECUTE FUNCTION agently_notify_runs_updated();

-- As 0054.
CREATE OR REPLACE TRIGGER workflow_runs_queue_follow
    AFTER UPDATE OF status, run_at, timeout_at ON workflow_runs
    FOR EACH ROW
    WHEN (NEW.status <> 'running'
          AND NOT (current_setting('agently.turn_writes', true) IS NOT DISTINCT FROM 'on'
                   AND (OLD.status = 'running' OR NEW.lease_epoch <> OLD.lease_epoch)))
    EXECUTE FUNCTION agently_run_queue_follow();

-- As 0050.
CREATE OR REPLACE TRIGGER workflow_runs_zz_lease_matches_status
    BEFORE INSERT OR UPDATE OF status, claimed_by, lease_expires_at ON workflow_runs
    FOR EACH ROW
    WHEN ((NEW.status = 'running') <> (NEW.claimed_by IS NOT NULL)
          OR (NEW.claimed_by IS NULL) <> (NEW.lease_expires_at IS NULL))
    EXECUTE FUNCTION agently_run_rule_broken(
        'workflow_runs_lease_matches_status',
        'a running run holds a lease (claimed_by and lease_expires_at), any other holds none');

CREATE OR REPLACE TRIGGER workflow_runs_zz_finished_iff_terminal
    BEFORE INSERT OR UPDATE OF status, finished_at ON workflow_runs
    FOR EACH ROW
    WHEN ((NEW.status = ANY ('{completed,failed,canceled}'::text[]))
          <> (NEW.finished_at IS NOT NULL))
    EXECUTE FUNCTION agently_run_rule_broken(
        'workflow_runs_finished_iff_terminal',
        'finished_at is set exactly when the status is completed, failed or canceled');

-- As 0009 (0039's columns).
CREATE OR REPLACE TRIGGER node_runs_child_ended
    AFTER INSERT OR UPDATE OF status ON node_runs
    FOR EACH ROW
    WHEN (NEW.status = ANY ('{failed,canceled,interrupted,skipped}'::text[])
          AND NEW.idempotency_key LIKE 'child:%')
    EXECUTE FUNCTION agently_node_child_ended();
