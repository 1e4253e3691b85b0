/* Sending LLM calls over runtime_http; see llm_client.h. */
#include "llm_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "cleanup.h"
#include "llm_internal.h"
#include "runtime_http.h"
#include "strutil.h"

/* A key shorter than this is not scrubbed from messages (it would mangle ordinary words);
 * real provider keys are far longer. */
#define SCRUB_MIN_KEY 8

struct llm_call {
        struct runtime_http *h;
        enum llm_provider provider;
        bool stream;
        char *api_key;    /* zeroed when freed */
        char **headers;   /* the key's header lines, zeroed when freed */
        json_t *http_req; /* {"method", "url", "body"} for runtime_http */
        int64_t started_ms, deadline_ms, connect_timeout_ms;
        int max_attempts, attempt;
        uint64_t rng;

        struct runtime_http_transfer *transfer;
        struct runtime_http_timer *retry_timer, *text_timer;

        /* the attempt in flight */
        struct llm_stream *parser;
        struct buf body;  /* a whole answer */
        char *feed_error; /* why the body was refused while it arrived */
        const char *feed_class;
        struct buf pending; /* streamed text not handed out yet */
        int64_t last_text_ms;

        bool held;    /* its request's end waits for llm_call_release */
        int busy;     /* inside on_text / on_retry */
        bool aborted; /* llm_call_abort while busy */

        void (*on_text)(void *, const char *, size_t, int);
        void (*on_retry)(void *, const json_t *, int, int64_t);
        void (*on_done)(void *, struct llm_result *, json_t *, const struct llm_call_info *);
        void *userdata;
};

static void attempt_reset(struct llm_call *c)
{
        llm_stream_free(c->parser);
        c->parser = NULL;
        buf_reset(&c->body);
        buf_reset(&c->pending);
        free(c->feed_error);
        c->feed_error = NULL;
        c->feed_class = NULL;
}

static void call_free(struct llm_call *c)
{
        if (!c)
                return;
        runtime_http_abort(c->h, c->transfer);
        runtime_http_timer_cancel(c->h, c->retry_timer);
        runtime_http_timer_cancel(c->h, c->text_timer);
        attempt_reset(c);
        buf_free(&c->body);
        buf_free(&c->pending);
        if (c->api_key) {
                explicit_bzero(c->api_key, strlen(c->api_key));
                free(c->api_key);
        }
        for (char **x = c->headers; x && *x; x++)
                explicit_bzero(*x, strlen(*x));
        llm_headers_free(c->headers);
        json_decref(c->http_req);
        free(c);
}

void llm_call_release(struct llm_call *c)
{
        if (!c || !c->held)
                return;
        c->held = false;
        runtime_http_release(c->h, c->transfer); /* none while it waits to retry */
}

void llm_call_abort(struct llm_call *c)
{
        if (!c)
                return;
        if (c->busy) { /* inside one of its callbacks: freed when it returns */
                c->aborted = true;
                runtime_http_abort(c->h, c->transfer);
                c->transfer = NULL;
                runtime_http_timer_cancel(c->h, c->retry_timer);
                c->retry_timer = NULL;
                runtime_http_timer_cancel(c->h, c->text_timer);
                c->text_timer = NULL;
                return;
        }
        call_free(c);
}

bool llm_error_class_retryable(const char *klass)
{
        static const char *const retryable[] = {"connect", "network", "http_429", "http_5xx",
                                                "stream_error"};

        for (size_t i = 0; klass && i < sizeof(retryable) / sizeof(retryable[0]); i++)
                if (strcmp(klass, retryable[i]) == 0)
                        return true;
        return false;
}

/* ---- the key never leaves in anything but its header ------------------------------ */

/* Replaces every occurrence of key in the malloc'd string *s (len *len when non-NULL). */
static void scrub(const char *key, char **s, size_t *len)
{
        static const char mark[] = "[redacted]";
        size_t klen = key ? strlen(key) : 0, n;
        _cleanup_buf_ struct buf out = {0};
        const char *p, *hit;

        if (klen < SCRUB_MIN_KEY || !*s)
                return;
        n = len ? *len : strlen(*s);
        if (!memmem(*s, n, key, klen))
                return;
        buf_init(&out, 2 * n + 64); /* a mark is at most 10/8 of the key it replaces */
        for (p = *s; (hit = memmem(p, n - (size_t)(p - *s), key, klen)); p = hit + klen) {
                if (buf_append(&out, p, (size_t)(hit - p)) < 0 ||
                    buf_append(&out, mark, sizeof(mark) - 1) < 0)
                        return;
        }
        if (buf_append(&out, p, n - (size_t)(p - *s)) < 0)
                return;
        explicit_bzero(*s, n);
        free(*s);
        if (len)
                *len = out.len;
        *s = buf_steal(&out);
}

