-- 0007_time_ordered_ids.sql — time-ordered ids for the tables that grow with every run.
--
-- Random (version 4) UUIDs scatter a run's index entries over the whole of every index
-- keyed on its id: the workflow_runs primary key and (id, user_id), and the logs,
-- node_runs and signals indexes that lead with workflow_run_id. Every claim and every
-- checkpoint then touches leaf pages anywhere in indexes that grow without end, and once
-- they outgrow the cache each write reads pages back: throughput fell by a fifth over a
-- 10-minute soak (docs/performance.md). Version 7 UUIDs (RFC 9562) start with the
-- creation time in milliseconds, so the live runs' entries sit together at the right edge
-- of those indexes and stay in cache. 74 random bits per millisecond keep collisions out of
-- practical reach, and a run's creation time, which they reveal, is visible anyway.
--
-- Only the run-related tables change; users, tokens, workflows and secrets keep random
-- ids (few rows, and their creation time is nobody's business).

-- A version 7 UUID: 48 bits of Unix time in ms (clock_timestamp()), then random bits from
-- gen_random_uuid(), whose version nibble 0100 becomes 0111 (bits 52 and 53 set); the
-- variant bits (10) are already right.
CREATE FUNCTION agently_uuid_v7()
RETURNS uuid
LANGUAGE sql
VOLATILE
PARALLEL SAFE
AS $$
    SELECT encode(
               set_bit(set_bit(
                   overlay(uuid_send(gen_random_uuid())
                           PLACING substring(int8send((extract(epoch FROM clock_timestamp())
                                                       * 1000)::bigint) FROM 3)
                           FROM 1 FOR 6),
                   52, 1), 53, 1),
               'hex')::uuid
$$;

-- Callable by anyone (it reads nothing); the roles insert rows that use it as a default.
GRANT EXECUTE ON FUNCTION agently_uuid_v7() TO agently_api, agently_worker;

ALTER TABLE workflow_runs    ALTER COLUMN id SET DEFAULT agently_uuid_v7();
ALTER TABLE agent_runs       ALTER COLUMN id SET DEFAULT agently_uuid_v7();
ALTER TABLE signals          ALTER COLUMN id SET DEFAULT agently_uuid_v7();
ALTER TABLE approvals        ALTER COLUMN id SET DEFAULT agently_uuid_v7();
ALTER TABLE notifications    ALTER COLUMN id SET DEFAULT agently_uuid_v7();
ALTER TABLE artifacts        ALTER COLUMN id SET DEFAULT agently_uuid_v7();
ALTER TABLE browser_sessions ALTER COLUMN id SET DEFAULT agently_uuid_v7();
