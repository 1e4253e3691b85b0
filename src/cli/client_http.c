/*
 * HTTP for the client on libcurl: one easy handle per invocation (connection reuse across
 * the calls of --wait and --follow), bounded timeouts and response sizes, and one place
 * that turns every failure — unreachable server, API error body, non-JSON answer — into a
 * short message on stderr and an exit code. Also the server-sent events parser and the
 * streaming GET that `run logs --follow` reconnects on.
 */
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "buf.h"
#include "cleanup.h"
#include "client.h"
#include "strutil.h"

#define CLIENT_RESPONSE_MAX  (64u << 20)
#define CLIENT_SSE_EVENT_MAX (1u << 20)
#define CLIENT_CONNECT_MS    5000L
#define CLIENT_STREAM_IDLE_S 45L
#define CLIENT_USER_AGENT    "agently-cli/" AGENTLY_VERSION

static CURL *handle(struct client_ctx *ctx)
{
        if (!ctx->curl)
                ctx->curl = curl_easy_init();
        else
                curl_easy_reset(ctx->curl);
        return ctx->curl;
}

char *client_path(const char *fmt, ...)
{
        _cleanup_buf_ struct buf b;
        va_list ap;

        buf_init(&b, 1 << 16);
        va_start(ap, fmt);
        for (const char *p = fmt; *p; p++) {
                if (p[0] == '%' && p[1] == 's') {
                        const char *arg = va_arg(ap, const char *);
                        char *esc = curl_easy_escape(NULL, arg ? arg : "", 0);
                        int r = esc ? buf_append_str(&b, esc) : -ENOMEM;
                        curl_free(esc);
                        if (r < 0) {
                                va_end(ap);
                                return NULL;
                        }
                        p++;
                } else if (buf_append(&b, p, 1) < 0) {
                        va_end(ap);
                        return NULL;
                }
        }
        va_end(ap);
        if (!b.data && buf_append_str(&b, "") < 0)
                return NULL;
        return buf_steal(&b);
}

int client_query_add(char **url, const char *name, const char *value)
{
        char *esc, *next;

        if (!value)
                return 0;
        esc = curl_easy_escape(NULL, value, 0);
        if (!esc)
                return -ENOMEM;
        next = str_printf("%s%c%s=%s", *url, strchr(*url, '?') ? '&' : '?', name, esc);
        curl_free(esc);
        if (!next)
                return -ENOMEM;
        free(*url);
        *url = next;
        return 0;
}

int client_exit_for_status(long status)
{
        switch (status) {
        case 401:
        case 403:
                return CLI_EXIT_UNAUTHORIZED;
        case 404:
        case 410:
                return CLI_EXIT_NOT_FOUND;
        case 409:
        case 412:
                return CLI_EXIT_CONFLICT;
        case 502:
        case 503:
        case 504:
                return CLI_EXIT_UNAVAILABLE;
        default:
                return status >= 200 && status < 300 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
        }
}

static const char *json_str(json_t *obj, const char *key)
{
        json_t *v = json_object_get(obj, key);
        return json_is_string(v) ? json_string_value(v) : NULL;
}

/* One line of a validation-error list: "node fetch, field url: must be a URL". */
static void print_detail_item(json_t *item)
{
        const char *node = json_str(item, "node"), *field = json_str(item, "field");
        const char *path = json_str(item, "path"), *message = json_str(item, "message");

        if (!json_is_object(item) || !message) {
                _cleanup_free_ char *s = json_dumps(item, JSON_COMPACT | JSON_ENCODE_ANY);
                fprintf(stderr, "  %s\n", s ? s : "?");
                return;
        }
        fprintf(stderr, "  ");
        if (node)
                fprintf(stderr, "node %s%s", node, field || path ? ", " : ": ");
        if (field || path)
                fprintf(stderr, "field %s: ", field ? field : path);
        fprintf(stderr, "%s\n", message);
}

