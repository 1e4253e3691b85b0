/*
 * The notification outbox end to end: rows enqueued by agently_notify_enqueue and by a
 * workflow's subscriptions (a run that completes, a run that fails) are delivered by a real
 * `agently dispatch` to real receivers — a Standard Webhooks receiver that verifies the
 * signature with its own implementation, a Slack stand-in, and an SMTP server
 * (python3-aiosmtpd) — with retries and back-off on 5xx, a final failure on 4xx, and every
 * attempt recorded.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "notify_receiver.h"
#include "secrets.h"
#include "testlib.h"
#include "worker_fixture.h"

#define SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
/* a JSON string, or a text that says it is missing (cmocka would crash on NULL) */
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

/* Stores value as alice's vault secret `name` (sealed under the test's key file). */
static void put_secret(struct worker_fixture *f, const char *name, const char *value)
{
        struct secrets_sealed s = {0};
        char *id = test_db_value(f->db, "SELECT gen_random_uuid()");
        char sql[4096];

        struct secrets_kms kms;
        assert_int_equal(secrets_kms_init(&kms, f->dir), 0);
        assert_int_equal(
            secrets_seal(&kms, "local", 1, f->user, id, value, strlen(value), &s, NULL), 0);
        secrets_kms_release(&kms);
        char *ct = calloc(1, s.ciphertext_len * 2 + 1), nonce[64], wk[1024];
        for (size_t i = 0; i < s.ciphertext_len; i++)
                snprintf(ct + 2 * i, 3, "%02x", s.ciphertext[i]);
        for (size_t i = 0; i < sizeof(s.nonce); i++)
                snprintf(nonce + 2 * i, 3, "%02x", s.nonce[i]);
        for (size_t i = 0; i < s.wrapped_len && i < sizeof(wk) / 2; i++)
                snprintf(wk + 2 * i, 3, "%02x", s.wrapped_key[i]);
        snprintf(sql, sizeof(sql),
                 "INSERT INTO secrets (id, user_id, name, ciphertext, nonce, wrapped_key, "
                 "key_version) VALUES ('%s', '%s', '%s', '\\x%s', '\\x%s', '\\x%s', %d) "
                 "RETURNING 1",
                 id, f->user, name, ct, nonce, wk, s.key_version);
        free(test_db_value(f->db, "%s", sql));
        secrets_sealed_free(&s);
        free(ct);
        free(id);
}

static char *enqueue(struct worker_fixture *f, const char *channel, const char *message)
{
        return test_db_value(f->db,
                             "SELECT agently_notify_enqueue('%s', NULL, '%s'::jsonb, '%s'::jsonb, "
                             "NULL)",
                             f->user, channel, message);
}

/* Waits until no notification is pending or sending; fails after ms. */
static void wait_settled(struct worker_fixture *f, int ms)
{
        int64_t deadline = test_now_ms() + ms;

        while (test_db_int(f->db, "SELECT count(*) FROM notifications WHERE status IN "
                                  "('pending', 'sending')") > 0) {
                if (test_now_ms() > deadline) {
                        worker_fixture_dump_logs(f);
                        fail_msg("notifications still pending after %d ms", ms);
                }
                usleep(100 * 1000);
        }
}

