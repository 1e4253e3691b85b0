-- 0039_column_domains.sql — the single-column limits of the hot tables move from table
-- CHECK constraints into domains.
--
-- Why: Postgres reads back (stringToNode) and plans every CHECK constraint of a table in every
-- statement that inserts or updates one of its rows (ExecRelCheck builds the expressions once
-- per statement, for all of them, whatever the statement changes). A domain's CHECK comes from
-- the type cache, already planned, and an UPDATE coerces only the columns it assigns. The hot
-- tables carried 57 CHECKs, 50 of them on one column; 44 of those are domains now. Measured
-- with callgrind on a single-user backend (docs/performance.md, "Column limits as domains"),
-- the CHECKs were a fifth of the enqueue's INSERT into workflow_runs and half of an UPDATE of
-- the run row.
--
-- Every refusal stays exactly as strict: each domain states the predicate its table CHECKs
-- stated, a NULL passes a domain's CHECK as it passed the table's (NOT NULL stays on the
-- column). What changes is the error text: "value for domain agently_node_id violates check
-- constraint "agently_node_id_check"" instead of "new row for relation "workflow_runs"
-- violates check constraint "workflow_runs_parent_node_id_check"", with the same SQLSTATE
-- 23514 (check_violation). One domain per rule, shared where the rule is the same, so each
-- limit has one home.
--
-- Kept as table CHECKs (and why):
--   * node_runs.node_id and attempt: node_runs_run_node_not_item_idx holds both and has a
--     predicate, so ALTER COLUMN TYPE would build it again (Postgres reuses an index's storage
--     only when it has no predicate), over every node row of the install;
--   * logs.seq: it is in the primary key, and Postgres 15 builds a partitioned index's
--     partitions again on ALTER COLUMN TYPE: every month of logs;
--   * run_queue.lease_epoch and attempt, agent_runs.node_id: PL/pgSQL's RETURN QUERY wants
--     the declared result types exactly, not a domain over them, and agently_snapshots and
--     agently_claim_runs return the first two, agently_answer_run_input the third; moving
--     them would mean restating those functions here;
--   * the CHECKs over several columns (workflow_runs 4, node_runs 1, agent_runs 1, run_queue 1):
--     a domain sees one value.
--
-- How, without rewriting a table (logs and workflow_runs are the biggest of an install):
-- ALTER COLUMN TYPE to a domain over the same base type is binary coercible, so the table and
-- its plain indexes keep their files — but only while the domain has no constraint
-- (ATColumnChangeRequiresRewrite); so each domain is created bare, the columns change type
-- (their table CHECK dropped in the same statement, so it is not re-added and checked again),
-- and then the domain gets its CHECK (ALTER DOMAIN ADD CONSTRAINT reads each table that uses
-- it once to validate it; it writes nothing). test_column_domains checks that no table's file
-- changes. The partial indexes that name a column changing type are built again (each
-- reads its table once): run_queue's two (claimed_by; the table holds only live runs),
-- workflow_runs_timeout_idx and workflow_runs_parked_idx, agent_runs_waiting_idx and
-- agent_runs_running_idx (status; each holds only the rows in a live status).
--
-- Postgres refuses ALTER COLUMN TYPE on a column a view or a trigger's WHEN names. The two
-- views (agently_inbox: workflow_runs.status, workflow_name and wait_reason, logs.kind and
-- node_id; agently_node_latest: every column of node_runs) and eight triggers (the four
-- workflow_runs triggers whose WHEN reads status and the transition guard, which reads
-- lease_epoch as well; node_runs_child_ended: status and idempotency_key;
-- agent_runs_count_usage_insert and agent_runs_usage_flush: the usage columns and status)
-- are dropped and created again from their own definitions as the catalog prints them
-- (pg_get_viewdef, pg_get_triggerdef), with the views' options and grants, and the guard by
-- agently_run_transition_guard_create() (0034), so this file restates no body.
-- Their result columns take the domains as types; a domain over text is text to every
-- operator and function, and to the clients (the wire carries the base type's OID). One
-- difference a client can meet: a statement parameter assigned bare to such a column takes
-- the domain as its type, so the same parameter used elsewhere as text is refused
-- ("inconsistent types deduced"); agent_db_set_status (src/agent/agent_journal.c) casts it.

-- ---------------------------------------------------------------------------------------
-- The domains, bare for now (their CHECKs are added after the columns move)
-- ---------------------------------------------------------------------------------------

CREATE DOMAIN agently_json_object AS jsonb;            -- a JSON object
CREATE DOMAIN agently_count AS integer;                -- how many: 0 or more
CREATE DOMAIN agently_big_count AS bigint;             -- how many, 64-bit: 0 or more
CREATE DOMAIN agently_ordinal AS integer;              -- numbered from 1: a version, an attempt
CREATE DOMAIN agently_usd AS numeric(18, 6);           -- money, 0 or more
CREATE DOMAIN agently_priority AS integer;
CREATE DOMAIN agently_time_scale AS double precision;  -- a run's clock speed (0023)
CREATE DOMAIN agently_definition_name AS text;         -- a workflow's or agent's name
CREATE DOMAIN agently_node_id AS text;                 -- a node id: 1–200 characters
CREATE DOMAIN agently_short_text AS text;              -- a worker, a model: at most 200
CREATE DOMAIN agently_run_key AS text;                 -- a run's idempotency key: 1–255
CREATE DOMAIN agently_node_key AS text;                -- a node's idempotency key: at most 255
CREATE DOMAIN agently_wait_reason AS text;
CREATE DOMAIN agently_run_status AS text;
CREATE DOMAIN agently_node_status AS text;
CREATE DOMAIN agently_agent_status AS text;
CREATE DOMAIN agently_journal_kind AS text;
CREATE DOMAIN agently_sha256_hex AS text;
CREATE DOMAIN agently_event_kind AS text;
CREATE DOMAIN agently_log_level AS text;
CREATE DOMAIN agently_log_message AS text;
CREATE DOMAIN agently_blob_ref AS text;

-- ---------------------------------------------------------------------------------------
-- The views and triggers over changing columns: saved, dropped, created again below
-- ---------------------------------------------------------------------------------------

CREATE TEMPORARY TABLE agently_0039_recreate (ord serial, ddl text NOT NULL) ON COMMIT DROP;
INSERT INTO agently_0039_recreate (ddl)
SELECT format('CREATE VIEW %s WITH (%s) AS %s', c.oid::regclass,
              array_to_string(c.reloptions, ', '), pg_get_viewdef(c.oid))
FROM pg_class c
WHERE c.oid IN ('agently_inbox'::regclass, 'agently_node_latest'::regclass);
INSERT INTO agently_0039_recreate (ddl)
SELECT format('GRANT %s ON %s TO %s', a.privilege_type, c.oid::regclass,
              CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END)
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid IN ('agently_inbox'::regclass, 'agently_node_latest'::regclass)
  AND a.grantee <> c.relowner;
INSERT INTO agently_0039_recreate (ddl)
SELECT pg_get_triggerdef(t.oid)
FROM pg_trigger t
WHERE (t.tgrelid, t.tgname) IN (('workflow_runs'::regclass, 'workflow_runs_ended'),
                                ('workflow_runs'::regclass, 'workflow_runs_notify'),
                                ('workflow_runs'::regclass, 'workflow_runs_notify_update'),
                                ('workflow_runs'::regclass, 'workflow_runs_queue_follow'),
                                ('node_runs'::regclass, 'node_runs_child_ended'),
                                ('agent_runs'::regclass, 'agent_runs_count_usage_insert'),
                                ('agent_runs'::regclass, 'agent_runs_usage_flush'));

DROP VIEW agently_inbox;
DROP VIEW agently_node_latest;
DROP TRIGGER workflow_runs_transition_guard ON workflow_runs;
DROP TRIGGER workflow_runs_ended ON workflow_runs;
DROP TRIGGER workflow_runs_notify ON workflow_runs;
DROP TRIGGER workflow_runs_notify_update ON workflow_runs;
DROP TRIGGER workflow_runs_queue_follow ON workflow_runs;
DROP TRIGGER node_runs_child_ended ON node_runs;
DROP TRIGGER agent_runs_count_usage_insert ON agent_runs;
DROP TRIGGER agent_runs_usage_flush ON agent_runs;

-- ---------------------------------------------------------------------------------------
-- The columns
-- ---------------------------------------------------------------------------------------

ALTER TABLE workflow_runs
    DROP CONSTRAINT workflow_runs_workflow_name_check,
    DROP CONSTRAINT workflow_runs_workflow_version_check,
    DROP CONSTRAINT workflow_runs_status_check,
    DROP CONSTRAINT workflow_runs_priority_check,
    DROP CONSTRAINT workflow_runs_claimed_by_check,
    DROP CONSTRAINT workflow_runs_lease_epoch_check,
    DROP CONSTRAINT workflow_runs_attempt_check,
    DROP CONSTRAINT workflow_runs_idempotency_key_check,
    DROP CONSTRAINT workflow_runs_input_check,
    DROP CONSTRAINT workflow_runs_engine_state_check,
    DROP CONSTRAINT workflow_runs_event_seq_check,
    DROP CONSTRAINT workflow_runs_wait_reason_check,
    DROP CONSTRAINT workflow_runs_parent_node_id_check,
    DROP CONSTRAINT workflow_runs_rerun_from_node_check,
    DROP CONSTRAINT workflow_runs_budgets_check,
    DROP CONSTRAINT workflow_runs_cost_usd_check,
    DROP CONSTRAINT workflow_runs_tokens_in_check,
    DROP CONSTRAINT workflow_runs_tokens_out_check,
    DROP CONSTRAINT workflow_runs_agent_versions_check,
    DROP CONSTRAINT workflow_runs_time_scale_range,
    ALTER COLUMN workflow_name TYPE agently_definition_name,
    ALTER COLUMN workflow_version TYPE agently_ordinal,
    ALTER COLUMN status TYPE agently_run_status,
    ALTER COLUMN priority TYPE agently_priority,
    ALTER COLUMN claimed_by TYPE agently_short_text,
    ALTER COLUMN lease_epoch TYPE agently_big_count,
    ALTER COLUMN attempt TYPE agently_count,
    ALTER COLUMN idempotency_key TYPE agently_run_key,
    ALTER COLUMN input TYPE agently_json_object,
    ALTER COLUMN engine_state TYPE agently_json_object,
    ALTER COLUMN event_seq TYPE agently_big_count,
    ALTER COLUMN wait_reason TYPE agently_wait_reason,
    ALTER COLUMN parent_node_id TYPE agently_node_id,
    ALTER COLUMN rerun_from_node TYPE agently_node_id,
    ALTER COLUMN budgets TYPE agently_json_object,
    ALTER COLUMN cost_usd TYPE agently_usd,
    ALTER COLUMN tokens_in TYPE agently_big_count,
    ALTER COLUMN tokens_out TYPE agently_big_count,
    ALTER COLUMN agent_versions TYPE agently_json_object,
    ALTER COLUMN time_scale TYPE agently_time_scale;

ALTER TABLE run_queue
    DROP CONSTRAINT run_queue_claimed_by_check,
    ALTER COLUMN claimed_by TYPE agently_short_text;

ALTER TABLE node_runs
    DROP CONSTRAINT node_runs_status_check,
    DROP CONSTRAINT node_runs_worker_check,
    DROP CONSTRAINT node_runs_lease_epoch_check,
    DROP CONSTRAINT node_runs_idempotency_key_check,
    ALTER COLUMN status TYPE agently_node_status,
    ALTER COLUMN worker TYPE agently_short_text,
    ALTER COLUMN lease_epoch TYPE agently_big_count,
    ALTER COLUMN idempotency_key TYPE agently_node_key;

ALTER TABLE agent_runs
    DROP CONSTRAINT agent_runs_attempt_check,
    DROP CONSTRAINT agent_runs_status_check,
    DROP CONSTRAINT agent_runs_model_check,
    DROP CONSTRAINT agent_runs_tokens_in_check,
    DROP CONSTRAINT agent_runs_tokens_out_check,
    DROP CONSTRAINT agent_runs_cost_usd_check,
    DROP CONSTRAINT agent_runs_tool_calls_check,
    DROP CONSTRAINT agent_runs_budget_check,
    DROP CONSTRAINT agent_runs_llm_calls_check,
    DROP CONSTRAINT agent_runs_cached_tokens_in_check,
    ALTER COLUMN attempt TYPE agently_ordinal,
    ALTER COLUMN status TYPE agently_agent_status,
    ALTER COLUMN model TYPE agently_short_text,
    ALTER COLUMN tokens_in TYPE agently_big_count,
    ALTER COLUMN tokens_out TYPE agently_big_count,
    ALTER COLUMN cost_usd TYPE agently_usd,
    ALTER COLUMN tool_calls TYPE agently_count,
    ALTER COLUMN budget TYPE agently_json_object,
    ALTER COLUMN llm_calls TYPE agently_count,
    ALTER COLUMN cached_tokens_in TYPE agently_big_count;

ALTER TABLE agent_journal
    DROP CONSTRAINT agent_journal_seq_check,
    DROP CONSTRAINT agent_journal_kind_check,
    DROP CONSTRAINT agent_journal_request_sha256_check,
    ALTER COLUMN seq TYPE agently_ordinal,
    ALTER COLUMN kind TYPE agently_journal_kind,
    ALTER COLUMN request_sha256 TYPE agently_sha256_hex;

-- logs is partitioned: the change reaches every partition, and agently_ensure_log_partitions
-- (CREATE TABLE ... LIKE logs) gives the months to come the same column types.
ALTER TABLE logs
    DROP CONSTRAINT logs_kind_check,
    DROP CONSTRAINT logs_node_id_check,
    DROP CONSTRAINT logs_attempt_check,
    DROP CONSTRAINT logs_level_check,
    DROP CONSTRAINT logs_message_check,
    DROP CONSTRAINT logs_blob_ref_check,
    ALTER COLUMN kind TYPE agently_event_kind,
    ALTER COLUMN node_id TYPE agently_short_text,
    ALTER COLUMN attempt TYPE agently_count,
    ALTER COLUMN level TYPE agently_log_level,
    ALTER COLUMN message TYPE agently_log_message,
    ALTER COLUMN blob_ref TYPE agently_blob_ref;

-- ---------------------------------------------------------------------------------------
-- The limits, each the predicate of the table CHECKs it replaces (0001 and later)
-- ---------------------------------------------------------------------------------------

ALTER DOMAIN agently_json_object ADD CHECK (jsonb_typeof(VALUE) = 'object');
ALTER DOMAIN agently_count ADD CHECK (VALUE >= 0);
ALTER DOMAIN agently_big_count ADD CHECK (VALUE >= 0);
ALTER DOMAIN agently_ordinal ADD CHECK (VALUE >= 1);
ALTER DOMAIN agently_usd ADD CHECK (VALUE >= 0);
ALTER DOMAIN agently_priority ADD CHECK (VALUE BETWEEN -1000 AND 1000);
ALTER DOMAIN agently_time_scale ADD CHECK (VALUE >= 0.001 AND VALUE <= 1000000);
ALTER DOMAIN agently_definition_name ADD CHECK (VALUE ~ '^[a-z0-9][a-z0-9_.-]{0,62}$');
ALTER DOMAIN agently_node_id ADD CHECK (char_length(VALUE) BETWEEN 1 AND 200);
ALTER DOMAIN agently_short_text ADD CHECK (char_length(VALUE) <= 200);
ALTER DOMAIN agently_run_key ADD CHECK (char_length(VALUE) BETWEEN 1 AND 255);
ALTER DOMAIN agently_node_key ADD CHECK (char_length(VALUE) <= 255);
ALTER DOMAIN agently_wait_reason ADD CHECK (char_length(VALUE) <= 1000);
ALTER DOMAIN agently_run_status ADD CHECK (VALUE IN ('queued', 'running', 'waiting', 'needs_input',
                                                     'paused', 'completed', 'failed', 'canceled'));
ALTER DOMAIN agently_node_status ADD CHECK (VALUE IN ('started', 'completed', 'failed', 'skipped',
                                                      'interrupted', 'canceled', 'waiting'));
ALTER DOMAIN agently_agent_status ADD CHECK (VALUE IN ('running', 'completed', 'failed', 'canceled',
                                                       'waiting'));
ALTER DOMAIN agently_journal_kind ADD CHECK (VALUE IN ('llm', 'tool', 'spawn', 'ask_human',
                                                       'event', 'refusal', 'result'));
ALTER DOMAIN agently_sha256_hex ADD CHECK (VALUE ~ '^[0-9a-f]{64}$');
ALTER DOMAIN agently_event_kind ADD CHECK (char_length(VALUE) BETWEEN 1 AND 100);
ALTER DOMAIN agently_log_level ADD CHECK (VALUE IN ('debug', 'info', 'warn', 'error'));
ALTER DOMAIN agently_log_message ADD CHECK (char_length(VALUE) <= 65536);
ALTER DOMAIN agently_blob_ref ADD CHECK (char_length(VALUE) <= 2000);

-- ---------------------------------------------------------------------------------------
-- The views and triggers again, as they were
-- ---------------------------------------------------------------------------------------

DO $$
DECLARE
    statement text;
BEGIN
    FOR statement IN SELECT ddl FROM agently_0039_recreate ORDER BY ord LOOP
        EXECUTE statement;
    END LOOP;
END
$$;
DROP TABLE agently_0039_recreate;
-- The transition guard from the one home of its condition (0034).
SELECT agently_run_transition_guard_create();
