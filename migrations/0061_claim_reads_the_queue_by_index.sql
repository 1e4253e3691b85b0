-- 0061_claim_reads_the_queue_by_index.sql — the claim reads the due runs through
-- run_queue_due_idx, whatever the statistics say.
--
-- Why: run_queue keeps its pages after a burst (its vacuums never truncate it: 0031), so
-- after 20,000 runs went through it the table is 364 pages of nearly nothing. Its statistics
-- are the last ANALYZE's, taken while the burst was queued: claimed_by all NULL, run_at one
-- value in the past. The planner then takes the due scan (claimed_by IS NULL AND run_at <=
-- now(), ORDER BY run_at) to keep every row, prices the index scan as a fetch of every heap
-- page (371) and the sequential scan with a sort just under it (364): every claim read the
-- whole table. That was the ~0.2 ms a run alone's claim lost right after the bench's runs
-- phase (docs/performance.md, "Issue 9: the trigger conditions read back"); after a burst
-- of a million runs it would be a scan of some 18,000 pages at every claim of an idle worker,
-- for as long as the statistics stay.
--
-- The claim's reads are index reads by design (the due and lease indexes, the records by
-- key): 0006 already keeps the planner from hashing or merging them, and this keeps it from
-- scanning the queue whole. A sequential scan is still taken where nothing else can answer.
ALTER FUNCTION agently_claim_runs(text, interval, integer, uuid[])
    SET enable_seqscan = off;