static void test_channels(void **state)
{
        (void)state;
        struct worker_fixture *f = worker_fixture_new("notify");
        struct notify_receiver rcv;
        char key_file[600], log[700], channel[512];

        snprintf(key_file, sizeof(key_file), "%s/master.key", f->dir);
        setenv("AGENTLY_MASTER_KEY_FILE", key_file, 1);
        notify_receiver_start(&rcv, SECRET);
        put_secret(f, "hook-secret", SECRET);

        snprintf(channel, sizeof(channel),
                 "{\"kind\":\"webhook\",\"url\":\"%s/hook\",\"secret\":\"hook-secret\"}", rcv.url);
        char *hook = enqueue(f, channel,
                             "{\"event\":\"notify\",\"title\":\"Report missing\","
                             "\"text\":\"Please send it.\",\"links\":[{\"label\":\"Approve\","
                             "\"url\":\"/v1/approvals/x\"}]}");
        snprintf(channel, sizeof(channel),
                 "{\"kind\":\"webhook\",\"url\":\"%s/hook?fail=2\","
                 "\"secret\":\"hook-secret\"}",
                 rcv.url);
        char *flaky = enqueue(f, channel, "{\"event\":\"notify\",\"title\":\"flaky\"}");
        snprintf(channel, sizeof(channel), "{\"kind\":\"webhook\",\"url\":\"%s/nowhere\"}",
                 rcv.url);
        char *gone = enqueue(f, channel, "{\"event\":\"notify\",\"title\":\"gone\"}");
        snprintf(channel, sizeof(channel), "{\"kind\":\"slack\",\"url\":\"%s/slack\"}", rcv.url);
        char *slack = enqueue(f, channel,
                              "{\"event\":\"notify\",\"title\":\"Slack title\",\"text\":\"body\","
                              "\"links\":[{\"label\":\"Reject\",\"url\":\"/x/reject\"}]}");
        /* the shape approvals write (0015): a subject, links as {"approve", "reject"} */
        char *slack2 = enqueue(f, channel,
                               "{\"event\":\"approval.requested\",\"subject\":\"Approval "
                               "needed: pay\",\"title\":\"pay\",\"links\":{\"approve\":"
                               "\"/v1/approval-links/a\",\"reject\":\"/v1/approval-links/r\"}}");
        char *mail = enqueue(f,
                             "{\"kind\":\"email\",\"to\":[\"ops@example.test\","
                             "\"boss@example.test\"]}",
                             "{\"event\":\"notify\",\"title\":\"Rapport de police — manquant\","
                             "\"text\":\"Line one\\n.\\nLine three\"}");

        snprintf(log, sizeof(log), "%s/dispatch.log", f->dir);
        pid_t d = notify_spawn_dispatcher(f->conninfo, &rcv, "d1", NULL, log);
        wait_settled(f, 30000);

        json_t *st = notify_receiver_state(&rcv);
        /* signed webhook: verified by the receiver, delivered once, links made absolute */
        assert_int_equal(json_integer_value(json_object_get(st, "bad_signatures")), 0);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "hooks"), hook)),
                         1);
        json_t *body = json_object_get(json_object_get(st, "hook_bodies"), hook);
        assert_string_equal(S(json_object_get(body, "type")), "notify");
        const char *link = json_string_value(json_object_get(
            json_array_get(json_object_get(json_object_get(body, "data"), "links"), 0), "url"));
        assert_non_null(link);
        assert_string_equal(link, "https://agently.example.test/v1/approvals/x");
        /* 500 twice, then delivered on the third attempt with back-off between */
        assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "hooks"), flaky)),
                         1);
        assert_string_equal(kept(test_db_value(f->db,
                                               "SELECT status || ':' || attempts FROM "
                                               "notifications WHERE id = '%s'",
                                               flaky)),
                            "sent:3");
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM notification_attempts WHERE "
                                     "notification_id = '%s' AND outcome = 'failed' AND "
                                     "status_code = 500",
                                     flaky),
                         2);
        assert_int_ge(
            test_db_int(f->db,
                        "SELECT (extract(epoch FROM max(started_at) - min(started_at)) "
                        "* 1000)::bigint FROM notification_attempts WHERE notification_id = '%s'",
                        flaky),
            1500 + 3000 - 1000); /* 2 s and 4 s, each -25 % at worst */
        /* 404: final at once */
        assert_string_equal(kept(test_db_value(f->db,
                                               "SELECT status || ':' || attempts FROM "
                                               "notifications WHERE id = '%s'",
                                               gone)),
                            "failed:1");
        /* slack: text and blocks with buttons */
        assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "slack"), slack)),
                         1);
        body = json_object_get(json_object_get(st, "slack_bodies"), slack);
        assert_string_equal(S(json_object_get(body, "text")), "Slack title");
        json_t *actions = json_array_get(json_object_get(body, "blocks"), 1);
        assert_string_equal(S(json_object_get(actions, "type")), "actions");
        assert_string_equal(
            S(json_object_get(json_array_get(json_object_get(actions, "elements"), 0), "url")),
            "https://agently.example.test/x/reject");
        body = json_object_get(json_object_get(st, "slack_bodies"), slack2);
        assert_string_equal(S(json_object_get(body, "text")), "Approval needed: pay");
        actions = json_array_get(json_object_get(body, "blocks"), 1);
        /* both buttons, in whatever order the object's keys came */
        json_t *els = json_object_get(actions, "elements");
        char labels[160];
        snprintf(labels, sizeof(labels), "%s %s %s",
                 S(json_object_get(json_object_get(json_array_get(els, 0), "text"), "text")),
                 S(json_object_get(json_object_get(json_array_get(els, 1), "text"), "text")),
                 S(json_object_get(json_array_get(els, 1), "url")));
        if (strcmp(labels, "Approve Reject https://agently.example.test/v1/approval-links/r") != 0)
                assert_string_equal(
                    labels, "Reject Approve https://agently.example.test/v1/approval-links/a");
        free(slack2);
        /* e-mail through a real SMTP server: both recipients, the UTF-8 subject decoded, the
         * body's lone dot survived (dot-stuffing), the id in Message-ID */
        char msgid[128];
        snprintf(msgid, sizeof(msgid), "<%s@agently>", mail);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "mail"), msgid)),
                         1);
        json_t *m = json_object_get(json_object_get(st, "mail_messages"), msgid);
        assert_string_equal(S(json_object_get(m, "subject")), "Rapport de police — manquant");
        assert_int_equal(json_array_size(json_object_get(m, "to")), 2);
        assert_string_equal(S(json_object_get(m, "notification_id")), mail);
        assert_non_null(
            strstr(json_string_value(json_object_get(m, "body")), "Line one\r\n.\r\nLine three"));
        json_decref(st);

        test_stop_process(d, SIGTERM, 10000);
        notify_receiver_stop(&rcv);
        free(hook);
        free(flaky);
        free(gone);
        free(slack);
        free(mail);
        worker_fixture_free(f);
}

