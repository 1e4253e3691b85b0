/*
 * Cron schedules and webhook triggers: what starts runs without a person. A schedule's next
 * fire time comes from notify_schedule_next (the dispatcher fires it with the same code); a
 * trigger's signing secret is sealed by the vault (the API must compute the Standard
 * Webhooks HMAC to verify a delivery, so a hash is not enough) and shown once, at creation.
 * A delivery to /v1/hooks/{id} is verified with notify_webhook_verify — the code that signs
 * the dispatcher's own webhooks — and starts the trigger's workflow with the delivery's
 * webhook-id as the run's idempotency key, so a sender's retry never starts a second run.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sodium.h>

#include "api_internal.h"
#include "api_triggers.h"
#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "notify.h"
#include "secrets.h"
#include "strutil.h"

/* A list answers with at most 1000 items, newest first (next_cursor is always null). */
#define SCHEDULE_JSON                                                                              \
        "json_build_object('id', s.id, 'workflow', s.workflow_name, 'cron', s.cron, "              \
        "'timezone', s.timezone, 'input', s.input, 'enabled', s.enabled, 'missed', s.missed, "     \
        "'description', s.description, 'next_run_at', s.next_run_at, 'last_run_at', "              \
        "s.last_run_at, 'last_run_id', s.last_run_id, 'last_error', s.last_error, "                \
        "'created_at', s.created_at)"

#define TRIGGER_JSON                                                                               \
        "json_build_object('id', t.id, 'workflow', t.workflow_name, 'kind', t.kind, "              \
        "'enabled', t.enabled, 'description', t.description, 'url', '/v1/hooks/' || t.id, "        \
        "'last_fired_at', t.last_fired_at, 'last_run_id', t.last_run_id, 'created_at', "           \
        "t.created_at)"

/* The row sql ($1: the route's id) answers for the id, a 404 naming what when the id is not
 * a UUID or there is no row. */
static unsigned one(struct api_request *req, struct api_response *resp, const char *sql,
                    const char *what)
{
        const char *id = req->params[0];
        const char *params[] = {id};

        if (!api_is_uuid(id))
                return api_not_found(resp, what, id);
        return api_respond_query(req, resp, 200, sql, 1, params, what, id);
}

static unsigned list(struct api_request *req, struct api_response *resp, const char *sql)
{
        json_t *items = NULL;
        int r = api_query_json(req, sql, 0, NULL, &items);

        if (r < 0)
                return api_db_error(resp, r);
        return api_json(
            resp, 200, json_pack("{s:o,s:n}", "data", items ? items : json_array(), "next_cursor"));
}

/* ---- schedules ---------------------------------------------------------------------- */

/* Checks cron and zone and computes the next fire time (new string in *next); 0 or a 400. */
static unsigned next_fire(struct api_request *req, struct api_response *resp, const char *cron,
                          const char *zone, char **next)
{
        char err[256] = "";
        int r = notify_schedule_next(req->db, cron, zone, NULL, next, err, sizeof(err));

        if (r == -EINVAL || r == -ERANGE)
                return api_error(resp, 400, "invalid_field", err,
                                 r == -EINVAL ? "cron: 5 fields (minute hour day-of-month month "
                                                "day-of-week) or 6 (seconds first); timezone: an "
                                                "IANA name"
                                              : NULL,
                                 "see docs/triggers.md");
        if (r < 0)
                return api_db_error(resp, r);
        return 0;
}

static unsigned check_missed(struct api_response *resp, const char *missed)
{
        if (missed && strcmp(missed, "skip") && strcmp(missed, "catch_up_one"))
                return api_errorf(resp, 400, "invalid_field", "invalid missed",
                                  "use skip or catch_up_one", "missed '%s'", missed);
        return 0;
}

