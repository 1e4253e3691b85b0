/*
 * The notification tests' receivers (notify_receiver.py: a Standard Webhooks receiver that
 * verifies signatures, a Slack stand-in and a real SMTP server), run as a child process,
 * and the dispatcher processes the tests start against a fixture's database.
 */
#pragma once

#include <sys/types.h>
#include <jansson.h>

struct notify_receiver {
        pid_t pid;
        int http_port, smtp_port;
        /* notify_receiver_start_tls only: SMTP servers that require STARTTLS (a certificate
         * for 127.0.0.1 signed by the CA in ca_file) and then AUTH, offering only LOGIN and
         * only PLAIN respectively; smtp_port stays plain text without STARTTLS */
        int login_port, plain_port;
        char ca_file[512];
        char url[64]; /* http://127.0.0.1:PORT */
};

/* Starts the receivers (secret: the webhook signing secret they verify, or NULL). */
void notify_receiver_start(struct notify_receiver *r, const char *secret);
/* Also the STARTTLS + AUTH servers: certificates generated into dir (which must exist), the
 * one login they accept user:password ("USER:PASSWORD"). */
void notify_receiver_start_tls(struct notify_receiver *r, const char *dir, const char *credentials);
void notify_receiver_stop(struct notify_receiver *r);
/* Everything the receivers saw (a new reference). */
json_t *notify_receiver_state(const struct notify_receiver *r);

/* Spawns `agently dispatch --id ID --poll 100ms [extra...]` against owner_conninfo with e-mail
 * pointed at the receiver's SMTP server, logging to log_path. */
pid_t notify_spawn_dispatcher(const char *owner_conninfo, const struct notify_receiver *r,
                              const char *id, const char *const *extra, const char *log_path);
/* The same with env entries ("NAME=value", NULL-terminated) put after the defaults, so they
 * win (e.g. another AGENTLY_SMTP_URL, AGENTLY_SMTP_TLS=starttls). */
pid_t notify_spawn_dispatcher_env(const char *owner_conninfo, const struct notify_receiver *r,
                                  const char *id, const char *const *extra, const char *const *env,
                                  const char *log_path);