static void scrub_result(const char *key, struct llm_result *r)
{
        scrub(key, &r->text, &r->text_len);
        scrub(key, &r->stop_detail, NULL);
        for (size_t i = 0; i < r->tool_call_count; i++)
                scrub(key, &r->tool_calls[i].arguments, NULL);
}

/* {"class", "message"} with the key scrubbed from message; NULL only when memory ran out. */
static json_t *call_error(struct llm_call *c, const char *klass, char *message)
{
        json_t *e;

        scrub(c->api_key, &message, NULL);
        e = json_pack("{s:s, s:s}", "class", klass, "message", message ? message : klass);
        free(message);
        return e;
}

/* ---- finishing ---------------------------------------------------------------------- */

/* Hands text to on_text; false when the call was aborted meanwhile (it is freed then). */
static bool call_text(struct llm_call *c, const char *text, size_t len)
{
        c->busy++;
        c->on_text(c->userdata, text, len, c->attempt);
        c->busy--;
        c->last_text_ms = runtime_http_now_ms();
        if (c->aborted) {
                call_free(c);
                return false;
        }
        return true;
}

static void call_finish(struct llm_call *c, struct llm_result *result, json_t *error)
{
        void (*on_done)(void *, struct llm_result *, json_t *, const struct llm_call_info *) =
            c->on_done;
        void *userdata = c->userdata;
        struct llm_call_info info = {.attempts = c->attempt,
                                     .duration_ms = runtime_http_now_ms() - c->started_ms};

        if (result && c->on_text && c->pending.len > 0 &&
            info.duration_ms + c->started_ms - c->last_text_ms >= LLM_TEXT_INTERVAL_MS) {
                if (!call_text(c, c->pending.data, c->pending.len)) {
                        llm_result_free(result);
                        free(result);
                        return;
                }
        }
        if (error)
                json_object_set_new(error, "attempts", json_integer(c->attempt));
        call_free(c);
        on_done(userdata, result, error, &info);
}

/* ---- attempts ----------------------------------------------------------------------- */

static int attempt_start(struct llm_call *c, char **error);

static void retry_due(void *userdata)
{
        struct llm_call *c = userdata;
        _cleanup_free_ char *msg = NULL;

        c->retry_timer = NULL;
        if (attempt_start(c, &msg) < 0)
                call_finish(c, NULL,
                            call_error(c, "connect",
                                       str_printf("could not start the retry: %s",
                                                  msg ? msg : "out of memory")));
}

static uint64_t next_random(struct llm_call *c)
{
        c->rng ^= c->rng << 13;
        c->rng ^= c->rng >> 7;
        c->rng ^= c->rng << 17;
        return c->rng;
}

/* The attempt failed with error (owned): another one after a wait, or the end. */
static void attempt_failed(struct llm_call *c, json_t *error)
{
        const char *klass = json_string_value(json_object_get(error, "class"));
        json_t *ra = json_object_get(error, "retry_after_ms");
        int64_t now = runtime_http_now_ms(), wait;

        if (!error || !llm_error_class_retryable(klass) || c->attempt >= c->max_attempts) {
                call_finish(c, NULL, error);
                return;
        }
        if (json_is_integer(ra) && json_integer_value(ra) > 0) {
                wait = json_integer_value(ra); /* the server said when */
        } else {
                int shift = c->attempt - 1 < 16 ? c->attempt - 1 : 16;
                wait = (int64_t)LLM_RETRY_BASE_MS << shift;
                if (wait > LLM_RETRY_MAX_MS)
                        wait = LLM_RETRY_MAX_MS;
                /* jitter: [wait/2, wait], so calls failing together do not retry together */
                wait = wait / 2 + (int64_t)(next_random(c) % (uint64_t)(wait / 2 + 1));
        }
        if (now + wait >= c->deadline_ms) {
                const char *m = json_string_value(json_object_get(error, "message"));
                json_object_set_new(
                    error, "message",
                    json_sprintf("%s (not retried: the wait of %lld ms would pass the call's "
                                 "total timeout)",
                                 m ? m : klass, (long long)wait));
                call_finish(c, NULL, error);
                return;
        }
        if (runtime_http_timer_start(c->h, wait, retry_due, c, &c->retry_timer) < 0) {
                call_finish(c, NULL, error);
                return;
        }
        if (c->on_retry) {
                c->busy++;
                c->on_retry(c->userdata, error, c->attempt, wait);
                c->busy--;
        }
        json_decref(error);
        if (c->aborted)
                call_free(c);
}

