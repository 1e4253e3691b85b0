/*
 * The control-plane HTTP server (`agently api`): REST under /v1, server-sent events for live
 * run logs, /healthz, /readyz and /metrics, on libmicrohttpd. See src/api/README.md for the
 * threading model and docs/api.md for the user-facing contract.
 */
#pragma once

#include <stddef.h>

struct api_options {
        const char *listen;            /* "ADDR:PORT" (IPv4) */
        const char *data_dir;          /* embedded default's data dir, master.key lives here */
        unsigned threads;              /* MHD thread pool size */
        unsigned db_pool_size;         /* libpq connections for requests */
        unsigned max_connections;      /* all clients */
        unsigned per_ip_connections;   /* one address */
        unsigned connection_timeout_s; /* idle connection (slow header/body) */
        unsigned statement_timeout_ms; /* per-request database time */
        size_t max_body;               /* request body bytes (413 above) */
        const char *web_dir; /* the built dashboard; NULL: AGENTLY_WEB_DIR or the build's */
};

/* Fills the defaults (listen 127.0.0.1:8080, 4 threads, 1 MiB body, ...). */
void api_options_default(struct api_options *o);

/*
 * Runs the server until SIGTERM or SIGINT (the caller must have blocked both in every
 * thread, so that this function can sigwait() for them). Returns 0 after a clean shutdown
 * (every SSE stream ended, every request answered), or a negative errno when the server
 * could not start (the reason is logged).
 */
int api_run(const struct api_options *o);
