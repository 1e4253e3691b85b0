-- 0043_journal_write_cheaper.sql — an LLM call's write (agently_agent_write), the logs
-- trigger and a run's enqueue do less work for the same checks, rows and counters.
--
-- Measured with callgrind on a single-user backend (docs/performance.md, "The journal
-- write, cheaper"): instructions per call's write 2,135,757 -> 1,782,802 (-16.5 %), per
-- enqueue INSERT 1,644,246 -> 1,585,645 (-3.6 %).
--
-- 1. The two domains with a bounded-repeat regular expression (0039) state the same rule
--    as a length and a negated character class. Postgres's regex engine runs a bounded
--    repeat ({0,62}, {64}) as a large automaton per value (~85 K instructions for a hash);
--    a class over the string costs ~12 K. For every text value:
--      VALUE ~ '^[0-9a-f]{64}$'
--        <=> char_length(VALUE) = 64 AND VALUE !~ '[^0-9a-f]'
--      VALUE ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'
--        <=> char_length(VALUE) BETWEEN 1 AND 63 AND VALUE !~ '^[^a-z0-9]|[^a-z0-9_.-]'
--    (without the n flag, ^ and $ anchor the whole string and a class matches a newline;
--    ranges are code points, case sensitive.) NULL passes as before, a refusal is 23514
--    with the same constraint names. tests/integration/test_column_domains.c
--    (the_rewritten_rules_refuse_what_the_regexes_refused) compares both with the old
--    expressions on values at and past each edge.
-- 2. agently_agent_write (as 0040: the same rows, seqs, totals and fence):
--    * the pass every write makes over the rows keeps what every write needs (the events'
--      count, the new journal rows' count, the run's usage) and counts the rows a second
--      pass is for (an answer, artifacts, a usage flush, usage on a row that is not a new
--      journal row: a gated call's answer); that pass runs only when there is one;
--    * the events are numbered by their place in one path over the rows
--      (`strict $[*] ? (exists(@.events)).events[*]` WITH ORDINALITY) instead of a window
--      over two nested jsonb_array_elements, and the new journal rows by their place
--      among the rows with a kind (`strict $[*] ? (exists(@.kind))`), after the agent
--      run's last seq read just before: no sort, no window, no CTE around the insert;
--    * so that the paths pick the rows the operators picked, a row that is not a JSON
--      object is refused (22023, as an array that is not one): before, such a row was
--      skipped, or failed later with another error; the worker never sends one.
--    tests/integration/test_agent_write.c checks the numbering over mixed rows and the
--    refusal.
-- 3. agently_logs_written (as 0041) counts its six counters in a second query, only when
--    the statement wrote an event of a counted kind (most write none); the first counts
--    those events only. tests/integration/test_logs_writes.c (counters_and_notifications,
--    with a statement of counted and other kinds).

ALTER DOMAIN agently_sha256_hex DROP CONSTRAINT agently_sha256_hex_check;
ALTER DOMAIN agently_sha256_hex ADD CONSTRAINT agently_sha256_hex_check
    CHECK (char_length(VALUE) = 64 AND VALUE !~ '[^0-9a-f]');
ALTER DOMAIN agently_definition_name DROP CONSTRAINT agently_definition_name_check;
ALTER DOMAIN agently_definition_name ADD CONSTRAINT agently_definition_name_check
    CHECK (char_length(VALUE) BETWEEN 1 AND 63 AND VALUE !~ '^[^a-z0-9]|[^a-z0-9_.-]');

-- As 0040, with the changes above.
CREATE OR REPLACE FUNCTION agently_agent_write(run_id uuid, epoch bigint, agent_run_id uuid,
                                               node_id text, attempt integer, rows jsonb)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    t           record;
    last_seq    bigint;
    run_user    uuid;
    run_created timestamptz;
    new_last    integer;
    added       integer := 0;
    x           jsonb;
    -- the usage of the rows that are not new journal rows (a gated call's answer), added
    -- to the agent run at once; 0 for none
    a_tokens_in  numeric := 0;
    a_tokens_out numeric := 0;
    a_cached_in  numeric := 0;
    a_cost       numeric := 0;
    a_llm_calls  bigint := 0;
    a_tool_calls bigint := 0;
    -- the rows that answer a journal row, or carry artifacts; a usage flush asked for
    answers      bigint := 0;
    artifacts    bigint := 0;
    flush        boolean := false;
BEGIN
    IF jsonb_typeof(rows) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'rows must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- each row an object, so that the paths below (exists(@.kind), exists(@.events)) pick
    -- the rows the operators (? 'kind', -> 'events') pick
    IF jsonb_path_exists(rows, 'strict $[*] ? (@.type() != "object")') THEN
        RAISE EXCEPTION 'rows must be JSON objects' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- what every write needs of the rows, in one pass; usage only grows (as 0013 counted
    -- it); rare: the rows the second pass is for (an answer, artifacts, a usage flush, or
    -- usage on a row that is not a new journal row), which most writes have none of
    SELECT coalesce(sum(jsonb_array_length(coalesce(w.r -> 'events', '[]'::jsonb))), 0)::integer
               AS nev,
           count(*) FILTER (WHERE w.r ? 'kind') AS new_rows,
           greatest(coalesce(sum((w.r ->> 'tokens_in')::bigint), 0), 0) AS tokens_in,
           greatest(coalesce(sum((w.r ->> 'tokens_out')::bigint), 0), 0) AS tokens_out,
           greatest(coalesce(sum((w.r ->> 'cost')::numeric), 0), 0) AS cost,
           count(*) FILTER (WHERE w.r ?| '{answer_seq, artifacts, usage_flush}'
                                  OR (NOT w.r ? 'kind'
                                      AND w.r ?| '{tokens_in, tokens_out, cached_in, cost,
                                                   llm_calls, tool_calls}')) AS rare
    INTO t FROM jsonb_array_elements(rows) AS w(r);
    IF t.rare > 0 THEN
        SELECT count(*) FILTER (WHERE w.r ? 'answer_seq'),
               count(*) FILTER (WHERE jsonb_array_length(coalesce(w.r -> 'artifacts',
                                                                  '[]'::jsonb)) > 0),
               coalesce(bool_or(w.r -> 'usage_flush' = 'true'::jsonb), false),
               greatest(coalesce(sum((w.r ->> 'tokens_in')::bigint)
                                     FILTER (WHERE NOT w.r ? 'kind'), 0), 0),
               greatest(coalesce(sum((w.r ->> 'tokens_out')::bigint)
                                     FILTER (WHERE NOT w.r ? 'kind'), 0), 0),
               greatest(coalesce(sum((w.r ->> 'cached_in')::bigint)
                                     FILTER (WHERE NOT w.r ? 'kind'), 0), 0),
               greatest(coalesce(sum((w.r ->> 'cost')::numeric)
                                     FILTER (WHERE NOT w.r ? 'kind'), 0), 0),
               greatest(coalesce(sum((w.r ->> 'llm_calls')::integer)
                                     FILTER (WHERE NOT w.r ? 'kind'), 0), 0),
               greatest(coalesce(sum((w.r ->> 'tool_calls')::integer)
                                     FILTER (WHERE NOT w.r ? 'kind'), 0), 0)
        INTO answers, artifacts, flush, a_tokens_in, a_tokens_out, a_cached_in, a_cost,
             a_llm_calls, a_tool_calls
        FROM jsonb_array_elements(rows) AS w(r);
    END IF;

    -- the fence, the event seqs and the run's totals: one new version of the run row
    UPDATE workflow_runs r
    SET event_seq = r.event_seq + t.nev,
        cost_usd = r.cost_usd + CASE WHEN agently_agent_write.agent_run_id IS NULL THEN 0
                                     ELSE t.cost END,
        tokens_in = r.tokens_in + CASE WHEN agently_agent_write.agent_run_id IS NULL THEN 0
                                       ELSE t.tokens_in END,
        tokens_out = r.tokens_out + CASE WHEN agently_agent_write.agent_run_id IS NULL THEN 0
                                         ELSE t.tokens_out END
    WHERE r.id = agently_agent_write.run_id AND r.lease_epoch = agently_agent_write.epoch
      AND r.status = 'running'
    RETURNING r.event_seq, r.user_id, r.created_at INTO last_seq, run_user, run_created;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    IF answers > 0 THEN
        FOR x IN SELECT w.r FROM jsonb_array_elements(rows) AS w(r) WHERE w.r ? 'answer_seq' LOOP
            UPDATE agent_journal j SET response = x -> 'response'
            WHERE j.agent_run_id = agently_agent_write.agent_run_id
              AND j.seq = (x ->> 'answer_seq')::integer AND j.response IS NULL;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'journal row % of agent run % has an answer already',
                    x ->> 'answer_seq', agently_agent_write.agent_run_id
                    USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
        END LOOP;
    END IF;

    IF t.nev > 0 THEN
        INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind, node_id, attempt,
                          level, message, data)
        -- the events of all rows in order, numbered from 1 (every events above is an
        -- array: jsonb_array_length refused any other)
        SELECT run_created, agently_agent_write.run_id, last_seq - t.nev + e.n, run_user,
               e.ev ->> 'kind', agently_agent_write.node_id, agently_agent_write.attempt,
               coalesce(e.ev ->> 'level', 'info'), e.ev ->> 'message', e.ev -> 'data'
        FROM jsonb_path_query(rows, 'strict $[*] ? (exists(@.events)).events[*]')
                 WITH ORDINALITY AS e(ev, n);
    END IF;

    IF t.new_rows > 0 THEN
        -- each row with the usage it carries (NULL for none); only into an agent run of
        -- this run (the run's totals above took the usage); the new rows in order, numbered
        -- from 1, after the agent run's last (the fence holds the run row: no other writer)
        SELECT coalesce(max(j.seq), 0) INTO new_last FROM agent_journal j
        WHERE j.agent_run_id = agently_agent_write.agent_run_id;
        INSERT INTO agent_journal (user_id, agent_run_id, seq, kind, request, response,
                                   request_sha256, tokens_in, tokens_out, cached_tokens_in,
                                   cost_usd, llm_calls, tool_calls, stubs)
        SELECT a.user_id, a.id,
               new_last + w.n,
               w.r ->> 'kind', w.r -> 'request', nullif(w.r -> 'response', 'null'::jsonb),
               w.r ->> 'sha256',
               nullif(greatest((w.r ->> 'tokens_in')::bigint, 0), 0),
               nullif(greatest((w.r ->> 'tokens_out')::bigint, 0), 0),
               nullif(greatest((w.r ->> 'cached_in')::bigint, 0), 0),
               nullif(greatest((w.r ->> 'cost')::numeric, 0), 0),
               nullif(greatest((w.r ->> 'llm_calls')::integer, 0), 0),
               nullif(greatest((w.r ->> 'tool_calls')::integer, 0), 0),
               nullif(w.r -> 'stubs', 'null'::jsonb)
        FROM agent_runs a,
             jsonb_path_query(rows, 'strict $[*] ? (exists(@.kind))')
                 WITH ORDINALITY AS w(r, n)
        WHERE a.id = agently_agent_write.agent_run_id
          AND a.workflow_run_id = agently_agent_write.run_id;
        GET DIAGNOSTICS added = ROW_COUNT;
        new_last := new_last + added;
        IF added < t.new_rows AND agently_agent_write.agent_run_id IS NOT NULL THEN
            RAISE EXCEPTION 'agent run % is not an agent run of run %',
                agently_agent_write.agent_run_id, agently_agent_write.run_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        IF flush AND added > 0 THEN
            UPDATE agent_runs a SET usage_seq = new_last
            WHERE a.id = agently_agent_write.agent_run_id AND a.usage_seq < new_last;
        END IF;
    END IF;

    IF a_tokens_in + a_tokens_out + a_cached_in + a_llm_calls + a_tool_calls > 0
       OR a_cost > 0 THEN
        -- the agent run's totals, and the user's counters (agently_llm_usage_add)
        UPDATE agent_runs a
        SET tokens_in = a.tokens_in + a_tokens_in, tokens_out = a.tokens_out + a_tokens_out,
            cached_tokens_in = a.cached_tokens_in + a_cached_in,
            cost_usd = a.cost_usd + a_cost, llm_calls = a.llm_calls + a_llm_calls,
            tool_calls = a.tool_calls + a_tool_calls
        WHERE a.id = agently_agent_write.agent_run_id
          AND a.workflow_run_id = agently_agent_write.run_id;
        IF NOT FOUND AND agently_agent_write.agent_run_id IS NOT NULL THEN
            -- the run's totals above took it: never a usage the agent run does not have
            RAISE EXCEPTION 'agent run % is not an agent run of run %',
                agently_agent_write.agent_run_id, agently_agent_write.run_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        IF FOUND THEN
            PERFORM agently_llm_usage_add(run_user, a_tokens_in::bigint,
                                          a_tokens_out::bigint, a_cached_in::bigint,
                                          a_cost, a_llm_calls::bigint,
                                          a_tool_calls::bigint);
        END IF;
    END IF;

    IF artifacts > 0 THEN
        FOR x IN SELECT w.r -> 'artifacts' FROM jsonb_array_elements(rows) AS w(r)
                 WHERE jsonb_array_length(coalesce(w.r -> 'artifacts', '[]'::jsonb)) > 0 LOOP
            PERFORM agently_record_artifacts(agently_agent_write.run_id,
                                             agently_agent_write.node_id, x);
        END LOOP;
    END IF;
    RETURN CASE WHEN added > 0 THEN new_last ELSE 0 END;
END;
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_agent_write(uuid, bigint, uuid, text, integer, jsonb) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
ALTER FUNCTION agently_agent_write(uuid, bigint, uuid, text, integer, jsonb)
    SET plan_cache_mode = force_generic_plan;

-- As 0041, the six counters counted only when the statement wrote an event of a counted
-- kind (most statements write none: an LLM call's, a turn's node events).
CREATE OR REPLACE FUNCTION agently_logs_written()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    s      record;
    c      record;
    locked integer;
BEGIN
    -- counted: the events of a kind the counters count (each counter below, only then)
    SELECT count(*) FILTER (WHERE kind IN ('run.started', 'run.resumed', 'run.recovered',
                                           'node.retry_scheduled', 'run.completed',
                                           'run.failed', 'run.canceled')) AS counted,
           array_agg(DISTINCT user_id) AS users,
           array_agg(DISTINCT workflow_run_id) AS runs
    INTO s
    FROM new_events;
    IF s.users IS NULL THEN
        RETURN NULL; -- no rows
    END IF;
    -- the key's check: each user named, locked as the key locked it; one that does not
    -- exist (or was deleted before the lock was granted) has no row to lock
    PERFORM FROM users u WHERE u.id = ANY (s.users) FOR KEY SHARE OF u;
    GET DIAGNOSTICS locked = ROW_COUNT;
    IF locked < cardinality(s.users) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = format('%s of the users the events name do not exist',
                             cardinality(s.users) - locked),
            HINT = 'take an event''s user_id from its run row';
    END IF;
    -- 0018: one NOTIFY per watched run written (folded within the transaction, sent at
    -- commit; an update notifies as well: its readers re-read)
    PERFORM pg_notify('agently_events', w.run_id::text)
    FROM agently_watched_runs w
    WHERE w.run_id = ANY (s.runs) AND w.expires_at > now();
    IF TG_OP <> 'INSERT' OR s.counted = 0 THEN
        RETURN NULL;
    END IF;
    SELECT count(*) FILTER (WHERE kind IN ('run.started', 'run.resumed', 'run.recovered')) AS claims,
           count(*) FILTER (WHERE kind = 'run.recovered') AS rescues,
           count(*) FILTER (WHERE kind = 'node.retry_scheduled') AS retries,
           count(*) FILTER (WHERE kind = 'run.completed') AS completed,
           count(*) FILTER (WHERE kind = 'run.failed') AS failed,
           count(*) FILTER (WHERE kind = 'run.canceled') AS canceled
    INTO c FROM new_events;
    INSERT INTO agently_event_counters AS t (backend_pid, claims, rescues, retries, completed,
                                              failed, canceled)
    VALUES (pg_backend_pid(), c.claims, c.rescues, c.retries, c.completed, c.failed,
            c.canceled)
    ON CONFLICT (backend_pid) DO UPDATE
    SET claims     = t.claims + EXCLUDED.claims,
        rescues    = t.rescues + EXCLUDED.rescues,
        retries    = t.retries + EXCLUDED.retries,
        completed  = t.completed + EXCLUDED.completed,
        failed     = t.failed + EXCLUDED.failed,
        canceled   = t.canceled + EXCLUDED.canceled,
        updated_at = now();
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_logs_written() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
