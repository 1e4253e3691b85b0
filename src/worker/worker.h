/*
 * The worker: claims runs from the durable queue, holds their leases, walks each run's DAG
 * through the engine's planner, performs effects (HTTP through libcurl multi), checkpoints
 * every step fenced on the lease epoch, and releases runs that wait. One event-loop thread
 * owns the runs and one database connection; a second thread owns the heartbeat/LISTEN
 * connection. See src/worker/README.md.
 */
#pragma once

#include <stdint.h>
#include <jansson.h>

#define WORKER_MAX_CONCURRENCY 10000

struct worker_config {
        const char *conninfo;      /* agently_worker role */
        const char *id;            /* claimed_by; unique per process */
        int concurrency;           /* runs held at once */
        int64_t lease_ms;          /* lease length */
        int64_t heartbeat_ms;      /* renewal interval, < lease_ms */
        int64_t drain_grace_ms;    /* SIGTERM: how long in-flight effects may finish */
        int64_t poll_ms;           /* claim polling fallback when no NOTIFY arrives */
        int signal_fd;             /* readable on SIGTERM/SIGINT (a signalfd), or -1 */
        const char *executor_path; /* `agently executor`'s binary (NULL: /proc/self/exe) */
        const char *public_url;    /* where people reach the API (approval links); NULL: default */
        const char *data_dir;      /* the local key files (secrets); NULL: ".agently" */
        /* LLM price overrides by model (llm_cost's overrides: --llm-prices or
         * AGENTLY_LLM_PRICES, checked at start), or NULL for the shipped list. Borrowed. */
        const json_t *llm_prices;
};

/*
 * Runs the worker until signal_fd reports SIGTERM/SIGINT (drain: stop claiming, let
 * in-flight effects finish for drain_grace_ms, release every run still held, then return
 * 0) or a fatal error (negative errno, logged). The caller blocks SIGTERM/SIGINT in every
 * thread before calling, so only signal_fd sees them.
 */
int worker_run(const struct worker_config *cfg);
