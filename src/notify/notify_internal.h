/* Internals of src/notify shared by its files; not used outside the module. */
#pragma once

#include <stdint.h>
#include <jansson.h>

/* What every channel says about one notification, from its row (notify_render.c). */
struct notify_message {
        const char *id;        /* the notification's id: the delivery id */
        const char *event;     /* "run.failed", "approval.requested", "notify", ... */
        char *title;           /* one line */
        char *text;            /* the body's paragraph(s) */
        const char *run_id;    /* NULL when the notification has no run (borrowed) */
        char *run_url;         /* NULL when the notification has no run */
        json_t *links;         /* [{"label", "url"}], urls absolute */
        const json_t *payload; /* the row's payload (borrowed) */
};

/* Builds m from a row's payload (borrowed; m->payload points to it). 0 or -ENOMEM. */
int notify_message_init(struct notify_message *m, const char *id, const char *run_id,
                        const json_t *payload, const char *public_url);
void notify_message_clear(struct notify_message *m);

/* A whole RFC 5322 message (CRLF lines, UTF-8 text/plain, Message-ID <id@agently>). */
char *notify_render_email(const struct notify_message *m, const char *from, const char *to,
                          int64_t now_s);
/* Slack's incoming-webhook JSON: text (the fallback) and blocks with link buttons. */
char *notify_render_slack(const struct notify_message *m);
/* A Standard Webhooks body: {"type": event, "timestamp": ISO 8601, "data": {...}}. */
char *notify_render_webhook(const struct notify_message *m, int64_t now_s);