/* {"error": {"code", "message", "detail", "hint"}} on stdout, the shape of the API's errors. */
static void print_error_json(const char *code, const char *message, const char *detail,
                             const char *hint)
{
        _cleanup_json_ json_t *e = json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "code", code,
                                             "message", message, "detail", detail, "hint", hint);
        json_t *inner = json_object_get(e, "error");

        if (!inner) {
                printf("{\"error\": {\"code\": \"internal\", \"message\": \"out of memory\", "
                       "\"detail\": null, \"hint\": null}}\n");
                return;
        }
        if (!detail)
                json_object_set_new(inner, "detail", json_null());
        if (!hint)
                json_object_set_new(inner, "hint", json_null());
        client_print_json(e, stdout);
}

int client_fail(const struct client_ctx *ctx, int exit_code, const char *code, const char *detail,
                const char *hint, const char *fmt, ...)
{
        char message[1024];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(message, sizeof(message), fmt, ap);
        va_end(ap);
        if (ctx->output == CLIENT_OUTPUT_JSON) {
                print_error_json(code, message, detail, hint);
                fflush(stdout);
                return exit_code;
        }
        if (strcmp(code, "usage") == 0)
                fprintf(stderr, "agently %s: %s\n", ctx->name, message);
        else
                fprintf(stderr, "error: %s\n", message);
        if (detail)
                fprintf(stderr, "detail: %s\n", detail);
        if (hint)
                fprintf(stderr, "hint: %s\n", hint);
        return exit_code;
}

void client_print_api_error(struct client_ctx *ctx, long status, json_t *body)
{
        json_t *err = json_object_get(body, "error");
        const char *message = json_str(err, "message"), *hint = json_str(err, "hint");
        json_t *detail = json_object_get(err, "detail");

        if (ctx->output == CLIENT_OUTPUT_JSON) {
                if (json_is_string(json_object_get(err, "code")) && message) {
                        client_print_json(body, stdout);
                } else {
                        char text[64];
                        snprintf(text, sizeof(text), "the server answered HTTP %ld", status);
                        print_error_json("http_error", text, NULL, NULL);
                }
                return;
        }

        if (message)
                fprintf(stderr, "error: %s\n", message);
        else
                fprintf(stderr, "error: the server answered HTTP %ld\n", status);
        const char *node = json_str(err, "node"), *field = json_str(err, "field");
        json_t *errors = json_object_get(err, "errors");
        if (json_is_array(errors) && json_array_size(errors) > 0) {
                size_t i;
                json_t *item;
                json_array_foreach (errors, i, item)
                        print_detail_item(item);
        } else if (node || (field && *field))
                fprintf(stderr, "  at %s%s%s%s%s\n", node ? "node " : "", node ? node : "",
                        node && field && *field ? ", " : "", field && *field ? "field " : "",
                        field && *field ? field : "");
        /* a list of errors already says what the detail would repeat */
        if (json_is_array(errors) && json_array_size(errors) > 0)
                ;
        else if (json_is_string(detail) && *json_string_value(detail))
                fprintf(stderr, "detail: %s\n", json_string_value(detail));
        else if (json_is_array(detail)) {
                size_t i;
                json_t *item;
                json_array_foreach (detail, i, item)
                        print_detail_item(item);
        } else if (json_is_object(detail) && json_object_size(detail) > 0) {
                json_t *list = json_object_get(detail, "errors");
                if (json_is_array(list)) {
                        size_t i;
                        json_t *item;
                        json_array_foreach (list, i, item)
                                print_detail_item(item);
                } else {
                        _cleanup_free_ char *s = json_dumps(detail, JSON_COMPACT | JSON_SORT_KEYS);
                        if (s)
                                fprintf(stderr, "detail: %s\n", s);
                }
        }
        if (hint)
                fprintf(stderr, "hint: %s\n", hint);
        else if (status == 401 && !ctx->token)
                fprintf(stderr, "hint: no API token given; pass --token, set AGENTLY_TOKEN, or "
                                "use --data-dir DIR to use the admin token `agently up` wrote\n");
        else if (status == 401)
                fprintf(stderr,
                        "hint: the token from %s was not accepted; check it, or create "
                        "a new one with `agently token create`\n",
                        ctx->token_source);
}

