/*
 * The embedded Postgres cluster: locate, initdb, start, stop; see embedded_pg.h.
 * Every Postgres program is run through run_pg_program(), which drops to the Postgres user
 * when we are root and puts the server in its own session so a terminal's Ctrl-C reaches
 * the supervisor only (the supervisor then stops Postgres in order, last).
 */
#include "embedded_pg.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <sodium.h>

#include "cleanup.h"
#include "db.h"
#include "fileio.h"
#include "strutil.h"

#define STATE_FILE "postgres.json"

struct embedded_pg {
        char *data_dir;
        char *home;        /* owned by the Postgres user: data/, run/, postgres.log */
        char *cluster_dir; /* PGDATA */
        char *socket_dir;
        char *log_path;
        int port;
        long long restarts; /* crash restarts by `agently up` since the cluster was made */
        bool initialized;
        bool drop_privileges;
        uid_t uid;
        gid_t gid;
        char *run_user;
};

void embedded_pg_free(struct embedded_pg *pg)
{
        if (!pg)
                return;
        free(pg->data_dir);
        free(pg->home);
        free(pg->cluster_dir);
        free(pg->socket_dir);
        free(pg->log_path);
        free(pg->run_user);
        free(pg);
}

bool embedded_pg_initialized(const struct embedded_pg *pg)
{
        return pg->initialized;
}

const char *embedded_pg_data_dir(const struct embedded_pg *pg)
{
        return pg->data_dir;
}

const char *embedded_pg_cluster_dir(const struct embedded_pg *pg)
{
        return pg->cluster_dir;
}

int embedded_pg_port(const struct embedded_pg *pg)
{
        return pg->port;
}

int embedded_pg_bindir(char **out)
{
        const char *env = getenv("AGENTLY_PG_BINDIR");
        int best = -1;
        DIR *d;
        struct dirent *e;

        if (!str_is_empty(env)) {
                *out = strdup(env);
                return *out ? 0 : -ENOMEM;
        }
        d = opendir("/usr/lib/postgresql");
        if (d) {
                while ((e = readdir(d))) {
                        int v;
                        char probe[PATH_MAX];
                        if (str_to_int(e->d_name, &v) < 0)
                                continue;
                        snprintf(probe, sizeof(probe), "/usr/lib/postgresql/%d/bin/initdb", v);
                        if (access(probe, X_OK) == 0 && v > best)
                                best = v;
                }
                closedir(d);
        }
        if (best < 0) {
                db_set_error("could not find the Postgres server programs under "
                             "/usr/lib/postgresql; install postgresql-15 (scripts/install-deps) "
                             "or set AGENTLY_PG_BINDIR");
                return -ENOENT;
        }
        *out = str_printf("/usr/lib/postgresql/%d/bin", best);
        return *out ? 0 : -ENOMEM;
}

static int set_paths(struct embedded_pg *pg, const char *home)
{
        free(pg->home);
        free(pg->cluster_dir);
        free(pg->socket_dir);
        free(pg->log_path);
        pg->home = strdup(home);
        pg->cluster_dir = str_printf("%s/data", home);
        pg->socket_dir = str_printf("%s/run", home);
        pg->log_path = str_printf("%s/postgres.log", home);
        return pg->home && pg->cluster_dir && pg->socket_dir && pg->log_path ? 0 : -ENOMEM;
}