unsigned api_schedules_create(struct api_request *req, struct api_response *resp)
{
        static const char *const keys[] = {"workflow", "cron",    "timezone",    "input",
                                           "missed",   "enabled", "description", NULL};
        _cleanup_free_ char *next = NULL, *input = NULL;
        unsigned st;
        json_t *b;

        if (!api_begin_body(req, resp, NULL, keys, false, &b))
                return resp->status;
        const char *workflow = json_string_value(json_object_get(b, "workflow"));
        const char *cron = json_string_value(json_object_get(b, "cron"));
        const char *zone = json_string_value(json_object_get(b, "timezone"));
        const char *missed = json_string_value(json_object_get(b, "missed"));
        const char *description = json_string_value(json_object_get(b, "description"));
        json_t *in = json_object_get(b, "input"), *enabled = json_object_get(b, "enabled");
        if (!workflow || !cron)
                return api_error(resp, 400, "invalid_field", "workflow and cron are required", NULL,
                                 "send {\"workflow\": NAME, \"cron\": \"0 9 * * MON-FRI\"}");
        if (in && !json_is_object(in))
                return api_error(resp, 400, "invalid_field", "input must be a JSON object",
                                 "field 'input'", NULL);
        if (enabled && !json_is_boolean(enabled))
                return api_error(resp, 400, "invalid_field", "enabled must be true or false",
                                 "field 'enabled'", NULL);
        if ((st = check_missed(resp, missed)))
                return st;
        if (!zone)
                zone = "UTC";
        if ((st = next_fire(req, resp, cron, zone, &next)))
                return st;
        const char *wp[] = {workflow};
        json_t *exists = NULL;
        int r = api_query_json(req, "SELECT to_json(true) FROM workflows WHERE name = $1 LIMIT 1",
                               1, wp, &exists);
        json_decref(exists);
        if (r < 0)
                return api_db_error(resp, r);
        if (r == 0)
                return api_errorf(resp, 404, "not_found", "workflow not found",
                                  "apply it first: `agently workflow apply FILE`", "workflow '%s'",
                                  workflow);
        input = json_dumps(in ? in : json_object(), JSON_COMPACT);
        if (!input)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        const char *p[] = {workflow,
                           cron,
                           zone,
                           input,
                           missed ? missed : "skip",
                           enabled && json_is_false(enabled) ? "f" : "t",
                           description,
                           next};
        json_t *out = NULL;
        r = api_query_json(req,
                           "WITH s AS (INSERT INTO schedules (user_id, workflow_name, cron, "
                           "timezone, input, missed, enabled, description, next_run_at) VALUES "
                           "(agently_current_user_id(), $1, $2, $3, $4::jsonb, $5, $6::boolean, "
                           "$7, $8::timestamptz) RETURNING *) SELECT " SCHEDULE_JSON " FROM s",
                           8, p, &out);
        if (r <= 0)
                return api_db_error(resp, r < 0 ? r : -EIO);
        return api_json(resp, 201, out);
}

unsigned api_schedules_list(struct api_request *req, struct api_response *resp)
{
        return list(req, resp,
                    "SELECT coalesce(json_agg(x.j ORDER BY x.created_at DESC), '[]'::json) FROM "
                    "(SELECT " SCHEDULE_JSON " AS j, s.created_at FROM schedules s ORDER BY "
                    "s.created_at DESC LIMIT 1000) x");
}

unsigned api_schedules_get(struct api_request *req, struct api_response *resp)
{
        return one(req, resp, "SELECT " SCHEDULE_JSON " FROM schedules s WHERE s.id = $1",
                   "schedule");
}

/* PATCH: enabled, cron, timezone, input, missed, description; a new cron or zone, and
 * enabling, compute the next fire time again (from now: ticks while disabled are not
 * made up). */
