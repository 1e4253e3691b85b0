/* HTTP effects over one libcurl multi handle; see runtime_http.h. */
#include "runtime_http.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "buf.h"
#include "cleanup.h"
#include "strutil.h"

/* How many finished transfers' easy handles are kept for reuse (~20 KB each). */
#define RUNTIME_HTTP_IDLE_HANDLES 128

enum transfer_list { LIST_ACTIVE, LIST_DONE, LIST_CALLBACK };

struct transfer_queue {
        struct runtime_http_transfer *head, *tail;
};

struct runtime_http_transfer {
        struct runtime_http_transfer *prev, *next;
        enum transfer_list list; /* which of h's queues holds it */
        CURL *easy;
        struct curl_slist *headers;
        char *body;
        size_t body_len, body_sent; /* a held body (read_body): its size and what went out */
        bool held;                  /* its last byte waits for runtime_http_release */
        bool paused;                /* read_body paused the upload for it */
        struct buf response;
        bool too_large;
        bool refused_body;   /* on_body asked to stop */
        int status_expected; /* -1 not known yet, else whether the status is expected */
        CURLcode result;     /* once finished */
        int64_t timeout_ms;
        json_t *expect; /* array of accepted statuses, or NULL for 2xx */
        void *userdata;
        int (*on_body)(void *userdata, const char *data, size_t len);
        void (*on_done)(void *userdata, json_t *output, json_t *error);
        /* a finished transfer without on_done: its outcome, built when it was collected */
        json_t *done_output, *done_error;
        char curl_error[CURL_ERROR_SIZE]; /* libcurl's detail of a failure */
};

struct runtime_http_timer {
        int64_t due_ms;
        uint64_t seq; /* timers due at the same moment run in the order they were started */
        size_t index; /* in the heap */
        void (*fn)(void *userdata);
        void *userdata;
};

struct runtime_http {
        CURLM *multi;
        char user_agent[128];
        struct transfer_queue queues[3]; /* LIST_ACTIVE, LIST_DONE, LIST_CALLBACK */
        unsigned active;
        struct runtime_http_timer **timers; /* a binary min-heap on (due_ms, seq) */
        size_t ntimers, timers_cap;
        uint64_t timer_seq;
        /* easy handles of finished transfers, reset and kept for the next ones: a handle and
         * its buffers are allocated once, not per request (a map's items are many small
         * requests) */
        CURL *idle[RUNTIME_HTTP_IDLE_HANDLES];
        unsigned nidle;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init(void)
{
        curl_global_init(CURL_GLOBAL_DEFAULT);
}

int64_t runtime_http_now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int runtime_http_new(const char *user_agent, struct runtime_http **out)
{
        struct runtime_http *h;

        pthread_once(&global_once, global_init);
        h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        snprintf(h->user_agent, sizeof(h->user_agent), "%s",
                 user_agent ? user_agent : "agently-worker");
        h->multi = curl_multi_init();
        if (!h->multi) {
                free(h);
                return -ENOMEM;
        }
        *out = h;
        return 0;
}

static void queue_push(struct runtime_http *h, enum transfer_list l,
                       struct runtime_http_transfer *t)
{
        struct transfer_queue *q = &h->queues[l];

