-- 0019: agent nodes that reference a stored agent (/v1/agents) by name, and the versions a
-- run uses, pinned when the run is created.
--
-- A workflow version records the references its agent nodes make (workflows.agent_refs,
-- computed by the engine's wf_agent_refs() when the API applies the definition: one parser
-- of the definition, never a second one here). Each run, however it is created (the API,
-- a rerun, a schedule or trigger, a subworkflow's child), gets in the same statement the
-- version each reference resolves to for its owner (workflow_runs.agent_versions): the
-- version the reference names, or the latest one at that moment. The worker reads the
-- definitions of exactly those versions into the planner's snapshot, so an agent applied
-- again later changes neither a run in flight nor its replay after a crash or a wait; a new
-- run (a rerun from a node included) takes the latest.

-- [{"node", "field", "name", "version": n | null, "prompt": bool}] (engine.h, wf_agent_refs)
ALTER TABLE workflows ADD COLUMN agent_refs jsonb NOT NULL DEFAULT '[]'
    CHECK (jsonb_typeof(agent_refs) = 'array');
COMMENT ON COLUMN workflows.agent_refs IS
    'The stored agents this version''s agent nodes reference, as the engine lists them (wf_agent_refs); what each run pins when it is created.';

-- {"researcher": 3, "writer@2": 2}: the key is the reference as the definition spells it
-- (wf_agent_ref_key: the name, or name@version), the value the version it resolved to. A
-- reference that resolved to nothing (the agent did not exist) is absent: the node fails
-- and says so when it is reached.
ALTER TABLE workflow_runs ADD COLUMN agent_versions jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(agent_versions) = 'object');
COMMENT ON COLUMN workflow_runs.agent_versions IS
    'The version of each stored agent the run uses, pinned at creation (agently_run_pin_agents).';

-- SECURITY DEFINER: the worker and the dispatcher create runs too and may not see every
-- user's agents through their own policies; the owner is the run's user, named explicitly.
CREATE FUNCTION agently_run_pin_agents()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    SELECT coalesce(jsonb_object_agg(ref->>'name' || coalesce('@' || (ref->>'version'), ''),
                                     a.version), '{}')
    INTO NEW.agent_versions
    FROM workflows w
    CROSS JOIN LATERAL jsonb_array_elements(w.agent_refs) ref
    CROSS JOIN LATERAL (SELECT ag.version FROM agents ag
                        WHERE ag.user_id = NEW.user_id AND ag.name = ref->>'name'
                          AND (jsonb_typeof(ref->'version') IS DISTINCT FROM 'number'
                               OR ag.version = (ref->>'version')::integer)
                        ORDER BY ag.version DESC LIMIT 1) a
    WHERE w.id = NEW.workflow_id AND w.user_id = NEW.user_id;
    RETURN NEW;
END;
$$;

CREATE TRIGGER workflow_runs_pin_agents
    BEFORE INSERT ON workflow_runs
    FOR EACH ROW
    EXECUTE FUNCTION agently_run_pin_agents();

REVOKE ALL ON FUNCTION agently_run_pin_agents() FROM PUBLIC;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_run_pin_agents() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