/* "connection refused", "could not resolve host example" ... */
static void transport_reason(CURL *c, CURLcode rc, long timeout_ms, char *out, size_t size)
{
        long os_errno = 0;

        curl_easy_getinfo(c, CURLINFO_OS_ERRNO, &os_errno);
        switch (rc) {
        case CURLE_COULDNT_CONNECT:
                if (os_errno) {
                        snprintf(out, size, "%s", strerror((int)os_errno));
                        out[0] = (char)(out[0] >= 'A' && out[0] <= 'Z' ? out[0] + 32 : out[0]);
                } else
                        snprintf(out, size, "connection refused");
                break;
        case CURLE_COULDNT_RESOLVE_HOST:
                snprintf(out, size, "cannot resolve the host name");
                break;
        case CURLE_OPERATION_TIMEDOUT:
                if (timeout_ms > 0)
                        snprintf(out, size, "no answer within %lds", timeout_ms / 1000);
                else
                        snprintf(out, size, "the connection went silent");
                break;
        case CURLE_GOT_NOTHING:
                snprintf(out, size, "the server closed the connection without answering");
                break;
        default:
                snprintf(out, size, "%s", curl_easy_strerror(rc));
                out[0] = (char)(out[0] >= 'A' && out[0] <= 'Z' ? out[0] + 32 : out[0]);
        }
}

void client_print_unreachable(struct client_ctx *ctx, const char *reason)
{
        client_fail(ctx, CLI_EXIT_UNAVAILABLE, "unreachable", NULL,
                    "set the address with --server URL or AGENTLY_SERVER",
                    "could not reach agently at %s: %s; is `agently up` running?", ctx->server,
                    reason);
}

static size_t write_to_buf(char *ptr, size_t size, size_t nmemb, void *userdata)
{
        struct buf *b = userdata;
        size_t n = size * nmemb;

        return buf_append(b, ptr, n) < 0 ? 0 : n;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
        struct client_ctx *ctx = userdata;
        size_t n = size * nmemb;
        static const char name[] = "idempotent-replayed:";

        if (n > sizeof(name) && strncasecmp(ptr, name, sizeof(name) - 1) == 0) {
                const char *v = ptr + sizeof(name) - 1;
                while (*v == ' ')
                        v++;
                ctx->replayed = strncasecmp(v, "true", 4) == 0;
        }
        return n;
}