static int resolve_run_user(struct embedded_pg *pg)
{
        const char *name = getenv("AGENTLY_PG_USER");
        struct passwd *pw;

        if (geteuid() != 0) {
                pg->drop_privileges = false;
                pg->uid = geteuid();
                pg->gid = getegid();
                return 0;
        }
        if (str_is_empty(name))
                name = "agently";
        pw = getpwnam(name);
        if (!pw && strcmp(name, "agently") == 0) {
                /* Postgres refuses to run as root: make an unprivileged system user for it. */
                pid_t pid = fork();
                if (pid == 0) {
                        int devnull = open("/dev/null", O_WRONLY);
                        if (devnull >= 0) {
                                dup2(devnull, 1);
                                dup2(devnull, 2);
                        }
                        execlp("useradd", "useradd", "--system", "--user-group", "--no-create-home",
                               "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                               "agently", (char *)NULL);
                        _exit(127);
                }
                if (pid > 0)
                        waitpid(pid, NULL, 0);
                pw = getpwnam(name);
                if (!pw) {
                        name = "nobody";
                        pw = getpwnam(name);
                }
        }
        if (!pw) {
                db_set_error("cannot run Postgres as root and user '%s' does not exist; create "
                             "it or set AGENTLY_PG_USER to an unprivileged user",
                             name);
                return -ENOENT;
        }
        pg->drop_privileges = true;
        pg->uid = pw->pw_uid;
        pg->gid = pw->pw_gid;
        pg->run_user = strdup(name);
        return pg->run_user ? 0 : -ENOMEM;
}

static void drop_privileges_or_die(const struct embedded_pg *pg)
{
        if (!pg->drop_privileges)
                return;
        if (setgroups(0, NULL) < 0 || setgid(pg->gid) < 0 || setuid(pg->uid) < 0) {
                perror("agently: could not drop privileges for postgres");
                _exit(126);
        }
}

/*
 * Runs a Postgres program as the Postgres user in a new session, output appended to the
 * cluster log (or discarded). Returns the exit status (>= 0) or a negative errno.
 */
static int run_pg_program(const struct embedded_pg *pg, char *const argv[], bool quiet)
{
        pid_t pid = fork();
        int status;

        if (pid < 0)
                return -errno;
        if (pid == 0) {
                int fd = -1;
                drop_privileges_or_die(pg);
                setsid();
                if (!quiet && pg->log_path)
                        fd = open(pg->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
                if (fd < 0)
                        fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
                if (fd >= 0) {
                        dup2(fd, STDOUT_FILENO);
                        dup2(fd, STDERR_FILENO);
                }
                int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (in >= 0)
                        dup2(in, STDIN_FILENO);
                if (pg->home && chdir(pg->home) < 0 && chdir("/") < 0)
                        _exit(126);
                setenv("LC_ALL", "C", 1);
                execv(argv[0], argv);
                _exit(127);
        }
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return -errno;
        if (WIFEXITED(status))
                return WEXITSTATUS(status);
        return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* Can the Postgres user enter dir? Checked as that user, since root can enter anything. */
static bool pg_user_can_enter(const struct embedded_pg *pg, const char *dir)
{
        pid_t pid;
        int status;

        if (!pg->drop_privileges)
                return access(dir, X_OK) == 0;
        pid = fork();
        if (pid < 0)
                return false;
        if (pid == 0) {
                drop_privileges_or_die(pg);
                _exit(access(dir, X_OK) == 0 ? 0 : 1);
        }
        if (waitpid(pid, &status, 0) < 0)
                return false;
        return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int load_state(struct embedded_pg *pg)
{
        _cleanup_free_ char *path = str_printf("%s/" STATE_FILE, pg->data_dir);
        _cleanup_json_ json_t *state = NULL;
        json_error_t jerr;
        const char *home = NULL;
        int port = 0;
        json_int_t restarts = 0;

        if (!path)
                return -ENOMEM;
        if (access(path, F_OK) < 0)
                return 0;
        state = json_load_file(path, 0, &jerr);
        if (!state || json_unpack(state, "{s:s, s?:i, s?:I}", "home", &home, "port", &port,
                                  "restarts", &restarts) < 0) {
                db_set_error("%s is damaged (%s); move it away and run `agently up` again", path,
                             state ? "missing fields" : jerr.text);
                return -EINVAL;
        }
        pg->port = port;
        pg->restarts = restarts;
        pg->initialized = true;
        return set_paths(pg, home);
}

static int save_state(const struct embedded_pg *pg)
{
        _cleanup_free_ char *path = str_printf("%s/" STATE_FILE, pg->data_dir);
        _cleanup_json_ json_t *state =
            json_pack("{s:s, s:i, s:s, s:I}", "home", pg->home, "port", pg->port, "user",
                      pg->run_user ? pg->run_user : "", "restarts", (json_int_t)pg->restarts);
        _cleanup_free_ char *text = state ? json_dumps(state, JSON_INDENT(2)) : NULL;

        if (!path || !text)
                return -ENOMEM;
        return file_write_atomic(path, text, strlen(text), 0600);
}

int embedded_pg_open(const char *data_dir, struct embedded_pg **out)
{
        struct embedded_pg *pg = calloc(1, sizeof(*pg));
        int r;

        if (!pg)
                return -ENOMEM;
        if (str_is_empty(data_dir))
                data_dir = getenv("AGENTLY_DATA_DIR");
        if (str_is_empty(data_dir))
                data_dir = EMBEDDED_PG_DEFAULT_DATA_DIR;
        r = path_absolute(data_dir, &pg->data_dir);
        if (r == 0)
                r = resolve_run_user(pg);
        if (r == 0)
                r = load_state(pg);
        if (r < 0) {
                embedded_pg_free(pg);
                return r;
        }
        *out = pg;
        return 0;
}

static int chown_to_pg(const struct embedded_pg *pg, const char *path)
{
        if (pg->drop_privileges && chown(path, pg->uid, pg->gid) < 0)
                return -errno;
        return 0;
}

static int make_pg_dir(const struct embedded_pg *pg, const char *path)
{
        if (mkdir(path, 0700) < 0 && errno != EEXIST)
                return -errno;
        return chown_to_pg(pg, path);
}

/* Picks the cluster home: inside the data dir when the Postgres user can reach it. */
static int choose_home(struct embedded_pg *pg)
{
        _cleanup_free_ char *inside = str_printf("%s/postgres", pg->data_dir);
        unsigned char digest[crypto_hash_sha256_BYTES];
        char hex[2 * sizeof(digest) + 1];
        _cleanup_free_ char *outside = NULL;
        int r;

        if (!inside)
                return -ENOMEM;
        if (pg_user_can_enter(pg, pg->data_dir))
                return set_paths(pg, inside);
        /* e.g. root with the data dir under /root: keep the cluster where Postgres can live */
        crypto_hash_sha256(digest, (const unsigned char *)pg->data_dir, strlen(pg->data_dir));
        str_hex(digest, 8, hex);
        outside = str_printf("/var/lib/agently/clusters/%s", hex);
        if (!outside)
                return -ENOMEM;
        r = dir_make_parents("/var/lib/agently/clusters", 0755);
        if (r < 0) {
                db_set_error("could not create /var/lib/agently/clusters for the Postgres "
                             "cluster (%s): choose a --data-dir the user '%s' can reach",
                             strerror(-r), pg->run_user ? pg->run_user : "postgres");
                return r;
        }
        return set_paths(pg, outside);
}

static int write_cluster_config(const struct embedded_pg *pg, unsigned flags)
{
        _cleanup_free_ char *path = str_printf("%s/postgresql.conf", pg->cluster_dir);
        FILE *f;

        if (!path)
                return -ENOMEM;
        f = fopen(path, "ae");
        if (!f)
                return -errno;
        fprintf(f,
                "\n# --- agently embedded settings ---\n"
                "listen_addresses = '127.0.0.1'\n"
                "unix_socket_directories = '%s'\n"
                "unix_socket_permissions = 0700\n"
                "max_connections = 300\n"
                "shared_buffers = 256MB\n"
                "password_encryption = 'scram-sha-256'\n"
                "log_min_messages = warning\n"
                "log_line_prefix = '%%m [%%p] '\n"
                /* the queue table churns (every claim and finish is a new row version):
                 * look for vacuum work every second, not every minute. Its claim indexes
                 * are as big as the entries that die between two vacuums: B-tree pages
                 * emptied by one vacuum are reused only after it, so the interval sets their
                 * size (docs/performance.md, "The 30-minute soak"; 0011_run_queue.sql sets
                 * the table's thresholds) */
                "autovacuum_naptime = 1s\n"
                /* a busy queue writes WAL at tens of MB/s: at the default 1 GB a checkpoint
                 * (and the burst of full-page images after it) would come every minute */
                "max_wal_size = 2GB\n"
                /* and needs a new 16 MB segment file several times a second. A checkpoint
                 * keeps the files it no longer needs for reuse, up to this much: a segment
                 * that is not reused is created and zero-filled by the backend that needs it
                 * while every other commit waits behind it (~70 ms here, every 0.4 s at 40
                 * MB/s; docs/performance.md, "New WAL segments") */
                "min_wal_size = 1GB\n",
                pg->socket_dir);
        if (flags & EMBEDDED_PG_FAST)
                fprintf(f, "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        return fclose(f) == 0 ? 0 : -errno;
}

int embedded_pg_init(struct embedded_pg *pg, unsigned flags)
{
        _cleanup_free_ char *bindir = NULL, *initdb = NULL, *pwfile = NULL, *pwpath = NULL;
        _cleanup_free_ char *pgversion = NULL;
        unsigned char secret[24];
        char password[2 * sizeof(secret) + 1];
        int r;

        if (sodium_init() < 0)
                return -EIO;
        r = dir_make_parents(pg->data_dir, 0700);
        if (r < 0) {
                db_set_error("could not create data directory %s: %s", pg->data_dir, strerror(-r));
                return r;
        }
        if (pg->drop_privileges)
                chmod(pg->data_dir, 0711); /* the Postgres user must traverse it, not list it */
        if (pg->initialized) {
                pgversion = str_printf("%s/PG_VERSION", pg->cluster_dir);
                if (pgversion && access(pgversion, F_OK) == 0)
                        return 0;
                /* state written but initdb never finished: start over below */
        }
        r = choose_home(pg);
        if (r < 0)
                return r;
        if ((r = dir_make_parents(pg->home, 0700)) < 0 || (r = chown_to_pg(pg, pg->home)) < 0 ||
            (r = make_pg_dir(pg, pg->socket_dir)) < 0) {
                db_set_error("could not prepare %s for Postgres: %s", pg->home, strerror(-r));
                return r;
        }
        r = embedded_pg_bindir(&bindir);
        if (r < 0)
                return r;

        /* The superuser's password is for TCP clients (psql -h 127.0.0.1); local is trust. */
        randombytes_buf(secret, sizeof(secret));
        str_hex(secret, sizeof(secret), password);
        pwpath = str_printf("%s/postgres-password", pg->data_dir);
        pwfile = str_printf("%s/pwfile", pg->home);
        initdb = str_printf("%s/initdb", bindir);
        if (!pwpath || !pwfile || !initdb)
                return -ENOMEM;
        if ((r = file_write_atomic(pwpath, password, strlen(password), 0600)) < 0 ||
            (r = file_write_atomic(pwfile, password, strlen(password), 0600)) < 0 ||
            (r = chown_to_pg(pg, pwfile)) < 0) {
                db_set_error("could not write the Postgres password file: %s", strerror(-r));
                return r;
        }
        char *argv[] = {initdb,
                        "-D",
                        pg->cluster_dir,
                        "-U",
                        EMBEDDED_PG_SUPERUSER,
                        "--pwfile",
                        pwfile,
                        "--auth-local=trust",
                        "--auth-host=scram-sha-256",
                        "--encoding=UTF8",
                        "--no-locale",
                        "--no-instructions",
                        NULL};
        r = run_pg_program(pg, argv, false);
        unlink(pwfile);
        sodium_memzero(password, sizeof(password));
        if (r != 0) {
                db_set_error("initdb failed (exit %d); see %s", r, pg->log_path);
                return -EIO;
        }
        r = write_cluster_config(pg, flags);
        if (r < 0) {
                db_set_error("could not write postgresql.conf: %s", strerror(-r));
                return r;
        }
        pg->initialized = true;
        return save_state(pg);
}

static int free_loopback_port(void)
{
        struct sockaddr_in addr = {.sin_family = AF_INET,
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(addr);
        _cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0)
                return -errno;
        if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
            getsockname(fd, (struct sockaddr *)&addr, &len) < 0)
                return -errno;
        return ntohs(addr.sin_port);
}

static bool port_is_free(int port)
{
        struct sockaddr_in addr = {.sin_family = AF_INET,
                                   .sin_port = htons((uint16_t)port),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        _cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        return fd >= 0 && bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0;
}

bool embedded_pg_running(const struct embedded_pg *pg)
{
        _cleanup_free_ char *bindir = NULL, *pg_ctl = NULL;

        if (!pg->initialized || embedded_pg_bindir(&bindir) < 0)
                return false;
        pg_ctl = str_printf("%s/pg_ctl", bindir);
        if (!pg_ctl)
                return false;
        char *argv[] = {pg_ctl, "status", "-D", pg->cluster_dir, NULL};
        return run_pg_program(pg, argv, true) == 0;
}

char *embedded_pg_conninfo(const struct embedded_pg *pg, const char *user, const char *dbname)
{
        return str_printf("host='%s' port=%d user='%s' dbname='%s' connect_timeout=10",
                          pg->socket_dir, pg->port, user, dbname);
}

static int ensure_database(const struct embedded_pg *pg)
{
        _cleanup_free_ char *conninfo = embedded_pg_conninfo(pg, EMBEDDED_PG_SUPERUSER, "postgres");
        _cleanup_pgconn_ PGconn *c = NULL;
        _cleanup_pgresult_ PGresult *res = NULL;
        int r;

        if (!conninfo)
                return -ENOMEM;
        r = db_connect(conninfo, &c);
        if (r < 0)
                return r;
        res = db_query(c, "SELECT 1 FROM pg_database WHERE datname = '" EMBEDDED_PG_DATABASE "'", 0,
                       NULL, &r);
        if (!res)
                return r;
        if (PQntuples(res) > 0)
                return 0;
        return db_exec(c, "CREATE DATABASE " EMBEDDED_PG_DATABASE);
}

/* The major version in PGDATA/PG_VERSION, or 0 when unreadable. */
static int cluster_major_version(const struct embedded_pg *pg)
{
        _cleanup_free_ char *path = str_printf("%s/PG_VERSION", pg->cluster_dir);
        _cleanup_free_ char *text = NULL;
        int version;

        if (!path || file_read_all(path, 64, &text, NULL) < 0)
                return 0;
        text[strcspn(text, "\n")] = '\0';
        return str_to_int(text, &version) == 0 ? version : 0;
}

int embedded_pg_start(struct embedded_pg *pg)
{
        _cleanup_free_ char *bindir = NULL, *pg_ctl = NULL;
        int r;

        if (!pg->initialized) {
                db_set_error("the embedded Postgres under %s is not initialized", pg->data_dir);
                return -ENOENT;
        }
        if (embedded_pg_running(pg))
                return ensure_database(pg);
        r = embedded_pg_bindir(&bindir);
        if (r < 0)
                return r;
        pg_ctl = str_printf("%s/pg_ctl", bindir);
        if (!pg_ctl)
                return -ENOMEM;
        /* a crashed previous run may have left a socket lock behind; Postgres handles the
         * stale postmaster.pid itself. The port is kept whenever it is still free, so clients
         * holding the old connection string reach the restarted server. */
        for (int tries = 0; tries < 5; tries++) {
                int port = pg->port;
                _cleanup_free_ char *options = NULL;

                if (port <= 0 || !port_is_free(port)) {
                        port = free_loopback_port();
                        if (port < 0)
                                return port;
                }
                /* after a crash, recovery first syncs the data directory: one syncfs() of
                 * its file system instead of an fsync() per file (seconds on a busy disk);
                 * Postgres 14 and later.
                 * Six autovacuum workers, not three: the run history's vacuums (tens of
                 * seconds each under their cost delay) held all three at once, and the
                 * queue, whose claim indexes grow with every second its vacuum waits, got
                 * none for up to 6 s (docs/performance.md, "Issue 9: why the claim indexes
                 * still grow after minute 5"). A start option, so clusters created before
                 * it get it too; the workers share one cost limit, so more of them do not
                 * vacuum faster, they only wait less. */
                options = str_printf(
                    "-p %d -c autovacuum_max_workers=6%s", port,
                    cluster_major_version(pg) >= 14 ? " -c recovery_init_sync_method=syncfs" : "");
                if (!options)
                        return -ENOMEM;
                char *argv[] = {pg_ctl,          "start", "-w",         "-t", "60",    "-D",
                                pg->cluster_dir, "-l",    pg->log_path, "-o", options, NULL};
                r = run_pg_program(pg, argv, false);
                if (r == 0) {
                        pg->port = port;
                        r = save_state(pg);
                        if (r < 0)
                                return r;
                        return ensure_database(pg);
                }
                if (port_is_free(port))
                        break; /* the port was not the problem: the log says what was */
                pg->port = 0;  /* lost the port to someone else: pick another */
        }
        db_set_error("could not start Postgres (pg_ctl exit %d); see %s", r, pg->log_path);
        return -EIO;
}

static int stop_mode(struct embedded_pg *pg, char *mode)
{
        _cleanup_free_ char *bindir = NULL, *pg_ctl = NULL;
        int r;

        if (!pg->initialized || !embedded_pg_running(pg))
                return 0;
        r = embedded_pg_bindir(&bindir);
        if (r < 0)
                return r;
        pg_ctl = str_printf("%s/pg_ctl", bindir);
        if (!pg_ctl)
                return -ENOMEM;
        char *argv[] = {pg_ctl, "stop", "-w", "-t", "60", "-m", mode, "-D", pg->cluster_dir, NULL};
        r = run_pg_program(pg, argv, false);
        if (r != 0) {
                db_set_error("could not stop Postgres (pg_ctl exit %d); see %s", r, pg->log_path);
                return -EIO;
        }
        return 0;
}

int embedded_pg_stop(struct embedded_pg *pg)
{
        return stop_mode(pg, "fast");
}

int embedded_pg_stop_discarding(struct embedded_pg *pg)
{
        return stop_mode(pg, "immediate");
}

pid_t embedded_pg_postmaster_pid(const struct embedded_pg *pg)
{
        _cleanup_free_ char *path = NULL, *text = NULL;
        int pid;

        if (!pg->initialized)
                return 0;
        path = str_printf("%s/postmaster.pid", pg->cluster_dir);
        if (!path || file_read_all(path, 4096, &text, NULL) < 0)
                return 0;
        text[strcspn(text, "\n")] = '\0';
        if (str_to_int(text, &pid) < 0 || pid <= 0)
                return 0;
        return pid;
}

int embedded_pg_count_restart(struct embedded_pg *pg)
{
        pg->restarts++;
        return save_state(pg);
}

long long embedded_pg_restarts(const struct embedded_pg *pg)
{
        return pg->restarts;
}

int embedded_pg_read_restarts(const char *data_dir, long long *out)
{
        _cleanup_free_ char *path = str_printf("%s/" STATE_FILE, data_dir);
        _cleanup_json_ json_t *state = NULL;
        json_int_t restarts = 0;

        if (!path)
                return -ENOMEM;
        state = json_load_file(path, 0, NULL);
        if (!state)
                return access(path, F_OK) < 0 ? -ENOENT : -EINVAL;
        if (json_unpack(state, "{s?:I}", "restarts", &restarts) < 0)
                return -EINVAL;
        *out = restarts;
        return 0;
}
