-- 0023_time_scale.sql — a run-level time scale, for dry runs of long flows.
--
-- A run started with time_scale 86400 waits one second for every day its workflow says:
-- every sleep, wait_event, subworkflow and workflow timeout, retry back-off, approval
-- deadline and escalation step is divided by it. The scale is recorded here, with the run,
-- once; the planner (src/engine/time_scale.c) applies it wherever a due time is computed,
-- and every due time is then database time as before (run_at, expires_at, timeout_at). The
-- approval functions of 0015 need no change: the deadlines they are given are already
-- scaled.
--
-- The range is the engine's (WF_TIME_SCALE_MIN/MAX, checked with a clear message by the
-- API before it inserts); the CHECK is the backstop for any other writer.

ALTER TABLE workflow_runs ADD COLUMN time_scale double precision NOT NULL DEFAULT 1
    CONSTRAINT workflow_runs_time_scale_range CHECK (time_scale >= 0.001 AND time_scale <= 1000000);

COMMENT ON COLUMN workflow_runs.time_scale IS
    'Divisor of every duration the run waits (1 = real time); a child run or a rerun keeps its origin''s.';

GRANT INSERT (time_scale) ON workflow_runs TO agently_api;

-- A child run (subworkflow) is part of its parent's rehearsal, and a rerun repeats its
-- origin: both take the scale of the run they come from, whoever inserts them (the worker's
-- start_child, the API's rerun), so no writer has to remember it.
CREATE FUNCTION agently_run_inherit_time_scale() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.parent_run_id IS NOT NULL THEN
        SELECT p.time_scale INTO NEW.time_scale FROM workflow_runs p
         WHERE p.id = NEW.parent_run_id;
    ELSIF NEW.rerun_of IS NOT NULL THEN
        SELECT o.time_scale INTO NEW.time_scale FROM workflow_runs o WHERE o.id = NEW.rerun_of;
    END IF;
    NEW.time_scale := coalesce(NEW.time_scale, 1);
    RETURN NEW;
END
$$;

CREATE TRIGGER workflow_runs_inherit_time_scale
    BEFORE INSERT ON workflow_runs
    FOR EACH ROW WHEN (NEW.parent_run_id IS NOT NULL OR NEW.rerun_of IS NOT NULL)
    EXECUTE FUNCTION agently_run_inherit_time_scale();