unsigned api_schedules_update(struct api_request *req, struct api_response *resp)
{
        static const char *const keys[] = {"cron",    "timezone",    "input", "missed",
                                           "enabled", "description", NULL};
        _cleanup_free_ char *next = NULL, *input = NULL;
        json_t *b, *cur = NULL;
        unsigned st;
        int r;

        /* the body first, then the id: the order this route has always answered in */
        if (!api_begin_body(req, resp, NULL, keys, false, &b))
                return resp->status;
        if (!api_is_uuid(req->params[0]))
                return api_not_found(resp, "schedule", req->params[0]);
        const char *idp[] = {req->params[0]};
        r = api_query_json(req,
                           "SELECT json_build_object('cron', cron, 'timezone', timezone) FROM "
                           "schedules WHERE id = $1 FOR UPDATE",
                           1, idp, &cur);
        if (r < 0)
                return api_db_error(resp, r);
        if (r == 0)
                return api_not_found(resp, "schedule", req->params[0]);
        _cleanup_json_ json_t *current = cur;
        const char *cron = json_string_value(json_object_get(b, "cron"));
        const char *zone = json_string_value(json_object_get(b, "timezone"));
        const char *missed = json_string_value(json_object_get(b, "missed"));
        json_t *in = json_object_get(b, "input"), *enabled = json_object_get(b, "enabled");
        if ((json_object_get(b, "cron") && !cron) || (json_object_get(b, "timezone") && !zone))
                return api_error(resp, 400, "invalid_field", "cron and timezone are strings", NULL,
                                 NULL);
        if (in && !json_is_object(in))
                return api_error(resp, 400, "invalid_field", "input must be a JSON object",
                                 "field 'input'", NULL);
        if (enabled && !json_is_boolean(enabled))
                return api_error(resp, 400, "invalid_field", "enabled must be true or false",
                                 "field 'enabled'", NULL);
        if ((st = check_missed(resp, missed)))
                return st;
        if ((st = next_fire(
                 req, resp, cron ? cron : json_string_value(json_object_get(current, "cron")),
                 zone ? zone : json_string_value(json_object_get(current, "timezone")), &next)))
                return st;
        if (in && !(input = json_dumps(in, JSON_COMPACT)))
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        /* the next fire time changes with the expression, the zone, or a (re-)enable */
        bool moved = cron || zone || (enabled && json_is_true(enabled));
        const char *p[] = {req->params[0],
                           cron,
                           zone,
                           input,
                           missed,
                           enabled ? (json_is_true(enabled) ? "t" : "f") : NULL,
                           json_string_value(json_object_get(b, "description")),
                           moved ? next : NULL};
        json_t *out = NULL;
        r = api_query_json(req,
                           "WITH s AS (UPDATE schedules SET cron = coalesce($2, cron), timezone = "
                           "coalesce($3, timezone), input = coalesce($4::jsonb, input), missed = "
                           "coalesce($5, missed), enabled = coalesce($6::boolean, enabled), "
                           "description = coalesce($7, description), next_run_at = "
                           "coalesce($8::timestamptz, next_run_at), last_error = CASE WHEN "
                           "$6::boolean THEN NULL ELSE last_error END WHERE id = $1 RETURNING *) "
                           "SELECT " SCHEDULE_JSON " FROM s",
                           8, p, &out);
        if (r < 0)
                return api_db_error(resp, r);
        if (r == 0 || !out)
                return api_not_found(resp, "schedule", req->params[0]);
        return api_json(resp, 200, out);
}

unsigned api_schedules_delete(struct api_request *req, struct api_response *resp)
{
        return one(
            req, resp,
            "WITH s AS (DELETE FROM schedules WHERE id = $1 RETURNING *) SELECT " SCHEDULE_JSON
            " FROM s",
            "schedule");
}

/* ---- webhook triggers ------------------------------------------------------------------ */

static char *hex(const unsigned char *b, size_t n)
{
        char *s = malloc(2 * n + 1);

        if (s)
                sodium_bin2hex(s, 2 * n + 1, b, n);
        return s;
}

