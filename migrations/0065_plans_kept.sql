-- 0065_plans_kept.sql — the statements every API request and every event write run are
-- planned once per session, not at every call.
--
-- Why: pg_stat_statements (track = all, track_planning = on) over a `--only latency` round
-- showed three statements planned at every call (docs/performance.md, "Issue 9: the turn's
-- writes without the parts it does not use; the enqueue's one read; where the start's tail
-- goes"):
--   * agently_authenticate's (0002) and agently_session_authenticate's (0017) bodies: a
--     LANGUAGE sql function that cannot be inlined (a set-returning function with a data-
--     modifying CTE) has its body parsed and planned at every call in Postgres 15 — 0.36 ms
--     of planning in every API request. As PL/pgSQL functions their one statement is
--     planned once per session and kept; the statement is the same, its result cast to the
--     declared types (RETURN QUERY wants them exactly);
--   * agently_logs_written's (0056) users' key check, `u.id = ANY (s.users)`: with the
--     default plan_cache_mode a custom plan, made for the one user of the statement, is
--     priced under the generic plan, made for an array of unknown length, so the function
--     planned it at every events statement (0.06 ms, ~52 K instructions of a run alone's
--     4.68 M). The function now keeps its generic plans (the same index probe of each user).
-- What each statement does is unchanged.

-- As 0002, in PL/pgSQL.
CREATE OR REPLACE FUNCTION agently_authenticate(token_hash bytea)
RETURNS TABLE (user_id uuid, user_name text, is_admin boolean, token_id uuid)
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH found AS (
        SELECT t.id AS token_id, u.id AS user_id, u.name AS user_name, u.is_admin
        FROM api_tokens t
        JOIN users u ON u.id = t.user_id
        WHERE t.token_hash = agently_authenticate.token_hash
          AND t.revoked_at IS NULL
          AND (t.expires_at IS NULL OR t.expires_at > now())
          AND u.disabled_at IS NULL
    ), touched AS (
        UPDATE api_tokens t
        SET last_used_at = now()
        WHERE t.id IN (SELECT l.id
                       FROM api_tokens l
                       JOIN found f ON f.token_id = l.id
                       WHERE l.last_used_at IS NULL
                          OR l.last_used_at < now() - interval '1 minute'
                       FOR UPDATE OF l SKIP LOCKED)
    )
    SELECT f.user_id::uuid, f.user_name::text, f.is_admin::boolean, f.token_id::uuid
    FROM found f;
END;
$$;

-- As 0017, in PL/pgSQL.
CREATE OR REPLACE FUNCTION agently_session_authenticate(secret_hash bytea)
RETURNS TABLE (user_id uuid, user_name text, is_admin boolean, session_id uuid,
               csrf_token text)
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH found AS (
        SELECT s.id AS session_id, s.csrf_token, u.id AS user_id, u.name AS user_name,
               u.is_admin
        FROM web_sessions s
        JOIN api_tokens t ON t.id = s.token_id
        JOIN users u ON u.id = s.user_id
        WHERE s.secret_hash = agently_session_authenticate.secret_hash
          AND s.revoked_at IS NULL
          AND s.expires_at > now()
          AND t.revoked_at IS NULL
          AND (t.expires_at IS NULL OR t.expires_at > now())
          AND u.disabled_at IS NULL
    ), touched AS (
        UPDATE web_sessions s
        SET last_used_at = now()
        WHERE s.id IN (SELECT l.id
                       FROM web_sessions l
                       JOIN found f ON f.session_id = l.id
                       WHERE l.last_used_at < now() - interval '1 minute'
                       FOR UPDATE OF l SKIP LOCKED)
    )
    SELECT f.user_id::uuid, f.user_name::text, f.is_admin::boolean, f.session_id::uuid, f.csrf_token::text
    FROM found f;
END;
$$;

ALTER FUNCTION agently_logs_written() SET plan_cache_mode = force_generic_plan;

DO $$
BEGIN
    -- CREATE OR REPLACE sets a function's settings anew: 0002's and 0017's again
    EXECUTE format('ALTER FUNCTION agently_authenticate(bytea) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION agently_session_authenticate(bytea) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
