-- 0031_queue_vacuum_no_truncate.sql — a vacuum of the hot small tables never asks for
-- their exclusive lock.
--
-- At the end of a vacuum Postgres tries to cut the empty pages off the end of a table.
-- That needs the table's ACCESS EXCLUSIVE lock: the vacuum asks for it without waiting,
-- again every 50 ms for up to 5 s while other sessions hold locks on the table, and once it
-- has it, every claim, renewal and finish waits for it. run_queue is locked by every turn
-- of every worker, and it is small and emptied and refilled all the time, so it always has
-- empty pages at its end: in the idle 30-minute soak (docs/performance.md, "The 30-minute
-- soak") its autovacuums sat in "truncating heap" for seconds at a time. That held an
-- autovacuum worker on a table whose vacuum is otherwise a few milliseconds, so run_queue
-- was vacuumed every ~10 s instead of every second (52,000 dead rows between two vacuums,
-- where its threshold is 1,000) — and its claim indexes are as big as the entries that die
-- between two vacuums — and it stalled the claims whenever it did get the lock.
--
-- The pages a truncation would give back are reused by the next inserts anyway. The
-- per-session counters (0008, 0013) are the same shape: a few rows rewritten by every
-- commit that counts.
ALTER TABLE run_queue SET (vacuum_truncate = false);
ALTER TABLE agently_event_counters SET (vacuum_truncate = false);
ALTER TABLE agently_llm_usage_counters SET (vacuum_truncate = false);
