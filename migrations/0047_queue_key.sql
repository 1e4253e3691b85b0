-- 0047_queue_key.sql — run_queue's key to its run (run_id, user_id) -> workflow_runs is no
-- longer a foreign key: what it guaranteed is kept by who may write the queue, and its
-- cascade by the runs' triggers of 0045.
--
-- Why: the key checked every queue row inserted, one SPI query, index probe and KEY SHARE
-- lock of the run's row each (a lock that also writes WAL and dirties the run's page), for
-- rows that only one trigger inserts, from the runs its own statement has just inserted
-- (agently_run_inserted, 0038). Measured with bench/instructions (docs/performance.md,
-- "Issue 9: the finish as a HOT update"): 1,304,953 instructions and 3,339 WAL bytes per
-- no-op run before, 1,258,935 and 3,281 with the key dropped (-3.5 %).
--
-- What the key guaranteed, and what guarantees it now:
--   * a queue row names an existing run of its user: queue rows are inserted only by the
--     owner — agently_run_inserted, from the transition table of the runs being inserted
--     (nobody else holds INSERT: the API and the worker have SELECT, the worker UPDATE) —
--     and their run_id and user_id are never written again: the worker's UPDATE is now
--     granted on the columns a claim, a renewal and the queue-follow trigger write, not on
--     the key's;
--   * ON DELETE CASCADE: the runs' statement trigger of 0045 (agently_runs_removed, which
--     deletes the deleted runs' node rows) deletes their queue rows in the same statement,
--     and TRUNCATE workflow_runs truncates run_queue with node_runs; a user's deletion
--     deletes the user's runs through the users key's cascade, which fires it;
--   * NO ACTION on a change of a run's id or user: the same trigger refuses it while a
--     queue row names the old pair, as it does for node rows.
-- tests/integration/test_hot_finish.c checks each of them.

ALTER TABLE run_queue DROP CONSTRAINT run_queue_run_id_user_id_fkey;

REVOKE UPDATE ON run_queue FROM agently_worker;
GRANT UPDATE (run_at, priority, claimed_by, lease_expires_at, lease_epoch, attempt, deadline)
    ON run_queue TO agently_worker;

-- 0045's, with run_queue beside node_runs.
CREATE OR REPLACE FUNCTION agently_runs_removed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM node_runs n
        WHERE n.workflow_run_id IN (SELECT o.id FROM removed_runs o);
        DELETE FROM run_queue q
        WHERE q.run_id IN (SELECT o.id FROM removed_runs o);
    ELSIF TG_OP = 'TRUNCATE' THEN
        TRUNCATE node_runs, run_queue;
    ELSIF NOT EXISTS (SELECT FROM workflow_runs r WHERE r.id = OLD.id AND r.user_id = OLD.user_id)
          AND (EXISTS (SELECT FROM node_runs n
                       WHERE n.workflow_run_id = OLD.id AND n.user_id = OLD.user_id)
               OR EXISTS (SELECT FROM run_queue q
                          WHERE q.run_id = OLD.id AND q.user_id = OLD.user_id)) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = 'cannot change the id or user of a run that has node rows or a queue row',
            DETAIL = format('run %s of user %s has node rows or a queue row', OLD.id, OLD.user_id),
            HINT = 'a run''s id and user never change; start a new run instead';
    END IF;
    RETURN NULL;
END;
$$;

-- The triggers keep their definitions; their names say what they now cover.
ALTER TRIGGER workflow_runs_deleted_nodes ON workflow_runs RENAME TO workflow_runs_deleted;
ALTER TRIGGER workflow_runs_key_changed_nodes ON workflow_runs RENAME TO workflow_runs_key_changed;
ALTER TRIGGER workflow_runs_truncated_nodes ON workflow_runs RENAME TO workflow_runs_truncated;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_runs_removed() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
