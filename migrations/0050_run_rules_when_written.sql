-- 0050_run_rules_when_written.sql — the run record's four rules over several columns are
-- checked by the statements that write those columns, not by every statement that writes
-- the record.
--
-- Why: Postgres reads back and prepares every CHECK constraint of a table in every
-- statement that inserts or updates one of its rows, whatever the statement writes (0039
-- moved the one-column limits into domains for that reason; these four see several columns,
-- which a domain cannot). The statement an agent's LLM call commits (agently_agent_write,
-- issue 10's journal write) updates the run's event_seq and cost and token totals only, and
-- paid for all four each time. Measured with callgrind on a single-user backend: one
-- single-row UPDATE of those columns, 511,466 instructions with the four CHECKs, 387,225
-- without (-124 K; the two over status 95.5 K of it), and one CHECK of the four combined
-- costs the same as four (docs/performance.md, "Issue 10: the run's rules where they are
-- written").
--
-- Each rule is now a BEFORE trigger whose WHEN clause is the rule negated: it fires on an
-- INSERT and on an UPDATE whose SET names one of the rule's columns, and only calls its
-- function — which raises, SQLSTATE 23514 (check_violation) as the CHECK did, naming the
-- rule as the CHECK's name and in the error's constraint field — when the row breaks the
-- rule. The WHEN is a plain expression, evaluated per row as the CHECK was. The rules are
-- the CHECKs' own, and the rows in the table satisfy them (they were validated by the
-- CHECKs). The triggers' names sort after every other BEFORE trigger of the table that
-- writes a rule's column (none does today), so they see the row as it will be written.

ALTER TABLE workflow_runs
    DROP CONSTRAINT workflow_runs_lease_matches_status,
    DROP CONSTRAINT workflow_runs_finished_iff_terminal,
    DROP CONSTRAINT workflow_runs_check,
    DROP CONSTRAINT workflow_runs_check1;

-- TG_ARGV: the rule's name, what it says.
CREATE FUNCTION agently_run_rule_broken()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'check_violation',
        CONSTRAINT = TG_ARGV[0],
        MESSAGE = format('new row for relation "workflow_runs" violates check constraint "%s"',
                         TG_ARGV[0]),
        DETAIL = format('run %s: %s', NEW.id, TG_ARGV[1]);
END;
$$;
REVOKE ALL ON FUNCTION agently_run_rule_broken() FROM PUBLIC;

CREATE TRIGGER workflow_runs_zz_lease_matches_status
    BEFORE INSERT OR UPDATE OF status, claimed_by, lease_expires_at ON workflow_runs
    FOR EACH ROW
    WHEN (NOT CASE WHEN NEW.status = 'running'
                   THEN NEW.claimed_by IS NOT NULL AND NEW.lease_expires_at IS NOT NULL
                   ELSE NEW.claimed_by IS NULL AND NEW.lease_expires_at IS NULL END)
    EXECUTE FUNCTION agently_run_rule_broken(
        'workflow_runs_lease_matches_status',
        'a running run holds a lease (claimed_by and lease_expires_at), any other holds none');

CREATE TRIGGER workflow_runs_zz_finished_iff_terminal
    BEFORE INSERT OR UPDATE OF status, finished_at ON workflow_runs
    FOR EACH ROW
    WHEN ((NEW.status IN ('completed', 'failed', 'canceled')) <> (NEW.finished_at IS NOT NULL))
    EXECUTE FUNCTION agently_run_rule_broken(
        'workflow_runs_finished_iff_terminal',
        'finished_at is set exactly when the status is completed, failed or canceled');

CREATE TRIGGER workflow_runs_zz_parent_node_has_parent
    BEFORE INSERT OR UPDATE OF parent_node_id, parent_run_id ON workflow_runs
    FOR EACH ROW
    WHEN (NEW.parent_node_id IS NOT NULL AND NEW.parent_run_id IS NULL)
    EXECUTE FUNCTION agently_run_rule_broken(
        'workflow_runs_check', 'a parent_node_id needs a parent_run_id');

CREATE TRIGGER workflow_runs_zz_rerun_node_has_origin
    BEFORE INSERT OR UPDATE OF rerun_from_node, rerun_of ON workflow_runs
    FOR EACH ROW
    WHEN (NEW.rerun_from_node IS NOT NULL AND NEW.rerun_of IS NULL)
    EXECUTE FUNCTION agently_run_rule_broken(
        'workflow_runs_check1', 'a rerun_from_node needs a rerun_of');

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_run_rule_broken() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
