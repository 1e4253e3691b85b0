/*
 * The outbox under SIGKILL: two dispatchers (4 rows per claim) deliver 300 webhook
 * notifications to a receiver that takes 100 ms to answer, while for 20 s the test SIGKILLs
 * one of them every 150-450 ms and starts it again. At the end every notification is 'sent', the
 * receiver (which deduplicates by webhook-id, as docs/notifications.md tells receivers to) has each
 * id, no id ever arrived while another delivery of it was in flight (SKIP LOCKED and the lease: two
 * dispatchers never deliver one at the same time), and the attempt records show deliveries cut off
 * by a kill ('abandoned') that were taken over.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "notify_receiver.h"
#include "testlib.h"
#include "worker_fixture.h"

#define NOTIFICATIONS 300
#define DISPATCHERS   2

static void test_kill_mid_delivery(void **state)
{
        (void)state;
        struct worker_fixture *f = worker_fixture_new("notify_chaos");
        struct notify_receiver rcv;
        char channel[256], log[700], id[16];
        const char *extra[] = {
            "--notify-timeout", "2s", "--notify-lease", "3s", "--notify-batch", "4", NULL};
        pid_t d[DISPATCHERS];
        int kills = 0;

        notify_receiver_start(&rcv, NULL);
        snprintf(channel, sizeof(channel),
                 "{\"kind\":\"webhook\",\"url\":\"%s/hook?delay_ms=100\"}", rcv.url);
        free(test_db_value(f->db,
                           "SELECT count(agently_notify_enqueue('%s', NULL, '%s'::jsonb, "
                           "jsonb_build_object('event', 'notify', 'title', 'n' || i), NULL)) "
                           "FROM generate_series(1, %d) i",
                           f->user, channel, NOTIFICATIONS));
        snprintf(log, sizeof(log), "%s/dispatch.log", f->dir);
        for (int i = 0; i < DISPATCHERS; i++) {
                snprintf(id, sizeof(id), "d%d", i);
                d[i] = notify_spawn_dispatcher(f->conninfo, &rcv, id, extra, log);
        }
        srand(42);
        int64_t deadline = test_now_ms() + 150000;
        while (test_db_int(f->db, "SELECT count(*) FROM notifications WHERE status <> 'sent'") >
               0) {
                assert_int_lt(test_now_ms(), deadline);
                usleep((useconds_t)(150 + rand() % 300) * 1000);
                /* kill for the first 20 s, then let them finish */
                if (test_now_ms() < deadline - 130000) {
                        int v = rand() % DISPATCHERS;
                        test_stop_process(d[v], SIGKILL, 5000);
                        kills++;
                        snprintf(id, sizeof(id), "d%d", v);
                        d[v] = notify_spawn_dispatcher(f->conninfo, &rcv, id, extra, log);
                }
        }
        json_t *st = notify_receiver_state(&rcv);
        json_t *hooks = json_object_get(st, "hooks");
        long long raw = 0;
        const char *key;
        json_t *v;
        json_object_foreach (hooks, key, v)
                raw += json_integer_value(v);
        fprintf(stderr, "%d kills; %zu notifications received, %lld deliveries in all\n", kills,
                json_object_size(hooks), raw);
        assert_int_ge(kills, 20);
        /* every notification, each under its own id, none twice after deduplication */
        assert_int_equal(json_object_size(hooks), NOTIFICATIONS);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM notifications n WHERE "
                                            "status = 'sent'"),
                         NOTIFICATIONS);
        /* never two deliveries of one id at the same time */
        assert_int_equal(json_integer_value(json_object_get(st, "concurrent")), 0);
        /* kills did cut deliveries off, and those were taken over */
        assert_int_gt(test_db_int(f->db, "SELECT count(*) FROM notification_attempts WHERE "
                                         "outcome = 'abandoned'"),
                      0);
        /* every sent notification has exactly one 'sent' attempt */
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM notification_attempts WHERE "
                                            "outcome = 'sent'"),
                         NOTIFICATIONS);
        json_decref(st);
        for (int i = 0; i < DISPATCHERS; i++)
                test_stop_process(d[i], SIGTERM, 10000);
        notify_receiver_stop(&rcv);
        worker_fixture_free(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_kill_mid_delivery),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
