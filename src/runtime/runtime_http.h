/*
 * HTTP effects without a thread per request: one libcurl multi handle drives every request
 * a worker has in flight, and the worker's event loop waits on it (curl_multi_poll) together
 * with its wake-ups. A request leaves with the node's stable Idempotency-Key header; its
 * outcome is classified (connect, network, timeout, http_5xx, ... with Retry-After) into
 * the JSON the engine's failure policy reads. Not thread-safe except runtime_http_wakeup().
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>

/* Limits on what a user-defined request may send and what a response may bring back. */
#define RUNTIME_HTTP_MAX_RESPONSE_BYTES (1024 * 1024)
#define RUNTIME_HTTP_MAX_HEADERS        64
#define RUNTIME_HTTP_DEFAULT_TIMEOUT_MS (30 * 1000)

struct runtime_http;
struct runtime_http_transfer;

/* Creates an empty multi handle whose requests carry user_agent (copied; NULL for
 * "agently-worker"); 0 or -ENOMEM. The caller owns *out. */
int runtime_http_new(const char *user_agent, struct runtime_http **out);

/* Aborts every transfer still in flight (their completions are never reported) and frees h.
 * Accepts NULL. */
void runtime_http_free(struct runtime_http *h);

/*
 * Starts a request. request is {"method","url","headers":{name:value},"body":any,
 * "expect_status":[status | [lo, hi], ...]} (body: a string is sent as is with Content-Type
 * text/plain; charset=utf-8, anything else as JSON with application/json, unless headers
 * set Content-Type; expect_status defaults to any 2xx). The Idempotency-Key header is
 * set to idempotency_key when non-NULL and headers do not carry one (any case) themselves:
 * a key the request sets is sent as given. timeout_ms bounds the whole exchange (<= 0: the
 * default). fresh_connection (for at_most_once requests): never on a reused connection, so
 * libcurl cannot send it a second time by itself when a kept-alive connection turns out
 * dead. userdata comes back with the completion. Returns 0 and the transfer in *out (owned
 * by h until it completes or is aborted), -EINVAL with a message in *error (malloc'd) for a
 * request that cannot be sent (bad method, url, headers), -ENOMEM.
 */
int runtime_http_start(struct runtime_http *h, const json_t *request, const char *idempotency_key,
                       int64_t timeout_ms, bool fresh_connection, void *userdata,
                       struct runtime_http_transfer **out, char **error);

/*
 * What runtime_http_start_ex adds to a request, for callers that drive their own protocol
 * over HTTP (src/llm: streamed answers, retries). Zero is the default of every member.
 */
struct runtime_http_options {
        int64_t timeout_ms;         /* the whole exchange; <= 0: the default (30 s) */
        int64_t connect_timeout_ms; /* connecting; <= 0: the smaller of timeout_ms and 10 s */
        bool fresh_connection;      /* as for runtime_http_start */
        size_t max_response_bytes;  /* a buffered body's cap; 0: RUNTIME_HTTP_MAX_RESPONSE_BYTES */
        /* More headers, "Name: value" lines (NULL-terminated; copied, and the copies are
         * zeroed when the transfer is freed, so an API key is not left in freed memory). */
        const char *const *extra_headers;
        /*
         * Called with each piece of the body of a response whose status is expected, as it
         * arrives (inside runtime_http_poll, while libcurl is working: it must not start,
         * abort or free transfers; starting a timer is fine). Return 0 to go on, < 0 to abort the
         * transfer (its completion then reports class "network"). Such a body is not buffered: the
         * output's "body" is "". A response with any other status is buffered as usual.
         */
        int (*on_body)(void *userdata, const char *data, size_t len);
        /*
         * When set, the completion is delivered by calling on_done from runtime_http_poll
         * (after libcurl's work, so it may start and abort transfers and timers) instead of
         * through runtime_http_next_done; it owns output or error (one is set). The
         * transfer is freed before the call.
         */
        void (*on_done)(void *userdata, json_t *output, json_t *error);
        /*
         * The request's body goes out but for its last byte, which waits for
         * runtime_http_release: the connection, the headers and the rest of the body are on
         * their way while the caller makes sure the request may leave (src/agent: the
         * previous answer's commit), and the server can act on nothing meanwhile — it has
         * not read the whole body its Content-Length announced. Aborted before the release,
         * the server sees a request cut short. Ignored without a body.
         */
        bool hold_body_end;
};

