/*
 * The one versioned apply of /v1/workflows and /v1/agents, and their reads (the list of
 * names, one version, a name's versions). A definition is named and
 * versioned: applying one that equals the latest version (its canonical text's sha256)
 * changes nothing (200, that version), any other becomes version max + 1 (201). A version
 * row is never changed once written, so a run that used it keeps meaning the same thing.
 * Concurrent applies of one name by one user are serialised by a transaction-scoped
 * advisory lock (two different definitions applied at once get versions n and n + 1; the
 * same one twice gets 201 then 200).
 */
#include "api_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "cleanup.h"
#include "db.h"
#include "engine.h"
#include "strutil.h"

unsigned api_apply_versioned(struct api_request *req, struct api_response *resp,
                             const struct api_versioned *t, const char *name, const json_t *def,
                             const json_t *derived)
{
        bool with_derived = t->derived_column && derived;
        _cleanup_free_ char *canonical = wf_canonical_json(def), *lock_sql = NULL, *same_sql = NULL,
                            *insert_sql = NULL, *derived_text = NULL;
        unsigned char digest[crypto_hash_sha256_BYTES];
        char sha[2 * crypto_hash_sha256_BYTES + 1];
        json_t *j = NULL;
        int r;

        lock_sql = str_printf("SELECT pg_advisory_xact_lock(hashtext('agently.%s:' || "
                              "agently_current_user_id() || ':' || $1))",
                              t->what);
        same_sql =
            str_printf("SELECT %s FROM %s %s WHERE %s.name = $1 AND "
                       "%s.definition_sha256 = $2 AND %s.version = (SELECT max(version) "
                       "FROM %s WHERE name = $1)",
                       t->row_json, t->table, t->alias, t->alias, t->alias, t->alias, t->table);
        insert_sql = str_printf("WITH %s AS (INSERT INTO %s (user_id, name, version, definition, "
                                "definition_sha256%s%s) SELECT agently_current_user_id(), $1, "
                                "COALESCE(max(version), 0) + 1, $3::jsonb, $2%s FROM %s "
                                "WHERE name = $1 RETURNING *) SELECT %s FROM %s",
                                t->alias, t->table, with_derived ? ", " : "",
                                with_derived ? t->derived_column : "",
                                with_derived ? ", $4::jsonb" : "", t->table, t->row_json, t->alias);
        if (with_derived)
                derived_text = json_dumps(derived, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!canonical || !lock_sql || !same_sql || !insert_sql || (with_derived && !derived_text))
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        crypto_hash_sha256(digest, (const unsigned char *)canonical, strlen(canonical));
        str_hex(digest, sizeof(digest), sha);

        const char *params[] = {name, sha, canonical, derived_text};
        _cleanup_pgresult_ PGresult *lock = db_query(req->db, lock_sql, 1, params, &r);
        if (!lock)
                return api_db_error(resp, r);
        r = api_query_json(req, same_sql, 2, params, &j);
        if (r < 0)
                return api_db_error(resp, r);
        if (j)
                return api_json(resp, 200, j);
        r = api_query_json(req, insert_sql, with_derived ? 4 : 3, params, &j);
        if (r < 0)
                return api_db_error(resp, r);
        return api_json(resp, 201, j);
}

unsigned api_definition_invalid(struct api_response *resp, const char *what, const char *hint,
                                json_t *errors)
{
        json_t *first = json_array_get(errors, 0);
        const char *node = json_string_value(json_object_get(first, "node"));
        const char *field = json_string_value(json_object_get(first, "field"));
        const char *msg = json_string_value(json_object_get(first, "message"));
        _cleanup_free_ char *message = str_printf("the %s definition is invalid", what);

        /* the engine's errors always carry a field ("" or a JSON pointer); an agent's never a
         * node (api_agents.c answers for the agent object alone) */
        api_errorf(resp, 422, "validation_failed", message ? message : "the definition is invalid",
                   hint, "%s%s%s%s: %s", node ? "node '" : "", node ? node : "", node ? "' " : "",
                   field ? field : "/", msg ? msg : "invalid");
        json_t *inner = json_object_get(resp->json, "error");
        if (node)
                json_object_set_new(inner, "node", json_string(node));
        if (field)
                json_object_set_new(inner, "field", json_string(field));
        json_object_set(inner, "errors", errors);
        return 422;
}

unsigned api_versioned_list(struct api_request *req, struct api_response *resp,
                            const struct api_versioned *t)
{
        _cleanup_free_ char *cursor = NULL, *limit_s = NULL, *sql = NULL;
        unsigned st;
        int limit;

        if ((st = api_page_begin_name(req, resp, &limit, &cursor)))
                return st;
        limit_s = str_printf("%d", limit + 1);
        sql = str_printf("SELECT %s, %s.name FROM (SELECT DISTINCT ON (name) * FROM %s WHERE "
                         "($1::text IS NULL OR name > $1) ORDER BY name, version DESC) %s ORDER "
                         "BY %s.name LIMIT $2::integer",
                         t->summary_json, t->alias, t->table, t->alias, t->alias);
        if (!limit_s || !sql)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        const char *params[] = {cursor, limit_s};
        return api_page_query(req, resp, sql, 2, params, limit);
}

unsigned api_versioned_get(struct api_request *req, struct api_response *resp,
                           const struct api_versioned *t)
{
        const char *name = req->params[0], *v = api_query(req, "version");
        _cleanup_free_ char *sql = NULL;
        int version;

        if (v && (str_to_int(v, &version) < 0 || version < 1))
                return api_errorf(resp, 400, "invalid_parameter", "invalid version", NULL,
                                  "version must be a positive integer, got '%s'", v);
        sql = str_printf("SELECT %s FROM %s %s WHERE %s.name = $1 AND ($2::integer IS NULL OR "
                         "%s.version = $2::integer) ORDER BY %s.version DESC LIMIT 1",
                         t->row_json, t->table, t->alias, t->alias, t->alias, t->alias);
        if (!sql)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        const char *params[] = {name, v};
        return api_respond_query(req, resp, 200, sql, 2, params, t->what, name);
}

unsigned api_versioned_versions(struct api_request *req, struct api_response *resp,
                                const struct api_versioned *t)
{
        _cleanup_free_ char *sql = str_printf(
            "SELECT json_build_object('data', json_agg(%s ORDER BY %s.version DESC)) FROM %s %s "
            "WHERE %s.name = $1 HAVING count(*) > 0",
            t->summary_json, t->alias, t->table, t->alias, t->alias);
        const char *params[] = {req->params[0]};
        json_t *j = NULL;
        int r;

        if (!sql)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        r = api_query_json(req, sql, 1, params, &j);
        if (r < 0)
                return api_db_error(resp, r);
        if (!j)
                return api_not_found(resp, t->what, req->params[0]);
        return api_json(resp, 200, j);
}
