/* Test support library; see testlib.h. */
#include "testlib.h"

#include "migrate.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "db.h"
#include "embedded_pg.h"
#include "strutil.h"

static const char *pg_dir(void)
{
        const char *dir = getenv("AGENTLY_TEST_PG_DIR");

        if (!dir || !*dir) {
                fprintf(stderr, "AGENTLY_TEST_PG_DIR is not set: run this test through ctest "
                                "(the pg fixture starts the cluster)\n");
                abort();
        }
        return dir;
}

static char *conninfo_for(const char *user, const char *dbname)
{
        struct embedded_pg *pg = NULL;
        char *s;

        if (embedded_pg_open(pg_dir(), &pg) < 0 || !embedded_pg_initialized(pg)) {
                fprintf(stderr, "test cluster under %s is not running: %s\n", pg_dir(),
                        db_last_error());
                abort();
        }
        s = embedded_pg_conninfo(pg, user, dbname);
        embedded_pg_free(pg);
        return s;
}

static char *db_create_from(const char *prefix, const char *template);

char *test_db_create(const char *prefix)
{
        return db_create_from(prefix, "agently");
}

char *test_db_create_empty(const char *prefix)
{
        return db_create_from(prefix, "template0");
}

static char *db_create_from(const char *prefix, const char *template)
{
        static int counter;
        char name[64];
        char *admin = conninfo_for(EMBEDDED_PG_SUPERUSER, "postgres");
        PGconn *c = test_db_connect(admin);
        char *sql;

        snprintf(name, sizeof(name), "t_%.30s_%d_%d", prefix, (int)getpid(), ++counter);
        sql = str_printf("CREATE DATABASE %s TEMPLATE %s", name, template);
        /* a concurrent CREATE DATABASE from the same template can fail transiently */
        for (int tries = 0;; tries++) {
                PGresult *res = PQexec(c, sql);
                ExecStatusType st = PQresultStatus(res);
                if (st == PGRES_COMMAND_OK) {
                        PQclear(res);
                        break;
                }
                if (tries > 50) {
                        fprintf(stderr, "could not create test database: %s\n",
                                PQresultErrorMessage(res));
                        abort();
                }
                PQclear(res);
                usleep(100 * 1000);
        }
        free(sql);
        PQfinish(c);
        free(admin);
        return conninfo_for(EMBEDDED_PG_SUPERUSER, name);
}

char *test_db_conninfo_as(const char *owner_conninfo, const char *role)
{
        PQconninfoOption *opts = PQconninfoParse(owner_conninfo, NULL);
        const char *dbname = NULL;
        char *s;

        assert_non_null(opts);
        for (PQconninfoOption *o = opts; o->keyword; o++)
                if (strcmp(o->keyword, "dbname") == 0)
                        dbname = o->val;
        assert_non_null(dbname);
        s = conninfo_for(role, dbname);
        PQconninfoFree(opts);
        return s;
}

PGconn *test_db_connect(const char *conninfo)
{
        PGconn *c = PQconnectdb(conninfo);

        if (PQstatus(c) != CONNECTION_OK) {
                fprintf(stderr, "could not connect (%s): %s\n", conninfo, PQerrorMessage(c));
                abort();
        }
        return c;
}

PGresult *test_db_must(PGconn *c, const char *sql)
{
        PGresult *res = PQexec(c, sql);
        ExecStatusType st = PQresultStatus(res);

        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
                fprintf(stderr, "SQL failed: %s\n  %s\n", sql, PQresultErrorMessage(res));
                fail();
        }
        return res;
}

void test_db_migrate_range(PGconn *c, int first, int last)
{
        if (first == 1)
                PQclear(test_db_must(c, "CREATE TABLE agently_schema_migrations (version int "
                                        "PRIMARY KEY, name text NOT NULL, checksum text NOT "
                                        "NULL, applied_at timestamptz NOT NULL DEFAULT now())"));
        for (size_t i = 0; i < db_migrations_count; i++) {
                const struct db_migration *m = &db_migrations[i];
                char version[16];
                const char *params[3] = {version, m->name, m->sha256};
                PGresult *res;

                if (m->version < first || m->version > last)
                        continue;
                PQclear(test_db_must(c, "BEGIN"));
                PQclear(test_db_must(c, m->sql));
                snprintf(version, sizeof(version), "%d", m->version);
                res = PQexecParams(c,
                                   "INSERT INTO agently_schema_migrations (version, name, "
                                   "checksum) VALUES ($1::int, $2, $3)",
                                   3, NULL, params, NULL, NULL, 0);
                assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
                PQclear(res);
                PQclear(test_db_must(c, "COMMIT"));
        }
}

