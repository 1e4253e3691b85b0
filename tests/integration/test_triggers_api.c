/*
 * Schedules and webhook triggers through a real `agently api`: a schedule's cron and zone
 * are checked and its next fire time shown (09:00 in Paris is 09:00 in Paris), paused,
 * listed and deleted; a webhook trigger's secret is shown once, a delivery signed with it
 * starts the workflow with the payload as input, the same webhook-id again starts nothing,
 * and a wrong signature, a stale timestamp or an unknown trigger start nothing either.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth_token.h"
#include "notify.h"
#include "testlib.h"
#include "worker_fixture.h"

#define S(x) (json_string_value(x) ? json_string_value(x) : "(missing)")

/* Keeps a test_db_value() result until the program ends, so an assertion can read it and
 * LeakSanitizer sees it freed. */
static char *kept_values[256];
static size_t kept_n;
static char *kept(char *v)
{
        if (kept_n < sizeof(kept_values) / sizeof(kept_values[0]))
                kept_values[kept_n++] = v;
        return v;
}
static void kept_free(void)
{
        for (size_t i = 0; i < kept_n; i++)
                free(kept_values[i]);
}

static struct {
        struct worker_fixture *f;
        pid_t api;
        char base[64], token[AUTH_TOKEN_LEN + 1], auth[AUTH_TOKEN_LEN + 40];
} T;

static long call(const char *method, const char *path, const char *body, json_t **out)
{
        char url[256];
        char *resp = NULL;
        const char *headers[] = {T.auth, "Content-Type: application/json", NULL};
        long st;

        snprintf(url, sizeof(url), "%s%s", T.base, path);
        st = test_http(method, url, headers, body, &resp);
        if (out)
                *out = resp ? json_loads(resp, 0, NULL) : NULL;
        free(resp);
        return st;
}

static long deliver(const char *trigger, const char *secret, const char *id, int64_t ts,
                    const char *body, json_t **out)
{
        char url[256], hid[128], hts[64], hsig[160];
        char *sig = notify_webhook_sign(secret, id, ts, body, strlen(body));
        const char *headers[] = {hid, hts, hsig, "Content-Type: application/json", NULL};
        char *resp = NULL;
        long st;

        assert_non_null(sig);
        snprintf(url, sizeof(url), "%s/v1/hooks/%s", T.base, trigger);
        snprintf(hid, sizeof(hid), "webhook-id: %s", id);
        snprintf(hts, sizeof(hts), "webhook-timestamp: %lld", (long long)ts);
        snprintf(hsig, sizeof(hsig), "webhook-signature: %s", sig);
        st = test_http("POST", url, headers, body, &resp);
        if (out)
                *out = resp ? json_loads(resp, 0, NULL) : NULL;
        free(resp);
        free(sig);
        return st;
}

static int setup(void **state)
{
        (void)state;
        T.f = worker_fixture_new("triggers_api");
        worker_test_token(T.f->db, T.f->user, T.token);
        snprintf(T.auth, sizeof(T.auth), "Authorization: Bearer %s", T.token);
        T.api = worker_test_spawn_api(T.f->conninfo, T.f->dir, T.base, sizeof(T.base));
        free(worker_fixture_workflow(T.f, "greet",
                                     "{\"name\":\"greet\",\"nodes\":[{\"id\":\"a\",\"type\":"
                                     "\"transform\",\"output\":{\"x\":1}}]}"));
        return 0;
}

static int teardown(void **state)
{
        (void)state;
        test_stop_process(T.api, SIGTERM, 10000);
        worker_fixture_free(T.f);
        return 0;
}