static void text_due(void *userdata)
{
        struct llm_call *c = userdata;

        c->text_timer = NULL;
        if (c->pending.len == 0)
                return;
        if (call_text(c, c->pending.data, c->pending.len))
                buf_reset(&c->pending);
}

/* A piece of a 2xx body (inside libcurl's work: no transfer may start or stop here). */
static int on_body(void *userdata, const char *data, size_t len)
{
        struct llm_call *c = userdata;
        const char *text;
        size_t tlen;
        int r;

        if (!c->stream) {
                r = buf_append(&c->body, data, len);
                if (r < 0) {
                        c->feed_class = "too_large";
                        c->feed_error =
                            str_printf("the answer is over %d bytes", LLM_MAX_RESPONSE_BYTES);
                }
                return r;
        }
        r = llm_stream_feed(c->parser, data, len, &c->feed_error);
        if (r < 0) {
                c->feed_class = llm_stream_server_failed(c->parser) ? "stream_error"
                                : r == -ENOBUFS                     ? "too_large"
                                                                    : "bad_response";
                return r;
        }
        if (c->on_text && llm_stream_take_text(c->parser, &text, &tlen)) {
                /* the result keeps all text: a preview that cannot grow is only shorter */
                (void)buf_append(&c->pending, text, tlen);
                if (!c->text_timer) {
                        int64_t wait =
                            c->last_text_ms + LLM_TEXT_INTERVAL_MS - runtime_http_now_ms();
                        /* a timer only changes the heap, which is safe here */
                        (void)runtime_http_timer_start(c->h, wait, text_due, c, &c->text_timer);
                }
        }
        return 0;
}

/* The message of an HTTP error: the provider's own error object when the body has one. */
static char *http_error_message(struct llm_call *c, const json_t *error)
{
        const json_t *body = json_object_get(error, "body");
        json_int_t status = json_integer_value(json_object_get(error, "status"));
        _cleanup_free_ char *m = NULL;

        if (json_is_object(body) && json_object_get(body, "error")) {
                llm_server_error(c->provider, json_object_get(body, "error"), &m);
                return str_printf("http %lld: %s", (long long)status, m ? m : "error");
        }
        if (json_is_string(body) && json_string_length(body) > 0)
                return str_printf("http %lld: %.300s", (long long)status, json_string_value(body));
        return str_printf("http %lld from the provider", (long long)status);
}

/* The transfer of an attempt ended. */
static void on_transfer_done(void *userdata, json_t *output, json_t *terror)
{
        struct llm_call *c = userdata;
        _cleanup_json_ json_t *out = output, *terr = terror;
        struct llm_result *result;
        char *msg = NULL;
        int r;

        c->transfer = NULL;
        if (c->feed_error || c->feed_class) {
                attempt_failed(c, call_error(c, c->feed_class ? c->feed_class : "bad_response",
                                             TAKE_PTR(c->feed_error)));
                return;
        }
        if (terr) {
                const char *klass = json_string_value(json_object_get(terr, "class"));
                json_t *e;
                if (!klass)
                        klass = "network";
                if (json_object_get(terr, "status"))
                        msg = http_error_message(c, terr);
                else if (strcmp(klass, "timeout") == 0)
                        msg = str_printf("no complete answer within the call's total timeout of "
                                         "%lld ms",
                                         (long long)(c->deadline_ms - c->started_ms));
                else
                        msg = strdup(json_string_value(json_object_get(terr, "message"))
                                         ?: "transfer failed");
                e = call_error(c, klass, msg);
                if (e && json_object_get(terr, "status"))
                        json_object_set(e, "status", json_object_get(terr, "status"));
                if (e && json_object_get(terr, "retry_after_ms"))
                        json_object_set(e, "retry_after_ms",
                                        json_object_get(terr, "retry_after_ms"));
                attempt_failed(c, e);
                return;
        }
        result = calloc(1, sizeof(*result));
        if (!result) {
                attempt_failed(c, call_error(c, "bad_response", strdup("out of memory")));
                return;
        }
        if (c->stream) {
                bool cut = !llm_stream_done(c->parser);
                r = llm_stream_finish(c->parser, result, &msg);
                if (r < 0 && cut) {
                        free(msg);
                        msg = strdup("the stream ended before its last event (connection cut)");
                }
                if (r < 0) {
                        llm_result_free(result);
                        free(result);
                        attempt_failed(c, call_error(c, cut ? "network" : "bad_response", msg));
                        return;
                }
        } else {
                r = llm_parse_response(c->provider, c->body.data ? c->body.data : "", c->body.len,
                                       result, &msg);
                if (r < 0) {
                        llm_result_free(result);
                        free(result);
                        attempt_failed(c, call_error(c, "bad_response", msg));
                        return;
                }
        }
        scrub_result(c->api_key, result);
        call_finish(c, result, NULL);
}

