/*
 * How many round trips to Postgres a request costs the API, counted on the wire: the
 * `agently api` under test reaches the test Postgres through a proxy (in this process) that
 * forwards every byte and counts what the API sends that the server answers with its
 * ReadyForQuery: a simple Query ('Q') or a Sync ('S', which ends an extended-protocol
 * statement or a pipeline). POST /v1/runs opens its transaction with its authentication
 * (BEGIN, the token's check and the tenant's setting) and creates the run with its event and
 * reads it back in one statement that carries the COMMIT (src/api/README.md, "Transactions,
 * tenancy, lifetimes"): two round trips, four with an Idempotency-Key (its row, and the
 * stored answer with the COMMIT). Its answer is still the run as GET /v1/runs/{id} shows it,
 * with its run.created event.
 *
 * The proxy counts the Parse messages ('P') as well: the statements every request sends (the
 * token's check) and the large ones (the run's creation and read, whose planning was most of
 * their time) are prepared once per pooled connection, so a request on a connection that
 * has served one parses only its BEGIN and COMMIT.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "auth_token.h"
#include "strutil.h"
#include "testlib.h"
#include "worker_sink.h"

#define PROXY_MAX_CONNS 64

/* One client connection and the server connection it is forwarded to; what the client sent
 * is split into messages to find the Query and Sync ones. */
struct conn {
        int client, server;
        bool started;         /* the startup packet is behind (typed messages follow) */
        unsigned char hdr[8]; /* the current message's header (or the startup's first 8 bytes) */
        size_t hdr_have;
        uint64_t body_left; /* bytes of the current message still to pass */
};

static struct {
        int listen_fd;
        struct sockaddr_un path;   /* the proxy's socket */
        struct sockaddr_un target; /* the server's socket */
        struct conn conns[PROXY_MAX_CONNS];
        int nconns;
        atomic_long round_trips;
        atomic_long parses;
        atomic_int stop;
        pthread_t thread;
} P;

static struct {
        char *conninfo; /* superuser, straight to the server */
        char *data_dir;
        char base[64];
        pid_t pid;
        PGconn *db;
        char token[AUTH_TOKEN_LEN + 1];
} S;

static bool write_all(int fd, const unsigned char *p, size_t n)
{
        while (n > 0) {
                ssize_t w = write(fd, p, n);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w <= 0)
                        return false;
                p += w;
                n -= (size_t)w;
        }
        return true;
}