        t->list = l;
        t->next = NULL;
        t->prev = q->tail;
        if (q->tail)
                q->tail->next = t;
        else
                q->head = t;
        q->tail = t;
}

static void queue_unlink(struct runtime_http *h, struct runtime_http_transfer *t)
{
        struct transfer_queue *q = &h->queues[t->list];

        if (t->prev)
                t->prev->next = t->next;
        else
                q->head = t->next;
        if (t->next)
                t->next->prev = t->prev;
        else
                q->tail = t->prev;
        t->prev = t->next = NULL;
}

/* A handle for a new transfer: a kept one (reset to libcurl's defaults when it was put
 * back) or a new one; NULL when out of memory. */
static CURL *handle_get(struct runtime_http *h)
{
        return h->nidle > 0 ? h->idle[--h->nidle] : curl_easy_init();
}

/* Keeps easy (out of the multi handle) for a later transfer, or frees it when enough are
 * kept. curl_easy_reset forgets every option of the last request (its URL, headers, body,
 * callbacks and their data); the connections stay the multi handle's. */
static void handle_put(struct runtime_http *h, CURL *easy)
{
        if (h->nidle < RUNTIME_HTTP_IDLE_HANDLES) {
                curl_easy_reset(easy);
                h->idle[h->nidle++] = easy;
        } else {
                curl_easy_cleanup(easy);
        }
}

/* Unlinks t (it is always in one of h's queues) and frees it. */
static void transfer_free(struct runtime_http *h, struct runtime_http_transfer *t)
{
        if (!t)
                return;
        if (t->easy) {
                curl_multi_remove_handle(h->multi, t->easy);
                handle_put(h, t->easy);
        }
        queue_unlink(h, t);
        if (h->active > 0)
                h->active--;
        /* a header may hold an API key: not left behind in freed memory */
        for (struct curl_slist *l = t->headers; l; l = l->next)
                explicit_bzero(l->data, strlen(l->data));
        curl_slist_free_all(t->headers);
        free(t->body);
        buf_free(&t->response);
        json_decref(t->expect);
        json_decref(t->done_output);
        json_decref(t->done_error);
        free(t);
}

static void timer_heap_free(struct runtime_http *h);

void runtime_http_free(struct runtime_http *h)
{
        if (!h)
                return;
        for (int l = LIST_ACTIVE; l <= LIST_CALLBACK; l++)
                while (h->queues[l].head)
                        transfer_free(h, h->queues[l].head);
        timer_heap_free(h);
        while (h->nidle > 0)
                curl_easy_cleanup(h->idle[--h->nidle]);
        curl_multi_cleanup(h->multi);
        free(h);
}

static bool status_expected(const json_t *expect, long status);

/*
 * A held body goes out through here: all of it but its last byte, then the upload pauses
 * until runtime_http_release. The server cannot act on a request it has not wholly read
 * (its Content-Length is sent), and a transfer aborted meanwhile leaves it a request cut
 * short, which it discards.
 */
static size_t read_body(char *to, size_t size, size_t n, void *userdata)
{
        struct runtime_http_transfer *t = userdata;
        size_t left = t->body_len - t->body_sent, want = size * n;

        if (t->held && left <= 1) {
                t->paused = true;
                return CURL_READFUNC_PAUSE;
        }
        if (t->held)
                left--;
        if (want > left)
                want = left;
        memcpy(to, t->body + t->body_sent, want);
        t->body_sent += want;
        return want;
}

/* libcurl sends the body again when a reused connection turned out closed */
static int seek_body(void *userdata, curl_off_t offset, int origin)
{
        struct runtime_http_transfer *t = userdata;

        if (origin != SEEK_SET || offset < 0 || (size_t)offset > t->body_len)
                return CURL_SEEKFUNC_CANTSEEK;
        t->body_sent = (size_t)offset;
        return CURL_SEEKFUNC_OK;
}

void runtime_http_release(struct runtime_http *h, struct runtime_http_transfer *t)
{
        (void)h;
        if (!t || !t->held)
                return;
        t->held = false;
        if (t->paused) {
                t->paused = false;
                curl_easy_pause(t->easy, CURLPAUSE_CONT);
        }
}

static size_t on_body(char *data, size_t size, size_t n, void *userdata)
{
        struct runtime_http_transfer *t = userdata;

        if (t->on_body && t->status_expected < 0) {
                long status = 0;
                curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
                t->status_expected = status_expected(t->expect, status);
        }
        if (t->on_body && t->status_expected == 1) {
                if (t->on_body(t->userdata, data, size * n) < 0) {
                        t->refused_body = true;
                        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
                }
                return size * n;
        }
        if (buf_append(&t->response, data, size * n) < 0) {
                t->too_large = true;
                return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
        }
        return size * n;
}

static bool header_value_ok(const char *s)
{
        for (; *s; s++)
                if (*s == '\r' || *s == '\n')
                        return false;
        return true;
}

static bool header_name_ok(const char *s)
{
        if (!*s || strlen(s) > 200)
                return false;
        for (; *s; s++)
                if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
                        return false;
        return true;
}

static int add_header(struct runtime_http_transfer *t, const char *name, const char *value)
{
        _cleanup_free_ char *line = str_printf("%s: %s", name, value);
        struct curl_slist *l;

        if (!line)
                return -ENOMEM;
        l = curl_slist_append(t->headers, line);
        if (!l)
                return -ENOMEM;
        t->headers = l;
        return 0;
}

/* Hands msg (malloc'd, may be NULL on allocation failure) to the caller's *error. */
static int fail_request(char **error, char *msg)
{
        if (error)
                *error = msg;
        else
                free(msg);
        return -EINVAL;
}

int runtime_http_start(struct runtime_http *h, const json_t *request, const char *idempotency_key,
                       int64_t timeout_ms, bool fresh_connection, void *userdata,
                       struct runtime_http_transfer **out, char **error)
{
        struct runtime_http_options o = {.timeout_ms = timeout_ms,
                                         .fresh_connection = fresh_connection};

