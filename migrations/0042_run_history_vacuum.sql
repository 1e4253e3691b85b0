-- 0042_run_history_vacuum.sql — workflow_runs is vacuumed like the history table it is.
--
-- 0006 made autovacuum visit workflow_runs after every 10,000 dead rows, unthrottled
-- (scale factor 0, cost delay 0), because the claim indexes lived on it then: small partial
-- indexes that every claim, renewal and finish left dead entries in, and that bloated when
-- the default 20 % of an ever-growing table fired ever more rarely. Since 0011 the claim
-- indexes are run_queue's, which keeps its own settings, and workflow_runs is written on
-- real status changes only. What the old setting now buys is a vacuum of workflow_runs every
-- few seconds, nearly each of them a pass over all its indexes — whose size is the whole run
-- history (~0.5 KB of index per run) — at full speed:
--
--   agently-bench --only soak --soak 5m --pg-set log_autovacuum_min_duration=0
--   (the server log's "system usage" of each automatic vacuum, summed for workflow_runs)
--   0006's setting:  76 vacuums, all but a few with an index pass, 34.0 s CPU for 1.27 M
--                    runs: 26.8 us of vacuum per run, every 3-6 s, growing with the table
--   the defaults:    19 vacuums, 6.5 s CPU for 0.75 M runs: 8.6 us per run, at 20 % growth
--
-- A finished run's old row version is a dead tuple with an entry in each index (the finish
-- changes status, which workflow_runs_user_status_idx holds, so it is never a HOT update).
-- Pruning on access reclaims the heap space; the index entries wait for the next vacuum, and
-- reads skip them (a scan marks those it meets dead, and a page split deletes them). The
-- default cadence is the one every large, mostly appended Postgres table lives with, and
-- its cost delay spreads a pass over a big index out instead of taking a core for seconds.
-- fillfactor = 80 stays: it leaves room on each page for the HOT updates of a run's row
-- that do not change its status (checkpoints, event counters, totals).
ALTER TABLE workflow_runs RESET (autovacuum_vacuum_scale_factor,
                                 autovacuum_vacuum_threshold,
                                 autovacuum_vacuum_cost_delay);
