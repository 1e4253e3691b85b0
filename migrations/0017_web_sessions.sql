-- 0017_web_sessions.sql — sign-in sessions of the dashboard.
--
-- A person signs in to the dashboard with an API token once; the API answers with a session
-- cookie (HttpOnly, SameSite=Lax) so that the token is never kept by the browser's scripts
-- and a link to a run (in a notification e-mail) opens signed in. A session is a row: the
-- sha256 of the cookie's secret (the secret itself is never stored, like a token's), the
-- token it was opened with, the CSRF token the dashboard echoes in a header on every request
-- that changes something, and an absolute expiry. It dies with its token (revoked, expired,
-- deleted), with its user (disabled, deleted), when it is revoked (sign-out, or by the user
-- from another session) and when it expires. src/api/api_session.c is the C side.

CREATE TABLE web_sessions (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_id     uuid NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    -- sha256 of the cookie value; unique across users because a request is authenticated
    -- by it before the user is known
    secret_hash  bytea NOT NULL UNIQUE CHECK (octet_length(secret_hash) = 32),
    -- sent back in X-CSRF-Token by the dashboard on every state-changing request; readable
    -- by the session's own user only (GET /v1/session), never by another site
    csrf_token   text NOT NULL CHECK (char_length(csrf_token) BETWEEN 32 AND 64),
    user_agent   text CHECK (char_length(user_agent) <= 300),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);
CREATE INDEX web_sessions_user_idx ON web_sessions (user_id, created_at DESC);
CREATE INDEX web_sessions_token_idx ON web_sessions (token_id);

COMMENT ON TABLE web_sessions IS
    'Dashboard sign-in sessions (cookie agently_session); only the hash of the cookie is stored.';

ALTER TABLE web_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE web_sessions FORCE ROW LEVEL SECURITY;

-- The API lists and revokes its user's own sessions; it opens and authenticates them through
-- the SECURITY DEFINER functions below (the user is not known yet when they run).
CREATE POLICY agently_api_tenant ON web_sessions FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
GRANT SELECT (id, user_id, token_id, user_agent, created_at, last_used_at, expires_at,
              revoked_at, csrf_token)
    ON web_sessions TO agently_api;
GRANT UPDATE (revoked_at) ON web_sessions TO agently_api;
GRANT DELETE ON web_sessions TO agently_api;

DO $$
BEGIN
    EXECUTE format('CREATE POLICY agently_owner_definer ON web_sessions FOR ALL TO %I '
                   'USING (true) WITH CHECK (true)', current_user);
END
$$;

-- Opens a session for the holder of a valid token. Zero rows when the token is unknown,
-- revoked or expired, or its user is disabled (the same rule as agently_authenticate).
CREATE FUNCTION agently_session_open(token_hash bytea, secret_hash bytea, csrf_token text,
                                     lifetime interval, user_agent text)
RETURNS TABLE (session_id uuid, user_id uuid, user_name text, is_admin boolean,
               expires_at timestamptz)
LANGUAGE sql
SECURITY DEFINER
AS $$
    WITH found AS (
        SELECT t.id AS token_id, u.id AS user_id, u.name AS user_name, u.is_admin,
               least(now() + agently_session_open.lifetime,
                     coalesce(t.expires_at, 'infinity')) AS expires_at
        FROM api_tokens t
        JOIN users u ON u.id = t.user_id
        WHERE t.token_hash = agently_session_open.token_hash
          AND t.revoked_at IS NULL
          AND (t.expires_at IS NULL OR t.expires_at > now())
          AND u.disabled_at IS NULL
    ), opened AS (
        INSERT INTO web_sessions (user_id, token_id, secret_hash, csrf_token, user_agent,
                                  expires_at)
        SELECT f.user_id, f.token_id, agently_session_open.secret_hash,
               agently_session_open.csrf_token, left(agently_session_open.user_agent, 300),
               f.expires_at
        FROM found f
        RETURNING id, web_sessions.user_id, web_sessions.expires_at
    )
    SELECT o.id, o.user_id, f.user_name, f.is_admin, o.expires_at
    FROM opened o JOIN found f ON f.user_id = o.user_id
$$;

-- Looks a session cookie up by its sha256. Zero rows when the session is unknown, revoked or
-- expired, or its token or user no longer valid. last_used_at is written at most once a
-- minute per session, never waited for.
CREATE FUNCTION agently_session_authenticate(secret_hash bytea)
RETURNS TABLE (user_id uuid, user_name text, is_admin boolean, session_id uuid,
               csrf_token text)
LANGUAGE sql
SECURITY DEFINER
AS $$
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
    SELECT f.user_id, f.user_name, f.is_admin, f.session_id, f.csrf_token FROM found f
$$;

REVOKE ALL ON FUNCTION agently_session_open(bytea, bytea, text, interval, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_session_authenticate(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_session_open(bytea, bytea, text, interval, text) TO agently_api;
GRANT EXECUTE ON FUNCTION agently_session_authenticate(bytea) TO agently_api;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agently_session_open(bytea, bytea, text, interval, text) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION agently_session_authenticate(bytea) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
