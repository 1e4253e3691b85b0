/*
 * Notifications, schedules and webhook triggers (issue 13, items 5 and 6): the dispatcher's
 * delivery of the outbox (e-mail over SMTP, Slack incoming webhooks, Standard Webhooks),
 * the firing of cron schedules, and the signature code that webhook triggers and webhook
 * deliveries share. The rows and their rules live in migrations/0016_notify.sql; the
 * module's invariants are in src/notify/README.md. Functions return 0 (or a count) or a
 * negative errno and do not log; the dispatcher logs what it decides.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <libpq-fe.h>

/* ---- Delivery ------------------------------------------------------------------------ */

struct notify_config {
        const char *dispatcher_id; /* recorded with every attempt */
        const char *data_dir;      /* where the vault's key file is (NULL: ".agently") */
        const char *public_url;    /* base of links ("http://127.0.0.1:8080") */
        /* SMTP (docs/notifications.md): smtp://host:port or smtps://host:port */
        const char *smtp_url;
        const char *smtp_from;
        const char *smtp_user, *smtp_password;
        /* the name of a vault secret holding the password, opened for each delivery from the
         * notification owner's vault (instead of smtp_password, which it overrides) */
        const char *smtp_password_secret;
        const char *smtp_tls;     /* "starttls" (default: required), "try", "none" */
        const char *smtp_ca_file; /* trust this CA (a self-signed server) */
        int64_t timeout_ms;       /* one delivery, all of it */
        int64_t lease_ms;         /* how long a claimed row stays ours: > timeout_ms */
        int batch;                /* rows per claim */
};

/* Fills cfg from the environment (AGENTLY_PUBLIC_URL, AGENTLY_SMTP_*) with the defaults
 * (timeout 30 s, lease 60 s, batch 50). The strings are borrowed from the environment. */
void notify_config_from_env(struct notify_config *cfg);

/*
 * One round of delivery: claims up to cfg->batch due notifications (SKIP LOCKED, leased),
 * delivers them concurrently, each within cfg->timeout_ms, and records each attempt's end
 * (agently_notify_finish). c must be a worker-role connection outside a transaction.
 * Returns the number of rows claimed (0: nothing was due), or a negative errno when the
 * claim failed. *sent and *failed (may be NULL) count the outcomes.
 */
int notify_deliver_round(PGconn *c, const struct notify_config *cfg, int *sent, int *failed);

/* ---- Standard Webhooks ----------------------------------------------------------------- */

/* The largest payload a signature is computed over (bytes). */
#define NOTIFY_WEBHOOK_MAX_BODY (1024 * 1024)
/* How far a webhook-timestamp may be from now (seconds) before a delivery is refused. */
#define NOTIFY_WEBHOOK_TOLERANCE_S 300

/*
 * The webhook-signature value for (id, timestamp, body) under secret: "v1," followed by
 * base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>")). The key is the base64 text after
 * "whsec_" when secret starts with it, else the secret's bytes. Returns a malloc'd string
 * (caller frees) or NULL (-ENOMEM or a "whsec_" secret that is not base64).
 */
char *notify_webhook_sign(const char *secret, const char *id, int64_t timestamp, const char *body,
                          size_t len);

/*
 * Verifies a delivery's headers as a receiver does: timestamp within tolerance_s of now_s,
 * and one of the space-separated "v1,<base64>" signatures of the signature header equal
 * (constant time) to ours. Returns 0, -EINVAL (a header missing or malformed), -ETIME (the
 * timestamp is too old or too new), -EBADMSG (no signature matches).
 */
int notify_webhook_verify(const char *secret, const char *id, const char *timestamp,
                          const char *signatures, const char *body, size_t len, int64_t now_s,
                          int64_t tolerance_s);

/* A new signing secret "whsec_<base64 of 32 random bytes>" (malloc'd; NULL: -ENOMEM). */
char *notify_webhook_new_secret(void);

/* ---- Schedules ------------------------------------------------------------------------- */

/*
 * The first fire time of cron strictly after `after` (a timestamptz text; NULL: now()) in
 * the IANA zone `zone`, as timestamptz text in *next (malloc'd): the wall-clock search of
 * src/base/cron.c, turned into an instant by Postgres' rules for the zone. Works inside the
 * caller's transaction (the API's) or outside. Returns 0; -EINVAL with a message in err
 * (errlen bytes) for a bad expression or an unknown zone; -ERANGE when it never fires; a
 * negative errno from the database (db_last_error()).
 */
int notify_schedule_next(PGconn *c, const char *cron, const char *zone, const char *after,
                         char **next, char *err, size_t errlen);

/*
 * One round of schedules: for each due enabled schedule (locked with SKIP LOCKED, one
 * transaction each), fires its tick (or skips it when it was missed and the schedule says
 * so) through agently_schedule_fire and sets the next fire time. A tick is missed when it
 * is more than grace_ms in the past. Returns the number of runs started or a negative
 * errno.
 */
int notify_schedules_round(PGconn *c, int64_t grace_ms);
