/*
 * test_pool_health.c -- connections that die, servers that go away,
 * connections that get old.
 *
 * Broken connections must be found and replaced without the callers doing
 * anything beyond their own failed call: idle backends terminated by
 * pg_terminate_backend (the pool's idle watchers see the goodbye), backends
 * killed under load (only the requests then in flight fail), a whole server
 * restarted (a private one, stopped and started in place).  While the
 * server is unreachable the pool backs off: a handful of attempts per
 * second, never a busy loop.  A checkout check replaces a backend that
 * stopped answering (SIGSTOP) within check_timeout.  Connections are closed
 * after max_lifetime, each with its own jitter (measured from the server's
 * side), and beyond min_size after max_idle.
 */
#include "pool_common.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PTR(i) ((void *)(intptr_t)(i))

static pqawait_pool *make_pool(const char *app, const char *extra, pqawait_pool_options *o)
{
    char *ci = pt_conninfo(app, extra);
    pqawait_pool *p = pqawait_pool_new(awaitlet_current_loop(), ci, o);
    ck_assert_msg(p != NULL, "pqawait_pool_new: %s", strerror(errno));
    free(ci);
    return p;
}

static struct pqawait_pool_stats stats(pqawait_pool *p)
{
    struct pqawait_pool_stats s;
    ck_assert_int_eq(pqawait_pool_stats(p, &s), 0);
    return s;
}

/* ---- idle backends terminated ------------------------------------------------- */

static pqawait_pool *cond_pool;
static int idle_back(void *arg)
{
    (void)arg;
    struct pqawait_pool_stats s = stats(cond_pool);
    return s.lost == 3 && s.idle == 3;
}

static void *idle_killed_task(void *arg)
{
    (void)arg;
    PT_APP(app);
    pqawait_pool_options o = pt_options(3, 3);
    pqawait_pool *p = cond_pool = make_pool(app, NULL, &o);
    ck_assert_int_eq(pqawait_pool_wait(p, 10), 0);
    ck_assert_int_eq(pt_terminate(app), 3);
    ck_assert_msg(pt_until(idle_back, NULL, 5), "lost %llu idle %u", stats(p).lost, stats(p).idle);
    /* every caller now gets a working connection, first time */
    PGconn *c[3];
    for (int i = 0; i < 3; i++) {
        c[i] = pqawait_pool_acquire(p);
        ck_assert_ptr_nonnull(c[i]);
        ck_assert_int_eq(pt_int(c[i], "select 1"), 1);
    }
    for (int i = 0; i < 3; i++)
        pqawait_pool_release(p, c[i]);
    ck_assert_uint_eq(stats(p).opened, 6);
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(idle_backends_terminated)
{
    ck_assert_ptr_eq(pt_run(idle_killed_task, NULL, 5), PTR(1));
}
END_TEST

/* ---- backends killed under load -------------------------------------------------- */

static pqawait_pool *load_pool;
static int load_stop, load_ok, load_failed, load_failed_after;
static double load_kill_at = -1, load_recovered_at = -1;

static void *load_worker(void *arg)
{
    (void)arg;
    while (!load_stop) {
        PGconn *c = pqawait_pool_acquire(load_pool);
        if (!c) {
            load_failed++;
            continue;
        }
        PGresult *r = PQexec(c, "select 1 from pg_sleep(0.01)");
        int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
        pqawait_pool_release(load_pool, c);
        if (ok) {
            load_ok++;
            if (load_kill_at > 0 && load_recovered_at < 0)
                load_recovered_at = pqa_now();
        } else {
            load_failed++;
            if (load_kill_at > 0 && pqa_now() - load_kill_at > 1.0)
                load_failed_after++;
        }
    }
    return PTR(1);
}

static void *load_task(void *arg)
{
    (void)arg;
    PT_APP(app);
    pqawait_pool_options o = pt_options(4, 4);
    load_pool = make_pool(app, NULL, &o);
    ck_assert_int_eq(pqawait_pool_wait(load_pool, 10), 0);
    pt_monitor();
    awaitlet_task *w[12];
    for (int i = 0; i < 12; i++)
        w[i] = awaitlet_async_def(awaitlet_current_loop(), load_worker, NULL);
    awaitlet_sleep(0.3);
    int before = load_ok;
    load_kill_at = pqa_now();
    int killed = pt_terminate(app);
    ck_assert_int_eq(killed, 4);
    awaitlet_sleep(1.5);
    load_stop = 1;
    for (int i = 0; i < 12; i++)
        awaitlet_join(w[i]);
    ck_assert_int_gt(before, 10);
    /* only the statements in flight on the 4 killed backends failed */
    ck_assert_msg(load_failed >= 1 && load_failed <= killed, "%d requests failed", load_failed);
    ck_assert_int_eq(load_failed_after, 0);
    ck_assert_msg(load_recovered_at > 0 && load_recovered_at - load_kill_at < 1.0,
                  "recovered after %.2f s", load_recovered_at - load_kill_at);
    ck_assert_int_gt(load_ok, before + 20);
    struct pqawait_pool_stats s = stats(load_pool);
    ck_assert_uint_eq(s.lost, 4);
    ck_assert_uint_eq(s.opened, 8);
    pqawait_pool_close(load_pool);
    return PTR(1);
}

START_TEST(backends_killed_under_load)
{
    ck_assert_ptr_eq(pt_run(load_task, NULL, 5), PTR(1));
}
END_TEST

/* ---- a server restart ---------------------------------------------------------------- */

static char srv_dir[128], srv_host[256], srv_port[16];

static void *run_cmd(void *arg)
{
    return PTR(system((const char *)arg));
}

/* A shell command, run on a worker thread while the task (and the loop:
 * the pool keeps working) waits. */
static int sh(const char *fmt, const char *a)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, fmt, a);
    void *rc;
    ck_assert_int_eq(awaitlet_offload(run_cmd, cmd, &rc), 0);
    return (int)(intptr_t)rc;
}