unsigned api_triggers_create(struct api_request *req, struct api_response *resp)
{
        static const char *const keys[] = {"workflow", "description", NULL};
        struct secrets_sealed sealed = {0};
        unsigned char hash[32];
        json_t *b;
        int r;

        if (!api_begin_body(req, resp, NULL, keys, false, &b))
                return resp->status;
        const char *workflow = json_string_value(json_object_get(b, "workflow"));
        if (!workflow)
                return api_error(resp, 400, "invalid_field", "workflow is required",
                                 "field 'workflow'", "send {\"workflow\": NAME}");
        _cleanup_pgresult_ PGresult *idr =
            db_query(req->db, "SELECT gen_random_uuid()", 0, NULL, &r);
        if (!idr)
                return api_db_error(resp, r);
        _cleanup_free_ char *id = strdup(PQgetvalue(idr, 0, 0));
        _cleanup_free_ char *secret = notify_webhook_new_secret();
        if (!id || !secret)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        crypto_hash_sha256(hash, (const unsigned char *)secret, strlen(secret));
        struct secrets_kms kms;
        _cleanup_free_ char *why = NULL;
        /* sealed like a vault secret under the newest key version (the trigger id stands for
         * the secret id in the associated data) but not registered with the redaction choke
         * point: this answer must show it, once */
        _cleanup_pgresult_ PGresult *active = db_query(
            req->db, "SELECT version, provider FROM agently_secret_key_active()", 0, NULL, &r);
        int version;
        if (!active)
                return api_db_error(resp, r);
        if (PQntuples(active) != 1 || str_to_int(PQgetvalue(active, 0, 0), &version) < 0)
                return api_error(resp, 503, "no_key", "the vault has no live key version", NULL,
                                 "see agently secret rotate");
        r = secrets_kms_init(&kms, api_server_data_dir(req->server));
        if (r == 0) {
                r = secrets_seal(&kms, PQgetvalue(active, 0, 1), version, req->user_id, id, secret,
                                 strlen(secret), &sealed, &why);
                secrets_kms_release(&kms);
        }
        if (r < 0) {
                log_error("could not seal a trigger secret: %s", why ? why : strerror(-r));
                return api_error(resp, 500, "internal", "could not encrypt the trigger's secret",
                                 NULL, NULL);
        }
        _cleanup_free_ char *h = hex(hash, sizeof(hash));
        _cleanup_free_ char *n = hex(sealed.nonce, sizeof(sealed.nonce));
        _cleanup_free_ char *ct = hex(sealed.ciphertext, sealed.ciphertext_len);
        _cleanup_free_ char *wk = hex(sealed.wrapped_key, sealed.wrapped_len);
        _cleanup_free_ char *kv = str_printf("%d", sealed.key_version);
        secrets_sealed_free(&sealed);
        if (!h || !n || !ct || !wk || !kv)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        const char *p[] = {id, workflow, h,  n,
                           ct, wk,       kv, json_string_value(json_object_get(b, "description"))};
        json_t *out = NULL;
        r = api_query_json(
            req,
            "WITH t AS (INSERT INTO triggers (id, user_id, workflow_name, secret_hash, "
            "secret_nonce, secret_ciphertext, secret_wrapped_key, secret_key_version, "
            "description) VALUES ($1, agently_current_user_id(), $2, decode($3, 'hex'), "
            "decode($4, 'hex'), decode($5, 'hex'), decode($6, 'hex'), $7::integer, $8) "
            "RETURNING *) SELECT " TRIGGER_JSON " FROM t",
            8, p, &out);
        if (r <= 0)
                return api_db_error(resp, r < 0 ? r : -EIO);
        /* the secret is shown this once: only its sealed form is kept */
        json_object_set_new(out, "secret", json_string(secret));
        sodium_memzero(secret, strlen(secret));
        return api_json(resp, 201, out);
}

