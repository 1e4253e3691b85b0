-- 0048_run_workflow_key.sql — workflow_runs' key to its workflow version (workflow_id,
-- user_id) -> workflows is checked once per statement by the trigger every run insert
-- already fires, not by a foreign key row by row; and the key's index goes.
--
-- Why: the foreign key checked every run inserted on its own (an SPI query, an index probe
-- and a KEY SHARE lock of the version's row), though the runs a statement inserts mostly
-- name one version (a batch, a map's children). Measured with bench/instructions
-- (docs/performance.md, "Issue 9: the finish as a HOT update"): 1,258,073 instructions per
-- no-op run before, 1,219,163 with the key dropped and nothing in its place (-3.1 %); the
-- index on workflow_id, which served only the key's lookups, another 8.9 K; as landed, in
-- that section.
--
-- What the key guaranteed, and what guarantees it now:
--   * a run names an existing workflow version of its user: checked at the end of every
--     INSERT statement on workflow_runs by agently_run_inserted (0038's statement trigger:
--     the run's queue row and wake-up hint), once per distinct version the statement names,
--     with the key's lock (FOR KEY SHARE on the version's row, held to commit: a deletion of
--     the version waits for the inserting transaction, and a run inserted while a deletion
--     is in flight waits for it and is refused) and the key's SQLSTATE (23503); an UPDATE
--     that changes a run's version, name or user is checked the same way, row by row
--     (nothing does it). New: the run's workflow_name must be its version's name, as every
--     writer already made it; the NO ACTION check below finds a version's runs by it;
--   * NO ACTION when a workflow version is deleted, its key or name changed, or workflows
--     truncated while runs name it: triggers on workflows refuse it (23503), after the
--     statement's cascades, as the key's check ran: a user's deletion deletes the user's
--     runs and workflows through the users keys' cascades and passes.
-- tests/integration/test_hot_finish.c checks each of them.

ALTER TABLE workflow_runs DROP CONSTRAINT workflow_runs_workflow_id_user_id_fkey;

-- 0038's, with the key's check first: the distinct (version, user, name) triples the
-- statement's runs name, each locked FOR KEY SHARE as the key's check locked it; a triple
-- with no version has no row to lock. After the row-level security's WITH CHECK, as the
-- key's check was (a tenant inserting a row of another is refused by the policy, and
-- learns nothing of the other's versions).
CREATE OR REPLACE FUNCTION agently_run_inserted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    hinted  bigint;
    unknown bigint;
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

-- 0030's, where it found no version: the row now reaches the key's check (23503) instead
-- of failing on notifies' NOT NULL (23502, "null value in column notifies"), which was
-- what a run naming no version met first.
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
    WHERE w.id = NEW.workflow_id AND w.user_id = NEW.user_id;
    IF NOT FOUND THEN
        -- no such workflow version of this user: agently_run_inserted refuses the row
        -- (23503); until then the row must pass its NOT NULLs
        NEW.agent_versions := '{}';
        NEW.notifies := false;
    END IF;
    RETURN NEW;
END;
$$;

-- The same check for an update of a run's workflow version, name or user, row by row
-- (nothing does it).
CREATE FUNCTION agently_run_workflow_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    PERFORM FROM workflows w
    WHERE w.id = NEW.workflow_id AND w.user_id = NEW.user_id AND w.name = NEW.workflow_name
    FOR KEY SHARE OF w;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = 'the workflow version the run names does not exist for its user',
            DETAIL = format('run %s names version %s (%L) of user %s', NEW.id, NEW.workflow_id,
                            NEW.workflow_name, NEW.user_id),
            HINT = 'a run names a workflow version of its own user, and that version''s name';
    END IF;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION agently_run_workflow_changed() FROM PUBLIC;

CREATE TRIGGER workflow_runs_workflow_changed
    AFTER UPDATE OF workflow_id, user_id, workflow_name ON workflow_runs
    FOR EACH ROW
    WHEN (OLD.workflow_id IS DISTINCT FROM NEW.workflow_id
          OR OLD.user_id IS DISTINCT FROM NEW.user_id
          OR OLD.workflow_name IS DISTINCT FROM NEW.workflow_name)
    EXECUTE FUNCTION agently_run_workflow_changed();

-- The key's NO ACTION, from the workflows' side: at the end of the statement (after its
-- cascades), no run may name a version the statement removed. A run carries its version's
-- name (workflow_name), so the runs of a version are found through
-- workflow_runs_user_workflow_idx, the run list's by workflow; workflow_runs_workflow_idx
-- served only the key's lookups and goes (an index entry less for every run inserted:
-- -8.9 K instructions per no-op run).
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
        JOIN workflow_runs r ON r.user_id = o.user_id AND r.workflow_name = o.name
                            AND r.workflow_id = o.id
        LIMIT 1;
    ELSIF TG_OP = 'TRUNCATE' THEN
        SELECT r.workflow_id, r.user_id INTO named FROM workflow_runs r LIMIT 1;
    ELSE
        SELECT r.workflow_id, r.user_id INTO named
        FROM workflow_runs r
        WHERE r.user_id = OLD.user_id AND r.workflow_name = OLD.name AND r.workflow_id = OLD.id
          AND NOT EXISTS (SELECT FROM workflows w
                          WHERE w.id = OLD.id AND w.user_id = OLD.user_id AND w.name = OLD.name)
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

DROP INDEX workflow_runs_workflow_idx;

CREATE TRIGGER workflows_deleted
    AFTER DELETE ON workflows
    REFERENCING OLD TABLE AS removed_workflows
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_workflows_removed();

CREATE TRIGGER workflows_key_changed
    AFTER UPDATE OF id, user_id, name ON workflows
    FOR EACH ROW
    WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD.user_id IS DISTINCT FROM NEW.user_id
          OR OLD.name IS DISTINCT FROM NEW.name)
    EXECUTE FUNCTION agently_workflows_removed();

CREATE TRIGGER workflows_truncated
    AFTER TRUNCATE ON workflows
    FOR EACH STATEMENT
    EXECUTE FUNCTION agently_workflows_removed();

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_run_inserted()', 'agently_run_pin_agents()',
                              'agently_run_workflow_changed()',
                              'agently_workflows_removed()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