static void private_server_start(void)
{
    const char *pgserver = getenv("PQAWAIT_PGSERVER");
    ck_assert_ptr_nonnull(pgserver);
    snprintf(srv_dir, sizeof srv_dir, "/tmp/pqa-pool-srv.%ld", (long)getpid());
    char cmd[512];
    snprintf(cmd, sizeof cmd, "'%s' start %s >/dev/null && . %s/env && echo \"$PQAWAIT_TEST_HOST\" "
             "\"$PQAWAIT_TEST_PORT\" > %s/hp", pgserver, srv_dir, srv_dir, srv_dir);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s/hp", srv_dir);
    FILE *f = fopen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fscanf(f, "%255s %15s", srv_host, srv_port), 2);
    fclose(f);
}

static void private_server_stop(void)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "'%s' stop %s >/dev/null 2>&1", getenv("PQAWAIT_PGSERVER"), srv_dir);
    (void)system(cmd);
}

static pqawait_pool *restart_pool;

static int all_back(void *arg)
{
    (void)arg;
    return stats(restart_pool).idle == 2;
}

static void *restart_task(void *arg)
{
    (void)arg;
    char ci[512];
    snprintf(ci, sizeof ci, "host=%s port=%s dbname=pqawait user=pqa_trust", srv_host, srv_port);
    pqawait_pool_options o = pt_options(2, 2);
    o.backoff_max = 0.4;
    o.check_idle = 0; /* checks on checkout while down must not spin either */
    pqawait_pool *p = restart_pool = pqawait_pool_new(awaitlet_current_loop(), ci, &o);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(pqawait_pool_wait(p, 10), 0);
    PGconn *c = pqawait_pool_acquire(p);
    int pid = pt_pid(c);
    pqawait_pool_release(p, c);

    ck_assert_int_eq(sh(PQA_POOL_PGCTL " stop %s", srv_dir), 0);
    double down_at = pqa_now();
    awaitlet_sleep(1.5); /* down: the pool notices and backs off meanwhile */
    struct pqawait_pool_stats s = stats(p);
    ck_assert_uint_eq(s.lost, 2);
    ck_assert_uint_eq(s.idle, 0);
    /* 0.1, 0.2, 0.4, 0.4... s apart: a few attempts, never thousands */
    ck_assert_msg(s.connect_failures >= 3 && s.connect_failures <= 12,
                  "%llu failed connects in 1.5 s", s.connect_failures);
    ck_assert_ptr_nonnull(pqawait_pool_error(p));
    errno = 0;
    ck_assert_ptr_null(pqawait_pool_acquire_timeout(p, 0.1));
    ck_assert_int_eq(errno, ETIMEDOUT);

    ck_assert_int_eq(sh(PQA_POOL_PGCTL " start %s", srv_dir), 0);
    ck_assert_msg(pt_until(all_back, NULL, 5), "the pool did not recover (%.1f s after the stop)",
                  pqa_now() - down_at);
    c = pqawait_pool_acquire(p);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_ne(pt_pid(c), pid);
    ck_assert_int_eq(pt_int(c, "select 1"), 1);
    pqawait_pool_release(p, c);
    ck_assert_ptr_null(pqawait_pool_error(p));
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(server_restart)
{
    private_server_start();
    void *r = pt_run(restart_task, NULL, 5);
    private_server_stop();
    ck_assert_ptr_eq(r, PTR(1));
}
END_TEST

/* ---- back-off against a port where nobody listens ------------------------------------ */

static void *backoff_task(void *arg)
{
    (void)arg;
    pqawait_pool_options o = pt_options(1, 1);
    o.backoff_max = 10;
    pqawait_pool *p = pqawait_pool_new(awaitlet_current_loop(),
                                       "host=127.0.0.1 port=1 dbname=x user=x sslmode=disable", &o);
    ck_assert_ptr_nonnull(p);
    awaitlet_sleep(1.6);
    struct pqawait_pool_stats s = stats(p);
    /* attempts at about 0, 0.1, 0.3, 0.7, 1.5 s */
    ck_assert_msg(s.connect_failures >= 3 && s.connect_failures <= 7,
                  "%llu failed connects in 1.6 s", s.connect_failures);
    const char *why = pqawait_pool_error(p);
    ck_assert_msg(why && strstr(why, "refused"), "error: %s", why ? why : "(none)");
    errno = 0;
    ck_assert_int_eq(pqawait_pool_wait(p, 0.05), -1);
    ck_assert_int_eq(errno, ETIMEDOUT);
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(backoff_while_unreachable)
{
    ck_assert_ptr_eq(pt_run(backoff_task, NULL, 5), PTR(1));
}
END_TEST

/* ---- checkout check ------------------------------------------------------------------ */

static void *check_task(void *arg)
{
    (void)arg;
    pqawait_pool_options o = pt_options(1, 1);
    o.check_idle = 0;
    o.check_timeout = 0.3;
    pqawait_pool *p = make_pool(pt_app(), NULL, &o);
    PGconn *c = pqawait_pool_acquire(p);
    int pid = pt_pid(c);
    pqawait_pool_release(p, c);
    c = pqawait_pool_acquire(p); /* checked, fine: the same backend */
    ck_assert_int_eq(pt_pid(c), pid);
    pqawait_pool_release(p, c);
    pt_stop_backend(pid); /* alive, connected, and silent */
    double t0 = pqa_now();
    c = pqawait_pool_acquire_timeout(p, 5);
    double took = pqa_now() - t0;
    pt_cont_backend(pid);
    ck_assert_msg(c != NULL, "acquire: %s", strerror(errno));
    ck_assert_msg(took >= 0.28 && took < 3, "took %.2f s", took);
    ck_assert_int_ne(pt_pid(c), pid);
    ck_assert_uint_eq(stats(p).lost, 1);
    pqawait_pool_release(p, c);
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(checkout_check_replaces_silent_backend)
{
    ck_assert_ptr_eq(pt_run(check_task, NULL, 5), PTR(1));
}
END_TEST

/* ---- lifetime with jitter ---------------------------------------------------------- */

#define LT_N 8
#define LT_LIFE 1.5
static struct { int pid; double born, died; } lt[LT_N * 3];
static int lt_n;

static int record_birth(PGconn *c, void *arg)
{
    (void)arg;
    if (lt_n < LT_N * 3) {
        int i = lt_n++; /* before the query: the other connectors run meanwhile */
        lt[i].born = pqa_now();
        lt[i].pid = pt_pid(c);
    }
    return 0;
}

static void *lifetime_task(void *arg)
{
    (void)arg;
    pqawait_pool_options o = pt_options(LT_N, LT_N);
    o.max_lifetime = LT_LIFE;
    o.max_idle = 0;
    o.configure = record_birth;
    o.connect_parallel = LT_N;
    pqawait_pool *p = make_pool(pt_app(), NULL, &o);
    ck_assert_int_eq(pqawait_pool_wait(p, 10), 0);
    ck_assert_int_eq(lt_n, LT_N);
    /* watch the first generation die, from the server's side */
    double until = pqa_now() + LT_LIFE + 1.0;
    int alive = LT_N;
    while (alive && pqa_now() < until) {
        PGresult *r = PQexec(pt_monitor(), "select pid from pg_stat_activity");
        double now = pqa_now();
        for (int i = 0; i < LT_N; i++) {
            if (lt[i].died > 0)
                continue;
            int seen = 0;
            for (int k = 0; k < PQntuples(r); k++)
                seen |= atoi(PQgetvalue(r, k, 0)) == lt[i].pid;
            if (!seen) {
                lt[i].died = now;
                alive--;
            }
        }
        PQclear(r);
        awaitlet_sleep(0.005);
    }
    ck_assert_int_eq(alive, 0);
    double lo = 1e9, hi = 0;
    for (int i = 0; i < LT_N; i++) {
        double life = lt[i].died - lt[i].born;
        if (getenv("PT_DEBUG"))
            fprintf(stderr, "pid %d born %.3f life %.3f\n", lt[i].pid, lt[i].born, life);
        lo = life < lo ? life : lo;
        hi = life > hi ? life : hi;
    }
    ck_assert_msg(lo >= LT_LIFE * 0.95 - 0.03 && hi <= LT_LIFE + 0.3, "lifetimes %.3f .. %.3f s",
                  lo, hi);
    /* 5 % of 1.5 s: the expiries spread over up to 75 ms; all within 20 ms
     * of each other would mean no jitter (chance with jitter ~ 1e-3) */
    ck_assert_msg(hi - lo >= 0.02, "lifetimes %.3f .. %.3f s: no jitter", lo, hi);
    ck_assert_uint_ge(stats(p).closed, LT_N);
    ck_assert_int_eq(pqawait_pool_wait(p, 5), 0); /* replaced */
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(lifetime_with_jitter)
{
    ck_assert_ptr_eq(pt_run(lifetime_task, NULL, 5), PTR(1));
}
END_TEST

/* ---- idle time ------------------------------------------------------------------------ */

static void *idle_task(void *arg)
{
    (void)arg;
    PT_APP(app);
    pqawait_pool_options o = pt_options(1, 4);
    o.max_idle = 0.6;
    pt_monitor(); /* connected beforehand: the count below must come quickly */
    pqawait_pool *p = make_pool(app, NULL, &o);
    PGconn *c[4];
    for (int i = 0; i < 4; i++)
        ck_assert_ptr_nonnull(c[i] = pqawait_pool_acquire(p));
    for (int i = 0; i < 4; i++)
        pqawait_pool_release(p, c[i]);
    ck_assert_int_eq(pt_backends(app), 4);
    ck_assert_int_eq(pt_wait_backends(app, 1, 3), 1);
    struct pqawait_pool_stats s = stats(p);
    ck_assert_uint_eq(s.idle, 1);
    ck_assert_uint_eq(s.closed, 3);
    awaitlet_sleep(0.5);
    ck_assert_int_eq(pt_backends(app), 1); /* min_size stays */
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(idle_beyond_min_closed)
{
    ck_assert_ptr_eq(pt_run(idle_task, NULL, 5), PTR(1));
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("pool-health");
    TCase *tc = tcase_create("health");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, idle_backends_terminated);
    tcase_add_test(tc, backends_killed_under_load);
    tcase_add_test(tc, server_restart);
    tcase_add_test(tc, backoff_while_unreachable);
    tcase_add_test(tc, checkout_check_replaces_silent_backend);
    tcase_add_test(tc, lifetime_with_jitter);
    tcase_add_test(tc, idle_beyond_min_closed);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