unsigned api_triggers_list(struct api_request *req, struct api_response *resp)
{
        return list(req, resp,
                    "SELECT coalesce(json_agg(x.j ORDER BY x.created_at DESC), '[]'::json) FROM "
                    "(SELECT " TRIGGER_JSON " AS j, t.created_at FROM triggers t ORDER BY "
                    "t.created_at DESC LIMIT 1000) x");
}

unsigned api_triggers_get(struct api_request *req, struct api_response *resp)
{
        return one(req, resp, "SELECT " TRIGGER_JSON " FROM triggers t WHERE t.id = $1", "trigger");
}

unsigned api_triggers_delete(struct api_request *req, struct api_response *resp)
{
        return one(req, resp,
                   "WITH t AS (DELETE FROM triggers WHERE id = $1 RETURNING *) SELECT " TRIGGER_JSON
                   " FROM t",
                   "trigger");
}

/* Opens the trigger's sealed secret from a row of agently_webhook_trigger (columns 2-6:
 * nonce, ciphertext, wrapped key in hex, key version, provider). */
static int open_secret(struct api_request *req, const char *trigger_id, const PGresult *row,
                       char **secret)
{
        unsigned char nonce[64], *ct = NULL, *wrapped = NULL;
        size_t nl, cl, wl, cap = (size_t)PQgetlength(row, 0, 3) / 2 + 1,
                           wcap = (size_t)PQgetlength(row, 0, 4) / 2 + 1;
        int version, r = -EBADMSG;
        struct secrets_kms kms;

        if (str_to_int(PQgetvalue(row, 0, 5), &version) < 0 || !(ct = malloc(cap)) ||
            !(wrapped = malloc(wcap))) {
                free(ct);
                return -ENOMEM;
        }
        if (sodium_hex2bin(nonce, sizeof(nonce), PQgetvalue(row, 0, 2), PQgetlength(row, 0, 2),
                           NULL, &nl, NULL) == 0 &&
            sodium_hex2bin(ct, cap, PQgetvalue(row, 0, 3), PQgetlength(row, 0, 3), NULL, &cl,
                           NULL) == 0 &&
            sodium_hex2bin(wrapped, wcap, PQgetvalue(row, 0, 4), PQgetlength(row, 0, 4), NULL, &wl,
                           NULL) == 0 &&
            (r = secrets_kms_init(&kms, api_server_data_dir(req->server))) == 0) {
                r = secrets_open(&kms, PQgetvalue(row, 0, 6), PQgetvalue(row, 0, 0), trigger_id,
                                 nonce, nl, ct, cl, wrapped, wl, version, secret, NULL, NULL);
                secrets_kms_release(&kms);
        }
        free(ct);
        free(wrapped);
        return r;
}

/* The run's input from a delivery's body: the payload itself when it is an object, else
 * {"payload": it}; and the delivery's id. */
static char *run_input(struct api_request *req, const char *delivery)
{
        _cleanup_json_ json_t *payload =
            json_loadb(req->body, req->body_len, JSON_DECODE_ANY, NULL);
        _cleanup_json_ json_t *in = NULL;

        if (!payload)
                payload = json_stringn(req->body, req->body_len);
        if (!payload)
                return NULL;
        in = json_is_object(payload) ? json_deep_copy(payload)
                                     : json_pack("{s:O}", "payload", payload);
        if (!in || json_object_set_new(in, "webhook_id", json_string(delivery)) < 0)
                return NULL;
        return json_dumps(in, JSON_COMPACT);
}

