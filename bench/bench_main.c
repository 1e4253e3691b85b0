/*
 * agently-bench entry point: starts a private durable Postgres, migrates it, measures the
 * baselines and then each target, printing `key=value` lines (see docs/performance.md).
 *
 *   agently-bench [--duration 5s] [--quick] [--keep] [--soak 10m] [--sse] [--run-read]
 *                 [--runs N] [--pg-set NAME=VALUE ...]
 */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <linux/magic.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap.h"
#include "db.h"
#include "duration.h"
#include "embedded_pg.h"
#include "migrate.h"
#include "strutil.h"

int64_t bench_now_us(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void bench_report(const char *key, const char *fmt, ...)
{
        va_list ap;

        printf("%s=", key);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
        fflush(stdout);
}

static int cmp_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;
        return (x > y) - (x < y);
}

double bench_median(double *v, int n)
{
        if (n <= 0)
                return 0;
        qsort(v, (size_t)n, sizeof(*v), cmp_double);
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void bench_spread_add(struct bench_spread *s, double v)
{
        s->lo = s->n == 0 || v < s->lo ? v : s->lo;
        s->hi = s->n == 0 || v > s->hi ? v : s->hi;
        s->sum += v;
        s->n++;
}

double bench_spread_mean(const struct bench_spread *s)
{
        return s->n > 0 ? s->sum / s->n : 0;
}

void bench_spread_report(const char *key, const struct bench_spread *s, const char *note)
{
        double mean = bench_spread_mean(s);

        if (s->n == 0 || mean == 0)
                return;
        bench_report(key, "min %.0f max %.0f mean %.0f: %+.1f%% / %+.1f%% (%s)", s->lo, s->hi, mean,
                     100 * (s->lo - mean) / mean, 100 * (s->hi - mean) / mean, note);
}

bool bench_want(const struct bench *b, const char *name)
{
        size_t len = strlen(name);

        if (!b->only)
                return true;
        for (const char *p = b->only; *p;) {
                const char *end = strchr(p, ',');
                size_t n = end ? (size_t)(end - p) : strlen(p);
                if (n == len && strncmp(p, name, len) == 0)
                        return true;
                p += n + (end ? 1 : 0);
        }
        return false;
}

void bench_sleep_ms(int64_t ms)
{
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

pid_t bench_spawn_worker(const struct bench *b, const char *conninfo, int concurrency,
                         const char *poll, char *log_out, size_t log_len)
{
        static int next;
        char conc[16], id[32], log[1024], env_url[2048];
        pid_t pid;

        snprintf(conc, sizeof(conc), "%d", concurrency);
        snprintf(id, sizeof(id), "bench-%d", next++);
        snprintf(log, sizeof(log), "%s/%s.log", b->dir, id);
        snprintf(env_url, sizeof(env_url), "AGENTLY_DATABASE_URL=%s", conninfo);
        if (log_out)
                snprintf(log_out, log_len, "%s", log);
        pid = fork();
        if (pid < 0) {
                perror("bench: fork");
                exit(1);
        }
        if (pid == 0) {
                int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                putenv(env_url);
                if (!getenv("AGENTLY_LOG_LEVEL"))
                        putenv("AGENTLY_LOG_LEVEL=warn");
                execl(AGENTLY_BINARY, AGENTLY_BINARY, "worker", "--id", id, "--concurrency", conc,
                      "--poll", poll, (char *)NULL);
                _exit(127);
        }
        return pid;
}

void bench_stop_worker(pid_t pid)
{
        int st;

        kill(pid, SIGTERM);
        for (int i = 0; i < 300; i++) {
                if (waitpid(pid, &st, WNOHANG) == pid)
                        return;
                bench_sleep_ms(100);
        }
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
}

/* A port of 127.0.0.1 nothing listens on now (the kernel's pick). */
static int free_port(void)
{
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t n = sizeof(a);
        int fd = socket(AF_INET, SOCK_STREAM, 0), port;

        bind(fd, (struct sockaddr *)&a, sizeof(a));
        getsockname(fd, (struct sockaddr *)&a, &n);
        port = ntohs(a.sin_port);
        close(fd);
        return port;
}

/* Whether GET path on 127.0.0.1:port answers 200. */
static bool http_ok(int port, const char *path)
{
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        char req[256], resp[64] = {0};
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        bool ok = false;

        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
                snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n\r\n", path);
                if (write(fd, req, strlen(req)) > 0 && read(fd, resp, sizeof(resp) - 1) > 12)
                        ok = strncmp(resp + 9, "200", 3) == 0;
        }
        close(fd);
        return ok;
}

pid_t bench_start_api(const struct bench *b, const char *const *extra, int *port)
{
        const char *argv[32] = {"agently", "api", "--listen", NULL, "--data-dir", b->dir};
        char listen[64], env_db[4096];
        size_t argc = 6;
        pid_t pid;

        *port = free_port();
        snprintf(listen, sizeof(listen), "127.0.0.1:%d", *port);
        snprintf(env_db, sizeof(env_db), "AGENTLY_DATABASE_URL=%s", b->owner_conninfo);
        argv[3] = listen;
        for (; extra && *extra && argc < sizeof(argv) / sizeof(argv[0]) - 1; extra++)
                argv[argc++] = *extra;
        argv[argc] = NULL;
        pid = fork();
        if (pid < 0) {
                perror("bench: fork");
                exit(1);
        }
        if (pid == 0) {
                putenv(env_db);
                setenv("AGENTLY_LOG_LEVEL", "warn", 1);
                execv(AGENTLY_BINARY, (char *const *)argv);
                _exit(127);
        }
        for (int i = 0; i < 300; i++) {
                if (http_ok(*port, "/readyz"))
                        return pid;
                bench_sleep_ms(100);
        }
        fprintf(stderr, "bench: agently api did not answer on %s\n", listen);
        bench_stop_worker(pid);
        exit(1);
}

static void ignore_notice(void *arg, const char *message)
{
        (void)arg;
        (void)message;
}

PGconn *bench_connect(const struct bench *b)
{
        PGconn *c = PQconnectdb(b->owner_conninfo);

        if (PQstatus(c) != CONNECTION_OK) {
                fprintf(stderr, "bench: could not connect: %s", PQerrorMessage(c));
                exit(1);
        }
        PQsetNoticeProcessor(c, ignore_notice, NULL);
        return c;
}

/* Single-row commits over c in the next slice_ms, per second. */
static double commits_per_s(PGconn *c, int64_t slice_ms)
{
        int64_t t0 = bench_now_us(), end = t0 + slice_ms * 1000;
        long n = 0;

        while (bench_now_us() < end) {
                PGresult *r = PQexec(c, "INSERT INTO bench_settle DEFAULT VALUES");
                bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;

                PQclear(r);
                if (!ok) {
                        fprintf(stderr, "bench: settle: %s", PQerrorMessage(c));
                        exit(1);
                }
                n++;
        }
        return (double)n * 1e6 / (double)(bench_now_us() - t0);
}

void bench_settle(const struct bench *b, const char *phase, double base1c)
{
        PGconn *c = bench_connect(b);
        int64_t t0 = bench_now_us(), deadline = t0 + 60 * 1000000LL, checkpointed, vacuumed;
        PGresult *r = PQexec(c, "CHECKPOINT");
        bool quiet = false;

        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                fprintf(stderr, "bench: CHECKPOINT before %s: %s", phase, PQerrorMessage(c));
                exit(1);
        }
        PQclear(r);
        checkpointed = bench_now_us();
        while (!quiet && bench_now_us() < deadline) {
                r = PQexec(c, "SELECT count(*) = 0 FROM pg_stat_activity "
                              "WHERE backend_type = 'autovacuum worker'");
                quiet = PQresultStatus(r) == PGRES_TUPLES_OK && PQgetvalue(r, 0, 0)[0] == 't';
                PQclear(r);
                if (!quiet)
                        bench_sleep_ms(200);
        }
        vacuumed = bench_now_us();
        /* the disk under the VM may still be writing back what the checkpoint handed it, and
         * every commit's flush waits behind that: single commits, half a second at a time,
         * until they run at half the rate of the run's first baseline or better */
        PQclear(PQexec(c, "CREATE TABLE IF NOT EXISTS bench_settle (id bigserial PRIMARY KEY)"));
        double first = commits_per_s(c, 500), now = first;
        while (now < 0.5 * base1c && bench_now_us() < deadline)
                now = commits_per_s(c, 500);
        PQclear(PQexec(c, "DROP TABLE bench_settle"));
        PQfinish(c);
        bench_report("settle_before",
                     "%s %.1f s: a CHECKPOINT %.1f s, %s %.1f s, single commits %.0f/s at first "
                     "and %.0f/s at the end (baseline_commit_1c %.0f/s)%s",
                     phase, (double)(bench_now_us() - t0) / 1e6, (double)(checkpointed - t0) / 1e6,
                     quiet ? "autovacuum done" : "autovacuum still at work",
                     (double)(vacuumed - checkpointed) / 1e6, first, now, base1c,
                     now < 0.5 * base1c ? "; not settled after 60 s: measured so" : "");
}