void client_sleep_ms(long ms)
{
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static struct curl_slist *base_headers(struct client_ctx *ctx, const char *accept,
                                       const char *const *extra, bool has_body)
{
        struct curl_slist *h = NULL, *t;
        _cleanup_free_ char *accept_h = str_printf("Accept: %s", accept);
        _cleanup_free_ char *auth = NULL;

        if (!accept_h)
                return NULL;
        if (ctx->token) {
                auth = str_printf("Authorization: Bearer %s", ctx->token);
                if (!auth)
                        return NULL;
        }
        t = curl_slist_append(h, accept_h);
        if (!t)
                goto fail;
        h = t;
        if (has_body) {
                t = curl_slist_append(h, "Content-Type: application/json");
                if (!t)
                        goto fail;
                h = t;
        }
        if (auth) {
                t = curl_slist_append(h, auth);
                explicit_bzero(auth, strlen(auth));
                if (!t)
                        goto fail;
                h = t;
        }
        for (size_t i = 0; extra && extra[i]; i++) {
                t = curl_slist_append(h, extra[i]);
                if (!t)
                        goto fail;
                h = t;
        }
        return h;
fail:
        curl_slist_free_all(h);
        return NULL;
}

int client_call_status(struct client_ctx *ctx, const char *method, const char *path, json_t *body,
                       const char *const *headers, const long *quiet, json_t **out,
                       long *status_out)
{
        _cleanup_free_ char *url = str_printf("%s%s", ctx->server, path);
        _cleanup_free_ char *payload = NULL;
        _cleanup_buf_ struct buf resp;
        struct curl_slist *h = NULL;
        CURL *c = handle(ctx);
        CURLcode rc;
        long status = 0, waited = 0, backoff = 250;
        json_t *parsed = NULL;
        bool warned = false;

        buf_init(&resp, CLIENT_RESPONSE_MAX);
        *out = NULL;
        if (status_out)
                *status_out = 0;
        if (!url || !c) {
                fprintf(stderr, "error: out of memory\n");
                return CLI_EXIT_FAILURE;
        }
        if (body) {
                payload = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
                if (!payload) {
                        fprintf(stderr, "error: out of memory\n");
                        return CLI_EXIT_FAILURE;
                }
        }
        h = base_headers(ctx, "application/json", headers, body != NULL);
        if (!h) {
                fprintf(stderr, "error: out of memory\n");
                return CLI_EXIT_FAILURE;
        }
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_USERAGENT, CLIENT_USER_AGENT);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, CLIENT_CONNECT_MS);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, ctx->timeout_ms);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_to_buf);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp);
        if (strcmp(method, "GET") != 0) {
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload ? payload : "");
                curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)(payload ? strlen(payload) : 0));
                if (strcmp(method, "POST") != 0)
                        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        }
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, ctx);
        ctx->replayed = false;
        for (;;) {
                rc = curl_easy_perform(c);
                /* only reads are retried: a POST that timed out may have been applied */
                if (rc == CURLE_OK || rc == CURLE_WRITE_ERROR || strcmp(method, "GET") != 0 ||
                    waited >= ctx->retry_ms)
                        break;
                if (!warned) {
                        char reason[256];
                        transport_reason(c, rc, ctx->timeout_ms, reason, sizeof(reason));
                        fprintf(stderr,
                                "warning: lost contact with agently at %s (%s); retrying "
                                "for up to %lds\n",
                                ctx->server, reason, ctx->retry_ms / 1000);
                        warned = true;
                }
                client_sleep_ms(backoff);
                waited += backoff;
                backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
                buf_reset(&resp);
        }
        curl_slist_free_all(h);
        if (warned && rc == CURLE_OK)
                fprintf(stderr, "note: reconnected to agently\n");
        if (rc == CURLE_WRITE_ERROR)
                return client_fail(ctx, CLI_EXIT_FAILURE, "response_too_large", NULL, NULL,
                                   "the answer of %s %s exceeds %u MiB", method, path,
                                   CLIENT_RESPONSE_MAX >> 20);
        if (rc != CURLE_OK) {
                char reason[256];
                transport_reason(c, rc, ctx->timeout_ms, reason, sizeof(reason));
                client_print_unreachable(ctx, reason);
                return CLI_EXIT_UNAVAILABLE;
        }
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        if (status_out)
                *status_out = status;
        if (resp.len > 0) {
                json_error_t jerr;
                parsed = json_loadb(resp.data, resp.len, JSON_DECODE_ANY, &jerr);
                if (!parsed && status >= 200 && status < 300)
                        return client_fail(ctx, CLI_EXIT_FAILURE, "invalid_response", NULL, NULL,
                                           "the server's answer to %s %s is not JSON (%s at "
                                           "line %d); is %s an agently server?",
                                           method, path, jerr.text, jerr.line, ctx->server);
        }
        if (status >= 200 && status < 300) {
                *out = parsed;
                return CLI_EXIT_OK;
        }
        for (size_t i = 0; quiet && quiet[i]; i++)
                if (quiet[i] == status) {
                        *out = parsed;
                        return client_exit_for_status(status);
                }
        if (!parsed && resp.len > 0)
                client_fail(ctx, client_exit_for_status(status), "http_error", NULL, NULL,
                            "the server answered HTTP %ld: %.200s", status, resp.data);
        else
                client_print_api_error(ctx, status, parsed);
        int code = client_exit_for_status(status);
        if (status == 422) {
                const char *ecode = json_str(json_object_get(parsed, "error"), "code");
                if (ecode && strstr(ecode, "idempotency"))
                        code = CLI_EXIT_CONFLICT;
        }
        json_decref(parsed);
        return code;
}