static void schedules_show_their_next_fire_time(void **state)
{
        (void)state;
        json_t *r = NULL;

        assert_int_equal(
            call("POST", "/v1/schedules", "{\"workflow\":\"greet\",\"cron\":\"0 9 * *\"}", &r),
            400);
        assert_non_null(
            strstr(S(json_object_get(json_object_get(r, "error"), "message")), "5 fields"));
        json_decref(r);
        assert_int_equal(call("POST", "/v1/schedules",
                              "{\"workflow\":\"greet\",\"cron\":\"0 9 * * *\",\"timezone\":"
                              "\"Europe/Pariss\"}",
                              &r),
                         400);
        assert_non_null(strstr(S(json_object_get(json_object_get(r, "error"), "message")),
                               "unknown time zone"));
        json_decref(r);
        assert_int_equal(
            call("POST", "/v1/schedules", "{\"workflow\":\"nope\",\"cron\":\"0 9 * * *\"}", NULL),
            404);
        assert_int_equal(call("POST", "/v1/schedules",
                              "{\"workflow\":\"greet\",\"cron\":\"0 9 * * MON-FRI\",\"timezone\":"
                              "\"Europe/Paris\",\"input\":{\"who\":\"team\"}}",
                              &r),
                         201);
        const char *next = S(json_object_get(r, "next_run_at"));
        char *id = strdup(S(json_object_get(r, "id")));
        /* 09:00 on a weekday in Paris, in the future */
        assert_string_equal(
            kept(test_db_value(T.f->db,
                               "SELECT to_char('%s'::timestamptz AT TIME ZONE "
                               "'Europe/Paris', 'HH24:MI ID')::text ~ '^09:00 [1-5]$' "
                               "AND '%s'::timestamptz > now()",
                               next, next)),
            "t");
        json_decref(r);
        char path[128];
        snprintf(path, sizeof(path), "/v1/schedules/%s", id);
        assert_int_equal(call("PATCH", path, "{\"enabled\":false}", &r), 200);
        assert_true(json_is_false(json_object_get(r, "enabled")));
        json_decref(r);
        assert_int_equal(call("PATCH", path, "{\"missed\":\"sometimes\"}", NULL), 400);
        assert_int_equal(call("GET", "/v1/schedules", NULL, &r), 200);
        assert_int_equal(json_array_size(json_object_get(r, "data")), 1);
        json_decref(r);
        assert_int_equal(call("DELETE", path, NULL, NULL), 200);
        assert_int_equal(call("GET", path, NULL, NULL), 404);
        assert_int_equal(call("GET", "/v1/schedules/not-a-uuid", NULL, NULL), 404);
        free(id);
}

static void webhook_triggers_start_runs_once_per_delivery(void **state)
{
        (void)state;
        json_t *r = NULL, *run = NULL;
        int64_t now = (int64_t)time(NULL);

        assert_int_equal(call("POST", "/v1/triggers", "{\"workflow\":\"greet\"}", &r), 201);
        char *id = strdup(S(json_object_get(r, "id")));
        char *secret = strdup(S(json_object_get(r, "secret")));
        assert_int_equal(strncmp(secret, "whsec_", 6), 0);
        json_decref(r);
        /* the secret is never shown again */
        char path[128];
        snprintf(path, sizeof(path), "/v1/triggers/%s", id);
        assert_int_equal(call("GET", path, NULL, &r), 200);
        assert_null(json_object_get(r, "secret"));
        json_decref(r);

        assert_int_equal(deliver(id, secret, "msg_1", now, "{\"name\":\"world\"}", &run), 202);
        assert_true(json_is_false(json_object_get(run, "duplicate")));
        const char *run_id = S(json_object_get(run, "run_id"));
        assert_string_equal(
            kept(test_db_value(T.f->db,
                               "SELECT input->>'name' || ' ' || (input->>'webhook_id') "
                               "FROM workflow_runs WHERE id = '%s'",
                               run_id)),
            "world msg_1");
        /* the sender's retry: the same run, nothing new */
        assert_int_equal(deliver(id, secret, "msg_1", now, "{\"name\":\"world\"}", &r), 202);
        assert_true(json_is_true(json_object_get(r, "duplicate")));
        assert_string_equal(S(json_object_get(r, "run_id")), run_id);
        json_decref(r);
        /* a payload that is not an object arrives under "payload" */
        assert_int_equal(deliver(id, secret, "msg_2", now, "[1,2]", &r), 202);
        assert_string_equal(kept(test_db_value(T.f->db,
                                               "SELECT input->'payload'::text FROM workflow_runs "
                                               "WHERE id = '%s'",
                                               S(json_object_get(r, "run_id")))),
                            "[1, 2]");
        json_decref(r);
        /* refused: another secret, a stale timestamp, an unknown trigger, no signature */
        assert_int_equal(
            deliver(id, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_3", now, "{}", NULL), 401);
        assert_int_equal(deliver(id, secret, "msg_4", now - 600, "{}", NULL), 401);
        assert_int_equal(
            deliver("01a22b6d-cd52-7ab7-97ff-9250a6371295", secret, "msg_5", now, "{}", NULL), 401);
        char url[256];
        snprintf(url, sizeof(url), "%s/v1/hooks/%s", T.base, id);
        assert_int_equal(test_http("POST", url, NULL, "{}", NULL), 400);
        assert_int_equal(test_db_int(T.f->db, "SELECT count(*) FROM workflow_runs"), 2);
        /* a deleted trigger's URL stops working */
        assert_int_equal(call("DELETE", path, NULL, NULL), 200);
        assert_int_equal(deliver(id, secret, "msg_6", now, "{}", NULL), 401);
        json_decref(run);
        free(id);
        free(secret);
}

int main(void)
{
        atexit(kept_free);
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(schedules_show_their_next_fire_time),
            cmocka_unit_test(webhook_triggers_start_runs_once_per_delivery),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
