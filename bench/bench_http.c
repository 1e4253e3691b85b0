/*
 * The bench's HTTP pieces: a local receiver the http steps call (libmicrohttpd, answers
 * 200 with a small JSON body at once), the receiver's own capacity measured with the same
 * concurrency the figure uses (libcurl multi, keep-alive), and one POST with libcurl.
 * The receiver shares the machine with Postgres and the workers, like the measurement.
 */
#include "bench.h"

#include <curl/curl.h>
#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>

struct bench_receiver {
        struct MHD_Daemon *daemon;
        char url[64];
};

static const char BODY[] = "{\"ok\":true}";

static enum MHD_Result answer(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_size, void **con_cls)
{
        static int started;
        struct MHD_Response *resp;
        enum MHD_Result ret;

        (void)cls;
        (void)url;
        (void)method;
        (void)version;
        (void)upload_data;
        if (!*con_cls) {
                *con_cls = &started; /* the headers: the body (if any) comes next */
                return MHD_YES;
        }
        if (*upload_size) {
                *upload_size = 0; /* the body is read and dropped */
                return MHD_YES;
        }
        resp =
            MHD_create_response_from_buffer(sizeof(BODY) - 1, (void *)BODY, MHD_RESPMEM_PERSISTENT);
        if (!resp)
                return MHD_NO;
        MHD_add_response_header(resp, "Content-Type", "application/json");
        ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return ret;
}

struct bench_receiver *bench_receiver_start(void)
{
        struct bench_receiver *r = calloc(1, sizeof(*r));
        const union MHD_DaemonInfo *info;

        if (!r)
                return NULL;
        /* two polling threads (epoll), one per core: a small, fast server */
        r->daemon =
            MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, 0, NULL, NULL, answer,
                             NULL, MHD_OPTION_THREAD_POOL_SIZE, 2u, MHD_OPTION_CONNECTION_LIMIT,
                             2000u, MHD_OPTION_CONNECTION_TIMEOUT, 60u, MHD_OPTION_END);
        info = r->daemon ? MHD_get_daemon_info(r->daemon, MHD_DAEMON_INFO_BIND_PORT) : NULL;
        if (!info) {
                bench_receiver_stop(r);
                return NULL;
        }
        snprintf(r->url, sizeof(r->url), "http://127.0.0.1:%u", (unsigned)info->port);
        return r;
}

const char *bench_receiver_url(const struct bench_receiver *r)
{
        return r->url;
}

void bench_receiver_stop(struct bench_receiver *r)
{
        if (!r)
                return;
        if (r->daemon)
                MHD_stop_daemon(r->daemon);
        free(r);
}

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
        (void)p;
        (void)arg;
        return size * n;
}

static CURL *easy_post(const char *url)
{
        CURL *e = curl_easy_init();

        if (!e)
                return NULL;
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "{\"x\":1}");
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
        return e;
}

double bench_receiver_capacity(const struct bench_receiver *r, int concurrency, int requests)
{
        CURLM *m = curl_multi_init();
        CURL **easy = calloc((size_t)concurrency, sizeof(*easy));
        char url[128];
        int sent = 0, done = 0, running = 0;
        int64_t t0;

        snprintf(url, sizeof(url), "%s/capacity", r->url);
        if (!m || !easy)
                exit(1);
        curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, (long)concurrency);
        t0 = bench_now_us();
        for (int i = 0; i < concurrency && sent < requests; i++, sent++) {
                easy[i] = easy_post(url);
                curl_multi_add_handle(m, easy[i]);
        }
        while (done < requests) {
                CURLMsg *msg;
                int left;
                curl_multi_perform(m, &running);
                while ((msg = curl_multi_info_read(m, &left))) {
                        if (msg->msg != CURLMSG_DONE)
                                continue;
                        if (msg->data.result != CURLE_OK) {
                                fprintf(stderr, "bench: receiver request failed: %s\n",
                                        curl_easy_strerror(msg->data.result));
                                exit(1);
                        }
                        done++;
                        curl_multi_remove_handle(m, msg->easy_handle);
                        if (sent < requests) {
                                /* the same handle again: its connection is reused */
                                curl_multi_add_handle(m, msg->easy_handle);
                                sent++;
                        }
                }
                if (done < requests)
                        curl_multi_poll(m, NULL, 0, 100, NULL);
        }
        double rate = requests / ((bench_now_us() - t0) / 1e6);
        for (int i = 0; i < concurrency; i++)
                if (easy[i]) {
                        curl_multi_remove_handle(m, easy[i]);
                        curl_easy_cleanup(easy[i]);
                }
        free(easy);
        curl_multi_cleanup(m);
        return rate;
}

int bench_http_post(const char *url, const char *token, const char *body, char *out, size_t len)
{
        CURL *e = curl_easy_init();
        struct curl_slist *h = NULL;
        char auth[512];
        long status = 0;
        FILE *f;
        int r = -1;

        if (!e || !(f = fmemopen(out, len, "w"))) {
                curl_easy_cleanup(e);
                return -1;
        }
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        h = curl_slist_append(h, auth);
        h = curl_slist_append(h, "Content-Type: application/json");
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, f);
        if (curl_easy_perform(e) == CURLE_OK &&
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK)
                r = (int)status;
        fclose(f);
        curl_slist_free_all(h);
        curl_easy_cleanup(e);
        return r;
}