int client_call(struct client_ctx *ctx, const char *method, const char *path, json_t *body,
                const char *const *headers, json_t **out)
{
        return client_call_status(ctx, method, path, body, headers, NULL, out, NULL);
}

/* ---- server-sent events ---- */

void client_sse_init(struct client_sse_parser *p,
                     int (*on_event)(const struct client_sse_event *ev, void *userdata),
                     void *userdata)
{
        memset(p, 0, sizeof(*p));
        p->on_event = on_event;
        p->userdata = userdata;
}

void client_sse_done(struct client_sse_parser *p)
{
        free(p->line);
        free(p->data);
        memset(p, 0, sizeof(*p));
}

static int grow(char **data, size_t *cap, size_t need)
{
        size_t ncap = *cap ? *cap : 256;
        char *n;

        if (need > CLIENT_SSE_EVENT_MAX + 2)
                return -ENOBUFS;
        if (need <= *cap)
                return 0;
        while (ncap < need)
                ncap *= 2;
        n = realloc(*data, ncap);
        if (!n)
                return -ENOMEM;
        *data = n;
        *cap = ncap;
        return 0;
}

static int sse_dispatch(struct client_sse_parser *p)
{
        int r = 0;

        /* per the WHATWG rules an event without data lines is not dispatched */
        if (p->data_len > 0) {
                struct client_sse_event ev;

                p->data[--p->data_len] = '\0'; /* drop the last '\n' */
                ev.id = p->has_id ? p->id : NULL;
                ev.event = p->event[0] ? p->event : "message";
                ev.data = p->data;
                r = p->on_event(&ev, p->userdata);
        }
        p->data_len = 0;
        p->event[0] = '\0';
        return r;
}

static int sse_line(struct client_sse_parser *p)
{
        const char *line = p->line ? p->line : "", *value;
        size_t field_len, value_len;
        const char *colon;

        if (p->line_len == 0)
                return sse_dispatch(p);
        if (line[0] == ':')
                return 0; /* a comment: the server's heartbeat */
        colon = memchr(line, ':', p->line_len);
        field_len = colon ? (size_t)(colon - line) : p->line_len;
        value = colon ? colon + 1 : line + p->line_len;
        if (colon && *value == ' ')
                value++;
        value_len = p->line_len - (size_t)(value - line);
        if (field_len == 4 && memcmp(line, "data", 4) == 0) {
                int r = grow(&p->data, &p->data_cap, p->data_len + value_len + 2);
                if (r < 0)
                        return r;
                memcpy(p->data + p->data_len, value, value_len);
                p->data_len += value_len;
                p->data[p->data_len++] = '\n';
                p->data[p->data_len] = '\0';
        } else if (field_len == 5 && memcmp(line, "event", 5) == 0) {
                snprintf(p->event, sizeof(p->event), "%.*s", (int)value_len, value);
        } else if (field_len == 2 && memcmp(line, "id", 2) == 0) {
                if (!memchr(value, '\0', value_len) && value_len < sizeof(p->id)) {
                        memcpy(p->id, value, value_len);
                        p->id[value_len] = '\0';
                        p->has_id = true;
                }
        }
        return 0; /* retry and unknown fields are ignored */
}

int client_sse_feed(struct client_sse_parser *p, const char *data, size_t len)
{
        for (size_t i = 0; i < len; i++) {
                char ch = data[i];
                int r;

                if (ch == '\n' && p->last_cr) {
                        p->last_cr = false; /* the LF of a CRLF */
                        continue;
                }
                p->last_cr = ch == '\r';
                if (ch == '\n' || ch == '\r') {
                        r = sse_line(p);
                        p->line_len = 0;
                        if (r != 0)
                                return r;
                        continue;
                }
                r = grow(&p->line, &p->line_cap, p->line_len + 2);
                if (r < 0)
                        return r;
                p->line[p->line_len++] = ch;
                p->line[p->line_len] = '\0';
        }
        return 0;
}

