-- 0049_run_user_key.sql — workflow_runs' key to its user (user_id -> users, ON DELETE
-- CASCADE) is no foreign key: the run's key to its workflow version implies it, and the
-- users' triggers of 0035 do its cascade.
--
-- Why: the key checked every run inserted (an SPI query, an index probe and a KEY SHARE lock
-- of the user's row). But a run names a workflow version of its own user (0048: checked and
-- locked by agently_run_inserted), and a version's user_id is a key to users (workflows'
-- own foreign key, ON DELETE CASCADE), so the user exists whenever the version does.
-- Measured with bench/instructions (docs/performance.md, "Issue 9: the finish as a HOT
-- update"): -34.4 K instructions per no-op run (-2.6 %) with the key dropped; nothing takes
-- its place on the insert.
--
-- What the key guaranteed, and what guarantees it now:
--   * a run's user exists: its workflow version's does (above). A user deleted while a run
--     of theirs is inserted: the user's deletion cascades to their workflow versions, which
--     waits for the version's KEY SHARE lock that the insert holds, and then deletes the
--     runs below, which sees the run committed; a run inserted after the versions' deletion
--     began waits for it and is refused (0048);
--   * ON DELETE CASCADE: agently_users_removed (0035; it deletes the removed users' events)
--     deletes their runs too, after the statement's own cascades (a run's key to its
--     workflow version is then checked with the runs gone, as the foreign keys' were);
--     TRUNCATE users (always with CASCADE: many tables reference users) empties the runs
--     with the events;
--   * NO ACTION on a change of a user's id: refused while runs name the old id, as for
--     events.
-- tests/integration/test_hot_finish.c checks each of them.

ALTER TABLE workflow_runs DROP CONSTRAINT workflow_runs_user_id_fkey;

-- 0035's, with the runs beside the events.
CREATE OR REPLACE FUNCTION agently_users_removed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM logs l WHERE l.user_id IN (SELECT o.id FROM removed_users o);
        DELETE FROM workflow_runs r WHERE r.user_id IN (SELECT o.id FROM removed_users o);
    ELSIF TG_OP = 'TRUNCATE' THEN
        TRUNCATE logs;
        -- a DELETE: the tables that reference the runs also reference users, so the
        -- TRUNCATE ... CASCADE this fires in has emptied them already (and holds them)
        DELETE FROM workflow_runs;
    ELSIF NOT EXISTS (SELECT FROM users u WHERE u.id = OLD.id)
          AND (EXISTS (SELECT FROM logs l WHERE l.user_id = OLD.id)
               OR EXISTS (SELECT FROM workflow_runs r WHERE r.user_id = OLD.id)) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = 'cannot change the id of a user that has runs or events',
            DETAIL = format('user %s has runs or events', OLD.id),
            HINT = 'a user''s id never changes; create a new user instead';
    END IF;
    RETURN NULL;
END;
$$;

-- The triggers keep their definitions; their names say what they now cover.
ALTER TRIGGER users_deleted_logs ON users RENAME TO users_deleted;
ALTER TRIGGER users_id_changed_logs ON users RENAME TO users_id_changed;
ALTER TRIGGER users_truncated_logs ON users RENAME TO users_truncated;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_users_removed() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
