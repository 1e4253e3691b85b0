-- 0025_artifact_rows.sql — one home for how a file an agent's tool kept becomes an
-- `artifacts` row of its run.
--
-- 0021 wrote the rows inside agently_agent_record_artifacts() (an ungated shell/run_code
-- call), and the gated call's answer (src/agent/agent_approval.c) wrote the same rows with
-- its own INSERT. Both now call agently_record_artifacts(), each in the statement that
-- journals the call, so a journaled call is never without its rows.

-- artifacts: [{"name", "size_bytes", "sha256", "storage_uri", "content_type"?}], NULL or []
-- for none. The caller has fenced the run already (its journal write returned a seq).
CREATE FUNCTION agently_record_artifacts(run_id uuid, node_id text, artifacts jsonb)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    written integer;
BEGIN
    INSERT INTO artifacts (user_id, workflow_run_id, node_id, name, content_type, size_bytes,
                           sha256, storage_uri)
    SELECT r.user_id, r.id, agently_record_artifacts.node_id, a.v ->> 'name',
           coalesce(a.v ->> 'content_type', 'application/octet-stream'),
           (a.v ->> 'size_bytes')::bigint, a.v ->> 'sha256', a.v ->> 'storage_uri'
    FROM workflow_runs r,
         jsonb_array_elements(coalesce(agently_record_artifacts.artifacts, '[]'::jsonb)) AS a(v)
    WHERE r.id = agently_record_artifacts.run_id;
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END;
$$;

-- 0021's function, now over the one home above (arguments and result unchanged).
CREATE OR REPLACE FUNCTION agently_agent_record_artifacts(run_id uuid, epoch bigint,
                                                          agent_run_id uuid, kind text,
                                                          request jsonb, response jsonb,
                                                          request_sha256 text, tokens_in bigint,
                                                          tokens_out bigint, cached_in bigint,
                                                          cost numeric, llm_calls integer,
                                                          tool_calls integer, node_id text,
                                                          attempt integer, events jsonb,
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
    PERFORM agently_record_artifacts(run_id, node_id, artifacts);
    RETURN new_seq;
END;
$$;

REVOKE ALL ON FUNCTION agently_record_artifacts(uuid, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_record_artifacts(uuid, text, jsonb) TO agently_worker;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_record_artifacts(uuid, text, jsonb) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
