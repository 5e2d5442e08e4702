/*
 * test_proxy.c -- the stall tests again, through a proxy that delays every
 * chunk by 30 ms each way, plus the control that proves the detector bites.
 *
 * On loopback a blocking wait may last well under a millisecond and slip
 * under any stall bound; through the proxy every wait for the server lasts
 * >= 30 ms, so a single blocking wait anywhere in a workload fails the
 * 10 ms bound by a wide margin.  The control runs the REAL blocking path
 * (PQexec outside any task, from an ev_timer callback) through the same
 * proxy and requires the meter to see a stall of >= 25 ms: if it didn't,
 * a green result above would prove nothing.  The second control is the
 * other way round: the whole process stopped (SIGSTOP from a child, as a
 * hypervisor pause or valgrind's one-thread-at-a-time lock would) while the
 * loop is inside a window is not the loop blocking, and the meter's
 * witness thread must tell (stall.h).
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/wait.h>

#include "common.h"
#include "proxy.h"
#include "stall_work.h"

#define DELAY_MS 30
#define MB (1024u * 1024u)

static pqa_proxy *proxy;

static void proxy_up(void)
{
    proxy = pqa_proxy_start(atoi(pqa_env_port()), DELAY_MS);
    ck_assert_msg(proxy != NULL, "could not start the proxy");
}

static void proxy_down(void)
{
    pqa_proxy_stop(proxy);
    proxy = NULL;
}

/* runs a workload through the proxy; checks the proxy carried >= min_bytes */
static void via_proxy(const char *name, pqa_work_fn fn, size_t size, const char *extra,
                      unsigned long long min_bytes)
{
    proxy_up();
    struct pqa_work w = {.size = size};
    char *ci = pqa_conninfo_port(pqa_proxy_port(proxy), extra);
    w.conninfo = ci;
    pqa_work_check(name, fn, &w, 60);
    ck_assert_msg(pqa_proxy_accepted(proxy) >= 1, "%s: nothing went through the proxy", name);
    ck_assert_msg(pqa_proxy_bytes(proxy) >= min_bytes, "%s: the proxy carried only %llu bytes", name,
                  pqa_proxy_bytes(proxy));
    free(ci);
    proxy_down();
}

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

START_TEST(test_proxy_connect)
{
    via_proxy("proxy connect", pqa_work_connect, 0, NULL, 100);
}
END_TEST

START_TEST(test_proxy_connect_ssl)
{
    char extra[512];
    snprintf(extra, sizeof extra, "host=localhost hostaddr=127.0.0.1 sslmode=verify-full sslrootcert='%s'",
             pqa_env_sslroot());
    via_proxy("proxy connect ssl", pqa_work_connect, 0, extra, 1000);
}
END_TEST

START_TEST(test_proxy_query)
{
    via_proxy("proxy pg_sleep x2", pqa_work_sleep, 0, NULL, 100);
}
END_TEST

START_TEST(test_proxy_copy_out)
{
    via_proxy("proxy copy out 5 MB", pqa_work_copy_out, 5 * MB, NULL, 5000000);
}
END_TEST

START_TEST(test_proxy_copy_in)
{
    via_proxy("proxy copy in 5 MB", pqa_work_copy_in, 5 * MB, NULL, 5000000);
}
END_TEST

START_TEST(test_proxy_lo)
{
    via_proxy("proxy lo_import+export", pqa_work_lo, 48 * 1024, NULL, 96 * 1024);
}
END_TEST

START_TEST(test_proxy_ping)
{
    via_proxy("proxy ping", pqa_work_ping, 0, NULL, 10);
}
END_TEST

/* ---- the control: the blocking path must be caught ---- */

struct control {
    PGconn *conn;
    ev_timer query, stop;
    int ok;
    double query_s;
};

static void control_query(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct control *c = w->data;
    ck_assert_msg(!awaitlet_in_context(), "the control must run outside any task");
    double t0 = pqa_now();
    PGresult *r = PQexec(c->conn, "select 'blocking'"); /* real libpq: blocks the loop */
    c->query_s = pqa_now() - t0;
    c->ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
}

