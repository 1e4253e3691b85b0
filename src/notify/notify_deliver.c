/*
 * The outbox dispatcher's delivery round: claim (agently_notify_claim: SKIP LOCKED, a
 * lease), deliver every claimed row at once over one libcurl multi handle (SMTP for e-mail,
 * HTTPS POST for Slack and webhooks), then end each attempt (agently_notify_finish). The
 * notification's id travels with every delivery (webhook-id, Message-ID,
 * X-Agently-Notification-Id), the same on every attempt, so a receiver that deduplicates
 * sees each notification once although delivery is at least once: a dispatcher killed
 * after sending but before recording leaves a lease that expires, and the row is sent
 * again.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <curl/curl.h>
#include <sodium.h>

#include "cleanup.h"
#include "db.h"
#include "notify.h"
#include "notify_internal.h"
#include "pgjson.h"
#include "secrets.h"
#include "strutil.h"

#define MAX_RESPONSE  (16 * 1024)
#define MAX_RECIPIENT 50

struct delivery {
        char id[64];
        int attempt;
        CURL *easy;
        struct curl_slist *headers, *recipients;
        char *body; /* request body / mail (owned) */
        size_t body_len, body_off;
        char response[MAX_RESPONSE];
        size_t response_len;
        long retry_after_s;
        char errbuf[CURL_ERROR_SIZE]; /* libcurl's detail of a failure ("" when none) */
        const char *smtp_user;        /* e-mail: who logged in (borrowed from the config) */
        const char *password_from;    /* e-mail: where the password came from, for errors */
        /* the outcome */
        bool done, ok, permanent;
        long status;
        char *error; /* owned */
};

static void delivery_fail(struct delivery *d, bool permanent, char *error)
{
        d->done = true;
        d->ok = false;
        d->permanent = permanent;
        free(d->error);
        d->error = error;
}

static void delivery_free(struct delivery *d)
{
        if (d->easy)
                curl_easy_cleanup(d->easy);
        curl_slist_free_all(d->headers);
        curl_slist_free_all(d->recipients);
        free(d->body);
        free(d->error);
}

void notify_config_from_env(struct notify_config *cfg)
{
        const char *v;

        memset(cfg, 0, sizeof(*cfg));
        cfg->dispatcher_id = "dispatcher";
        cfg->public_url = getenv("AGENTLY_PUBLIC_URL");
        if (!cfg->public_url || !*cfg->public_url)
                cfg->public_url = "http://127.0.0.1:8080";
        cfg->smtp_url = getenv("AGENTLY_SMTP_URL");
        cfg->smtp_from = getenv("AGENTLY_SMTP_FROM");
        cfg->smtp_user = getenv("AGENTLY_SMTP_USER");
        cfg->smtp_password = getenv("AGENTLY_SMTP_PASSWORD");
        cfg->smtp_password_secret = getenv("AGENTLY_SMTP_PASSWORD_SECRET");
        cfg->smtp_tls = (v = getenv("AGENTLY_SMTP_TLS")) && *v ? v : "starttls";
        cfg->smtp_ca_file = getenv("AGENTLY_SMTP_CA_FILE");
        cfg->timeout_ms = 30000;
        cfg->lease_ms = 60000;
        cfg->batch = 50;
}

static size_t on_read(char *buf, size_t size, size_t n, void *arg)
{
        struct delivery *d = arg;
        size_t left = d->body_len - d->body_off, want = size * n;

        if (want > left)
                want = left;
        memcpy(buf, d->body + d->body_off, want);
        d->body_off += want;
        return want;
}

static size_t on_write(char *data, size_t size, size_t n, void *arg)
{
        struct delivery *d = arg;
        size_t len = size * n, room = sizeof(d->response) - 1 - d->response_len;

        memcpy(d->response + d->response_len, data, len < room ? len : room);
        d->response_len += len < room ? len : room;
        d->response[d->response_len] = '\0';
        return len; /* the rest is read and dropped */
}

static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
        struct delivery *d = arg;
        size_t len = size * n;

        if (len > 12 && strncasecmp(data, "retry-after:", 12) == 0) {
                char v[32];
                size_t vl = len - 12 < sizeof(v) - 1 ? len - 12 : sizeof(v) - 1;
                memcpy(v, data + 12, vl);
                v[vl] = '\0';
                d->retry_after_s = strtol(v, NULL, 10);
        }
        return len;
}