static void die(const char *what)
{
        fprintf(stderr, "bench: %s: %s\n", what, db_last_error());
        exit(1);
}

/* Which kind of file system holds the cluster: a figure measured on memory (tmpfs) is one
 * whose commits flush nothing, the ceiling of what the two cores can do; on a disk, each
 * commit waits for the disk's flush, and the commit baselines are the disk's speed. */
static void bench_storage_report(const char *dir)
{
        struct statfs fs;

        if (statfs(dir, &fs) < 0) {
                bench_report("bench_storage", "%s (unknown: %s)", dir, strerror(errno));
                return;
        }
        bench_report("bench_storage", "%s on %s", dir,
                     fs.f_type == TMPFS_MAGIC
                         ? "tmpfs: memory, commits flush nothing and the baselines are the "
                           "CPU's (set by TMPDIR)"
                         : "a disk: each commit waits for its flush (TMPDIR=/dev/shm for memory)");
}

/* A cluster that has been up a while writes its WAL into segment files a checkpoint kept
 * for reuse (min_wal_size, src/db/embedded_pg.c); a new one creates and zero-fills a 16 MB
 * file for each segment, and the backend that needs it holds every commit behind it while
 * it does (docs/performance.md, "New WAL segments"). So that every figure measures the
 * first kind (figures that write WAL fast paid most, the baselines least), min_wal_size of
 * WAL is written and checkpointed first; --fresh-wal leaves it out. */
