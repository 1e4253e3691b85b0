/*
 * The templates: plain, useful, the same facts on every channel — what happened (a title),
 * why (the text), and where to look (a link to the run, the links the notification carries,
 * e.g. an approval's). A payload may bring its own title and text; otherwise the event
 * decides.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sodium.h>

#include "buf.h"
#include "cleanup.h"
#include "notify_internal.h"
#include "strutil.h"

#define MAX_TEXT (64 * 1024)

static char *absolute(const char *url, const char *public_url)
{
        if (url[0] == '/')
                return str_printf("%s%s", public_url, url);
        return strdup(url);
}

int notify_message_init(struct notify_message *m, const char *id, const char *run_id,
                        const json_t *payload, const char *public_url)
{
        /* "subject" (approvals' rows, 0015) wins over "title" for the one-line summary */
        const char *title = json_string_value(json_object_get(payload, "subject"));
        const char *text = json_string_value(json_object_get(payload, "text"));
        const char *workflow = json_string_value(json_object_get(payload, "workflow"));
        const json_t *links = json_object_get(payload, "links");

        memset(m, 0, sizeof(*m));
        m->id = id;
        m->payload = payload;
        m->event = json_string_value(json_object_get(payload, "event"));
        if (!m->event)
                m->event = "notify";
        if (!title)
                title = json_string_value(json_object_get(payload, "title"));
        if (title)
                m->title = strndup(title, 998);
        else if (workflow)
                m->title = str_printf("%s: %s", workflow, m->event);
        else
                m->title = str_printf("agently: %s", m->event);
        m->text = strndup(text ? text : "", MAX_TEXT);
        m->run_id = run_id && *run_id ? run_id : NULL;
        if (m->run_id)
                m->run_url = str_printf("%s/v1/runs/%s", public_url, run_id);
        m->links = json_array();
        if (!m->title || !m->text || (run_id && *run_id && !m->run_url) || !m->links)
                goto oom;
        /* one line: a subject or a header never carries a line break */
        for (char *p = m->title; *p; p++)
                if (*p == '\r' || *p == '\n')
                        *p = ' ';
        /* links: [{"label", "url"}], or {"approve": url, "reject": url} (approvals' rows):
         * the key, capitalised, is the label */
        if (json_is_object(links)) {
                const char *k;
                json_t *v;
                json_object_foreach ((json_t *)links, k, v) {
                        const char *url = json_string_value(v);
                        if (!url || !*k || strpbrk(url, " \r\n") || json_array_size(m->links) >= 10)
                                continue;
                        _cleanup_free_ char *abs = absolute(url, public_url);
                        _cleanup_free_ char *label = strdup(k);
                        if (!abs || !label)
                                goto oom;
                        if (label[0] >= 'a' && label[0] <= 'z')
                                label[0] = (char)(label[0] - 'a' + 'A');
                        if (json_array_append_new(
                                m->links, json_pack("{s:s,s:s}", "label", label, "url", abs)) < 0)
                                goto oom;
                }
        }
        for (size_t i = 0; json_is_array(links) && i < json_array_size(links) && i < 10; i++) {
                const char *label =
                    json_string_value(json_object_get(json_array_get(links, i), "label"));
                const char *url =
                    json_string_value(json_object_get(json_array_get(links, i), "url"));
                if (!label || !url || strpbrk(url, " \r\n"))
                        continue;
                _cleanup_free_ char *abs = absolute(url, public_url);
                if (!abs || json_array_append_new(
                                m->links, json_pack("{s:s,s:s}", "label", label, "url", abs)) < 0)
                        goto oom;
        }
        return 0;
oom:
        notify_message_clear(m);
        return -ENOMEM;
}

void notify_message_clear(struct notify_message *m)
{
        free(m->title);
        free(m->text);
        free(m->run_url);
        json_decref(m->links);
        memset(m, 0, sizeof(*m));
}

static bool ascii(const char *s)
{
        for (; *s; s++)
                if ((unsigned char)*s >= 0x80)
                        return false;
        return true;
}

/* A Subject header value: as is when ASCII, else one RFC 2047 encoded word per chunk. */
static int subject(struct buf *b, const char *title)
{
        size_t len = strlen(title);

        if (ascii(title))
                return buf_printf(b, "Subject: %s\r\n", title);
        if (buf_printf(b, "Subject:") < 0)
                return -ENOMEM;
        for (size_t off = 0; off < len;) {
                size_t n = len - off > 45 ? 45 : len - off;
                /* never split a UTF-8 sequence */
                while (off + n < len && ((unsigned char)title[off + n] & 0xC0) == 0x80)
                        n--;
                char b64[sodium_base64_ENCODED_LEN(48, sodium_base64_VARIANT_ORIGINAL)];
                sodium_bin2base64(b64, sizeof(b64), (const unsigned char *)title + off, n,
                                  sodium_base64_VARIANT_ORIGINAL);
                if (buf_printf(b, " =?UTF-8?B?%s?=\r\n", b64) < 0)
                        return -ENOMEM;
                off += n;
        }
        return 0;
}

