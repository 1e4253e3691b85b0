/* The idempotent HTTP sink of the chaos and timer tests; see chaos_sink.h. */
#include "chaos_sink.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <microhttpd.h>

#include "testlib.h"

struct cell {
        int requests;
        int distinct;
        char keys[CHAOS_SINK_MAX_KEYS][96];
        int key_requests[CHAOS_SINK_MAX_KEYS];
        int64_t effect_ids[CHAOS_SINK_MAX_KEYS];
        int64_t first_at_ms;
};

struct chaos_sink {
        struct MHD_Daemon *daemon;
        char url[64];
        pthread_mutex_t lock;
        int nruns, nnodes, max_delay_ms;
        char **nodes;
        struct cell *cells;
        int64_t next_effect;
        int64_t strays;
        uint64_t rng;
};

/* Parses "/c/<n>/<node>" into a cell index; -1 if it names none. */
static int cell_of(const struct chaos_sink *s, const char *url)
{
        char *end;
        long n;

        if (strncmp(url, "/c/", 3) != 0)
                return -1;
        n = strtol(url + 3, &end, 10);
        if (end == url + 3 || *end != '/' || n < 0 || n >= s->nruns)
                return -1;
        for (int i = 0; i < s->nnodes; i++)
                if (strcmp(end + 1, s->nodes[i]) == 0)
                        return (int)n * s->nnodes + i;
        return -1;
}

static enum MHD_Result answer(struct MHD_Connection *c, unsigned status, const char *body)
{
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
        enum MHD_Result ret;

        MHD_add_response_header(resp, "Content-Type", "application/json");
        ret = MHD_queue_response(c, status, resp);
        MHD_destroy_response(resp);
        return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_size, void **con_cls)
{
        struct chaos_sink *s = cls;
        const char *key;
        char body[256];
        int idx, k, delay = 0;
        int64_t effect;

        (void)method;
        (void)version;
        (void)upload_data;
        if (!*con_cls) { /* first call: headers only */
                *con_cls = s;
                return MHD_YES;
        }
        if (*upload_size) { /* the body is not needed: the path and key say everything */
                *upload_size = 0;
                return MHD_YES;
        }
        key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Idempotency-Key");
        idx = cell_of(s, url);

        pthread_mutex_lock(&s->lock);
        if (idx < 0 || !key) {
                s->strays++;
                pthread_mutex_unlock(&s->lock);
                return answer(c, 404, "{\"error\":\"no such cell or no Idempotency-Key\"}");
        }
        struct cell *cell = &s->cells[idx];
        if (cell->requests++ == 0)
                cell->first_at_ms = test_now_ms();
        for (k = 0; k < cell->distinct && k < CHAOS_SINK_MAX_KEYS; k++)
                if (strcmp(cell->keys[k], key) == 0)
                        break;
        if (k < cell->distinct && k < CHAOS_SINK_MAX_KEYS) {
                effect = cell->effect_ids[k]; /* seen: the same answer, no new effect */
                cell->key_requests[k]++;
        } else {
                effect = ++s->next_effect; /* a new key: a new effect */
                if (cell->distinct < CHAOS_SINK_MAX_KEYS) {
                        snprintf(cell->keys[cell->distinct], sizeof(cell->keys[0]), "%s", key);
                        cell->effect_ids[cell->distinct] = effect;
                        cell->key_requests[cell->distinct] = 1;
                }
                cell->distinct++;
        }
        if (s->max_delay_ms > 0) {
                s->rng ^= s->rng << 13;
                s->rng ^= s->rng >> 7;
                s->rng ^= s->rng << 17;
                delay = (int)(s->rng % (uint64_t)(s->max_delay_ms + 1));
        }
        pthread_mutex_unlock(&s->lock);

        if (delay > 0)
                usleep((useconds_t)delay * 1000);
        snprintf(body, sizeof(body), "{\"effect\":%lld,\"n\":%d,\"node\":\"%s\"}",
                 (long long)effect, idx / s->nnodes, s->nodes[idx % s->nnodes]);
        return answer(c, 200, body);
}

struct chaos_sink *chaos_sink_start(int nruns, const char *const *nodes, int nnodes,
                                    int max_delay_ms)
{
        struct chaos_sink *s = calloc(1, sizeof(*s));
        int port = test_free_port();

        assert_non_null(s);
        s->nruns = nruns;
        s->nnodes = nnodes;
        s->max_delay_ms = max_delay_ms;
        s->rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
        s->nodes = calloc((size_t)nnodes, sizeof(*s->nodes));
        s->cells = calloc((size_t)nruns * (size_t)nnodes, sizeof(*s->cells));
        assert_non_null(s->nodes);
        assert_non_null(s->cells);
        for (int i = 0; i < nnodes; i++) {
                s->nodes[i] = strdup(nodes[i]);
                assert_non_null(s->nodes[i]);
        }
        pthread_mutex_init(&s->lock, NULL);
        /* a thread per connection: a delayed answer holds only its own connection, as a
         * slow real API would */
        s->daemon = MHD_start_daemon(
            MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD, (uint16_t)port, NULL,
            NULL, handle, s, MHD_OPTION_CONNECTION_TIMEOUT, 120u, MHD_OPTION_CONNECTION_LIMIT,
            4000u, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_END);
        assert_non_null(s->daemon);
        snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%d", port);
        return s;
}

void chaos_sink_stop(struct chaos_sink *s)
{
        if (!s)
                return;
        MHD_stop_daemon(s->daemon);
        for (int i = 0; i < s->nnodes; i++)
                free(s->nodes[i]);
        free(s->nodes);
        free(s->cells);
        pthread_mutex_destroy(&s->lock);
        free(s);
}

const char *chaos_sink_url(const struct chaos_sink *s)
{
        return s->url;
}

int chaos_sink_cell(struct chaos_sink *s, int n, int node_index, struct chaos_sink_cell *out)
{
        if (n < 0 || n >= s->nruns || node_index < 0 || node_index >= s->nnodes)
                return -1;
        pthread_mutex_lock(&s->lock);
        const struct cell *c = &s->cells[n * s->nnodes + node_index];
        memset(out, 0, sizeof(*out));
        out->requests = c->requests;
        out->distinct_keys = c->distinct;
        for (int k = 0; k < c->distinct && k < CHAOS_SINK_MAX_KEYS; k++)
                memcpy(out->keys[k], c->keys[k], sizeof(out->keys[k]));
        out->effect_id = c->distinct ? c->effect_ids[0] : 0;
        out->first_at_ms = c->first_at_ms;
        pthread_mutex_unlock(&s->lock);
        return 0;
}

void chaos_sink_totals(struct chaos_sink *s, struct chaos_sink_totals *out)
{
        memset(out, 0, sizeof(*out));
        pthread_mutex_lock(&s->lock);
        for (int i = 0; i < s->nruns * s->nnodes; i++) {
                const struct cell *c = &s->cells[i];
                if (!c->requests)
                        continue;
                out->requests += c->requests;
                out->effects += c->distinct;
                out->reexecs += c->requests - c->distinct;
                for (int k = 0; k < c->distinct && k < CHAOS_SINK_MAX_KEYS; k++)
                        if (c->key_requests[k] > out->max_per_key)
                                out->max_per_key = c->key_requests[k];
                int first = c->key_requests[0];
                out->reexec_hist[first >= 8 ? 7 : first - 1]++;
        }
        out->strays = s->strays;
        pthread_mutex_unlock(&s->lock);
}
