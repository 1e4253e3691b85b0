-- 0044_history_statistics.sql — the run history's ANALYZE samples 3,000 rows, not 30,000.
--
-- An ANALYZE reads its sample inside one transaction, and the snapshot it holds is one that
-- every vacuum must respect: while it runs, no vacuum may remove a row version that died
-- after it began, run_queue's included. Entries of run_queue's claim indexes die within a
-- second each (a claim takes a run out of the due index, its finish out of the lease
-- index), so a long ANALYZE anywhere in the cluster leaves them in place until it ends, and
-- the indexes grow to hold them (docs/performance.md, "Issue 9: why the claim indexes
-- still grow after minute 5": a 31-minute soak analyzed workflow_runs, node_runs and the
-- logs partition 146 times, 2–7 s each under autovacuum's cost delay, and the claim
-- indexes grew once, by half, in the minute of a 6.6 s ANALYZE of workflow_runs).
--
-- An ANALYZE samples 300 rows per unit of the highest statistics target among the table's
-- columns (default_statistics_target = 100: 30,000 rows, as many pages). These three tables
-- are read by key (a run by its id, a user's runs by status and time, a run's nodes and
-- events by run and seq): their plans need each key column's distinct count and its most
-- common values, which a 3,000-row sample gives (status has eight values), and never the
-- fine histograms of a 100 target. A target of 10 makes each of their ANALYZEs a tenth as
-- long. tests/integration/test_catalog.c (history_tables_sample_small) holds every column
-- of the three, partitions included, to it, so a column added later must say so too.
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT a.attrelid::regclass AS rel, a.attname
        FROM pg_attribute a
        WHERE a.attrelid IN ('workflow_runs'::regclass, 'node_runs'::regclass, 'logs'::regclass)
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, a.attnum
    LOOP
        -- on logs this recurses into every partition that exists
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET STATISTICS 10', col.rel, col.attname);
    END LOOP;
END;
$$;

-- A month's logs partition is created by agently_ensure_log_partitions as CREATE TABLE
-- (LIKE logs) and attached, and neither copies a column's statistics target: its ANALYZE
-- would sample 30,000 rows again. The function that creates them keeps its body under a new
-- name, and agently_ensure_log_partitions gives each partition it created logs' targets.
ALTER FUNCTION agently_ensure_log_partitions(integer) RENAME TO agently_create_log_partitions;
REVOKE ALL ON FUNCTION agently_create_log_partitions(integer) FROM agently_worker;

CREATE FUNCTION agently_ensure_log_partitions(months_ahead integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    created integer;
    col     record;
BEGIN
    created := agently_create_log_partitions(months_ahead);
    IF created > 0 THEN
        FOR col IN
            SELECT p.attrelid::regclass AS rel, p.attname, l.attstattarget
            FROM pg_inherits i
            JOIN pg_attribute p ON p.attrelid = i.inhrelid AND p.attnum > 0 AND NOT p.attisdropped
            JOIN pg_attribute l ON l.attrelid = i.inhparent AND l.attname = p.attname
            WHERE i.inhparent = 'logs'::regclass
              AND p.attstattarget IS DISTINCT FROM l.attstattarget
        LOOP
            EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET STATISTICS %s', col.rel,
                           col.attname, col.attstattarget);
        END LOOP;
    END IF;
    RETURN created;
END;
$$;
REVOKE ALL ON FUNCTION agently_ensure_log_partitions(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_ensure_log_partitions(integer) TO agently_worker;
COMMENT ON FUNCTION agently_ensure_log_partitions(integer) IS
    'Create missing monthly (UTC) log partitions logs_YYYYMM for the current month .. months_ahead, with the column statistics targets of logs; returns the number created. RLS enabled+forced, no grants.';
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_ensure_log_partitions(integer) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END;
$$;
