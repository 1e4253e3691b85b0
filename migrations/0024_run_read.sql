-- 0024_run_read.sql — reading one large run fast (a 20,000-node map run, GET /v1/runs/{id}).
--
-- agently_node_latest (0009) is still the one definition of "the latest attempt of each
-- node"; only how Postgres can compute it changes:
--
--   * Its DISTINCT ON now runs in the order node_runs_run_node_attempt_key is walked
--     backwards (run, node, attempt all descending), so the latest attempt of every node of
--     a run streams out of that index with no sort. Before, the view's ORDER BY (node
--     ascending, attempt descending) matched no index: every read of a run's nodes — the
--     API's run view, every worker turn's state load — sorted all of the run's node_runs
--     rows, output and input included (3.4 MB for 20,000 items).
--   * first_started_at (when the node's first attempt started) is a subquery instead of a
--     window over the whole run: a reader that does not ask for it pays nothing, one that
--     does pays an index probe per node it reads.
--
-- The column list is the one 0009's n.* froze (CREATE OR REPLACE VIEW keeps columns).
CREATE OR REPLACE VIEW agently_node_latest WITH (security_invoker = true) AS
SELECT DISTINCT ON (n.workflow_run_id, n.node_id)
       n.id, n.user_id, n.workflow_run_id, n.node_id, n.attempt, n.status, n.input, n.output,
       n.error, n.worker, n.lease_epoch, n.idempotency_key, n.started_at, n.finished_at,
       (SELECT min(f.started_at) FROM node_runs f
        WHERE f.workflow_run_id = n.workflow_run_id AND f.node_id = n.node_id) AS first_started_at
FROM node_runs n
ORDER BY n.workflow_run_id DESC, n.node_id DESC, n.attempt DESC;

-- GET /v1/runs/{id} shows a run's first 1,000 nodes in order of first start: walked in this
-- index's order (a node's first attempt is the row no earlier attempt of it precedes), the
-- first 1,000 cost 1,000 rows, not the whole run and a sort.
CREATE INDEX node_runs_run_started_idx ON node_runs (workflow_run_id, started_at, node_id);

-- The nodes of a run that are not map items (GET /v1/runs/{id}/nodes?items=false: what a
-- viewer of a large map reads besides the run's `maps` aggregate) are few even when the
-- items are 100,000. Partial: an item row (`map[i]`, src/engine/plan.c) adds nothing to it,
-- so the worker's writes of items do not pay for it. Its columns and order are those
-- agently_node_latest walks; its predicate is the one that query states.
CREATE INDEX node_runs_run_node_not_item_idx ON node_runs (workflow_run_id, node_id, attempt)
    WHERE right(node_id, 1) <> ']';
