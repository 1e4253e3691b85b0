/*
 * LLM call density, the client side of issue 10's density target: N concurrent streaming
 * calls of about 5 seconds each through src/llm's client on one runtime_http loop (one
 * process, one thread), against a local server in a child process that streams each answer
 * as 10 OpenAI chunks 500 ms apart. Printed: how many ended well, the wall time, the
 * connections the client held at the peak, and the client's memory (PSS) before, at the
 * peak and its growth per call in flight.
 */
#include "bench.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <dirent.h>
#include <unistd.h>

#include <microhttpd.h>

#include "llm_client.h"
#include "runtime_http.h"

#define CHUNKS   10
#define CHUNK_MS 500

struct stream_state {
        int sent;
        char buf[512];
};

static ssize_t stream_reader(void *cls, uint64_t pos, char *out, size_t max)
{
        struct stream_state *s = cls;
        int n;

        (void)pos;
        if (s->sent > CHUNKS)
                return MHD_CONTENT_READER_END_OF_STREAM;
        if (s->sent > 0)
                usleep(CHUNK_MS * 1000); /* a thread per connection: sleeping is the stream */
        if (s->sent == CHUNKS)
                n = snprintf(s->buf, sizeof(s->buf),
                             "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,"
                             "\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{"
                             "\"prompt_tokens\":10,\"completion_tokens\":10}}\n\ndata: [DONE]\n\n");
        else
                n = snprintf(s->buf, sizeof(s->buf),
                             "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,"
                             "\"delta\":{\"content\":\"word%d \"}}]}\n\n",
                             s->sent);
        s->sent++;
        if ((size_t)n > max)
                return MHD_CONTENT_READER_END_WITH_ERROR;
        memcpy(out, s->buf, (size_t)n);
        return n;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
        struct MHD_Response *r;
        enum MHD_Result ret;

        (void)cls, (void)url, (void)method, (void)version, (void)upload;
        if (!*con_cls) {
                *con_cls = (void *)1;
                return MHD_YES;
        }
        if (*upload_size) {
                *upload_size = 0;
                return MHD_YES;
        }
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 1024, stream_reader,
                                              calloc(1, sizeof(struct stream_state)), free);
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
}

/* The child: serves until killed. */
static void serve(int port)
{
        struct MHD_Daemon *d = MHD_start_daemon(
            MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL,
            (uint16_t)port, NULL, NULL, handle, NULL, MHD_OPTION_CONNECTION_LIMIT, 4000u,
            MHD_OPTION_THREAD_STACK_SIZE, (size_t)(128 * 1024), MHD_OPTION_CONNECTION_TIMEOUT, 60u,
            MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096u, MHD_OPTION_END);
        if (!d)
                _exit(1);
        for (;;)
                pause();
}

/* Proportional set size of this process, KiB (smaps_rollup). */
static long pss_kib(void)
{
        FILE *f = fopen("/proc/self/smaps_rollup", "r");
        char line[256];
        long v = -1;

        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "Pss: %ld kB", &v) == 1)
                        break;
        fclose(f);
        return v;
}

/* Open sockets of this process. */
static int sockets(void)
{
        DIR *d = opendir("/proc/self/fd");
        struct dirent *e;
        int n = 0;

        if (!d)
                return -1;
        while ((e = readdir(d))) {
                char path[300], target[64];
                ssize_t len;
                snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
                len = readlink(path, target, sizeof(target) - 1);
                if (len > 0 && strncmp(target, "socket:", 7) == 0)
                        n++;
        }
        closedir(d);
        return n;
}

void bench_llm_tally_done(void *tally, struct llm_result *result, json_t *error,
                          const struct llm_call_info *info)
{
        struct bench_llm_tally *t = tally;

        (void)info;
        if (result && result->stop_reason == t->expected)
                t->ok++;
        else
                t->failed++;
        if (result) {
                llm_result_free(result);
                free(result);
        }
        json_decref(error);
}

void bench_llm_tally_text(void *tally, const char *text, size_t len, int attempt)
{
        (void)text, (void)len, (void)attempt;
        ((struct bench_llm_tally *)tally)->texts++;
}

void bench_llm_density(int calls)
{
        int port = 20000 + (int)(getpid() % 20000);
        char url[64];
        pid_t child;
        struct runtime_http *h = NULL;
        struct bench_llm_tally t = {.expected = LLM_STOP_END};
        json_t *req;
        long before, peak = 0;
        int peak_sockets = 0;
        int64_t t0;

        child = fork();
        if (child == 0)
                serve(port);
        usleep(300 * 1000);
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1", port);
        req = json_loads("{\"model\": \"m\", \"stream\": true, \"messages\": [{\"role\": "
                         "\"user\", \"content\": \"count to ten\"}]}",
                         0, NULL);
        if (runtime_http_new("agently-bench", &h) < 0 || !req) {
                bench_report("llm_density", "error: setup failed");
                goto out;
        }
        before = pss_kib();
        t0 = bench_now_us();
        for (int i = 0; i < calls; i++) {
                struct llm_call *c;
                struct llm_call_params p = {.provider = LLM_PROVIDER_OPENAI,
                                            .base_url = url,
                                            .request = req,
                                            .max_attempts = 1,
                                            .total_timeout_ms = 60000,
                                            .on_text = bench_llm_tally_text,
                                            .on_done = bench_llm_tally_done,
                                            .userdata = &t};
                if (llm_call_start(h, &p, &c, NULL) < 0)
                        t.failed++;
        }
        while (t.ok + t.failed < calls && bench_now_us() - t0 < 60 * 1000000LL) {
                runtime_http_poll(h, 100, -1);
                long pss = pss_kib();
                int s = sockets();
                if (pss > peak)
                        peak = pss;
                if (s > peak_sockets)
                        peak_sockets = s;
        }
        double wall = (double)(bench_now_us() - t0) / 1e6;
        bench_report("llm_density_calls", "%d concurrent streaming calls of %d x %d ms, one loop",
                     calls, CHUNKS, CHUNK_MS);
        bench_report("llm_density_completed", "%d (failed %d)", t.ok, t.failed);
        bench_report("llm_density_wall_s", "%.2f (ratio to one call's 5 s: %.2f)", wall,
                     wall / (CHUNKS * CHUNK_MS / 1000.0));
        bench_report("llm_density_peak_sockets", "%d", peak_sockets);
        bench_report("llm_density_text_callbacks", "%d (%.1f per call; <= 10/s each)", t.texts,
                     (double)t.texts / (calls ? calls : 1));
        bench_report("llm_density_client_pss_mib", "before %.1f, peak %.1f",
                     (double)before / 1024.0, (double)peak / 1024.0);
        bench_report("llm_density_client_kib_per_call", "%.1f",
                     (double)(peak - before) / (calls ? calls : 1));
out:
        runtime_http_free(h);
        json_decref(req);
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
}