/* runtime_http_start with the options above (o may be NULL: the defaults). */
int runtime_http_start_ex(struct runtime_http *h, const json_t *request,
                          const char *idempotency_key, const struct runtime_http_options *o,
                          void *userdata, struct runtime_http_transfer **out, char **error);

/* Lets a transfer started with hold_body_end send its body's last byte; nothing when it was
 * not held or is released already. */
void runtime_http_release(struct runtime_http *h, struct runtime_http_transfer *t);

/* Stops a transfer in flight and frees it; its completion is never reported. */
void runtime_http_abort(struct runtime_http *h, struct runtime_http_transfer *t);

/* Number of transfers in flight (or finished and not yet reported). */
unsigned runtime_http_active(const struct runtime_http *h);

/*
 * Timers on the same loop, for callers that wait between transfers (a retry after
 * Retry-After): fn(userdata) runs from runtime_http_poll once delay_ms (monotonic) have
 * passed, after libcurl's work, so it may start transfers and timers. runtime_http_poll
 * sleeps no longer than the nearest timer. A timer is freed before fn runs (drop the pointer
 * there). 0 and *out, or -ENOMEM.
 */
struct runtime_http_timer;
int runtime_http_timer_start(struct runtime_http *h, int64_t delay_ms, void (*fn)(void *userdata),
                             void *userdata, struct runtime_http_timer **out);
/* Cancels a timer that has not run, and frees it; accepts NULL. */
void runtime_http_timer_cancel(struct runtime_http *h, struct runtime_http_timer *t);

/* The monotonic clock the timers use, in milliseconds. */
int64_t runtime_http_now_ms(void);

/*
 * Drives transfers, waiting up to timeout_ms (less when a timer is due sooner) for network
 * activity, runtime_http_wakeup() or extra_fd (>= 0) becoming readable; then delivers the
 * completions that have an on_done callback and runs the timers that are due. Returns 1 when
 * extra_fd is readable, 0, or a negative errno when libcurl failed. It does not sleep while
 * finished transfers wait to be taken (runtime_http_next_done) or called back.
 */
int runtime_http_poll(struct runtime_http *h, int timeout_ms, int extra_fd);

/*
 * Only libcurl's part of runtime_http_poll: drives transfers (sends, receives, and builds
 * the outcome of each that finishes) waiting up to timeout_ms for network activity, a
 * wake-up or extra_fd; calls no on_done and no timer, so nothing of the caller's runs here
 * but on_body. For a caller that waits on something else meanwhile (the worker, on its
 * database statement: src/worker/README.md). Returns as runtime_http_poll.
 */
int runtime_http_drive(struct runtime_http *h, int timeout_ms, int extra_fd);

/* Interrupts a runtime_http_poll() in progress from any thread (or makes the next return at
 * once). */
void runtime_http_wakeup(struct runtime_http *h);

/*
 * Takes the next finished transfer: its userdata and either *output (success: {"status",
 * "headers", "body"}) or *error ({"class", "message", "duration_ms", "status"?,
 * "retry_after_ms"?, "body"?}); the caller owns whichever is set. The classes
 * (docs/workflows.md): connect (no connection: nothing was sent), timeout and network (the
 * request may have arrived), http_429, http_4xx, http_5xx, http_status (another status
 * outside expect_status), too_large. The transfer is freed. Returns false when none is
 * finished. A transfer started with an on_done callback never comes out here.
 */
bool runtime_http_next_done(struct runtime_http *h, void **userdata, json_t **output,
                            json_t **error);