        return runtime_http_start_ex(h, request, idempotency_key, &o, userdata, out, error);
}

int runtime_http_start_ex(struct runtime_http *h, const json_t *request,
                          const char *idempotency_key, const struct runtime_http_options *o,
                          void *userdata, struct runtime_http_transfer **out, char **error)
{
        static const struct runtime_http_options defaults;
        const char *method = json_string_value(json_object_get(request, "method"));
        const char *url = json_string_value(json_object_get(request, "url"));
        const json_t *headers = json_object_get(request, "headers");
        const json_t *body = json_object_get(request, "body");
        const json_t *expect = json_object_get(request, "expect_status");
        struct runtime_http_transfer *t;
        bool has_content_type = false, has_key = false;
        int64_t timeout_ms, connect_ms;
        const char *name;
        json_t *value;
        int r;

        if (!o)
                o = &defaults;
        if (error)
                *error = NULL;
        if (!method)
                method = body && !json_is_null(body) ? "POST" : "GET";
        if (!header_name_ok(method) || strlen(method) > 16)
                return fail_request(error, str_printf("invalid http method '%s'", method));
        if (!url || !(str_has_prefix(url, "http://") || str_has_prefix(url, "https://")))
                return fail_request(error,
                                    str_printf("url must start with http:// or https://, got '%s'",
                                               url ? url : "(none)"));
        if (headers && !json_is_object(headers))
                return fail_request(error, strdup("request.headers must be an object"));
        if (headers && json_object_size(headers) > RUNTIME_HTTP_MAX_HEADERS)
                return fail_request(error, strdup("request.headers has too many entries"));
        if (expect && !json_is_array(expect))
                return fail_request(
                    error,
                    strdup(
                        "request.expect_status must be an array of statuses or [lo, hi] ranges"));
        timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : RUNTIME_HTTP_DEFAULT_TIMEOUT_MS;
        connect_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms
                                               : (timeout_ms < 10000 ? timeout_ms : 10000);

        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        /* linked before anything can fail, so transfer_free() unlinks consistently */
        queue_push(h, LIST_ACTIVE, t);
        h->active++;
        buf_init(&t->response,
                 o->max_response_bytes ? o->max_response_bytes : RUNTIME_HTTP_MAX_RESPONSE_BYTES);
        t->userdata = userdata;
        t->timeout_ms = timeout_ms;
        t->on_body = o->on_body;
        t->on_done = o->on_done;
        t->status_expected = -1;
        t->expect = expect ? json_incref((json_t *)expect) : NULL;
        t->easy = handle_get(h);
        if (!t->easy) {
                transfer_free(h, t);
                return -ENOMEM;
        }

        r = 0;
        json_object_foreach ((json_t *)headers, name, value) {
                const char *v = json_string_value(value);
                if (!v || !header_name_ok(name) || !header_value_ok(v)) {
                        transfer_free(h, t);
                        return fail_request(error,
                                            str_printf("invalid header '%s' (name must be a token, "
                                                       "value a string without line breaks)",
                                                       name));
                }
                /* the user's own key is sent as given: a key shared across runs is how a
                 * service deduplicates them */
                if (strcasecmp(name, "idempotency-key") == 0)
                        has_key = true;
                if (strcasecmp(name, "content-type") == 0)
                        has_content_type = true;
                if ((r = add_header(t, name, v)) < 0)
                        break;
        }
        if (r == 0 && idempotency_key && !has_key)
                r = add_header(t, "Idempotency-Key", idempotency_key);
        if (r == 0 && body && !json_is_null(body)) {
                /* a string is text as written, anything else JSON; the user's type wins */
                bool text = json_is_string(body);
                t->body = text ? strdup(json_string_value(body))
                               : json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
                if (!t->body)
                        r = -ENOMEM;
                else if (!has_content_type)
                        r = add_header(t, "Content-Type",
                                       text ? "text/plain; charset=utf-8" : "application/json");
        }
        for (const char *const *x = o->extra_headers; r == 0 && x && *x; x++) {
                struct curl_slist *l = curl_slist_append(t->headers, *x);
                if (!l)
                        r = -ENOMEM;
                else
                        t->headers = l;
        }
        if (r == 0)
                r = add_header(t, "Expect", ""); /* no 100-continue round trip */
        if (r < 0) {
                transfer_free(h, t);
                return r;
        }

        curl_easy_setopt(t->easy, CURLOPT_URL, url);
        curl_easy_setopt(t->easy, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(t->easy, CURLOPT_CUSTOMREQUEST, method);
        if (strcmp(method, "HEAD") == 0)
                curl_easy_setopt(t->easy, CURLOPT_NOBODY, 1L);
        curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
        if (t->body && o->hold_body_end && t->body[0]) {
                t->held = true;
                t->body_len = strlen(t->body);
                curl_easy_setopt(t->easy, CURLOPT_UPLOAD, 0L);
                curl_easy_setopt(t->easy, CURLOPT_POST, 1L);
                curl_easy_setopt(t->easy, CURLOPT_READFUNCTION, read_body);
                curl_easy_setopt(t->easy, CURLOPT_READDATA, t);
                curl_easy_setopt(t->easy, CURLOPT_SEEKFUNCTION, seek_body);
                curl_easy_setopt(t->easy, CURLOPT_SEEKDATA, t);
                curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)t->body_len);
        } else if (t->body) {
                curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->body);
                curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(t->body));
        }
        curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
        curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)connect_ms);
        curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
        curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t);
        curl_easy_setopt(t->easy, CURLOPT_USERAGENT, h->user_agent);
        curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, t->curl_error);
        /* libcurl sends a request again by itself when a reused keep-alive connection turns
         * out dead; a fresh connection is what rules that out */
        if (o->fresh_connection)
                curl_easy_setopt(t->easy, CURLOPT_FRESH_CONNECT, 1L);

        if (curl_multi_add_handle(h->multi, t->easy) != CURLM_OK) {
                transfer_free(h, t);
                return -ENOMEM;
        }
        *out = t;
        return 0;
}