static uint32_t be32(const unsigned char *p)
{
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Follows the message boundaries of what a client sent (the protocol's framing: the startup
 * packet is a length and a body; every later message a type byte, a length, a body). */
static void count_messages(struct conn *c, const unsigned char *p, size_t n)
{
        while (n > 0) {
                if (c->body_left > 0) {
                        size_t k = n < c->body_left ? n : (size_t)c->body_left;
                        p += k;
                        n -= k;
                        c->body_left -= k;
                        continue;
                }
                size_t want = c->started ? 5 : 8;
                c->hdr[c->hdr_have++] = *p++;
                n--;
                if (c->hdr_have < want)
                        continue;
                c->hdr_have = 0;
                if (!c->started) {
                        /* an SSL or GSS encryption request is answered by one byte and
                         * followed by the real startup packet */
                        uint32_t code = be32(c->hdr + 4);
                        c->started = code != 80877103 && code != 80877104;
                        c->body_left = be32(c->hdr) - 8;
                } else {
                        if (c->hdr[0] == 'Q' || c->hdr[0] == 'S')
                                atomic_fetch_add(&P.round_trips, 1);
                        if (c->hdr[0] == 'P')
                                atomic_fetch_add(&P.parses, 1);
                        c->body_left = be32(c->hdr + 1) - 4;
                }
        }
}

static void conn_close(int i)
{
        close(P.conns[i].client);
        close(P.conns[i].server);
        P.conns[i] = P.conns[--P.nconns];
}

static void accept_one(void)
{
        int client = accept(P.listen_fd, NULL, NULL), server;

        if (client < 0)
                return;
        server = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (P.nconns == PROXY_MAX_CONNS || server < 0 ||
            connect(server, (struct sockaddr *)&P.target, sizeof(P.target)) < 0) {
                close(client);
                if (server >= 0)
                        close(server);
                return;
        }
        P.conns[P.nconns++] = (struct conn){.client = client, .server = server};
}

static void *proxy_main(void *arg)
{
        (void)arg;
        while (!atomic_load(&P.stop)) {
                struct pollfd fds[1 + 2 * PROXY_MAX_CONNS];
                int n = 0;
                fds[n++] = (struct pollfd){.fd = P.listen_fd, .events = POLLIN};
                for (int i = 0; i < P.nconns; i++) {
                        fds[n++] = (struct pollfd){.fd = P.conns[i].client, .events = POLLIN};
                        fds[n++] = (struct pollfd){.fd = P.conns[i].server, .events = POLLIN};
                }
                if (poll(fds, (nfds_t)n, 100) <= 0)
                        continue;
                /* connections first, from the last: a closed one is replaced by the last */
                for (int i = P.nconns - 1; i >= 0; i--) {
                        struct conn *c = &P.conns[i];
                        bool ok = true;
                        for (int side = 0; side < 2 && ok; side++) {
                                if (!(fds[1 + 2 * i + side].revents & (POLLIN | POLLHUP | POLLERR)))
                                        continue;
                                unsigned char buf[16384];
                                ssize_t got = read(side ? c->server : c->client, buf, sizeof(buf));
                                if (got <= 0) {
                                        ok = false;
                                        break;
                                }
                                if (side == 0)
                                        count_messages(c, buf, (size_t)got);
                                ok = write_all(side ? c->client : c->server, buf, (size_t)got);
                        }
                        if (!ok)
                                conn_close(i);
                }
                if (fds[0].revents & POLLIN)
                        accept_one();
        }
        while (P.nconns > 0)
                conn_close(P.nconns - 1);
        return NULL;
}

/* The address of a Postgres socket: DIR/.s.PGSQL.PORT. */
static void socket_path(struct sockaddr_un *a, const char *dir, const char *port)
{
        char *p = str_printf("%s/.s.PGSQL.%s", dir, port);

        assert_non_null(p);
        assert_int_lt(strlen(p), sizeof(a->sun_path));
        *a = (struct sockaddr_un){.sun_family = AF_UNIX};
        memcpy(a->sun_path, p, strlen(p) + 1);
        free(p);
}

/* Starts the proxy for the server of conninfo; returns the conninfo that goes through it. */
static char *proxy_start(const char *conninfo, const char *dir)
{
        PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
        const char *host = NULL, *port = "5432";
        char *out = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&out, &len);

        assert_non_null(opts);
        assert_non_null(f);
        for (PQconninfoOption *o = opts; o->keyword; o++) {
                if (!o->val)
                        continue;
                if (!strcmp(o->keyword, "host"))
                        host = o->val;
                else if (!strcmp(o->keyword, "port"))
                        port = o->val;
        }
        assert_non_null(host);
        assert_int_equal(host[0], '/'); /* the harness's server listens on a socket directory */
        socket_path(&P.target, host, port);
        socket_path(&P.path, dir, port);
        for (PQconninfoOption *o = opts; o->keyword; o++) {
                if (!o->val)
                        continue;
                fprintf(f, "%s='", o->keyword);
                for (const char *v = !strcmp(o->keyword, "host") ? dir : o->val; *v; v++)
                        fprintf(f, "%s%c", *v == '\'' || *v == '\\' ? "\\" : "", *v);
                fprintf(f, "' ");
        }
        fclose(f);
        PQconninfoFree(opts);
        P.listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_int_not_equal(P.listen_fd, -1);
        assert_int_equal(bind(P.listen_fd, (struct sockaddr *)&P.path, sizeof(P.path)), 0);
        assert_int_equal(listen(P.listen_fd, 64), 0);
        assert_int_equal(pthread_create(&P.thread, NULL, proxy_main, NULL), 0);
        return out;
}

static int setup(void **state)
{
        (void)state;

        S.conninfo = test_db_create("trips");
        S.db = test_db_connect(S.conninfo);
        S.data_dir = test_tempdir("trips");
        char *user = test_db_value(S.db, "INSERT INTO users (name, is_admin) VALUES ('root', "
                                         "true) RETURNING id");
        worker_test_token(S.db, user, S.token);
        free(user);
        char *proxied = proxy_start(S.conninfo, S.data_dir);
        S.pid = worker_test_spawn_api(proxied, S.data_dir, S.base, sizeof(S.base));
        free(proxied);
        return 0;
}

static int teardown(void **state)
{
        (void)state;
        if (S.pid > 0)
                test_stop_process(S.pid, SIGTERM, 10000);
        atomic_store(&P.stop, 1);
        pthread_join(P.thread, NULL);
        close(P.listen_fd);
        unlink(P.path.sun_path);
        PQfinish(S.db);
        test_rm_rf(S.data_dir);
        free(S.data_dir);
        free(S.conninfo);
        return 0;
}

/* One request with the test's token; the answer's body into *body (caller frees). */
static long request(const char *method, const char *path, const char *body, const char *key,
                    char **answer)
{
        char url[256], auth[128], idem[128];
        const char *headers[] = {auth, key ? idem : NULL, NULL};

        snprintf(url, sizeof(url), "%s%s", S.base, path);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", S.token);
        snprintf(idem, sizeof(idem), "Idempotency-Key: %s", key ? key : "");
        return test_http(method, url, headers, body, answer);
}

/* The fewest round trips of `tries` POST /v1/runs (another connection of the API, such as
 * its event streams' LISTEN, may add some to one of them; never take any away). The last
 * run's answer into *answer (caller frees). */
