-- 0021_agent_tool_artifacts.sql — an agent's shell/run_code call and the files it keeps,
-- in one transaction (src/agent/README.md, "Tools").
--
-- A tool call that keeps files (shell, run_code: "keep") is journaled like every call by
-- agently_agent_record() (0012), and each kept file — copied by the worker under its data
-- dir before the call is journaled — becomes an `artifacts` row of the run in the SAME
-- statement: fenced on the run's lease epoch like the journal row, so a stale worker writes
-- neither, and a call journaled is never without its rows (after a crash a completed call is
-- answered from the journal and not run again, so nothing would add them later).

-- agently_agent_record()'s arguments, then artifacts: [{"name", "size_bytes", "sha256",
-- "storage_uri", "content_type"?}]. Returns the journal seq, or NULL when the lease is lost
-- (nothing written).
CREATE FUNCTION agently_agent_record_artifacts(run_id uuid, epoch bigint, agent_run_id uuid,
                                               kind text, request jsonb, response jsonb,
                                               request_sha256 text, tokens_in bigint,
                                               tokens_out bigint, cached_in bigint, cost numeric,
                                               llm_calls integer, tool_calls integer,
                                               node_id text, attempt integer, events jsonb,
                                               artifacts jsonb)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    new_seq integer;
BEGIN
    new_seq := agently_agent_record(run_id, epoch, agent_run_id, kind, request, response,
                                    request_sha256, tokens_in, tokens_out, cached_in, cost,
                                    llm_calls, tool_calls, node_id, attempt, events);
    IF new_seq IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO artifacts (user_id, workflow_run_id, node_id, name, content_type, size_bytes,
                           sha256, storage_uri)
    SELECT r.user_id, r.id, agently_agent_record_artifacts.node_id, a.v ->> 'name',
           coalesce(a.v ->> 'content_type', 'application/octet-stream'),
           (a.v ->> 'size_bytes')::bigint, a.v ->> 'sha256', a.v ->> 'storage_uri'
    FROM workflow_runs r,
         jsonb_array_elements(coalesce(agently_agent_record_artifacts.artifacts, '[]'::jsonb))
             AS a(v)
    WHERE r.id = agently_agent_record_artifacts.run_id;
    RETURN new_seq;
END;
$$;

REVOKE ALL ON FUNCTION agently_agent_record_artifacts(uuid, bigint, uuid, text, jsonb, jsonb,
                                                      text, bigint, bigint, bigint, numeric,
                                                      integer, integer, text, integer, jsonb,
                                                      jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_agent_record_artifacts(uuid, bigint, uuid, text, jsonb, jsonb,
                                                         text, bigint, bigint, bigint, numeric,
                                                         integer, integer, text, integer, jsonb,
                                                         jsonb) TO agently_worker;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_agent_record_artifacts(uuid, bigint, uuid, text, '
                   'jsonb, jsonb, text, bigint, bigint, bigint, numeric, integer, integer, '
                   'text, integer, jsonb, jsonb) SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
END
$$;
