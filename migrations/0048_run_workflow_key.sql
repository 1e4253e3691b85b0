-- 0048_run_workflow_key.sql — workflow_runs' key to its workflow version (workflow_id,
-- user_id) -> workflows is checked by the trigger that already read that row for every new
-- run, not by a foreign key as well.
--
-- Why: every run inserted was looked up in workflows twice: by the foreign key's check (an
-- SPI query, an index probe and a KEY SHARE lock) and by workflow_runs_pin_agents, the
-- BEFORE INSERT trigger that pins the run's agent versions and its notifications flag from
-- that same row (0019, 0030) and that said "no such workflow version of this user: the
-- foreign key refuses the row". Measured with bench/instructions (docs/performance.md,
-- "Issue 9: the finish as a HOT update"): 1,258,073 instructions per no-op run before,
-- 1,219,163 with the key dropped and nothing in its place (-3.1 %); as landed, the trigger
-- taking the key's lock and refusal, see that section.
--
-- What the key guaranteed, and what guarantees it now:
--   * a run names an existing workflow version of its user: agently_run_pin_agents reads
--     the version FOR KEY SHARE (as the key's check locked it: a deletion of the version
--     waits for the inserting transaction, and a run inserted while a deletion is in flight
--     waits for it and is refused) and raises foreign_key_violation (23503) when there is
--     none, with the key's words; an UPDATE that changes a run's workflow_id or user_id is
--     checked the same way, row by row (nothing does it);
--   * NO ACTION when a workflow version is deleted, its key changed, or workflows
--     truncated while runs name it: statement triggers on workflows refuse it (23503),
--     after the statement's cascades, as the key's check ran: a user's deletion deletes
--     the user's runs and workflows through the users keys' cascades and passes.
-- tests/integration/test_hot_finish.c checks each of them.

ALTER TABLE workflow_runs DROP CONSTRAINT workflow_runs_workflow_id_user_id_fkey;

-- 0030's, with the key's lock and refusal.
CREATE OR REPLACE FUNCTION agently_run_pin_agents()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    SELECT coalesce((SELECT jsonb_object_agg(ref->>'name' || coalesce('@' || (ref->>'version'), ''),
                                             a.version)
                     FROM jsonb_array_elements(w.agent_refs) ref
                     CROSS JOIN LATERAL (SELECT ag.version FROM agents ag
                                         WHERE ag.user_id = NEW.user_id AND ag.name = ref->>'name'
                                           AND (jsonb_typeof(ref->'version') IS DISTINCT FROM 'number'
                                                OR ag.version = (ref->>'version')::integer)
                                         ORDER BY ag.version DESC LIMIT 1) a), '{}'),
           coalesce(jsonb_array_length(CASE WHEN jsonb_typeof(w.definition->'notifications') = 'array'
                                            THEN w.definition->'notifications' END), 0) > 0
    INTO NEW.agent_versions, NEW.notifies
    FROM workflows w
    WHERE w.id = NEW.workflow_id AND w.user_id = NEW.user_id
    FOR KEY SHARE OF w;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = 'insert or update on table "workflow_runs" violates its key to "workflows"',
            DETAIL = format('Key (workflow_id, user_id)=(%s, %s) is not present in table "workflows".',
                            NEW.workflow_id, NEW.user_id),
            HINT = 'a run names a workflow version of its own user';
    END IF;
    RETURN NEW;
END;
$$;

-- The same check for an update of a run's workflow version or user (nothing does it).
CREATE TRIGGER workflow_runs_workflow_changed
    BEFORE UPDATE OF workflow_id, user_id ON workflow_runs
    FOR EACH ROW
    WHEN (OLD.workflow_id IS DISTINCT FROM NEW.workflow_id
          OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION agently_run_pin_agents();

-- The key's NO ACTION, from the workflows' side: at the end of the statement (after its
-- cascades), no run may name a version the statement removed.
CREATE FUNCTION agently_workflows_removed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    named record;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT r.workflow_id, r.user_id INTO named
        FROM removed_workflows o
        JOIN workflow_runs r ON r.workflow_id = o.id AND r.user_id = o.user_id
        LIMIT 1;
    ELSIF TG_OP = 'TRUNCATE' THEN
        SELECT r.workflow_id, r.user_id INTO named FROM workflow_runs r LIMIT 1;
    ELSE
        SELECT r.workflow_id, r.user_id INTO named
        FROM workflow_runs r
        WHERE r.workflow_id = OLD.id AND r.user_id = OLD.user_id
          AND NOT EXISTS (SELECT FROM workflows w WHERE w.id = OLD.id AND w.user_id = OLD.user_id)
        LIMIT 1;
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = 'update or delete on table "workflows" violates the key of "workflow_runs"',
            DETAIL = format('Key (id, user_id)=(%s, %s) is still referenced from table "workflow_runs".',
                            named.workflow_id, named.user_id),
            HINT = 'a workflow version that runs name stays; delete its runs first';
    END IF;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION agently_workflows_removed() FROM PUBLIC;

CREATE TRIGGER workflows_deleted
    AFTER DELETE ON workflows
    REFERENCING OLD TABLE AS removed_workflows
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_workflows_removed();

CREATE TRIGGER workflows_key_changed
    AFTER UPDATE OF id, user_id ON workflows
    FOR EACH ROW
    WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION agently_workflows_removed();

CREATE TRIGGER workflows_truncated
    AFTER TRUNCATE ON workflows
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_workflows_removed();

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_run_pin_agents()', 'agently_workflows_removed()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