void runtime_http_abort(struct runtime_http *h, struct runtime_http_transfer *t)
{
        transfer_free(h, t);
}

unsigned runtime_http_active(const struct runtime_http *h)
{
        return h->active;
}

/* ---- timers: a binary min-heap on (due_ms, seq) -------------------------------------- */

static bool timer_before(const struct runtime_http_timer *a, const struct runtime_http_timer *b)
{
        return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->seq < b->seq);
}

static void timer_place(struct runtime_http *h, size_t i, struct runtime_http_timer *t)
{
        h->timers[i] = t;
        t->index = i;
}

static void timer_sift_up(struct runtime_http *h, size_t i)
{
        struct runtime_http_timer *t = h->timers[i];

        while (i > 0 && timer_before(t, h->timers[(i - 1) / 2])) {
                timer_place(h, i, h->timers[(i - 1) / 2]);
                i = (i - 1) / 2;
        }
        timer_place(h, i, t);
}

static void timer_sift_down(struct runtime_http *h, size_t i)
{
        struct runtime_http_timer *t = h->timers[i];

        for (;;) {
                size_t c = 2 * i + 1;
                if (c >= h->ntimers)
                        break;
                if (c + 1 < h->ntimers && timer_before(h->timers[c + 1], h->timers[c]))
                        c++;
                if (!timer_before(h->timers[c], t))
                        break;
                timer_place(h, i, h->timers[c]);
                i = c;
        }
        timer_place(h, i, t);
}