static void wal_segments_ready(PGconn *c)
{
        int64_t t0 = bench_now_us();
        PGresult *r = PQexec(c, "SELECT pg_size_bytes(current_setting('min_wal_size')) / 1048576");
        int64_t mb = 0;
        char sql[256];

        if (PQresultStatus(r) != PGRES_TUPLES_OK || str_to_int64(PQgetvalue(r, 0, 0), &mb) < 0)
                mb = 0;
        PQclear(r);
        /* non-transactional logical messages: WAL and nothing else, 64 MB a statement */
        bool ok = true;
        for (int64_t done = 0; ok && done < mb; done += 64) {
                snprintf(sql, sizeof(sql),
                         "SELECT count(pg_logical_emit_message(false, 'agently-bench', "
                         "repeat('x', 1048576))) FROM generate_series(1, %lld)",
                         (long long)(mb - done < 64 ? mb - done : 64));
                r = PQexec(c, sql);
                ok = PQresultStatus(r) == PGRES_TUPLES_OK;
                PQclear(r);
        }
        if (ok) {
                r = PQexec(c, "CHECKPOINT");
                ok = PQresultStatus(r) == PGRES_COMMAND_OK;
                PQclear(r);
        }
        if (!ok) {
                fprintf(stderr, "bench: could not write WAL ahead of the figures: %s",
                        PQerrorMessage(c));
                exit(1);
        }
        r = PQexec(c, "SELECT count(*) FROM pg_ls_waldir()");
        bench_report("wal_segments_ready",
                     "%s (segment files kept for reuse after %lld MB of WAL and a checkpoint, "
                     "%.1f s; --fresh-wal: none)",
                     PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0) : "?",
                     (long long)mb, (double)(bench_now_us() - t0) / 1e6);
        PQclear(r);
}

