/*
 * What a run produced besides its events, for the dashboard's run viewer and the CLI:
 *   GET /v1/runs/{id}/agents/{agent_id}/journal   one agent run's journal (every LLM call
 *       with its request and response, every tool call with its arguments and result, every
 *       spawned sub-agent), a page after a journal seq;
 *   GET /v1/runs/{id}/artifacts                   the run's artifacts (their metadata);
 *   GET /v1/runs/{id}/artifacts/{artifact_id}     one artifact's content, as a download.
 * Row-level security decides what the caller may read (the run's owner), as for every route.
 */
#include "api_internal.h"

#include <errno.h>
#include <limits.h>
#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "cleanup.h"
#include "db.h"
#include "fileio.h"
#include "redact.h"
#include "strutil.h"

#define JOURNAL_DEFAULT 50
#define JOURNAL_MAX     200
#define KEPT_FILE_MAX   (64 << 20) /* a kept file served through the API is read whole */

#define ARTIFACT_JSON                                                                              \
        "json_build_object('id', a.id, 'run_id', a.workflow_run_id, 'node_id', a.node_id, "        \
        "'name', a.name, 'content_type', a.content_type, 'size_bytes', a.size_bytes, 'sha256', "   \
        "a.sha256, 'stored', CASE WHEN a.inline_data IS NOT NULL THEN 'inline' ELSE 'external' "   \
        "END, 'created_at', a.created_at)"

/* ?after= (a journal seq, default 0) and ?limit=; 0 or a 400 status. */
static unsigned journal_page_args(struct api_request *req, struct api_response *resp, int *after,
                                  int *limit)
{
        const char *a = api_query(req, "after"), *l = api_query(req, "limit");

        *after = 0;
        *limit = JOURNAL_DEFAULT;
        if (a && (str_to_int(a, after) < 0 || *after < 0))
                return api_errorf(resp, 400, "invalid_parameter", "invalid after", NULL,
                                  "after must be a journal seq (an integer from 0), got '%s'", a);
        if (l && (str_to_int(l, limit) < 0 || *limit < 1 || *limit > JOURNAL_MAX))
                return api_errorf(resp, 400, "invalid_parameter", "invalid limit", NULL,
                                  "limit must be an integer from 1 to %d, got '%s'", JOURNAL_MAX,
                                  l);
        return 0;
}

unsigned api_h_agent_journal(struct api_request *req, struct api_response *resp)
{
        const char *run = req->params[0], *agent = req->params[1];
        _cleanup_free_ char *after_s = NULL, *limit_s = NULL;
        unsigned st;
        int after, limit, r;
        json_t *j = NULL;

        if ((st = api_run_status(req, resp, run, NULL)))
                return st;
        if (!api_is_uuid(agent))
                return api_not_found(resp, "agent run", agent);
        if ((st = journal_page_args(req, resp, &after, &limit)))
                return st;
        after_s = str_printf("%d", after);
        limit_s = str_printf("%d", limit);
        if (!after_s || !limit_s)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        const char *params[] = {run, agent, after_s, limit_s};
        r = api_query_json(
            req,
            "SELECT json_build_object('agent_run_id', a.id, 'data', COALESCE(json_agg("
            "json_build_object('seq', j.seq, 'kind', j.kind, 'request', j.request, 'response', "
            "j.response, 'created_at', j.created_at) ORDER BY j.seq) FILTER (WHERE j.seq IS NOT "
            "NULL), '[]'::json), 'next_after', COALESCE(max(j.seq), $3::integer), 'more', "
            "count(j.seq) = $4::integer) "
            "FROM agent_runs a LEFT JOIN LATERAL (SELECT * FROM agent_journal x WHERE "
            "x.agent_run_id = a.id AND x.seq > $3::integer ORDER BY x.seq LIMIT $4::integer) j "
            "ON true WHERE a.id = $2 AND a.workflow_run_id = $1 GROUP BY a.id",
            4, params, &j);
        if (r < 0)
                return api_db_error(resp, r);
        if (!j)
                return api_not_found(resp, "agent run", agent);
        return api_json(resp, 200, j);
}

unsigned api_h_artifacts_list(struct api_request *req, struct api_response *resp)
{
        const char *filters[] = {req->params[0]};
        unsigned st;

        if ((st = api_run_status(req, resp, filters[0], NULL)))
                return st;
        return api_time_page(req, resp,
                             "SELECT " ARTIFACT_JSON ", a.created_at::text || '|' || a.id "
                             "FROM artifacts a WHERE a.workflow_run_id = $1 AND "
                             "($2::timestamptz IS NULL OR (a.created_at, a.id) > "
                             "($2::timestamptz, $3::uuid)) "
                             "ORDER BY a.created_at, a.id LIMIT $4::integer",
                             1, filters);
}