/* A workflow's subscriptions: the run's end enqueues in the status change's transaction. */
static void test_subscriptions(void **state)
{
        (void)state;
        struct worker_fixture *f = worker_fixture_new("notify_subs");
        struct notify_receiver rcv;
        char def[2048], log[700];

        notify_receiver_start(&rcv, NULL);
        snprintf(
            def, sizeof(def),
            "{\"name\":\"subs\",\"notifications\":[{\"on\":[\"completed\",\"failed\"],"
            "\"channel\":{\"kind\":\"webhook\",\"url\":\"%s/hook\"}},"
            "{\"on\":[\"failed\"],\"channel\":{\"kind\":\"email\",\"to\":\"ops@example.test\"}}],"
            "\"nodes\":[{\"id\":\"a\",\"type\":\"transform\",\"output\":{\"x\":1}},"
            "{\"id\":\"b\",\"type\":\"http\",\"after\":[\"a\"],\"when\":\"input.fail\","
            "\"request\":{\"method\":\"POST\",\"url\":\"%s/nowhere\"},"
            "\"retry\":{\"max_attempts\":1}}]}",
            rcv.url, rcv.url);
        char *wf = worker_fixture_workflow(f, "subs", def);
        char *ok = worker_test_run(f->db, wf, "{\"fail\":false}");
        char *bad = worker_test_run(f->db, wf, "{\"fail\":true}");
        worker_fixture_spawn(f, "w1", "10s", "2s", NULL);
        worker_fixture_wait_status(f, ok, "completed", 30000);
        worker_fixture_wait_status(f, bad, "failed", 30000);
        /* the rows exist as soon as the runs ended: one for ok, two for bad */
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM notifications WHERE workflow_run_id = "
                                     "'%s' AND event = 'run.completed'",
                                     ok),
                         1);
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM notifications WHERE workflow_run_id = "
                                     "'%s' AND event = 'run.failed'",
                                     bad),
                         2);
        snprintf(log, sizeof(log), "%s/dispatch.log", f->dir);
        pid_t d = notify_spawn_dispatcher(f->conninfo, &rcv, "d1", NULL, log);
        wait_settled(f, 30000);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM notifications WHERE status = "
                                            "'sent'"),
                         3);
        json_t *st = notify_receiver_state(&rcv);
        assert_int_equal(json_object_size(json_object_get(st, "hooks")), 2);
        assert_int_equal(json_object_size(json_object_get(st, "mail")), 1);
        char *failed_id = test_db_value(f->db,
                                        "SELECT id FROM notifications WHERE workflow_run_id = '%s' "
                                        "AND channel = 'webhook'",
                                        bad);
        json_t *data =
            json_object_get(json_object_get(json_object_get(st, "hook_bodies"), failed_id), "data");
        assert_string_equal(S(json_object_get(data, "run_id")), bad);
        assert_string_equal(S(json_object_get(data, "workflow")), "subs");
        assert_non_null(strstr(json_string_value(json_object_get(data, "run_url")), bad));
        assert_non_null(strstr(json_string_value(json_object_get(data, "text")), "failed"));
        /* and the run's events say so */
        assert_int_equal(worker_fixture_count_events(f, bad, "notification.sent"), 2);
        json_decref(st);
        free(failed_id);
        test_stop_process(d, SIGTERM, 10000);
        notify_receiver_stop(&rcv);
        free(wf);
        free(ok);
        free(bad);
        worker_fixture_free(f);
}