unsigned api_hooks_deliver(struct api_request *req, struct api_response *resp)
{
        const char *id = req->params[0];
        const char *delivery = api_header(req, "webhook-id");
        const char *ts = api_header(req, "webhook-timestamp");
        const char *sigs = api_header(req, "webhook-signature");
        char *secret = NULL;
        _cleanup_pgresult_ PGresult *row = NULL;
        _cleanup_free_ char *input = NULL, *key = NULL;
        PGconn *c;
        int r;
        unsigned st;

        /* one answer for an unknown trigger and a wrong signature: no probing for ids */
        if (!api_is_uuid(id))
                return api_error(resp, 401, "unauthorized",
                                 "the delivery is not signed by this "
                                 "trigger's secret",
                                 NULL, "sign it as docs/triggers.md says");
        if (!delivery || !ts || !sigs || strlen(delivery) > 200)
                return api_error(resp, 400, "invalid_header",
                                 "webhook-id (at most 200 characters), webhook-timestamp and "
                                 "webhook-signature are required",
                                 NULL,
                                 "sign deliveries as Standard Webhooks do (docs/triggers.md)");
        if (!(c = api_pool_acquire(req->server, &r)))
                return api_db_error(resp, r);
        req->db = c;
        if ((r = db_begin(c)) < 0) {
                st = api_db_error(resp, r);
                goto out;
        }
        const char *p[] = {id};
        row = db_query(c,
                       "SELECT user_id, workflow_name, encode(secret_nonce, 'hex'), "
                       "encode(secret_ciphertext, 'hex'), encode(secret_wrapped_key, 'hex'), "
                       "secret_key_version, secret_provider FROM agently_webhook_trigger($1)",
                       1, p, &r);
        if (!row) {
                st = api_db_error(resp, r);
                goto rollback;
        }
        if (PQntuples(row) == 0 || open_secret(req, id, row, &secret) < 0 ||
            (r = notify_webhook_verify(secret, delivery, ts, sigs, req->body, req->body_len,
                                       (int64_t)time(NULL), NOTIFY_WEBHOOK_TOLERANCE_S)) < 0) {
                st = api_error(resp, 401, "unauthorized",
                               r == -ETIME ? "webhook-timestamp is more than 5 minutes from now"
                                           : "the delivery is not signed by this trigger's secret",
                               NULL, "sign it as docs/triggers.md says");
                goto rollback;
        }
        if ((r = db_set_user(c, PQgetvalue(row, 0, 0))) < 0) {
                st = api_db_error(resp, r);
                goto rollback;
        }
        input = run_input(req, delivery);
        key = str_printf("trigger:%s:%s", id, delivery);
        if (!input || !key) {
                st = api_error(resp, 500, "internal", "out of memory", NULL, NULL);
                goto rollback;
        }
        const char *p2[] = {PQgetvalue(row, 0, 0), PQgetvalue(row, 0, 1), input, key, id};
        json_t *out = NULL;
        r = api_query_json(
            req,
            "WITH before AS (SELECT r.id FROM workflow_runs r WHERE r.idempotency_key = $4), "
            "run AS (SELECT agently_start_run($1, $2, $3::jsonb, $4) AS id), "
            "t AS (UPDATE triggers SET last_fired_at = now(), last_run_id = (SELECT id FROM run) "
            "WHERE id = $5::uuid RETURNING 1) "
            "SELECT json_build_object('run_id', (SELECT id FROM run), 'duplicate', "
            "EXISTS (SELECT 1 FROM before), 'fired', (SELECT count(*) FROM t))",
            5, p2, &out);
        if (r <= 0) {
                static const struct api_db_error_case cases[] = {
                    {"P0002", 404, "not_found", "the trigger's workflow does not exist",
                     "apply it (agently workflow apply FILE) or delete the trigger"},
                    {NULL, 0, NULL, NULL, NULL}};
                st = api_db_error_with(resp, r < 0 ? r : -EIO, cases);
                goto rollback;
        }
        json_object_del(out, "fired");
        if ((r = db_commit(c)) < 0) {
                json_decref(out);
                st = api_db_error(resp, r);
                goto out;
        }
        st = api_json(resp, 202, out);
        goto out;
rollback:
        db_rollback(c);
out:
        secrets_value_free(secret);
        req->db = NULL;
        api_pool_release(req->server, c, PQstatus(c) != CONNECTION_OK);
        return st;
}