/* A file name safe inside Content-Disposition's quoted string. */
static char *disposition(const char *name)
{
        _cleanup_free_ char *safe = strdup(name);

        if (!safe)
                return NULL;
        for (char *c = safe; *c; c++)
                if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20 || *c == 0x7f)
                        *c = '_';
        return str_printf("attachment; filename=\"%s\"", safe);
}

/*
 * A file an agent's tool kept (storage_uri file://<data dir>/artifacts/<run>/...) is served
 * when it lies in this run's directory under the data dir this API shares with the worker
 * (`agently up`, or an API and workers given the same --data-dir): 0 with its bytes (the
 * caller frees them), -ENOENT when it is not there (another host's, or moved), -EFBIG past
 * KEPT_FILE_MAX.
 */
static int kept_file(struct api_request *req, const char *run, const char *uri, char **bytes,
                     size_t *len)
{
        char root[PATH_MAX], real[PATH_MAX];
        _cleanup_free_ char *prefix = NULL;

        *bytes = NULL;
        if (!str_has_prefix(uri, "file://"))
                return -ENOENT;
        if (!realpath(api_server_data_dir(req->server), root) || !realpath(uri + 7, real))
                return -ENOENT;
        prefix = str_printf("%s/artifacts/%s/", root, run);
        if (!prefix)
                return -ENOMEM;
        if (!str_has_prefix(real, prefix))
                return -ENOENT;
        return file_read_all(real, KEPT_FILE_MAX, bytes, len);
}

/* Answers bytes (taken) as a download named name of content type type, through the
 * redaction choke point (src/base/redact.h) like every answer. */
static unsigned send_bytes(struct api_response *resp, unsigned char *bytes, size_t len,
                           const char *name, const char *type)
{
        _cleanup_free_ char *cd = NULL, *masked = NULL;
        size_t masked_len = 0;
        int r = redact_text((const char *)bytes, len, &masked, &masked_len);

        if (r < 0) {
                free(bytes);
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        }
        if (r == 1) {
                free(bytes);
                bytes = (unsigned char *)TAKE_PTR(masked);
                len = masked_len;
        }
        resp->raw = MHD_create_response_from_buffer(len, bytes, MHD_RESPMEM_MUST_FREE);
        if (!resp->raw) {
                free(bytes);
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        }
        cd = disposition(name);
        MHD_add_response_header(resp->raw, MHD_HTTP_HEADER_CONTENT_TYPE, type);
        if (cd)
                MHD_add_response_header(resp->raw, "Content-Disposition", cd);
        MHD_add_response_header(resp->raw, "X-Content-Type-Options", "nosniff");
        resp->status = 200;
        return 200;
}

unsigned api_h_artifact_get(struct api_request *req, struct api_response *resp)
{
        const char *run = req->params[0], *id = req->params[1];
        _cleanup_pgresult_ PGresult *res = NULL;
        unsigned char *bytes = NULL;
        char *file = NULL;
        size_t len = 0, hexlen;
        unsigned st;
        int r = 0;

        if ((st = api_run_status(req, resp, run, NULL)))
                return st;
        if (!api_is_uuid(id))
                return api_not_found(resp, "artifact", id);
        const char *params[] = {run, id};
        res = db_query(req->db,
                       "SELECT a.name, a.content_type, encode(a.inline_data, 'hex'), "
                       "a.storage_uri, a.workflow_run_id::text FROM artifacts a "
                       "WHERE a.workflow_run_id = $1 AND a.id = $2",
                       2, params, &r);
        if (!res)
                return api_db_error(resp, r);
        if (PQntuples(res) == 0)
                return api_not_found(resp, "artifact", id);
        const char *name = PQgetvalue(res, 0, 0), *type = PQgetvalue(res, 0, 1);
        const char *uri = PQgetvalue(res, 0, 3);
        if (PQgetisnull(res, 0, 2)) {
                r = kept_file(req, PQgetvalue(res, 0, 4), uri, &file, &len);
                if (r == -EFBIG)
                        return api_errorf(resp, 409, "too_large",
                                          "the artifact is too large to download through the API",
                                          "read it where the worker stored it",
                                          "at most %d MiB; it is stored at %s", KEPT_FILE_MAX >> 20,
                                          uri);
                if (r < 0)
                        return api_errorf(resp, 409, "not_here",
                                          "the artifact is not stored where this API can read it",
                                          "read it where the worker stored it",
                                          "it is stored at %s", uri);
                return send_bytes(resp, (unsigned char *)file, len, name, type);
        }
        hexlen = (size_t)PQgetlength(res, 0, 2);
        bytes = malloc(hexlen / 2 + 1);
        if (!bytes || sodium_hex2bin(bytes, hexlen / 2 + 1, PQgetvalue(res, 0, 2), hexlen, NULL,
                                     &len, NULL) != 0) {
                free(bytes);
                return api_error(resp, 500, "internal", "could not decode the artifact", NULL,
                                 NULL);
        }
        return send_bytes(resp, bytes, len, name, type);
}
