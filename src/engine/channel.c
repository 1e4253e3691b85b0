/*
 * Notification channels and subscriptions as a definition writes them: the one check of
 * their shape, used for a workflow's "notifications" list (and by any node kind that sends
 * through a channel). What a channel means at delivery time is src/notify's business; the
 * outbox row is written by agently_notify_enqueue (migrations/0016_notify.sql), which
 * accepts exactly what passes here.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "engine.h"
#include "strutil.h"

static const char *const subscription_events[] = {"completed", "failed", "needs_input",
                                                  "approval_requested", NULL};

static int problem(char *msg, size_t len, const char **field, const char *f, const char *text)
{
        *field = f;
        snprintf(msg, len, "%s", text);
        return -EINVAL;
}

static bool only_fields(const json_t *obj, const char *const *allowed, const char **unknown)
{
        const char *key;
        json_t *v;

        json_object_foreach ((json_t *)obj, key, v) {
                bool ok = false;
                for (const char *const *a = allowed; *a; a++)
                        ok = ok || strcmp(*a, key) == 0;
                if (!ok) {
                        *unknown = key;
                        return false;
                }
        }
        return true;
}

static bool valid_address(const char *s)
{
        const char *at = strchr(s, '@');

        return at && at != s && at[1] && !strchr(at + 1, '@') && strlen(s) <= 254 &&
               !strpbrk(s, "\r\n<>, \t");
}

static bool valid_url(const char *s)
{
        return (str_has_prefix(s, "http://") || str_has_prefix(s, "https://")) &&
               strlen(s) <= 2000 && !strpbrk(s, "\r\n \t");
}

int wf_channel_check(const json_t *channel, char *msg, size_t len, const char **field)
{
        static const char *const email_fields[] = {"kind", "to", NULL};
        static const char *const slack_fields[] = {"kind", "url", NULL};
        static const char *const webhook_fields[] = {"kind", "url", "secret", NULL};
        const char *kind = json_string_value(json_object_get(channel, "kind"));
        const char *unknown = NULL;

        if (!json_is_object(channel))
                return problem(msg, len, field, "",
                               "a channel must be an object such as {\"kind\": \"email\", "
                               "\"to\": \"ops@example.com\"}");
        if (!kind || (strcmp(kind, "email") && strcmp(kind, "slack") && strcmp(kind, "webhook")))
                return problem(msg, len, field, "/kind",
                               "a channel's kind must be \"email\", \"slack\" or \"webhook\"");
        if (!strcmp(kind, "email")) {
                const json_t *to = json_object_get(channel, "to");
                if (!only_fields(channel, email_fields, &unknown))
                        goto unknown_field;
                if (json_is_string(to)) {
                        if (!valid_address(json_string_value(to)))
                                goto bad_address;
                        return 0;
                }
                if (!json_is_array(to) || json_array_size(to) == 0 || json_array_size(to) > 50)
                        return problem(msg, len, field, "/to",
                                       "an email channel needs \"to\": an address or a list of "
                                       "1 to 50 addresses");
                for (size_t i = 0; i < json_array_size(to); i++) {
                        const char *a = json_string_value(json_array_get(to, i));
                        if (!a || !valid_address(a))
                                goto bad_address;
                }
                return 0;
        bad_address:
                return problem(msg, len, field, "/to",
                               "\"to\" must hold e-mail addresses such as ops@example.com "
                               "(no names, spaces or angle brackets)");
        }
        if (!only_fields(channel, !strcmp(kind, "slack") ? slack_fields : webhook_fields, &unknown))
                goto unknown_field;
        const char *url = json_string_value(json_object_get(channel, "url"));
        if (!url || !valid_url(url))
                return problem(msg, len, field, "/url",
                               !strcmp(kind, "slack")
                                   ? "a slack channel needs \"url\": the incoming webhook's "
                                     "https:// address"
                                   : "a webhook channel needs \"url\": an http:// or https:// "
                                     "address");
        const json_t *secret = json_object_get(channel, "secret");
        if (secret && (!json_is_string(secret) || !json_string_length(secret) ||
                       json_string_length(secret) > 200))
                return problem(msg, len, field, "/secret",
                               "\"secret\" names a secret of the vault (agently secret set NAME) "
                               "that signs the deliveries");
        return 0;
unknown_field:
        *field = "";
        snprintf(msg, len, "unknown field '%s' in a %s channel", unknown, kind);
        return -EINVAL;
}

int wf_subscription_check(const json_t *subscription, char *msg, size_t len, const char **field)
{
        static const char *const fields[] = {"on", "channel", NULL};
        const json_t *on = json_object_get(subscription, "on");
        const char *unknown = NULL;

        if (!json_is_object(subscription))
                return problem(msg, len, field, "",
                               "a subscription must be an object {\"on\": [...], \"channel\": "
                               "{...}}");
        if (!only_fields(subscription, fields, &unknown)) {
                *field = "";
                snprintf(msg, len,
                         "unknown field '%s' in a subscription; known fields: on, channel",
                         unknown);
                return -EINVAL;
        }
        if (!json_is_array(on) || json_array_size(on) == 0)
                goto bad_on;
        for (size_t i = 0; i < json_array_size(on); i++) {
                const char *e = json_string_value(json_array_get(on, i));
                bool ok = false;
                for (const char *const *k = subscription_events; e && *k; k++)
                        ok = ok || !strcmp(*k, e);
                if (!ok)
                        goto bad_on;
        }
        if (!json_object_get(subscription, "channel"))
                return problem(msg, len, field, "/channel",
                               "missing required field 'channel' (e.g. {\"kind\": \"email\", "
                               "\"to\": \"ops@example.com\"})");
        return 0;
bad_on:
        return problem(msg, len, field, "/on",
                       "\"on\" must list one or more of completed, failed, needs_input, "
                       "approval_requested");
}