static long fewest_round_trips(const char *key_prefix, int tries, char **answer)
{
        long fewest = -1;

        *answer = NULL;
        for (int i = 0; i < tries; i++) {
                char key[64];
                snprintf(key, sizeof(key), "%s-%d", key_prefix ? key_prefix : "", i);
                free(*answer);
                *answer = NULL;
                long before = atomic_load(&P.round_trips);
                long st = request("POST", "/v1/runs", "{\"workflow\": \"hello\", \"input\": {}}",
                                  key_prefix ? key : NULL, answer);
                long trips = atomic_load(&P.round_trips) - before;
                assert_int_equal(st, 201);
                if (fewest < 0 || trips < fewest)
                        fewest = trips;
        }
        return fewest;
}

static void creating_a_run_takes_two_round_trips(void **state)
{
        char *answer = NULL, *read = NULL;
        (void)state;

        long st = request("POST", "/v1/workflows",
                          "{\"name\": \"hello\", \"nodes\": [{\"id\": \"a\", \"type\": \"noop\"}]}",
                          NULL, &answer);
        assert_int_equal(st, 201);
        free(answer);

        /* BEGIN + the token + the tenant | the run, its event, its read + COMMIT */
        assert_int_equal(fewest_round_trips(NULL, 5, &answer), 2);
        /* ... and with an Idempotency-Key: its row | the run | the stored answer + COMMIT */
        free(answer);
        assert_int_equal(fewest_round_trips("trips", 5, &answer), 4);

        /* the answer is the run as it was committed, and as GET shows it (no worker runs) */
        json_t *created = test_json(answer);
        const char *id = json_string_value(json_object_get(created, "id"));
        assert_non_null(id);
        char path[128];
        snprintf(path, sizeof(path), "/v1/runs/%s", id);
        assert_int_equal(request("GET", path, NULL, NULL, &read), 200);
        json_t *got = test_json(read);
        assert_json_equal(created, got);
        assert_string_equal(json_string_value(json_object_get(created, "status")), "queued");
        assert_int_equal(json_integer_value(json_object_get(created, "last_event_seq")), 1);
        free(read);
        read = NULL;

        /* its one event, run.created, as before */
        snprintf(path, sizeof(path), "/v1/runs/%s/events", id);
        assert_int_equal(request("GET", path, NULL, NULL, &read), 200);
        json_t *page = test_json(read);
        json_t *events = json_object_get(page, "data");
        assert_int_equal(json_array_size(events), 1);
        json_t *e = json_array_get(events, 0);
        assert_int_equal(json_integer_value(json_object_get(e, "seq")), 1);
        assert_string_equal(json_string_value(json_object_get(e, "kind")), "run.created");
        assert_string_equal(json_string_value(json_object_get(e, "message")), "run created");
        assert_string_equal(json_string_value(json_object_get(e, "level")), "info");
        assert_true(json_is_null(json_object_get(e, "node_id")));
        assert_true(json_is_null(json_object_get(e, "data")));
        free(read);
        free(answer);
        json_decref(page);
        json_decref(created);
        json_decref(got);
}

/* The fewest Parse messages of `tries` requests (the first on a pooled connection also
 * prepares its statements; another connection of the API may add some; none takes any
 * away). */
static long fewest_parses(const char *method, const char *path, const char *body, long status,
                          int tries)
{
        long fewest = -1;

        for (int i = 0; i < tries; i++) {
                char *answer = NULL;
                long before = atomic_load(&P.parses);
                assert_int_equal(request(method, path, body, NULL, &answer), status);
                long parses = atomic_load(&P.parses) - before;
                free(answer);
                if (fewest < 0 || parses < fewest)
                        fewest = parses;
        }
        return fewest;
}

static void a_request_parses_only_its_begin_and_commit(void **state)
{
        char *answer = NULL;
        (void)state;

        long st = request("POST", "/v1/workflows",
                          "{\"name\": \"parsed\", \"nodes\": [{\"id\": \"a\", \"type\": "
                          "\"noop\"}]}",
                          NULL, &answer);
        assert_int_equal(st, 201);
        free(answer);
        /* BEGIN and COMMIT; the token's check and the run's creation and read are prepared */
        assert_int_equal(
            fewest_parses("POST", "/v1/runs", "{\"workflow\": \"parsed\", \"input\": {}}", 201, 5),
            2);
        assert_int_equal(
            request("POST", "/v1/runs", "{\"workflow\": \"parsed\", \"input\": {}}", NULL, &answer),
            201);
        json_t *run = test_json(answer);
        char path[128];
        snprintf(path, sizeof(path), "/v1/runs/%s", json_string_value(json_object_get(run, "id")));
        /* BEGIN; the token's check and the run's read are prepared */
        assert_int_equal(fewest_parses("GET", path, NULL, 200, 5), 1);
        json_decref(run);
        free(answer);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(creating_a_run_takes_two_round_trips),
            cmocka_unit_test(a_request_parses_only_its_begin_and_commit),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
