-- 0033_claim_turn.sql — a worker's claim returns the claimed runs' snapshots with them.
--
-- A worker's loop turn opens with BEGIN and its claim in one round trip (0028), then reads
-- the snapshot of every run it works on (agently_snapshots, 0030) in a second one. For a
-- run claimed in that very turn nothing happens between the two statements that the
-- snapshot could show: the claim holds the run's record and queue row locked, the turn
-- has written nothing yet (the claim events go with its last writes), and both statements
-- read now() of the same transaction. So the claim can return what the read would: a
-- fresh run done in its first turn then costs two round trips, not three (BEGIN with the
-- claim and its snapshot; the writes with the COMMIT; docs/performance.md).
--
-- agently_claim_turn() is agently_claim_runs() (0028, the one home of what a claim does),
-- and for each claimed run its whole snapshot as agently_snapshots() returns it (the one
-- home of what a snapshot is), read after the claim, in a statement of its own so that it
-- sees the claim (the new epoch on the queue row it is fenced on). Without the snapshots
-- its result is the claim's; a claim in its own transaction behaves the same.
CREATE FUNCTION agently_claim_turn(worker text, lease interval, max_runs integer,
                                   held uuid[] DEFAULT '{}')
RETURNS TABLE (id uuid, user_id uuid, workflow_id uuid, lease_epoch bigint, attempt integer,
               status_before text, snapshot jsonb, cancel_requested boolean,
               pause_requested boolean)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    claimed jsonb;
BEGIN
    SELECT coalesce(jsonb_agg(jsonb_build_object('id', c.id, 'user_id', c.user_id,
                                                 'workflow_id', c.workflow_id,
                                                 'epoch', c.lease_epoch, 'attempt', c.attempt,
                                                 'before', c.status_before, 'whole', true)),
                    '[]')
    INTO claimed
    FROM agently_claim_runs(worker, lease, max_runs, held) c;
    IF claimed = '[]' THEN
        RETURN;   -- an idle poll reads nothing
    END IF;

    RETURN QUERY
    SELECT c.id, c.user_id, c.workflow_id, c.epoch, c.attempt, c.before, s.snapshot,
           s.cancel_requested, s.pause_requested
    FROM jsonb_to_recordset(claimed) AS c(id uuid, user_id uuid, workflow_id uuid, epoch bigint,
                                          attempt integer, before text)
    LEFT JOIN agently_snapshots(claimed) s ON s.id = c.id;
END;
$$;

REVOKE ALL ON FUNCTION agently_claim_turn(text, interval, integer, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_claim_turn(text, interval, integer, uuid[]) TO agently_worker;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_claim_turn(text, interval, integer, uuid[]) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