void test_run_move(PGconn *c, const char *where, const char *status, const char *extra)
{
        bool final = strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
                     strcmp(status, "canceled") == 0;
        char *ids = test_db_value(
            c, "SELECT coalesce(array_agg(id), '{}')::text FROM workflow_runs WHERE %s", where);
        char *claim = NULL, *move = NULL;

        if (asprintf(&claim,
                     "UPDATE workflow_runs SET status = 'running', claimed_by = 'test', "
                     "lease_expires_at = now() + interval '1 minute', lease_epoch = lease_epoch + "
                     "1, attempt = attempt + 1 WHERE id = ANY ('%s') AND status IN ('queued', "
                     "'waiting')",
                     ids) < 0 ||
            (strcmp(status, "running") != 0 &&
             asprintf(&move,
                      "UPDATE workflow_runs SET status = '%s', claimed_by = NULL, "
                      "lease_expires_at = NULL, finished_at = %s%s%s WHERE id = ANY ('%s') AND "
                      "status = 'running'",
                      status, final ? "now()" : "NULL", extra ? ", " : "", extra ? extra : "",
                      ids) < 0))
                fail();
        PQclear(test_db_must(c, claim));
        if (move)
                PQclear(test_db_must(c, move));
        free(ids);
        free(claim);
        free(move);
}

static PGresult *vquery(PGconn *c, const char *fmt, va_list ap)
{
        char *sql = NULL;
        PGresult *res;

        assert_int_ge(vasprintf(&sql, fmt, ap), 0);
        res = test_db_must(c, sql);
        free(sql);
        return res;
}

char *test_db_value(PGconn *c, const char *fmt, ...)
{
        va_list ap;
        PGresult *res;
        char *v = NULL;

        va_start(ap, fmt);
        res = vquery(c, fmt, ap);
        va_end(ap);
        if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0))
                v = strdup(PQgetvalue(res, 0, 0));
        PQclear(res);
        return v;
}

long long test_db_int(PGconn *c, const char *fmt, ...)
{
        va_list ap;
        PGresult *res;
        long long v = 0;

        va_start(ap, fmt);
        res = vquery(c, fmt, ap);
        va_end(ap);
        if (PQntuples(res) < 1 || PQgetisnull(res, 0, 0)) {
                fprintf(stderr, "query returned no integer\n");
                PQclear(res);
                fail();
        }
        int64_t parsed;
        assert_int_equal(str_to_int64(PQgetvalue(res, 0, 0), &parsed), 0);
        v = parsed;
        PQclear(res);
        return v;
}

const char *test_db_sqlstate(PGconn *c, const char *sql)
{
        assert_int_equal(PQsendQuery(c, sql), 1);
        return test_db_sent_sqlstate(c);
}

void test_db_send_blocked(PGconn *c, PGconn *observer, const char *sql)
{
        char *waiting = NULL;

        assert_int_equal(PQsendQuery(c, sql), 1);
        for (int i = 0; i < 1000; i++) {
                free(waiting);
                waiting = test_db_value(observer,
                                        "SELECT coalesce(wait_event_type, '') FROM "
                                        "pg_stat_activity WHERE pid = %d",
                                        PQbackendPID(c));
                if (strcmp(waiting, "Lock") == 0)
                        break;
                usleep(10 * 1000);
        }
        assert_string_equal(waiting, "Lock");
        free(waiting);
        assert_int_equal(PQconsumeInput(c), 1);
        assert_int_equal(PQisBusy(c), 1);
}