static int attempt_start(struct llm_call *c, char **error)
{
        int64_t left = c->deadline_ms - runtime_http_now_ms();
        struct runtime_http_options o = {
            .timeout_ms = left,
            .connect_timeout_ms = c->connect_timeout_ms < left ? c->connect_timeout_ms : left,
            .max_response_bytes = LLM_MAX_RESPONSE_BYTES,
            .extra_headers = (const char *const *)c->headers,
            .on_body = on_body,
            .on_done = on_transfer_done,
            .hold_body_end = c->held,
        };
        int r;

        if (left <= 0) {
                *error = strdup("no time left within the call's total timeout");
                return -ETIMEDOUT;
        }
        attempt_reset(c);
        if (c->stream && (r = llm_stream_new(c->provider, &c->parser)) < 0)
                return r;
        c->attempt++;
        return runtime_http_start_ex(c->h, c->http_req, NULL, &o, c, &c->transfer, error);
}

int llm_call_start(struct runtime_http *h, const struct llm_call_params *p, struct llm_call **out,
                   char **error)
{
        struct llm_call *c;
        json_t *body = NULL;
        _cleanup_free_ char *url = NULL;
        size_t blen;
        int r;

        if (error)
                *error = NULL;
        *out = NULL;
        if (!p->on_done)
                return llm_fail(error, -EINVAL, "llm call without an on_done callback");
        if (!p->base_url ||
            !(str_has_prefix(p->base_url, "http://") || str_has_prefix(p->base_url, "https://")))
                return llm_fail(error, -EINVAL,
                                "base_url must start with http:// or https://, got '%.200s'",
                                p->base_url ? p->base_url : "(none)");
        if (p->api_key && strpbrk(p->api_key, "\r\n"))
                return llm_fail(error, -EINVAL, "the api key holds a line break");
        if (p->body_cache) { /* the text, most of it kept from the previous call */
                _cleanup_free_ char *text = NULL;
                size_t tlen;
                if ((r = llm_build_request_text(p->provider, p->request, p->body_cache, &text,
                                                &tlen, error)) < 0)
                        return r;
                body = json_stringn_nocheck(text, tlen); /* JSON that jansson wrote */
                if (!body)
                        return -ENOMEM;
        } else if ((r = llm_build_request(p->provider, p->request, &body, error)) < 0) {
                return r;
        }
        blen = strlen(p->base_url);
        while (blen > 0 && p->base_url[blen - 1] == '/')
                blen--;
        url = str_printf("%.*s%s", (int)blen, p->base_url, llm_endpoint_path(p->provider));
        c = calloc(1, sizeof(*c));
        if (!c || !url) {
                free(c);
                json_decref(body);
                return -ENOMEM;
        }
        c->h = h;
        c->held = p->hold;
        c->provider = p->provider;
        c->stream = json_is_true(json_object_get(p->request, "stream"));
        buf_init(&c->body, LLM_MAX_RESPONSE_BYTES);
        buf_init(&c->pending, LLM_MAX_TEXT_BYTES);
        /* a text body is sent as written; it is JSON */
        c->http_req =
            json_is_string(body)
                ? json_pack("{s:s, s:s, s:{s:s}, s:o}", "method", "POST", "url", url, "headers",
                            "Content-Type", "application/json", "body", body)
                : json_pack("{s:s, s:s, s:o}", "method", "POST", "url", url, "body", body);
        c->api_key = strdup(p->api_key ? p->api_key : "");
        c->headers = llm_request_headers(p->provider, p->api_key);
        if (!c->http_req || !c->api_key || !c->headers) {
                call_free(c);
                return -ENOMEM;
        }
        c->started_ms = runtime_http_now_ms();
        c->deadline_ms = c->started_ms + (p->total_timeout_ms > 0 ? p->total_timeout_ms
                                                                  : LLM_DEFAULT_TOTAL_TIMEOUT_MS);
        c->connect_timeout_ms =
            p->connect_timeout_ms > 0 ? p->connect_timeout_ms : LLM_DEFAULT_CONNECT_TIMEOUT_MS;
        c->max_attempts = p->max_attempts > 0 ? p->max_attempts : LLM_DEFAULT_MAX_ATTEMPTS;
        c->last_text_ms = c->started_ms - LLM_TEXT_INTERVAL_MS;
        {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                c->rng = ((uint64_t)(uintptr_t)c ^ (uint64_t)ts.tv_nsec) | 1;
        }
        c->on_text = p->on_text;
        c->on_retry = p->on_retry;
        c->on_done = p->on_done;
        c->userdata = p->userdata;
        if ((r = attempt_start(c, error)) < 0) {
                call_free(c);
                return r;
        }
        *out = c;
        return 0;
}
