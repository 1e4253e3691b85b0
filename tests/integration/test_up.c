/*
 * Command (a) end to end, minus install and build: `agently up` creates its private
 * Postgres, migrates, writes the admin token (0600), serves /healthz, stops cleanly on
 * SIGTERM (Postgres included), and a second start reuses the data and the token.
 */
#include "testlib.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "embedded_pg.h"
#include "fileio.h"
#include "strutil.h"

struct up {
        pid_t pid;
        int port;
        char *dir;
        char *log;
};

static void up_start(struct up *u)
{
        char port[16];
        const char *args[] = {"up", "--data-dir", u->dir, "--port", port, "--workers", "1", NULL};

        snprintf(port, sizeof(port), "%d", u->port);
        u->pid = test_spawn_agently(args, (const char *[]){"AGENTLY_DATABASE_URL=", NULL}, u->log);
}

static char *read_text(const char *path)
{
        char *data = NULL;

        assert_int_equal(file_read_all(path, 1 << 20, &data, NULL), 0);
        return data;
}

static void up_stop(struct up *u)
{
        int status = test_stop_process(u->pid, SIGTERM, 90000);

        if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                char *log = read_text(u->log);
                fprintf(stderr, "agently up did not stop cleanly (status %d); its log:\n%s\n",
                        status, log);
                free(log);
                fail();
        }
}

/* The pid of up's child running `agently <role>`, or 0. */
static pid_t find_child(pid_t parent, const char *role)
{
        DIR *proc = opendir("/proc");
        struct dirent *e;
        pid_t found = 0;

        assert_non_null(proc);
        while (!found && (e = readdir(proc))) {
                char path[300], *stat = NULL, *cmdline = NULL;
                size_t len = 0;
                int pid, ppid = 0;
                char state_char;

                if (str_to_int(e->d_name, &pid) < 0)
                        continue;
                snprintf(path, sizeof(path), "/proc/%d/stat", pid);
                if (file_read_all(path, 4096, &stat, NULL) < 0)
                        continue;
                const char *close_paren = strrchr(stat, ')');
                if (close_paren && sscanf(close_paren + 1, " %c %d", &state_char, &ppid) == 2 &&
                    ppid == parent) {
                        snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
                        if (file_read_all(path, 4096, &cmdline, &len) == 0 && len > 0) {
                                /* argv[1] follows argv[0]'s NUL */
                                const char *arg1 = cmdline + strlen(cmdline) + 1;
                                if ((size_t)(arg1 - cmdline) < len && strcmp(arg1, role) == 0)
                                        found = pid;
                        }
                        free(cmdline);
                }
                free(stat);
        }
        closedir(proc);
        return found;
}

static void up_runs_stops_and_keeps_its_data(void **state)
{
        struct up u = {.port = test_free_port()};
        char *url, *token_path, *token1, *token2;
        struct stat st;
        struct embedded_pg *pg = NULL;

        u.dir = test_tempdir("up");
        u.log = str_printf("%s.log", u.dir);
        url = str_printf("http://127.0.0.1:%d/healthz", u.port);
        token_path = str_printf("%s/admin-token", u.dir);

        up_start(&u);
        if (!test_wait_http_ok(url, 60000)) {
                char *log = read_text(u.log);
                fprintf(stderr, "GET %s never answered 200; agently up's log:\n%s\n", url, log);
                fail();
        }
        assert_int_equal(stat(token_path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
        token1 = read_text(token_path);
        assert_true(str_has_prefix(token1, "agt_"));

        /* the embedded cluster holds the admin user */
        assert_int_equal(embedded_pg_open(u.dir, &pg), 0);
        assert_true(embedded_pg_running(pg));
        char *conninfo = embedded_pg_conninfo(pg, EMBEDDED_PG_SUPERUSER, EMBEDDED_PG_DATABASE);
        PGconn *c = test_db_connect(conninfo);
        assert_int_equal(test_db_int(c, "SELECT count(*) FROM users WHERE is_admin"), 1);
        /* started with six autovacuum workers (embedded_pg_start: the queue's vacuum must
         * not wait for the run history's) */
        assert_int_equal(test_db_int(c, "SELECT current_setting('autovacuum_max_workers')::int"),
                         6);
        PQclear(test_db_must(c, "INSERT INTO users (name) VALUES ('kept-across-restarts')"));
        PQfinish(c);

        /* a crashed child is restarted: kill the API with SIGKILL, it comes back */
        pid_t api = find_child(u.pid, "api");
        assert_int_gt(api, 0);
        assert_int_gt(find_child(u.pid, "worker"), 0);
        assert_int_gt(find_child(u.pid, "dispatch"), 0);
        kill(api, SIGKILL);
        int64_t deadline = test_now_ms() + 20000;
        pid_t again = 0;
        while (test_now_ms() < deadline) {
                again = find_child(u.pid, "api");
                if (again > 0 && again != api)
                        break;
                usleep(100 * 1000);
        }
        assert_int_gt(again, 0);
        assert_int_not_equal(again, api);
        assert_true(test_wait_http_ok(url, 20000));

        up_stop(&u);
        assert_false(embedded_pg_running(pg)); /* Ctrl-C/SIGTERM stops Postgres too */
        assert_int_equal(test_http("GET", url, NULL, NULL, NULL), 0);

        /* a second start reuses the data and the token */
        up_start(&u);
        assert_true(test_wait_http_ok(url, 60000));
        token2 = read_text(token_path);
        assert_string_equal(token1, token2);
        embedded_pg_free(pg);
        assert_int_equal(embedded_pg_open(u.dir, &pg), 0);
        free(conninfo);
        conninfo = embedded_pg_conninfo(pg, EMBEDDED_PG_SUPERUSER, EMBEDDED_PG_DATABASE);
        c = test_db_connect(conninfo);
        assert_int_equal(test_db_int(c, "SELECT count(*) FROM users WHERE name = "
                                        "'kept-across-restarts'"),
                         1);
        assert_int_equal(test_db_int(c, "SELECT count(*) FROM users WHERE is_admin"), 1);
        PQfinish(c);
        up_stop(&u);
        assert_false(embedded_pg_running(pg));

        embedded_pg_free(pg);
        test_rm_rf(u.dir);
        unlink(u.log);
        free(conninfo);
        free(token1);
        free(token2);
        free(url);
        free(token_path);
        free(u.dir);
        free(u.log);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(up_runs_stops_and_keeps_its_data),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