const char *test_db_sent_sqlstate(PGconn *c)
{
        static char state[6];
        PGresult *res;

        state[0] = '\0';
        while ((res = PQgetResult(c))) {
                const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);

                if (PQresultStatus(res) == PGRES_FATAL_ERROR && !state[0])
                        snprintf(state, sizeof(state), "%s", s ? s : "?????");
                PQclear(res);
        }
        return state;
}

char *test_db_trigger_calls(PGconn *c, const char *sql)
{
        char *explain = str_printf("EXPLAIN (ANALYZE, FORMAT JSON) %s", sql);
        PGresult *res;
        json_t *plan, *t;
        size_t i;
        char *calls = strdup("");

        assert_non_null(explain);
        PQclear(test_db_must(c, "BEGIN"));
        res = test_db_must(c, explain);
        free(explain);
        plan = test_json(PQgetvalue(res, 0, 0));
        PQclear(res);
        PQclear(test_db_must(c, "ROLLBACK"));
        json_array_foreach (json_object_get(json_array_get(plan, 0), "Triggers"), i, t) {
                char *next = str_printf("%s%s%s:%lld", calls, i ? " " : "",
                                        json_string_value(json_object_get(t, "Trigger Name")),
                                        (long long)json_integer_value(json_object_get(t, "Calls")));
                free(calls);
                calls = next;
        }
        json_decref(plan);
        assert_non_null(calls);
        return calls;
}

pid_t test_spawn_agently(const char *const *args, const char *const *env, const char *log_path)
{
        pid_t pid = fork();

        assert_int_ge(pid, 0);
        if (pid == 0) {
                const char *argv[64];
                size_t n = 0;

                argv[n++] = AGENTLY_BINARY;
                for (size_t i = 0; args && args[i] && n < 63; i++)
                        argv[n++] = args[i];
                argv[n] = NULL;
                for (size_t i = 0; env && env[i]; i++)
                        putenv((char *)env[i]);
                if (log_path) {
                        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
                        if (fd >= 0) {
                                dup2(fd, 1);
                                dup2(fd, 2);
                        }
                }
                setpgid(0, 0);
                execv(AGENTLY_BINARY, (char *const *)argv);
                _exit(127);
        }
        return pid;
}

int test_stop_process(pid_t pid, int sig, int timeout_ms)
{
        int64_t deadline = test_now_ms() + timeout_ms;
        int status;

        if (sig)
                kill(pid, sig);
        while (test_now_ms() < deadline) {
                pid_t r = waitpid(pid, &status, WNOHANG);
                if (r == pid)
                        return status;
                if (r < 0)
                        return -1;
                usleep(20 * 1000);
        }
        return -1;
}