/* Takes t out of the heap (does not free it). */
static void timer_remove(struct runtime_http *h, struct runtime_http_timer *t)
{
        size_t i = t->index;
        struct runtime_http_timer *last = h->timers[--h->ntimers];

        if (i == h->ntimers)
                return;
        timer_place(h, i, last);
        if (i > 0 && timer_before(last, h->timers[(i - 1) / 2]))
                timer_sift_up(h, i);
        else
                timer_sift_down(h, i);
}

int runtime_http_timer_start(struct runtime_http *h, int64_t delay_ms, void (*fn)(void *userdata),
                             void *userdata, struct runtime_http_timer **out)
{
        struct runtime_http_timer *t;

        if (h->ntimers == h->timers_cap) {
                size_t cap = h->timers_cap ? h->timers_cap * 2 : 16;
                struct runtime_http_timer **n = realloc(h->timers, cap * sizeof(*n));
                if (!n)
                        return -ENOMEM;
                h->timers = n;
                h->timers_cap = cap;
        }
        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->due_ms = runtime_http_now_ms() + (delay_ms > 0 ? delay_ms : 0);
        t->seq = h->timer_seq++;
        t->fn = fn;
        t->userdata = userdata;
        h->ntimers++;
        timer_place(h, h->ntimers - 1, t);
        timer_sift_up(h, h->ntimers - 1);
        *out = t;
        return 0;
}

void runtime_http_timer_cancel(struct runtime_http *h, struct runtime_http_timer *t)
{
        if (!t)
                return;
        timer_remove(h, t);
        free(t);
}

static void timer_heap_free(struct runtime_http *h)
{
        for (size_t i = 0; i < h->ntimers; i++)
                free(h->timers[i]);
        free(h->timers);
        h->timers = NULL;
        h->ntimers = h->timers_cap = 0;
}

/* Runs the timers due by now; a timer started by one of them waits for the next poll. */
static void timers_run(struct runtime_http *h)
{
        int64_t now = runtime_http_now_ms();
        uint64_t started_before = h->timer_seq;

        while (h->ntimers > 0 && h->timers[0]->due_ms <= now &&
               h->timers[0]->seq < started_before) {
                struct runtime_http_timer *t = h->timers[0];
                void (*fn)(void *) = t->fn;
                void *userdata = t->userdata;

                timer_remove(h, t);
                free(t);
                fn(userdata);
        }
}

static void transfer_outcome(struct runtime_http_transfer *t, json_t **output, json_t **error);

/* Moves every finished transfer to its queue: LIST_CALLBACK when it has on_done, else
 * LIST_DONE for runtime_http_next_done, with its outcome built now (so the JSON of a
 * response is made while the caller waits on something else: runtime_http_drive). */
static void collect_finished(struct runtime_http *h)
{
        struct runtime_http_transfer *t;
        CURLMsg *m;
        int left;

        while ((m = curl_multi_info_read(h->multi, &left))) {
                if (m->msg != CURLMSG_DONE)
                        continue;
                curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&t);
                if (t->list != LIST_ACTIVE)
                        continue;
                t->result = m->data.result;
                queue_unlink(h, t);
                if (!t->on_done)
                        transfer_outcome(t, &t->done_output, &t->done_error);
                queue_push(h, t->on_done ? LIST_CALLBACK : LIST_DONE, t);
        }
}

/* Calls on_done for each finished transfer that has one; a callback may abort others. */
static void deliver_callbacks(struct runtime_http *h)
{
        struct runtime_http_transfer *t;

        while ((t = h->queues[LIST_CALLBACK].head)) {
                void (*on_done)(void *, json_t *, json_t *) = t->on_done;
                void *userdata = t->userdata;
                json_t *output, *error;

                transfer_outcome(t, &output, &error);
                transfer_free(h, t);
                on_done(userdata, output, error);
        }
}