/* A notify node: the message rendered from the run, put in the outbox with the node's
 * completion, delivered by the dispatcher once. */
static void test_notify_node(void **state)
{
        (void)state;
        struct worker_fixture *f = worker_fixture_new("notify_node");
        struct notify_receiver rcv;
        char def[1024], log[700];

        notify_receiver_start(&rcv, NULL);
        snprintf(def, sizeof(def),
                 "{\"name\":\"nn\",\"nodes\":[{\"id\":\"tell\",\"type\":\"notify\","
                 "\"channel\":{\"kind\":\"webhook\",\"url\":\"%s/hook\"},"
                 "\"title\":\"Hello ${ input.name }\",\"text\":\"from a node\"},"
                 "{\"id\":\"after\",\"type\":\"transform\",\"after\":[\"tell\"],"
                 "\"output\":{\"id\":\"${ nodes.tell.output.notification_id }\"}}]}",
                 rcv.url);
        char *wf = worker_fixture_workflow(f, "nn", def);
        char *run = worker_test_run(f->db, wf, "{\"name\":\"world\"}");
        worker_fixture_spawn(f, "w1", "10s", "2s", NULL);
        worker_fixture_wait_status(f, run, "completed", 30000);
        char *id = test_db_value(f->db,
                                 "SELECT output->>'notification_id' FROM agently_node_latest "
                                 "WHERE workflow_run_id = '%s' AND node_id = 'tell'",
                                 run);
        assert_non_null(id);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM notifications"), 1);
        snprintf(log, sizeof(log), "%s/dispatch.log", f->dir);
        pid_t d = notify_spawn_dispatcher(f->conninfo, &rcv, "d1", NULL, log);
        wait_settled(f, 30000);
        json_t *st = notify_receiver_state(&rcv);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "hooks"), id)), 1);
        json_t *data =
            json_object_get(json_object_get(json_object_get(st, "hook_bodies"), id), "data");
        assert_string_equal(S(json_object_get(data, "title")), "Hello world");
        assert_string_equal(S(json_object_get(data, "node_id")), "tell");
        assert_string_equal(S(json_object_get(data, "run_id")), run);
        json_decref(st);
        test_stop_process(d, SIGTERM, 10000);
        notify_receiver_stop(&rcv);
        free(id);
        free(wf);
        free(run);
        worker_fixture_free(f);
}

/* One e-mail notification delivered by a dispatcher of its own, configured with env (after
 * the defaults), until its first attempt has ended; the dispatcher is then stopped and the
 * notification settled, so the next scenario's dispatcher never retries it. Its id. */
static char *mail_through(struct worker_fixture *f, const struct notify_receiver *rcv,
                          const char *name, const char *const *env)
{
        char log[700], message[256];

        snprintf(message, sizeof(message), "{\"event\":\"notify\",\"title\":\"%s\"}", name);
        char *id = kept(enqueue(f, "{\"kind\":\"email\",\"to\":\"ops@example.test\"}", message));
        snprintf(log, sizeof(log), "%s/dispatch-%s.log", f->dir, name);
        pid_t d = notify_spawn_dispatcher_env(f->conninfo, rcv, name, NULL, env, log);
        int64_t deadline = test_now_ms() + 30000;
        while (test_db_int(f->db,
                           "SELECT count(*) FROM notification_attempts WHERE notification_id = "
                           "'%s' AND outcome IN ('sent', 'failed')",
                           id) == 0) {
                if (test_now_ms() > deadline) {
                        worker_fixture_dump_logs(f);
                        fail_msg("no attempt of %s ended within 30 s (see %s)", name, log);
                }
                usleep(100 * 1000);
        }
        assert_exit_code(test_stop_process(d, SIGTERM, 10000), 0);
        free(test_db_value(f->db,
                           "UPDATE notifications SET status = 'failed' WHERE id = '%s' AND "
                           "status IN ('pending', 'sending') RETURNING 1",
                           id));
        return id;
}