int main(int argc, char **argv)
{
        static const struct option options[] = {
            {"duration", required_argument, NULL, 'd'},
            {"quick", no_argument, NULL, 'q'},
            {"keep", no_argument, NULL, 'k'},
            {"soak", required_argument, NULL, 's'},
            {"llm-density", required_argument, NULL, 'l'},
            {"sse", no_argument, NULL, 'e'},
            {"run-read", no_argument, NULL, 'r'},
            {"only", required_argument, NULL, 'o'},
            {"agents", required_argument, NULL, 'a'},
            {"runs", required_argument, NULL, 'R'},
            {"log-statements", no_argument, NULL, 'L'},
            {"pg-set", required_argument, NULL, 'P'},
            {"fresh-wal", no_argument, NULL, 'W'},
            {0},
        };
        struct bench b = {.duration_ms = 5000};
        struct embedded_pg *pg = NULL;
        PGconn *c = NULL;
        char template[PATH_MAX];
        int opt, keep = 0, sse_only = 0, run_read_only = 0, log_statements = 0, npg_set = 0;
        int fresh_wal = 0;
        const char *pg_set[16];
        struct utsname uts;

        while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
                switch (opt) {
                case 'd':
                        if (duration_parse_ms(optarg, &b.duration_ms) < 0) {
                                fprintf(stderr, "bench: bad --duration '%s'\n", optarg);
                                return 2;
                        }
                        break;
                case 'q':
                        b.quick = 1;
                        b.duration_ms = 2000;
                        break;
                case 'k':
                        keep = 1;
                        break;
                case 'l': /* only the LLM client's density, no database */
                        bench_llm_density((int)strtol(optarg, NULL, 10) > 0
                                              ? (int)strtol(optarg, NULL, 10)
                                              : 1000);
                        return 0;
                case 'e': /* only the live fan-out (bench_sse.c) */
                        sse_only = 1;
                        break;
                case 'r': /* only reading a large run (bench_run_read.c) */
                        run_read_only = 1;
                        break;
                case 'L':
                        log_statements = 1;
                        break;
                case 'W': /* measure on a new cluster's WAL: every segment created on use */
                        fresh_wal = 1;
                        break;
                case 'P':
                        if (!strchr(optarg, '=') ||
                            npg_set == (int)(sizeof(pg_set) / sizeof(*pg_set))) {
                                fprintf(stderr,
                                        "bench: bad --pg-set '%s' (NAME=VALUE, at most 16)\n",
                                        optarg);
                                return 2;
                        }
                        pg_set[npg_set++] = optarg;
                        break;
                case 'o':
                        b.only = optarg;
                        break;
                case 'a':
                        b.agents = (int)strtol(optarg, NULL, 10);
                        if (b.agents < 1) {
                                fprintf(stderr, "bench: bad --agents '%s'\n", optarg);
                                return 2;
                        }
                        break;
                case 'R':
                        b.runs = (int)strtol(optarg, NULL, 10);
                        if (b.runs < 100 || b.runs > 1000000) {
                                fprintf(stderr, "bench: bad --runs '%s' (100 to 1000000)\n",
                                        optarg);
                                return 2;
                        }
                        break;
                case 's':
                        if (duration_parse_ms(optarg, &b.soak_ms) < 0 || b.soak_ms < 10000) {
                                fprintf(stderr, "bench: bad --soak '%s' (at least 10s)\n", optarg);
                                return 2;
                        }
                        break;
                default:
                        fprintf(stderr, "usage: agently-bench [--duration D] [--quick] [--keep] "
                                        "[--soak D] [--llm-density N] [--sse] [--run-read] "
                                        "[--only LIST] [--agents N] [--runs N] [--log-statements] "
                                        "[--pg-set NAME=VALUE] [--fresh-wal]\n  LIST: "
                                        "runs,steps,effects,latency,map,soak,"
                                        "journal,density,llm,baseline_soak (only when named)\n");
                        return 2;
                }
        }
        /* the cluster's home: under $TMPDIR, as any temporary file; TMPDIR=/dev/shm puts it
         * in memory, where a commit's flush costs nothing and every baseline is the CPU's */
        const char *tmpdir = getenv("TMPDIR");
        if (!tmpdir || !*tmpdir)
                tmpdir = "/tmp";
        if ((size_t)snprintf(template, sizeof(template), "%s/agently-bench-XXXXXX", tmpdir) >=
            sizeof(template)) {
                fprintf(stderr, "bench: TMPDIR '%s' is too long\n", tmpdir);
                return 2;
        }
        b.dir = mkdtemp(template);
        if (!b.dir) {
                fprintf(stderr, "bench: cannot create a directory under TMPDIR '%s': %s\n", tmpdir,
                        strerror(errno));
                return 1;
        }
        if (keep)
                bench_report("bench_dir", "%s (kept: the cluster, its log, the workers' logs)",
                             b.dir);
        if (embedded_pg_open(b.dir, &pg) < 0 || embedded_pg_init(pg, 0) < 0 ||
            embedded_pg_start(pg) < 0)
                die("could not start Postgres");
        b.owner_conninfo = embedded_pg_conninfo(pg, EMBEDDED_PG_SUPERUSER, EMBEDDED_PG_DATABASE);
        if (db_connect(b.owner_conninfo, &c) < 0 || db_migrate(c, NULL) < 0 ||
            bootstrap_embedded_roles(c) < 0)
                die("could not prepare the database");
        /* commit timestamps: a run's latency ends at the commit of the transaction that
         * finished it (pg_xact_commit_timestamp); a restart makes the setting take effect,
         * before the baselines, so every figure pays its (small) cost alike */
        if (db_exec(c, "ALTER SYSTEM SET track_commit_timestamp = on") < 0)
                die("could not enable commit timestamps");
        /* --log-statements: every statement with its duration in the cluster's log (kept
         * with --keep), for tracing where a figure's time goes; it slows every figure */
        if (log_statements && (db_exec(c, "ALTER SYSTEM SET log_min_duration_statement = 0") < 0 ||
                               db_exec(c, "ALTER SYSTEM SET log_line_prefix = '%m [%p] %a '") < 0))
                die("could not enable statement logging");
        /* --pg-set NAME=VALUE: any server setting, for profiling a figure on a kept cluster
         * (shared_preload_libraries=pg_stat_statements, pg_stat_statements.track=all, ...),
         * appended to postgresql.conf, where a library's settings may precede its loading;
         * it may slow every figure */
        if (npg_set > 0) {
                char path[4096];
                FILE *conf;

                snprintf(path, sizeof(path), "%s/postgresql.conf", embedded_pg_cluster_dir(pg));
                conf = fopen(path, "a");
                if (!conf) {
                        perror("bench: --pg-set");
                        return 1;
                }
                for (int i = 0; i < npg_set; i++) {
                        const char *eq = strchr(pg_set[i], '=');
                        fprintf(conf, "%.*s = '", (int)(eq - pg_set[i]), pg_set[i]);
                        for (const char *v = eq + 1; *v; v++)
                                fprintf(conf, *v == '\'' ? "''" : "%c", *v);
                        fprintf(conf, "'\n");
                }
                fclose(conf);
        }
        PQfinish(c);
        if (embedded_pg_stop(pg) < 0 || embedded_pg_start(pg) < 0 ||
            db_connect(b.owner_conninfo, &c) < 0)
                die("could not restart Postgres");
        PGresult *v = PQexec(c, "SELECT current_setting('server_version'), "
                                "current_setting('synchronous_commit'), current_setting('fsync'), "
                                "current_setting('track_commit_timestamp'), "
                                "current_setting('huge_pages')");
        uname(&uts);
        bench_report("machine", "%s %s, %ld cores", uts.sysname, uts.machine,
                     sysconf(_SC_NPROCESSORS_ONLN));
        bench_storage_report(b.dir);
        bench_report("postgres", "%s synchronous_commit=%s fsync=%s track_commit_timestamp=%s",
                     PQgetvalue(v, 0, 0), PQgetvalue(v, 0, 1), PQgetvalue(v, 0, 2),
                     PQgetvalue(v, 0, 3));
        /* whether Postgres's shared memory got huge pages changes every figure here (a new
         * connection's first seconds: bench_baseline.c); huge_pages=try takes them when
         * the kernel has some reserved */
        long hp_total = -1, hp_free = -1, hp_rsvd = -1;
        FILE *mi = fopen("/proc/meminfo", "re");
        for (char line[128]; mi && fgets(line, sizeof(line), mi);) {
                (void)(sscanf(line, "HugePages_Total: %ld", &hp_total) == 1 ||
                       sscanf(line, "HugePages_Free: %ld", &hp_free) == 1 ||
                       sscanf(line, "HugePages_Rsvd: %ld", &hp_rsvd) == 1);
        }
        if (mi)
                fclose(mi);
        bench_report(
            "huge_pages",
            "%s (the kernel's 2 MB pages: %ld reserved, %ld mapped or promised, "
            "Postgres's among them when huge_pages took them)",
            PQgetvalue(v, 0, 4), hp_total,
            hp_total >= 0 && hp_free >= 0 ? hp_total - hp_free + (hp_rsvd > 0 ? hp_rsvd : 0) : -1);
        PQclear(v);
        if (!fresh_wal)
                wal_segments_ready(c);
        PQfinish(c);

        if (sse_only) {
                bench_sse(&b);
        } else if (run_read_only) {
                bench_run_read(&b);
        } else {
                double base1 = bench_baseline_commits(&b, 1);
                bench_report("baseline_commit_1c", "%.0f", base1);
                double base32 = bench_baseline_commits(&b, 32);
                bench_report("baseline_commit_32c", "%.0f", base32);
                /* only when named: it keeps both cores busy for the soak's length */
                if (b.only && bench_want(&b, "baseline_soak"))
                        bench_baseline_soak(&b, b.soak_ms > 0 ? b.soak_ms : 60000);

                bench_run_targets(&b, pg, base1, base32);
                bench_run_agents(&b, pg, base1, base32);
                if (bench_want(&b, "llm"))
                        bench_llm_density(b.quick ? 200 : 1000);
        }

        embedded_pg_stop(pg);
        embedded_pg_free(pg);
        if (!keep) {
                char *cmd[] = {"rm", "-rf", "--", b.dir, NULL};
                pid_t pid = fork();
                if (pid == 0) {
                        execvp("rm", cmd);
                        _exit(127);
                }
        }
        return 0;
}
