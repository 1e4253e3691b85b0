/*
 * The cron parser and next-time search (src/base/cron.c) on wall-clock time, the Standard
 * Webhooks signature (src/notify/notify_sign.c) against the specification's published test
 * vector, and the engine's check of notification channels and subscriptions.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cron.h"
#include "engine.h"
#include "notify.h"
#include "testlib.h"

/* "YYYY-MM-DD HH:MM:SS" as local-epoch seconds (calendar arithmetic, no zone). */
static int64_t at(const char *s)
{
        struct tm t = {0};

        assert_non_null(strptime(s, "%Y-%m-%d %H:%M:%S", &t));
        return (int64_t)timegm(&t);
}

static void expect_next(const char *expr, const char *after, const char *want)
{
        struct cron c;
        char err[256] = "";
        int64_t next = 0;
        char got[32];
        time_t t;
        struct tm tm;

        if (cron_parse(expr, &c, err, sizeof(err)) < 0)
                fail_msg("'%s' did not parse: %s", expr, err);
        assert_int_equal(cron_next(&c, at(after), &next), 0);
        t = (time_t)next;
        gmtime_r(&t, &tm);
        strftime(got, sizeof(got), "%Y-%m-%d %H:%M:%S", &tm);
        assert_string_equal(got, want);
}

static void cron_finds_the_next_time(void **state)
{
        (void)state;
        expect_next("* * * * *", "2026-03-08 01:59:30", "2026-03-08 02:00:00");
        expect_next("*/15 * * * *", "2026-03-08 01:59:30", "2026-03-08 02:00:00");
        expect_next("*/15 * * * *", "2026-03-08 02:00:00", "2026-03-08 02:15:00");
        expect_next("30 2 * * *", "2026-03-08 02:30:00", "2026-03-09 02:30:00");
        expect_next("0 9 * * MON-FRI", "2026-11-27 10:00:00", "2026-11-30 09:00:00"); /* Fri->Mon */
        expect_next("0 0 29 2 *", "2026-03-01 00:00:00", "2028-02-29 00:00:00");      /* leap */
        expect_next("0 0 1 jan *", "2026-06-01 00:00:00", "2027-01-01 00:00:00");
        expect_next("0 12 * * 7", "2026-11-30 00:00:00", "2026-12-06 12:00:00"); /* 7 = Sun */
        /* both day fields restricted: either matches (Vixie); 2026-12-01 is a Tuesday */
        expect_next("0 0 15 * 2", "2026-11-30 00:00:00", "2026-12-01 00:00:00");
        /* one restricted: it alone decides */
        expect_next("0 0 15 * *", "2026-11-30 00:00:00", "2026-12-15 00:00:00");
        expect_next("5-10/5 8,20 * * *", "2026-11-30 08:06:00", "2026-11-30 08:10:00");
        expect_next("10/20 * * * *", "2026-11-30 08:31:00", "2026-11-30 08:50:00");
        expect_next("@hourly", "2026-11-30 08:31:00", "2026-11-30 09:00:00");
        expect_next("@weekly", "2026-11-30 08:31:00", "2026-12-06 00:00:00");
        /* six fields: seconds first */
        expect_next("*/5 * * * * *", "2026-11-30 08:31:02", "2026-11-30 08:31:05");
        expect_next("0 0 0 1 1 *", "2026-11-30 08:31:02", "2027-01-01 00:00:00");
}

static void cron_refuses_what_it_cannot_mean(void **state)
{
        (void)state;
        static const char *const bad[] = {
            "",          "* * * *",      "* * * * * * *", "60 * * * *",  "* 24 * * *",
            "* * 0 * *", "* * * 13 *",   "* * * * 8",     "*/0 * * * *", "5-1 * * * *",
            "a * * * *", "1,,2 * * * *", "@often",        "* * * FOO *", "1- * * * *"};
        struct cron c;
        char err[256];

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                err[0] = '\0';
                if (cron_parse(bad[i], &c, err, sizeof(err)) != -EINVAL)
                        fail_msg("'%s' was accepted", bad[i]);
                assert_int_gt(strlen(err), 10);
        }
        assert_int_equal(cron_parse("0 0 30 2 *", &c, err, sizeof(err)), 0);
        int64_t next;
        assert_int_equal(cron_next(&c, at("2026-01-01 00:00:00"), &next), -ERANGE);
}

