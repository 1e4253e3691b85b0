-- 0014_secrets_vault.sql — secret names with environment-variable habits, and key versions
-- for the KMS providers and rotation (src/secrets/README.md).
--
-- Names: OPENAI_API_KEY and LLMKEY are valid now (upper case); every name valid before
-- stays valid. 1-63 characters of A-Z a-z 0-9 _ . -, the first a letter, digit or _.
-- The API checks the same rule first, to say what is wrong (src/api/api_routes.c).
--
-- Key versions: every wrapped data key names the key-encryption key that wraps it
-- (secrets.key_version). secret_key_versions says which provider made each version and
-- whether it is retired. New seals use the newest live version. `agently secret
-- rotate-key` adds a version, re-wraps every data key under it while the system runs, and
-- retires the old versions once no row uses them. Two rules keep a retired version from
-- coming back:
--   * a secret row can only be written with a live version (trigger secrets_key_live,
--     which also takes a KEY SHARE lock on the version row until the writer commits);
--   * retiring locks the version row FOR UPDATE first (so it waits for every writer that
--     still holds that lock) and then, in a new statement, checks that no row uses it.
-- A writer that sealed with a version retired meanwhile gets SQLSTATE 40001 (the API
-- answers 503 "retry"), never a row nobody can open.

ALTER TABLE secrets DROP CONSTRAINT secrets_name_check;
ALTER TABLE secrets ADD CONSTRAINT secrets_name_check
    CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$');

CREATE TABLE secret_key_versions (
    version    integer PRIMARY KEY CHECK (version >= 1),
    -- 'local': the key file (<data-dir>/master.key for version 1, master.key.<N> after);
    -- 'command': the external program of AGENTLY_KMS_COMMAND.
    provider   text NOT NULL CHECK (provider IN ('local', 'command')),
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz
);
-- Every secret stored so far was sealed under the local key file, version 1.
INSERT INTO secret_key_versions (version, provider) VALUES (1, 'local');

ALTER TABLE secrets ADD CONSTRAINT secrets_key_version_fkey
    FOREIGN KEY (key_version) REFERENCES secret_key_versions (version);
CREATE INDEX secrets_key_version_idx ON secrets (key_version);

-- The version a new seal uses: the newest one not retired.
CREATE FUNCTION agently_secret_key_active(OUT version integer, OUT provider text)
LANGUAGE sql STABLE SECURITY DEFINER
AS $$
    SELECT k.version, k.provider FROM secret_key_versions k
    WHERE k.retired_at IS NULL ORDER BY k.version DESC LIMIT 1
$$;

CREATE FUNCTION agently_secret_key_live() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    PERFORM 1 FROM secret_key_versions k
    WHERE k.version = NEW.key_version AND k.retired_at IS NULL
    FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'key version % was retired while the secret was sealed',
                        NEW.key_version
            USING ERRCODE = '40001', HINT = 'the key was rotated meanwhile: retry';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER secrets_key_live BEFORE INSERT OR UPDATE OF key_version ON secrets
    FOR EACH ROW EXECUTE FUNCTION agently_secret_key_live();

REVOKE ALL ON FUNCTION agently_secret_key_active() FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_secret_key_live() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_secret_key_active() TO agently_api, agently_worker;
GRANT SELECT ON secret_key_versions TO agently_api, agently_worker;

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_secret_key_active()', 'agently_secret_key_live()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