/* Appends text with CRLF line ends and dot-stuffing left to libcurl (it does it). */
static int crlf(struct buf *b, const char *text)
{
        for (const char *p = text; *p; p++) {
                if (*p == '\r')
                        continue;
                if ((*p == '\n' ? buf_printf(b, "\r\n") : buf_append(b, p, 1)) < 0)
                        return -ENOMEM;
        }
        return 0;
}

char *notify_render_email(const struct notify_message *m, const char *from, const char *to,
                          int64_t now_s)
{
        _cleanup_buf_ struct buf b;
        char date[64];
        time_t t = (time_t)now_s;
        struct tm tm;

        buf_init(&b, 2 * MAX_TEXT);
        if (!gmtime_r(&t, &tm) || !strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm))
                return NULL;
        if (buf_printf(&b,
                       "From: %s\r\nTo: %s\r\nDate: %s\r\nMessage-ID: <%s@agently>\r\n"
                       "X-Agently-Notification-Id: %s\r\nX-Agently-Event: %s\r\n"
                       "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                       "Content-Transfer-Encoding: 8bit\r\n",
                       from, to, date, m->id, m->id, m->event) < 0 ||
            subject(&b, m->title) < 0 || buf_printf(&b, "\r\n") < 0 || crlf(&b, m->text) < 0 ||
            buf_printf(&b, "\r\n\r\n") < 0)
                return NULL;
        if (m->run_url && buf_printf(&b, "Run: %s\r\n", m->run_url) < 0)
                return NULL;
        for (size_t i = 0; i < json_array_size(m->links); i++) {
                json_t *l = json_array_get(m->links, i);
                if (buf_printf(&b, "%s: %s\r\n", json_string_value(json_object_get(l, "label")),
                               json_string_value(json_object_get(l, "url"))) < 0)
                        return NULL;
        }
        if (buf_printf(&b, "\r\n-- \r\nSent by agently (notification %s).\r\n", m->id) < 0)
                return NULL;
        return buf_steal(&b);
}

char *notify_render_slack(const struct notify_message *m)
{
        _cleanup_json_ json_t *buttons = json_array();
        _cleanup_json_ json_t *blocks = json_array();
        _cleanup_free_ char *section = NULL;

        if (!buttons || !blocks)
                return NULL;
        /* Slack's mrkdwn: a section holds at most 3000 characters */
        section = str_printf("*%.200s*\n%.2700s", m->title, m->text);
        if (!section ||
            json_array_append_new(blocks, json_pack("{s:s,s:{s:s,s:s}}", "type", "section", "text",
                                                    "type", "mrkdwn", "text", section)) < 0)
                return NULL;
        if (m->run_url &&
            json_array_append_new(buttons, json_pack("{s:s,s:{s:s,s:s},s:s}", "type", "button",
                                                     "text", "type", "plain_text", "text",
                                                     "Open the run", "url", m->run_url)) < 0)
                return NULL;
        for (size_t i = 0; i < json_array_size(m->links); i++) {
                json_t *l = json_array_get(m->links, i);
                if (json_array_append_new(
                        buttons, json_pack("{s:s,s:{s:s,s:s},s:s}", "type", "button", "text",
                                           "type", "plain_text", "text",
                                           json_string_value(json_object_get(l, "label")), "url",
                                           json_string_value(json_object_get(l, "url")))) < 0)
                        return NULL;
        }
        if (json_array_size(buttons) &&
            json_array_append_new(
                blocks, json_pack("{s:s,s:O}", "type", "actions", "elements", buttons)) < 0)
                return NULL;
        _cleanup_json_ json_t *body = json_pack("{s:s,s:O}", "text", m->title, "blocks", blocks);
        return body ? json_dumps(body, JSON_COMPACT) : NULL;
}

char *notify_render_webhook(const struct notify_message *m, int64_t now_s)
{
        char ts[32];
        time_t t = (time_t)now_s;
        struct tm tm;
        _cleanup_json_ json_t *data = json_deep_copy(m->payload);

        if (!data || !gmtime_r(&t, &tm) || !strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm))
                return NULL;
        json_object_del(data, "channel"); /* the receiver's own address and secret name */
        json_object_del(data, "max_attempts");
        if (json_object_set_new(data, "notification_id", json_string(m->id)) < 0 ||
            json_object_set_new(data, "title", json_string(m->title)) < 0 ||
            json_object_set_new(data, "text", json_string(m->text)) < 0 ||
            json_object_set(data, "links", m->links) < 0 ||
            (m->run_url && json_object_set_new(data, "run_url", json_string(m->run_url)) < 0) ||
            (m->run_id && json_object_set_new(data, "run_id", json_string(m->run_id)) < 0))
                return NULL;
        _cleanup_json_ json_t *body =
            json_pack("{s:s,s:s,s:O}", "type", m->event, "timestamp", ts, "data", data);
        return body ? json_dumps(body, JSON_COMPACT) : NULL;
}
