-- 0059_event_counters_domain.sql — the event counters' limits as a domain.
--
-- Why: agently_logs_written (0056) adds to this backend's agently_event_counters row in every
-- statement that writes a claim's or an end's events: the worker's writes statement of every
-- turn. Postgres reads back and prepares every CHECK of a table in every statement that
-- writes one of its rows (0039's reason), and the table carried six, one `>= 0` per counter
-- (0008): 83 K instructions a turn, 1.6 % of a run alone's (`bench/instructions --mode
-- alone`, docs/performance.md, "Issue 9: a run alone"). The same limit as 0039's domain
-- agently_big_count comes from the type cache. Nothing else changes: the same refusal
-- (SQLSTATE 23514, check_violation, the domain's constraint named), the same readers (sums).
--
-- The domain already carries its CHECK, so the type change reads the table's rows and
-- writes it again: one row per database backend that has counted events, a few pages.
ALTER TABLE agently_event_counters
    DROP CONSTRAINT agently_event_counters_claims_check,
    DROP CONSTRAINT agently_event_counters_rescues_check,
    DROP CONSTRAINT agently_event_counters_retries_check,
    DROP CONSTRAINT agently_event_counters_completed_check,
    DROP CONSTRAINT agently_event_counters_failed_check,
    DROP CONSTRAINT agently_event_counters_canceled_check,
    ALTER COLUMN claims TYPE agently_big_count,
    ALTER COLUMN rescues TYPE agently_big_count,
    ALTER COLUMN retries TYPE agently_big_count,
    ALTER COLUMN completed TYPE agently_big_count,
    ALTER COLUMN failed TYPE agently_big_count,
    ALTER COLUMN canceled TYPE agently_big_count;