/* The first attempt's outcome and error of notification id: "sent" or "failed: <error>". */
static const char *attempt_of(struct worker_fixture *f, const char *id)
{
        const char *v = kept(test_db_value(f->db,
                                           "SELECT outcome || coalesce(': ' || error, '') FROM "
                                           "notification_attempts WHERE notification_id = '%s' AND "
                                           "attempt = 1",
                                           id));

        printf("notification %s, attempt 1: %s\n", id, v ? v : "(none)");
        return v;
}

/* E-mail over STARTTLS with AUTH (LOGIN and PLAIN), the password from the vault: a CA the
 * test generates is trusted through AGENTLY_SMTP_CA_FILE; a wrong password, a server
 * without STARTTLS while TLS is required, and an untrusted certificate each end the attempt
 * with an error that says what to fix. The password appears in no log. */
static void test_smtp_starttls_and_auth(void **state)
{
        (void)state;
        struct worker_fixture *f = worker_fixture_new("notifytls");
        struct notify_receiver rcv;
        char key_file[600], tls_dir[600], ca[600], login_url[96], plain_url[96], bare_url[96];

        snprintf(key_file, sizeof(key_file), "%s/master.key", f->dir);
        setenv("AGENTLY_MASTER_KEY_FILE", key_file, 1);
        snprintf(tls_dir, sizeof(tls_dir), "%s/tls", f->dir);
        assert_int_equal(mkdir(tls_dir, 0700), 0);
        notify_receiver_start_tls(&rcv, tls_dir, "agently:correct horse battery");
        put_secret(f, "smtp-password", "correct horse battery");
        put_secret(f, "smtp-typo", "correct horse batteyr");
        snprintf(ca, sizeof(ca), "AGENTLY_SMTP_CA_FILE=%s", rcv.ca_file);
        snprintf(login_url, sizeof(login_url), "AGENTLY_SMTP_URL=smtp://127.0.0.1:%d",
                 rcv.login_port);
        snprintf(plain_url, sizeof(plain_url), "AGENTLY_SMTP_URL=smtp://127.0.0.1:%d",
                 rcv.plain_port);
        snprintf(bare_url, sizeof(bare_url), "AGENTLY_SMTP_URL=smtp://127.0.0.1:%d", rcv.smtp_port);

        /* STARTTLS required (the default; notify_spawn_dispatcher's is none), the test CA
         * trusted, AUTH LOGIN and AUTH PLAIN with the password from alice's vault */
        const char *login[] = {login_url,
                               "AGENTLY_SMTP_TLS=starttls",
                               ca,
                               "AGENTLY_SMTP_USER=agently",
                               "AGENTLY_SMTP_PASSWORD_SECRET=smtp-password",
                               NULL};
        char *by_login = mail_through(f, &rcv, "login", login);
        const char *plain[] = {plain_url,
                               ca,
                               "AGENTLY_SMTP_TLS=starttls",
                               "AGENTLY_SMTP_USER=agently",
                               "AGENTLY_SMTP_PASSWORD_SECRET=smtp-password",
                               NULL};
        char *by_plain = mail_through(f, &rcv, "plain", plain);
        assert_string_equal(attempt_of(f, by_login), "sent");
        assert_string_equal(attempt_of(f, by_plain), "sent");
        json_t *st = notify_receiver_state(&rcv);
        char msgid[128];
        snprintf(msgid, sizeof(msgid), "<%s@agently>", by_login);
        json_t *auth = json_object_get(json_object_get(st, "mail_auth"), msgid);
        assert_string_equal(S(json_object_get(auth, "mechanism")), "LOGIN");
        assert_string_equal(S(json_object_get(auth, "user")), "agently");
        assert_true(json_is_true(json_object_get(auth, "tls")));
        snprintf(msgid, sizeof(msgid), "<%s@agently>", by_plain);
        auth = json_object_get(json_object_get(st, "mail_auth"), msgid);
        assert_string_equal(S(json_object_get(auth, "mechanism")), "PLAIN");
        assert_true(json_is_true(json_object_get(auth, "tls")));
        assert_string_equal(
            S(json_object_get(json_object_get(json_object_get(st, "mail_messages"), msgid),
                              "subject")),
            "plain");
        json_decref(st);

        /* a wrong password: refused (SMTP 535, final), and the error says what to check */
        const char *typo[] = {login_url,
                              ca,
                              "AGENTLY_SMTP_TLS=starttls",
                              "AGENTLY_SMTP_USER=agently",
                              "AGENTLY_SMTP_PASSWORD_SECRET=smtp-typo",
                              NULL};
        char *refused = mail_through(f, &rcv, "typo", typo);
        const char *denied = attempt_of(f, refused);
        assert_non_null(
            strstr(denied, "failed: the SMTP server refused the login of user 'agently' (535"));
        assert_non_null(strstr(denied, "): check AGENTLY_SMTP_USER and the password (the secret "
                                       "named by AGENTLY_SMTP_PASSWORD_SECRET)"));
        assert_db_equal("failed", f->db, "SELECT status FROM notifications WHERE id = '%s'",
                        refused);
        st = notify_receiver_state(&rcv);
        assert_int_equal(json_integer_value(json_object_get(st, "auth_refused")), 1);
        json_decref(st);

        /* a missing secret is named, with the command that creates it */
        const char *missing[] = {login_url,
                                 ca,
                                 "AGENTLY_SMTP_TLS=starttls",
                                 "AGENTLY_SMTP_USER=agently",
                                 "AGENTLY_SMTP_PASSWORD_SECRET=smtp-nope",
                                 NULL};
        char *unnamed = mail_through(f, &rcv, "missing", missing);
        assert_string_equal(attempt_of(f, unnamed),
                            "failed: the SMTP password's secret 'smtp-nope' "
                            "(AGENTLY_SMTP_PASSWORD_SECRET) does not exist for this "
                            "notification's owner: create it with `agently secret set "
                            "smtp-nope`");

        /* TLS required, the server offers no STARTTLS: nothing is sent in clear text */
        const char *bare[] = {bare_url,
                              "AGENTLY_SMTP_TLS=starttls",
                              ca,
                              "AGENTLY_SMTP_USER=agently",
                              "AGENTLY_SMTP_PASSWORD_SECRET=smtp-password",
                              NULL};
        char *clear = mail_through(f, &rcv, "bare", bare);
        assert_string_equal(attempt_of(f, clear),
                            "failed: the SMTP server does not offer STARTTLS, and "
                            "AGENTLY_SMTP_TLS=starttls (the default) requires it: use a server "
                            "that does, an smtps:// URL, or AGENTLY_SMTP_TLS=none only for a "
                            "trusted local server");

        /* a certificate nobody said to trust */
        const char *untrusted[] = {login_url, "AGENTLY_SMTP_TLS=starttls",
                                   "AGENTLY_SMTP_USER=agently",
                                   "AGENTLY_SMTP_PASSWORD_SECRET=smtp-password", NULL};
        char *doubt = mail_through(f, &rcv, "untrusted", untrusted);
        const char *why = attempt_of(f, doubt);
        assert_non_null(strstr(why, "failed: the SMTP server's certificate is not trusted ("));
        assert_non_null(
            strstr(why, "): set AGENTLY_SMTP_CA_FILE to the CA certificate that signed it"));

        /* none of those three reached the mailbox, and no log holds the password */
        st = notify_receiver_state(&rcv);
        assert_int_equal(json_object_size(json_object_get(st, "mail_messages")), 2);
        json_decref(st);
        static const char *const names[] = {"login",   "plain", "typo",
                                            "missing", "bare",  "untrusted"};
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
                char path[700], *text = NULL;
                size_t len = 0;
                snprintf(path, sizeof(path), "%s/dispatch-%s.log", f->dir, names[i]);
                if (file_read_all(path, 1 << 22, &text, &len) == 0) {
                        assert_null(strstr(text, "correct horse"));
                        free(text);
                }
        }
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM notification_attempts WHERE error "
                                     "LIKE '%%correct horse%%'"),
                         0);
        notify_receiver_stop(&rcv);
        worker_fixture_free(f);
        unsetenv("AGENTLY_MASTER_KEY_FILE");
}

int main(void)
{
        atexit(kept_free);
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_channels),
            cmocka_unit_test(test_subscriptions),
            cmocka_unit_test(test_notify_node),
            cmocka_unit_test(test_smtp_starttls_and_auth),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