/* The value of user_id's vault secret `name` (secrets_resolve: borrowed, masked in this
 * process's output); 0, -ENOENT (no such secret), or an errno with *error (malloc'd). */
static int open_vault_secret(PGconn *c, const struct notify_config *cfg, const char *user_id,
                             const char *name, const char **value, char **error)
{
        struct secrets_kms kms;
        int r = secrets_kms_init(&kms, cfg->data_dir);

        *value = NULL;
        if (r < 0)
                return r;
        r = secrets_resolve(c, &kms, user_id, name, value, NULL, error);
        secrets_kms_release(&kms);
        return r;
}

static CURL *easy_new(struct delivery *d, const struct notify_config *cfg, const char *url)
{
        CURL *e = curl_easy_init();

        if (!e)
                return NULL;
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_PRIVATE, d);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)cfg->timeout_ms);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)(cfg->timeout_ms < 10000 ? cfg->timeout_ms : 10000));
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, d);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, d);
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
        return e;
}

/* Prepares an HTTP POST of d->body (Slack, webhook). */
static int prepare_post(struct delivery *d, const struct notify_config *cfg, const char *url)
{
        if (!str_has_prefix(url, "http://") && !str_has_prefix(url, "https://")) {
                delivery_fail(d, true,
                              str_printf("cannot deliver to '%s': not an http(s) url", url));
                return 0;
        }
        if (!(d->easy = easy_new(d, cfg, url)))
                return -ENOMEM;
        curl_easy_setopt(d->easy, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(d->easy, CURLOPT_POST, 1L);
        curl_easy_setopt(d->easy, CURLOPT_POSTFIELDS, d->body);
        curl_easy_setopt(d->easy, CURLOPT_POSTFIELDSIZE, (long)d->body_len);
        curl_easy_setopt(d->easy, CURLOPT_USERAGENT, "agently-dispatcher");
        if (!(d->headers = curl_slist_append(d->headers, "Content-Type: application/json")))
                return -ENOMEM;
        curl_easy_setopt(d->easy, CURLOPT_HTTPHEADER, d->headers);
        return 0;
}

static int add_header(struct delivery *d, const char *name, const char *value)
{
        _cleanup_free_ char *h = str_printf("%s: %s", name, value);
        struct curl_slist *l = h ? curl_slist_append(d->headers, h) : NULL;

        if (!l)
                return -ENOMEM;
        d->headers = l;
        return 0;
}

static int prepare_webhook(PGconn *c, struct delivery *d, const struct notify_config *cfg,
                           const struct notify_message *m, const char *user_id, const char *url)
{
        const char *secret_name =
            json_string_value(json_object_get(json_object_get(m->payload, "channel"), "secret"));
        int64_t now = (int64_t)time(NULL);
        _cleanup_free_ char *ts = str_printf("%lld", (long long)now);
        int r;

        if (!ts || !(d->body = notify_render_webhook(m, now)))
                return -ENOMEM;
        d->body_len = strlen(d->body);
        if ((r = prepare_post(d, cfg, url)) < 0 || d->done)
                return r;
        if (add_header(d, "webhook-id", d->id) < 0 || add_header(d, "webhook-timestamp", ts) < 0)
                return -ENOMEM;
        if (secret_name) {
                const char *secret = NULL;
                _cleanup_free_ char *why = NULL;
                r = open_vault_secret(c, cfg, user_id, secret_name, &secret, &why);
                if (r == -ENOENT) {
                        delivery_fail(d, false,
                                      str_printf("secret '%s' not found: create it with `agently "
                                                 "secret set %s`",
                                                 secret_name, secret_name));
                        return 0;
                }
                if (r < 0) {
                        delivery_fail(d, false,
                                      str_printf("could not open secret '%s': %s", secret_name,
                                                 why ? why : strerror(-r)));
                        return 0;
                }
                _cleanup_free_ char *sig =
                    notify_webhook_sign(secret, d->id, now, d->body, d->body_len);
                if (!sig) {
                        delivery_fail(d, true,
                                      str_printf("secret '%s' cannot sign: a whsec_ secret must be "
                                                 "base64 after the prefix",
                                                 secret_name));
                        return 0;
                }
                if (add_header(d, "webhook-signature", sig) < 0)
                        return -ENOMEM;
        }
        curl_easy_setopt(d->easy, CURLOPT_HTTPHEADER, d->headers);
        return 0;
}

/* The SMTP login's password: the owner's vault secret cfg->smtp_password_secret, opened at
 * the moment of delivery like a webhook's signing secret, else AGENTLY_SMTP_PASSWORD. 0
 * with *password set (borrowed), or 0 with the delivery failed (a missing secret: retried,
 * so creating it in time delivers), or -ENOMEM. */
static int smtp_password(PGconn *c, struct delivery *d, const struct notify_config *cfg,
                         const char *user_id, const char **password)
{
        const char *name = cfg->smtp_password_secret;
        _cleanup_free_ char *why = NULL;
        int r;

        *password = cfg->smtp_password ? cfg->smtp_password : "";
        d->password_from = "AGENTLY_SMTP_PASSWORD";
        if (!name || !*name)
                return 0;
        d->password_from = "the secret named by AGENTLY_SMTP_PASSWORD_SECRET";
        r = open_vault_secret(c, cfg, user_id, name, password, &why);
        if (r == -ENOMEM)
                return r;
        if (r == -ENOENT)
                delivery_fail(d, false,
                              str_printf("the SMTP password's secret '%s' (AGENTLY_SMTP_PASSWORD_"
                                         "SECRET) does not exist for this notification's owner: "
                                         "create it with `agently secret set %s`",
                                         name, name));
        else if (r < 0)
                delivery_fail(d, false,
                              str_printf("could not open the SMTP password's secret '%s': %s", name,
                                         why ? why : strerror(-r)));
        return 0;
}

static int prepare_email(PGconn *c, struct delivery *d, const struct notify_config *cfg,
                         const struct notify_message *m, const char *user_id, const char *to)
{
        if (!cfg->smtp_url || !*cfg->smtp_url || !cfg->smtp_from || !*cfg->smtp_from) {
                delivery_fail(d, false,
                              strdup("e-mail is not configured: set AGENTLY_SMTP_URL and "
                                     "AGENTLY_SMTP_FROM for the dispatcher"));
                return 0;
        }
        if (!(d->body = notify_render_email(m, cfg->smtp_from, to, (int64_t)time(NULL))))
                return -ENOMEM;
        d->body_len = strlen(d->body);
        _cleanup_free_ char *list = strdup(to);
        if (!list)
                return -ENOMEM;
        int n = 0;
        for (char *save = NULL, *a = strtok_r(list, ", ", &save); a;
             a = strtok_r(NULL, ", ", &save)) {
                _cleanup_free_ char *rcpt = str_printf("<%s>", a);
                struct curl_slist *l = rcpt ? curl_slist_append(d->recipients, rcpt) : NULL;
                if (!l)
                        return -ENOMEM;
                d->recipients = l;
                if (++n > MAX_RECIPIENT)
                        break;
        }
        if (!(d->easy = easy_new(d, cfg, cfg->smtp_url)))
                return -ENOMEM;
        _cleanup_free_ char *from = str_printf("<%s>", cfg->smtp_from);
        if (!from)
                return -ENOMEM;
        curl_easy_setopt(d->easy, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
        curl_easy_setopt(d->easy, CURLOPT_MAIL_FROM, from);
        curl_easy_setopt(d->easy, CURLOPT_MAIL_RCPT, d->recipients);
        curl_easy_setopt(d->easy, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(d->easy, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(d->easy, CURLOPT_READDATA, d);
        curl_easy_setopt(d->easy, CURLOPT_INFILESIZE, (long)d->body_len);
        curl_easy_setopt(d->easy, CURLOPT_ERRORBUFFER, d->errbuf);
        if (cfg->smtp_user && *cfg->smtp_user) {
                const char *password = NULL;
                int r = smtp_password(c, d, cfg, user_id, &password);
                if (r < 0 || d->done)
                        return r;
                d->smtp_user = cfg->smtp_user;
                curl_easy_setopt(d->easy, CURLOPT_USERNAME, cfg->smtp_user);
                curl_easy_setopt(d->easy, CURLOPT_PASSWORD, password);
        }
        if (str_has_prefix(cfg->smtp_url, "smtps://") || !strcmp(cfg->smtp_tls, "starttls"))
                curl_easy_setopt(d->easy, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
        else if (!strcmp(cfg->smtp_tls, "try"))
                curl_easy_setopt(d->easy, CURLOPT_USE_SSL, (long)CURLUSESSL_TRY);
        if (cfg->smtp_ca_file && *cfg->smtp_ca_file)
                curl_easy_setopt(d->easy, CURLOPT_CAINFO, cfg->smtp_ca_file);
        return 0;
}

/* What a failed SMTP delivery says for the failures a person must fix in the configuration
 * (malloc'd), or NULL for the others. */
static char *smtp_error(const struct delivery *d, CURLcode rc, long status)
{
        switch (rc) {
        case CURLE_LOGIN_DENIED:
                return str_printf("the SMTP server refused the login of user '%s' (%ld%s%.200s): "
                                  "check AGENTLY_SMTP_USER and the password (%s)",
                                  d->smtp_user ? d->smtp_user : "", status,
                                  d->response_len ? " " : "", d->response,
                                  d->password_from ? d->password_from : "none");
        case CURLE_USE_SSL_FAILED:
                return strdup("the SMTP server does not offer STARTTLS, and AGENTLY_SMTP_TLS="
                              "starttls (the default) requires it: use a server that does, an "
                              "smtps:// URL, or AGENTLY_SMTP_TLS=none only for a trusted local "
                              "server");
        case CURLE_PEER_FAILED_VERIFICATION:
                return str_printf("the SMTP server's certificate is not trusted (%s): set "
                                  "AGENTLY_SMTP_CA_FILE to the CA certificate that signed it",
                                  d->errbuf[0] ? d->errbuf : curl_easy_strerror(rc));
        default:
                return NULL;
        }
}

/* Sets the outcome of a finished transfer. */
static void classify(struct delivery *d, CURLcode rc, bool smtp)
{
        long status = 0;

        curl_easy_getinfo(d->easy, CURLINFO_RESPONSE_CODE, &status);
        d->status = status;
        d->done = true;
        if (rc != CURLE_OK) {
                /* an SMTP server's permanent refusal (5xx: no such mailbox, relaying denied)
                 * will not change by retrying; everything else (no connection, timeouts,
                 * 4xx "try later") may */
                d->permanent = smtp && status >= 500 && status < 600;
                if (smtp && (d->error = smtp_error(d, rc, status)))
                        return;
                d->error = str_printf("%s%s%s (response %ld)", curl_easy_strerror(rc),
                                      d->response_len ? ": " : "", d->response, status);
                return;
        }
        if (smtp || (status >= 200 && status < 300)) {
                d->ok = true;
                return;
        }
        d->permanent = status >= 400 && status < 500 && status != 408 && status != 429;
        d->error = str_printf("the receiver answered %ld%s%.200s", status,
                              d->response_len ? ": " : "", d->response);
}

static int finish(PGconn *c, const struct delivery *d)
{
        char attempt[16], status[24], retry[32];
        const char *p[] = {d->id,
                           attempt,
                           d->ok ? "t" : "f",
                           d->permanent ? "t" : "f",
                           d->status ? status : NULL,
                           d->ok ? NULL : (d->error ? d->error : "unknown error"),
                           d->retry_after_s > 0 ? retry : NULL};
        int r;

        snprintf(attempt, sizeof(attempt), "%d", d->attempt);
        snprintf(status, sizeof(status), "%ld", d->status);
        snprintf(retry, sizeof(retry), "%lld", (long long)d->retry_after_s * 1000);
        _cleanup_pgresult_ PGresult *res = db_query(
            c, "SELECT agently_notify_finish($1, $2::integer, $3, $4, $5::integer, $6, $7::bigint)",
            7, p, &r);
        return res ? 0 : r;
}

int notify_deliver_round(PGconn *c, const struct notify_config *cfg, int *sent, int *failed)
{
        char lease[48], batch[16];
        const char *p[] = {cfg->dispatcher_id, lease, batch};
        int r, n, still = 0;
        _cleanup_pgresult_ PGresult *rows = NULL;
        struct delivery *ds = NULL;
        CURLM *multi = NULL;

        if (sent)
                *sent = 0;
        if (failed)
                *failed = 0;
        snprintf(lease, sizeof(lease), "%lld milliseconds", (long long)cfg->lease_ms);
        snprintf(batch, sizeof(batch), "%d", cfg->batch);
        rows = db_query(c,
                        "SELECT id, user_id, workflow_run_id, channel, target, payload, attempt "
                        "FROM agently_notify_claim($1, $2::interval, $3::integer)",
                        3, p, &r);
        if (!rows)
                return r;
        n = PQntuples(rows);
        if (n == 0)
                return 0;
        ds = calloc((size_t)n, sizeof(*ds));
        multi = curl_multi_init();
        if (!ds || !multi) {
                r = -ENOMEM;
                goto out;
        }
        for (int i = 0; i < n; i++) {
                struct delivery *d = &ds[i];
                const char *channel = PQgetvalue(rows, i, 3), *target = PQgetvalue(rows, i, 4);
                _cleanup_json_ json_t *payload = pgjson_loads(PQgetvalue(rows, i, 5), 0, NULL);
                struct notify_message m;

                snprintf(d->id, sizeof(d->id), "%s", PQgetvalue(rows, i, 0));
                (void)str_to_int(PQgetvalue(rows, i, 6), &d->attempt);
                if (!payload ||
                    notify_message_init(&m, d->id,
                                        PQgetisnull(rows, i, 2) ? NULL : PQgetvalue(rows, i, 2),
                                        payload, cfg->public_url) < 0) {
                        r = -ENOMEM;
                        goto out;
                }
                if (!strcmp(channel, "email"))
                        r = prepare_email(c, d, cfg, &m, PQgetvalue(rows, i, 1), target);
                else if (!strcmp(channel, "slack")) {
                        r = (d->body = notify_render_slack(&m)) ? 0 : -ENOMEM;
                        if (r == 0) {
                                d->body_len = strlen(d->body);
                                r = prepare_post(d, cfg, target);
                                if (r == 0 && !d->done)
                                        r = add_header(d, "X-Agently-Notification-Id", d->id);
                                if (r == 0 && d->easy)
                                        curl_easy_setopt(d->easy, CURLOPT_HTTPHEADER, d->headers);
                        }
                } else if (!strcmp(channel, "webhook"))
                        r = prepare_webhook(c, d, cfg, &m, PQgetvalue(rows, i, 1), target);
                else
                        delivery_fail(d, true, str_printf("unknown channel '%s'", channel)), r = 0;
                notify_message_clear(&m);
                if (r < 0)
                        goto out;
                if (!d->done && curl_multi_add_handle(multi, d->easy) != CURLM_OK) {
                        r = -ENOMEM;
                        goto out;
                }
        }
        do {
                if (curl_multi_perform(multi, &still) != CURLM_OK ||
                    curl_multi_poll(multi, NULL, 0, 200, NULL) != CURLM_OK) {
                        r = -EIO;
                        goto out;
                }
                CURLMsg *msg;
                int left;
                while ((msg = curl_multi_info_read(multi, &left))) {
                        struct delivery *d = NULL;
                        if (msg->msg != CURLMSG_DONE)
                                continue;
                        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&d);
                        classify(d, msg->data.result, d->recipients != NULL);
                }
        } while (still > 0);
        r = n;
        for (int i = 0; i < n; i++) {
                struct delivery *d = &ds[i];
                int f;
                if (!d->done)
                        delivery_fail(d, false, strdup("the transfer did not complete"));
                if ((f = finish(c, d)) < 0 && r >= 0)
                        r = f;
                if (d->ok && sent)
                        (*sent)++;
                else if (!d->ok && failed)
                        (*failed)++;
        }
out:
        for (int i = 0; ds && i < n; i++) {
                if (ds[i].easy && multi)
                        curl_multi_remove_handle(multi, ds[i].easy);
                delivery_free(&ds[i]);
        }
        free(ds);
        if (multi)
                curl_multi_cleanup(multi);
        return r;
}