/* The test vector of the Standard Webhooks specification's reference libraries. */
static void webhook_signature_matches_the_specification(void **state)
{
        (void)state;
        const char *secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        const char *id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        const char *body = "{\"test\": 2432232314}";
        char *sig = notify_webhook_sign(secret, id, 1614265330, body, strlen(body));

        assert_non_null(sig);
        assert_string_equal(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_int_equal(notify_webhook_verify(secret, id, "1614265330", sig, body, strlen(body),
                                               1614265330 + 10, 300),
                         0);
        /* any one of several signatures; a changed body, id or a stale timestamp fails */
        char both[256];
        snprintf(both, sizeof(both), "v1,AAAA %s", sig);
        assert_int_equal(notify_webhook_verify(secret, id, "1614265330", both, body, strlen(body),
                                               1614265330, 300),
                         0);
        assert_int_equal(
            notify_webhook_verify(secret, id, "1614265330", sig, "{}", 2, 1614265330, 300),
            -EBADMSG);
        assert_int_equal(notify_webhook_verify(secret, "msg_other", "1614265330", sig, body,
                                               strlen(body), 1614265330, 300),
                         -EBADMSG);
        assert_int_equal(notify_webhook_verify(secret, id, "1614265330", sig, body, strlen(body),
                                               1614265330 + 301, 300),
                         -ETIME);
        assert_int_equal(
            notify_webhook_verify(secret, id, "soon", sig, body, strlen(body), 1614265330, 300),
            -EINVAL);
        free(sig);
        char *fresh = notify_webhook_new_secret();
        assert_non_null(fresh);
        assert_int_equal(strncmp(fresh, "whsec_", 6), 0);
        free(fresh);
}

static void channels_are_checked(void **state)
{
        (void)state;
        static const char *const good[] = {
            "{\"kind\":\"email\",\"to\":\"ops@example.com\"}",
            "{\"kind\":\"email\",\"to\":[\"a@example.com\",\"b@example.com\"]}",
            "{\"kind\":\"slack\",\"url\":\"https://hooks.slack.com/services/T/B/X\"}",
            "{\"kind\":\"webhook\",\"url\":\"http://127.0.0.1:9/hook\",\"secret\":\"hook\"}",
        };
        static const char *const bad[][2] = {
            {"{\"kind\":\"pager\"}", "/kind"},
            {"{\"kind\":\"email\"}", "/to"},
            {"{\"kind\":\"email\",\"to\":\"Ops <ops@example.com>\"}", "/to"},
            {"{\"kind\":\"email\",\"to\":[]}", "/to"},
            {"{\"kind\":\"slack\",\"url\":\"ftp://x\"}", "/url"},
            {"{\"kind\":\"webhook\",\"url\":\"https://x\",\"secret\":7}", "/secret"},
            {"{\"kind\":\"webhook\",\"url\":\"https://x\",\"token\":\"t\"}", ""},
        };
        char msg[256];
        const char *field;

        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
                json_t *c = json_loads(good[i], 0, NULL);
                assert_int_equal(wf_channel_check(c, msg, sizeof(msg), &field), 0);
                json_decref(c);
        }
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                json_t *c = json_loads(bad[i][0], 0, NULL);
                assert_int_equal(wf_channel_check(c, msg, sizeof(msg), &field), -EINVAL);
                assert_string_equal(field, bad[i][1]);
                json_decref(c);
        }
        /* a workflow's subscriptions go through the same checks, with their paths */
        json_t *errors = NULL;
        json_t *def = json_loads(
            "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"noop\"}],\"notifications\":["
            "{\"on\":[\"failed\"],\"channel\":{\"kind\":\"email\",\"to\":\"ops@example.com\"}},"
            "{\"on\":[\"finished\"],\"channel\":{\"kind\":\"email\",\"to\":\"x@example.com\"}},"
            "{\"on\":[\"completed\"],\"channel\":{\"kind\":\"slack\"}}]}",
            0, NULL);
        assert_int_equal(wf_validate(def, &errors), -EINVAL);
        assert_int_equal(json_array_size(errors), 2);
        assert_string_equal(json_string_value(json_object_get(json_array_get(errors, 0), "field")),
                            "/notifications/1/on");
        assert_string_equal(json_string_value(json_object_get(json_array_get(errors, 1), "field")),
                            "/notifications/2/channel/url");
        json_decref(errors);
        json_decref(def);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(cron_finds_the_next_time),
            cmocka_unit_test(cron_refuses_what_it_cannot_mean),
            cmocka_unit_test(webhook_signature_matches_the_specification),
            cmocka_unit_test(channels_are_checked),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