static void control_stop(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

START_TEST(test_control_blocking_is_detected)
{
    proxy_up();
    char *ci = pqa_conninfo_port(pqa_proxy_port(proxy), NULL);
    struct control c = {0};
    c.conn = PQconnectdb(ci);
    ck_assert_msg(PQstatus(c.conn) == CONNECTION_OK, "connect via proxy: %s", PQerrorMessage(c.conn));
    free(ci);

    struct ev_loop *loop = pqa_loop_new();
    pqa_stall st;
    pqa_stall_start(&st, loop);
    ev_timer_init(&c.query, control_query, 0.02, 0);
    c.query.data = &c;
    ev_timer_start(loop, &c.query);
    ev_timer_init(&c.stop, control_stop, 0.3, 0);
    ev_timer_start(loop, &c.stop);
    ev_run(loop, 0);
    pqa_stall_stop(&st);
    ev_loop_destroy(loop);
    PQfinish(c.conn);
    proxy_down();

    printf("control: blocking PQexec took %.1f ms, meter saw max gap %.2f ms (raw %.2f, blocked %.2f), "
           "%lu ticks\n",
           c.query_s * 1e3, st.max_gap * 1e3, st.max_raw_gap * 1e3, st.max_blocked * 1e3, st.ticks);
    ck_assert_msg(c.ok, "the control query failed");
    ck_assert_msg(c.query_s >= 2 * DELAY_MS * 1e-3 * 0.9, "the proxy did not delay: round trip %.1f ms",
                  c.query_s * 1e3);
    /* both measures: the one asserted normally and the one used under valgrind */
    ck_assert_msg(st.max_gap >= 0.025 && st.max_blocked >= 0.025,
                  "the stall meter missed a %.1f ms blocking wait (saw %.2f ms, blocked %.2f ms): "
                  "the detector is broken",
                  c.query_s * 1e3, st.max_gap * 1e3, st.max_blocked * 1e3);
}
END_TEST

/* ---- the second control: a pause of the whole process is not a stall ---- */

#define PAUSE_S 0.3

struct pause {
    int go[2];  /* parent -> child: stop me now */
    pid_t child;
    double wall, cpu;
};

static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Inside a window: asks the child to stop the process, then spins (no
 * system call, so no sleep of its own) until the wall clock has run
 * PAUSE_S ahead of the thread's CPU time -- the stop happened. */
static void pause_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct pause *p = w->data;
    double t0 = pqa_now(), c0 = thread_cpu();
    ck_assert_int_eq(write(p->go[1], "x", 1), 1);
    while (pqa_now() - t0 - (thread_cpu() - c0) < PAUSE_S * 0.9 && pqa_now() - t0 < 10)
        ;
    p->wall = pqa_now() - t0;
    p->cpu = thread_cpu() - c0;
    (void)loop; /* the window closes as the loop polls again; control_stop breaks it later */
}

START_TEST(test_control_process_pause_is_not_a_stall)
{
    struct pause p = {0};
    ck_assert_int_eq(pipe(p.go), 0);
    pid_t parent = getpid();
    p.child = fork();
    ck_assert_int_ge(p.child, 0);
    if (p.child == 0) {
        char c;
        if (read(p.go[0], &c, 1) == 1) {
            kill(parent, SIGSTOP);
            struct timespec ts = {0, (long)(PAUSE_S * 1e9)};
            nanosleep(&ts, NULL);
            kill(parent, SIGCONT);
        }
        _exit(0);
    }
    struct ev_loop *loop = pqa_loop_new();
    pqa_stall st;
    pqa_stall_start(&st, loop);
    ev_timer t, stop;
    ev_timer_init(&t, pause_cb, 0.05, 0);
    t.data = &p;
    ev_timer_start(loop, &t);
    ev_timer_init(&stop, control_stop, 0.1, 0);
    ev_timer_start(loop, &stop);
    ev_run(loop, 0);
    pqa_stall_stop(&st);
    ev_loop_destroy(loop);
    int status;
    ck_assert_int_eq(waitpid(p.child, &status, 0), p.child);
    close(p.go[0]);
    close(p.go[1]);
    char why[400];
    printf("pause: window %.1f ms wall, %.1f ms CPU; meter before correction held %.1f ms, blocked %.1f ms; "
           "after: held %.1f ms, blocked %.1f ms (%s)\n",
           p.wall * 1e3, p.cpu * 1e3, st.raw_gap * 1e3, st.raw_blocked * 1e3, st.max_gap * 1e3,
           st.max_blocked * 1e3, pqa_stall_describe(&st, why, sizeof why));
    fflush(stdout);
    ck_assert_msg(p.wall - p.cpu >= PAUSE_S * 0.9, "the process was not stopped (%.1f ms wall, %.1f ms CPU)",
                  p.wall * 1e3, p.cpu * 1e3);
    /* the pause itself was seen as a sleep in the window ... */
    ck_assert_msg(st.raw_blocked >= PAUSE_S * 0.5, "the window did not sleep: blocked %.1f ms",
                  st.raw_blocked * 1e3);
    /* ... and not counted as the loop's: what is left is the spin's CPU */
    ck_assert_msg(st.max_blocked < PAUSE_S * 0.3, "a pause of the process counted as blocking: %.1f ms (%s)",
                  st.max_blocked * 1e3, why);
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("shim-proxy");
    TCase *tc = tcase_create("proxy");
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_control_blocking_is_detected);
    tcase_add_test(tc, test_control_process_pause_is_not_a_stall);
    tcase_add_test(tc, test_proxy_connect);
    tcase_add_test(tc, test_proxy_connect_ssl);
    tcase_add_test(tc, test_proxy_query);
    tcase_add_test(tc, test_proxy_copy_out);
    tcase_add_test(tc, test_proxy_copy_in);
    tcase_add_test(tc, test_proxy_lo);
    tcase_add_test(tc, test_proxy_ping);
    suite_add_tcase(s, tc);
    int rc = pqa_run_suite(s);
    return rc;
}