int test_free_port(void)
{
        struct sockaddr_in addr = {.sin_family = AF_INET,
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(addr);
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        assert_int_ge(fd, 0);
        assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
        close(fd);
        return ntohs(addr.sin_port);
}

int64_t test_now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct response_buf {
        char *data;
        size_t len;
};

static size_t collect(char *ptr, size_t size, size_t nmemb, void *userdata)
{
        struct response_buf *b = userdata;
        size_t n = size * nmemb;
        char *p = realloc(b->data, b->len + n + 1);

        if (!p)
                return 0;
        memcpy(p + b->len, ptr, n);
        b->data = p;
        b->len += n;
        b->data[b->len] = '\0';
        return n;
}

long test_http(const char *method, const char *url, const char *const *headers, const char *body,
               char **response)
{
        CURL *curl = curl_easy_init();
        struct curl_slist *list = NULL;
        struct response_buf b = {0};
        long status = 0;

        assert_non_null(curl);
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(curl, CURLOPT_TIMEOUT, 30L);
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        if (body) {
                curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
                list = curl_slist_append(list, "Content-Type: application/json");
        }
        for (size_t i = 0; headers && headers[i]; i++)
                list = curl_slist_append(list, headers[i]);
        if (list)
                curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
        if (curl_easy_perform(curl) == CURLE_OK)
                curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        curl_slist_free_all(list);
        curl_easy_cleanup(curl);
        if (response)
                *response = b.data;
        else
                free(b.data);
        return status;
}

bool test_wait_http_ok(const char *url, int timeout_ms)
{
        int64_t deadline = test_now_ms() + timeout_ms;

        while (test_now_ms() < deadline) {
                if (test_http("GET", url, NULL, NULL, NULL) == 200)
                        return true;
                usleep(100 * 1000);
        }
        return false;
}

char *test_tempdir(const char *prefix)
{
        char *path = str_printf("/tmp/agently-%s-XXXXXX", prefix);

        assert_non_null(path);
        assert_non_null(mkdtemp(path));
        return path;
}

void test_rm_rf(const char *path)
{
        pid_t pid;

        if (!path || strncmp(path, "/tmp/", 5) != 0)
                return; /* refuse to delete anything outside /tmp */
        pid = fork();
        if (pid == 0) {
                execlp("rm", "rm", "-rf", "--", path, (char *)NULL);
                _exit(127);
        }
        if (pid > 0)
                waitpid(pid, NULL, 0);
}

static const char *cmp_name(enum test_cmp op)
{
        static const char *const text[] = {
            [TEST_LT] = "<", [TEST_LE] = "<=", [TEST_GT] = ">", [TEST_GE] = ">="};

        /* bounded, so an optimising build cannot see an index past the table */
        return (unsigned)op < sizeof(text) / sizeof(text[0]) ? text[op] : "?";
}

static bool cmp_holds(int order, enum test_cmp op)
{
        switch (op) {
        case TEST_LT:
                return order < 0;
        case TEST_LE:
                return order <= 0;
        case TEST_GT:
                return order > 0;
        case TEST_GE:
                return order >= 0;
        }
        return false;
}

void test_assert_int_cmp(long long a, enum test_cmp op, long long b, const char *a_text,
                         const char *b_text, const char *file, int line)
{
        if (cmp_holds(a < b ? -1 : a > b, op))
                return;
        print_error("%s %s %s: %lld %s %lld is false\n", a_text, cmp_name(op), b_text, a,
                    cmp_name(op), b);
        _fail(file, line);
}

void test_assert_double_equal(double a, double b, const char *a_text, const char *b_text,
                              const char *file, int line)
{
        if (a == b)
                return;
        print_error("%s == %s: %.17g != %.17g\n", a_text, b_text, a, b);
        _fail(file, line);
}

void test_assert_string_cmp(const char *a, enum test_cmp op, const char *b, const char *a_text,
                            const char *b_text, const char *file, int line)
{
        if (a && b && cmp_holds(strcmp(a, b), op))
                return;
        print_error("%s %s %s: \"%s\" %s \"%s\" is false\n", a_text, cmp_name(op), b_text,
                    a ? a : "(null)", cmp_name(op), b ? b : "(null)");
        _fail(file, line);
}

json_t *test_json(const char *text)
{
        json_error_t jerr;
        json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);

        if (!j)
                fail_msg("bad test JSON at line %d: %s\n%s", jerr.line, jerr.text, text);
        return j;
}

void test_assert_json_equal(const json_t *a, const json_t *b, const char *a_text,
                            const char *b_text, const char *file, int line)
{
        const size_t flags = JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY;
        char *a_json, *b_json;

        if (a && b && json_equal(a, b))
                return;
        a_json = a ? json_dumps(a, flags) : NULL;
        b_json = b ? json_dumps(b, flags) : NULL;
        print_error("%s == %s:\n  %s\n  %s\n", a_text, b_text, a_json ? a_json : "(null)",
                    b_json ? b_json : "(null)");
        free(a_json);
        free(b_json);
        _fail(file, line);
}

void test_assert_exit(int status, int code, const char *status_text, const char *file, int line)
{
        if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == code)
                return;
        if (status == -1)
                print_error("%s: the process did not end in time (wanted exit code %d)\n",
                            status_text, code);
        else if (WIFSIGNALED(status))
                print_error("%s: killed by signal %d (wanted exit code %d)\n", status_text,
                            WTERMSIG(status), code);
        else if (WIFEXITED(status))
                print_error("%s: exit code %d, wanted %d\n", status_text, WEXITSTATUS(status),
                            code);
        else
                print_error("%s: wait status 0x%x, wanted exit code %d\n", status_text,
                            (unsigned)status, code);
        _fail(file, line);
}