struct stream_state {
        CURL *curl;
        struct client_sse_parser parser;
        struct buf error_body;
        long status;
        int stopped; /* the callback's or parser's non-zero value */
};

static size_t stream_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
        struct stream_state *s = userdata;
        size_t n = size * nmemb;

        if (s->status == 0)
                curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &s->status);
        if (s->status < 200 || s->status >= 300)
                return buf_append(&s->error_body, ptr, n) < 0 ? 0 : n;
        s->stopped = client_sse_feed(&s->parser, ptr, n);
        return s->stopped ? 0 : n;
}

int client_stream(struct client_ctx *ctx, const char *path, const char *last_event_id,
                  int (*on_event)(const struct client_sse_event *ev, void *userdata),
                  void *userdata, char *transport_error, size_t transport_error_size)
{
        _cleanup_free_ char *url = str_printf("%s%s", ctx->server, path);
        _cleanup_free_ char *last = NULL;
        struct stream_state s = {0};
        const char *extra[2] = {NULL, NULL};
        struct curl_slist *h;
        CURLcode rc;
        int result;

        transport_error[0] = '\0';
        s.curl = handle(ctx);
        if (!url || !s.curl) {
                fprintf(stderr, "error: out of memory\n");
                return CLI_EXIT_FAILURE;
        }
        if (last_event_id) {
                last = str_printf("Last-Event-ID: %s", last_event_id);
                if (!last) {
                        fprintf(stderr, "error: out of memory\n");
                        return CLI_EXIT_FAILURE;
                }
                extra[0] = last;
        }
        h = base_headers(ctx, "text/event-stream", extra, false);
        if (!h) {
                fprintf(stderr, "error: out of memory\n");
                return CLI_EXIT_FAILURE;
        }
        client_sse_init(&s.parser, on_event, userdata);
        buf_init(&s.error_body, 1 << 20);
        curl_easy_setopt(s.curl, CURLOPT_URL, url);
        curl_easy_setopt(s.curl, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(s.curl, CURLOPT_USERAGENT, CLIENT_USER_AGENT);
        curl_easy_setopt(s.curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(s.curl, CURLOPT_CONNECTTIMEOUT_MS, CLIENT_CONNECT_MS);
        /* no overall timeout: a stream lives as long as the run; a silent one is dead */
        curl_easy_setopt(s.curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(s.curl, CURLOPT_LOW_SPEED_TIME, CLIENT_STREAM_IDLE_S);
        curl_easy_setopt(s.curl, CURLOPT_WRITEFUNCTION, stream_write);
        curl_easy_setopt(s.curl, CURLOPT_WRITEDATA, &s);
        rc = curl_easy_perform(s.curl);
        curl_slist_free_all(h);
        if (s.status == 0)
                curl_easy_getinfo(s.curl, CURLINFO_RESPONSE_CODE, &s.status);

        if (s.stopped > 0) {
                result = CLIENT_STREAM_STOPPED;
        } else if (s.stopped < 0) {
                result = client_fail(ctx, CLI_EXIT_FAILURE, "stream_failed", NULL, NULL,
                                     "could not read the event stream: %s", strerror(-s.stopped));
        } else if (s.status >= 300 || (rc == CURLE_OK && s.status < 200)) {
                json_t *body = s.error_body.len
                                   ? json_loadb(s.error_body.data, s.error_body.len, 0, NULL)
                                   : NULL;
                client_print_api_error(ctx, s.status, body);
                json_decref(body);
                result = client_exit_for_status(s.status);
        } else if (rc != CURLE_OK) {
                transport_reason(s.curl, rc, 0, transport_error, transport_error_size);
                result = CLIENT_STREAM_DROPPED;
        } else
                result = CLIENT_STREAM_CLOSED;
        client_sse_done(&s.parser);
        buf_free(&s.error_body);
        return result;
}