int runtime_http_poll(struct runtime_http *h, int timeout_ms, int extra_fd)
{
        struct curl_waitfd extra = {.fd = extra_fd, .events = CURL_WAIT_POLLIN};
        int running = 0;

        /* finished transfers waiting to be taken or called back: no sleep */
        if (timeout_ms < 0 || h->queues[LIST_DONE].head || h->queues[LIST_CALLBACK].head)
                timeout_ms = 0;
        if (h->ntimers > 0) {
                int64_t until = h->timers[0]->due_ms - runtime_http_now_ms();
                if (until < timeout_ms)
                        timeout_ms = until < 0 ? 0 : (int)until;
        }
        if (curl_multi_poll(h->multi, extra_fd >= 0 ? &extra : NULL, extra_fd >= 0 ? 1 : 0,
                            timeout_ms, NULL) != CURLM_OK)
                return -EIO;
        if (curl_multi_perform(h->multi, &running) != CURLM_OK)
                return -EIO;
        collect_finished(h);
        deliver_callbacks(h);
        timers_run(h);
        return extra_fd >= 0 && (extra.revents & CURL_WAIT_POLLIN) ? 1 : 0;
}

int runtime_http_drive(struct runtime_http *h, int timeout_ms, int extra_fd)
{
        struct curl_waitfd extra = {.fd = extra_fd, .events = CURL_WAIT_POLLIN};
        int running = 0;

        if (curl_multi_poll(h->multi, extra_fd >= 0 ? &extra : NULL, extra_fd >= 0 ? 1 : 0,
                            timeout_ms < 0 ? 0 : timeout_ms, NULL) != CURLM_OK ||
            curl_multi_perform(h->multi, &running) != CURLM_OK)
                return -EIO;
        collect_finished(h);
        return extra_fd >= 0 && (extra.revents & CURL_WAIT_POLLIN) ? 1 : 0;
}

void runtime_http_wakeup(struct runtime_http *h)
{
        curl_multi_wakeup(h->multi);
}

/* expect: [status | [lo, hi], ...]; empty or absent means any 2xx. */
static bool status_expected(const json_t *expect, long status)
{
        size_t i;
        json_t *v;

        if (!expect || json_array_size(expect) == 0)
                return status >= 200 && status < 300;
        json_array_foreach (expect, i, v) {
                if (json_is_integer(v) && json_integer_value(v) == status)
                        return true;
                if (json_is_array(v) && json_array_size(v) == 2 &&
                    json_integer_value(json_array_get(v, 0)) <= status &&
                    status <= json_integer_value(json_array_get(v, 1)))
                        return true;
        }
        return false;
}

/* The body as JSON when it parses as JSON, else as a string (when valid UTF-8). */
static json_t *body_value(struct runtime_http_transfer *t)
{
        json_t *v;

        if (!t->response.data || t->response.len == 0)
                return json_string("");
        v = json_loadb(t->response.data, t->response.len, JSON_DECODE_ANY, NULL);
        if (v)
                return v;
        v = json_stringn(t->response.data, t->response.len);
        return v ? v : json_sprintf("<%zu bytes of binary data>", t->response.len);
}

static json_t *response_headers(CURL *easy)
{
        json_t *o = json_object();
        struct curl_header *prev = NULL, *hdr;
        unsigned n = 0;

        while (o && n < RUNTIME_HTTP_MAX_HEADERS &&
               (hdr = curl_easy_nextheader(easy, CURLH_HEADER, -1, prev))) {
                char name[201];
                size_t i;

                for (i = 0; hdr->name[i] && i < sizeof(name) - 1; i++)
                        name[i] = (char)tolower((unsigned char)hdr->name[i]);
                name[i] = '\0';
                json_object_set_new(o, name, json_string(hdr->value ? hdr->value : ""));
                prev = hdr;
                n++;
        }
        return o;
}

/* The class of an answer outside expect_status (docs/workflows.md, "Failure classes"). */
static const char *status_class(long status)
{
        if (status == 429)
                return "http_429";
        if (status >= 400 && status <= 499)
                return "http_4xx";
        if (status >= 500 && status <= 599)
                return "http_5xx";
        return "http_status";
}

/* Whether any byte of the request may have left: libcurl reached the point of sending it
 * (pretransfer) or counted request bytes. Before that nothing can have arrived. */
static bool request_may_have_left(CURL *easy)
{
        curl_off_t pretransfer = 0;
        long request_size = 0;

        curl_easy_getinfo(easy, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
        curl_easy_getinfo(easy, CURLINFO_REQUEST_SIZE, &request_size);
        return pretransfer > 0 || request_size > 0;
}

/* A failed transfer: connect (nothing left), timeout or network (it may have arrived). */
static json_t *transfer_error(struct runtime_http_transfer *t, CURLcode result)
{
        const char *detail = t->curl_error[0] ? t->curl_error : curl_easy_strerror(result);
        _cleanup_free_ char *msg = NULL;
        const char *klass;

        if (!request_may_have_left(t->easy)) {
                klass = "connect";
                msg = result == CURLE_OPERATION_TIMEDOUT
                          ? str_printf("could not connect within %lld ms: %s",
                                       (long long)t->timeout_ms, detail)
                          : str_printf("could not connect: %s", detail);
        } else if (result == CURLE_OPERATION_TIMEDOUT) {
                klass = "timeout";
                msg = str_printf("no complete answer within %lld ms (the request may have "
                                 "arrived)",
                                 (long long)t->timeout_ms);
        } else {
                klass = "network";
                msg = str_printf("connection failed after the request was sent: %s", detail);
        }
        return msg ? json_pack("{s:s, s:s}", "class", klass, "message", msg) : NULL;
}

/* What came of a finished transfer: *output or *error (classified). */
static void transfer_outcome(struct runtime_http_transfer *t, json_t **output, json_t **error)
{
        curl_off_t total_us = 0;

        *output = *error = NULL;
        if (t->too_large) {
                *error = json_pack(
                    "{s:s, s:s++}", "class", "too_large", "message", "response body exceeds ",
                    t->response.max == RUNTIME_HTTP_MAX_RESPONSE_BYTES ? "1 MiB"
                                                                       : "its size limit");
        } else if (t->refused_body) {
                *error = json_pack("{s:s, s:s}", "class", "network", "message",
                                   "the response body was refused by its reader");
        } else if (t->result != CURLE_OK) {
                *error = transfer_error(t, t->result);
        } else {
                long status = 0;
                curl_off_t retry_after = -1;
                json_t *body = body_value(t);

                curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
                if (status_expected(t->expect, status)) {
                        *output = json_pack("{s:I, s:o, s:o}", "status", (json_int_t)status,
                                            "headers", response_headers(t->easy), "body", body);
                } else {
                        char msg[64];
                        snprintf(msg, sizeof(msg), "unexpected http status %ld", status);
                        *error =
                            json_pack("{s:s, s:s, s:I, s:o}", "class", status_class(status),
                                      "message", msg, "status", (json_int_t)status, "body", body);
                        /* seconds, from either the delta or the HTTP-date form */
                        if (curl_easy_getinfo(t->easy, CURLINFO_RETRY_AFTER, &retry_after) ==
                                CURLE_OK &&
                            retry_after > 0 && *error)
                                json_object_set_new(*error, "retry_after_ms",
                                                    json_integer((json_int_t)retry_after * 1000));
                }
        }
        if (!*output && !*error)
                *error = json_pack("{s:s, s:s}", "class", "error", "message",
                                   "out of memory building the result");
        /* how long the exchange took, for the failed attempt's event */
        if (*error && curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME_T, &total_us) == CURLE_OK)
                json_object_set_new(*error, "duration_ms",
                                    json_integer((json_int_t)(total_us / 1000)));
}

bool runtime_http_next_done(struct runtime_http *h, void **userdata, json_t **output,
                            json_t **error)
{
        struct runtime_http_transfer *t;

        *output = *error = NULL;
        collect_finished(h);
        t = h->queues[LIST_DONE].head;
        if (!t)
                return false;
        *userdata = t->userdata;
        *output = TAKE_PTR(t->done_output);
        *error = TAKE_PTR(t->done_error);
        transfer_free(h, t);
        return true;
}
