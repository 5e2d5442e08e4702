/*
 * test_pool_acquire.c -- checking connections out of a pqawait pool.
 *
 * Against a real PostgreSQL: acquire is FIFO; it fails with the documented
 * errno on the pool's timeout (ETIMEDOUT, awaitlet_interrupted() 0), the
 * task's deadline (ETIMEDOUT, interrupted 1), cancellation (ECANCELED),
 * a shield (EINTR), a full wait queue (EAGAIN) and a closed pool
 * (ESHUTDOWN); a connection handed to a task that is cancelled before it
 * runs goes to the next waiter; a burst of 200 acquires never opens more
 * than max_size backends (counted by the server, in pg_stat_activity);
 * closing the pool fails its waiters and closes its connections.
 * (Misuse, threads and the cost of a checkout: test_pool_misc.c.)
 */
#include "pool_common.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PTR(i) ((void *)(intptr_t)(i))

static pqawait_pool *new_pool(const char *app, pqawait_pool_options *o)
{
    char *ci = pt_conninfo(app, NULL);
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

/* ---- basics ------------------------------------------------------------------- */

static void *basic_task(void *arg)
{
    (void)arg;
    const char *app = pt_app();
    pqawait_pool_options o = pt_options(2, 4);
    pqawait_pool *p = new_pool(app, &o);
    ck_assert_int_eq(pqawait_pool_wait(p, 10), 0);
    struct pqawait_pool_stats s = stats(p);
    ck_assert_uint_eq(s.size, 2);
    ck_assert_uint_eq(s.idle, 2);
    ck_assert_int_eq(pt_backends(app), 2);
    PGconn *c = pqawait_pool_acquire(p);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    ck_assert_int_eq(pt_int(c, "select 6 * 7"), 42);
    s = stats(p);
    ck_assert_uint_eq(s.in_use, 1);
    ck_assert_uint_eq(s.idle, 1);
    ck_assert_uint_eq(s.acquires, 1);
    ck_assert_uint_eq(s.waits, 0);
    ck_assert_int_eq(pqawait_pool_release(p, c), 0);
    s = stats(p);
    ck_assert_uint_eq(s.idle, 2);
    ck_assert_uint_eq(s.opened, 2);
    ck_assert_ptr_null(pqawait_pool_error(p));
    ck_assert_int_eq(pqawait_pool_close(p), 0);
    ck_assert_int_eq(pt_wait_backends(app, 0, 5), 0);
    return PTR(1);
}

START_TEST(basic)
{
    ck_assert_ptr_eq(pt_run(basic_task, NULL, 5), PTR(1));
}
END_TEST

/* ---- FIFO ------------------------------------------------------------------------ */

static pqawait_pool *fifo_pool;
static int fifo_order[8], fifo_n;

static void *fifo_waiter(void *arg)
{
    PGconn *c = pqawait_pool_acquire(fifo_pool);
    if (!c)
        return PTR(-1);
    fifo_order[fifo_n++] = (int)(intptr_t)arg;
    awaitlet_sleep(0.005);
    pqawait_pool_release(fifo_pool, c);
    return PTR(1);
}

static void *fifo_task(void *arg)
{
    (void)arg;
    pqawait_pool_options o = pt_options(0, 1);
    fifo_pool = new_pool(pt_app(), &o);
    PGconn *held = pqawait_pool_acquire(fifo_pool);
    ck_assert_ptr_nonnull(held);
    awaitlet_task *t[6];
    for (int i = 0; i < 6; i++)
        t[i] = awaitlet_async_def(awaitlet_current_loop(), fifo_waiter, PTR(i));
    ck_assert_uint_eq(stats(fifo_pool).waiting, 6);
    awaitlet_sleep(0.1); /* a connection freed now must go to t[0], nobody else */
    ck_assert_int_eq(pqawait_pool_release(fifo_pool, held), 0);
    for (int i = 0; i < 6; i++)
        ck_assert_ptr_eq(awaitlet_join(t[i]), PTR(1));
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(fifo_order[i], i);
    struct pqawait_pool_stats s = stats(fifo_pool);
    ck_assert_uint_eq(s.opened, 1); /* max_size 1: never a second backend */
    ck_assert_uint_eq(s.waits, 7); /* the holder waited for the first connect */
    ck_assert_msg(s.wait_ns >= 6 * 90000000ull, "wait_ns %llu", s.wait_ns);
    pqawait_pool_close(fifo_pool);
    return PTR(1);
}

START_TEST(fifo)
{
    ck_assert_ptr_eq(pt_run(fifo_task, NULL, 5), PTR(1));
}
END_TEST

/* ---- how acquire fails ---------------------------------------------------------- */

struct try {
    pqawait_pool *p;
    double timeout;      /* NAN: acquire() with the pool's timeout */
    int shield, cancel_self, again;
    PGconn *c, *c2;
    int err, interrupted;
    double elapsed;
};

static void *try_acquire(void *arg)
{
    struct try *t = arg;
    if (t->shield)
        awaitlet_shield(1);
    if (t->cancel_self)
        awaitlet_cancel(awaitlet_current());
    double t0 = pqa_now();
    errno = 0;
    t->c = isnan(t->timeout) ? pqawait_pool_acquire(t->p)
                             : pqawait_pool_acquire_timeout(t->p, t->timeout);
    t->err = errno;
    t->elapsed = pqa_now() - t0;
    t->interrupted = awaitlet_interrupted();
    if (t->c)
        pqawait_pool_release(t->p, t->c);
    if (t->again) {
        t->c2 = pqawait_pool_acquire(t->p); /* after a shielded EINTR: works */
        if (t->c2)
            pqawait_pool_release(t->p, t->c2);
    }
    if (t->shield)
        awaitlet_shield(0);
    return PTR(1);
}

static awaitlet_task *spawn(struct try *t)
{
    awaitlet_task *k = awaitlet_async_def(awaitlet_current_loop(), try_acquire, t);
    ck_assert_ptr_nonnull(k);
    return k;
}

static void *failures_task(void *arg)
{
    (void)arg;
    pqawait_pool_options o = pt_options(0, 1);
    pqawait_pool *p = new_pool(pt_app(), &o);
    PGconn *held = pqawait_pool_acquire(p);
    ck_assert_ptr_nonnull(held);

    /* the pool's timeout: ETIMEDOUT, and not an interruption */
    struct try a = { .p = p, .timeout = 0.05 };
    awaitlet_join(spawn(&a));
    ck_assert_ptr_null(a.c);
    ck_assert_int_eq(a.err, ETIMEDOUT);
    ck_assert_int_eq(a.interrupted, 0);
    ck_assert_msg(a.elapsed >= 0.045 && a.elapsed < 2, "timeout after %.3f s", a.elapsed);
    /* timeout 0: no wait at all */
    struct try z = { .p = p, .timeout = 0 };
    awaitlet_join(spawn(&z));
    ck_assert_int_eq(z.err, ETIMEDOUT);
    ck_assert(z.elapsed < 0.05);
    /* the task's deadline: ETIMEDOUT too, but an interruption */
    struct try d = { .p = p, .timeout = NAN };
    awaitlet_task *kd = spawn(&d);
    awaitlet_set_deadline(kd, 0.05);
    awaitlet_join(kd);
    ck_assert_ptr_null(d.c);
    ck_assert_int_eq(d.err, ETIMEDOUT);
    ck_assert_int_eq(d.interrupted, 1);
    /* cancelled while waiting */
    struct try c = { .p = p, .timeout = NAN };
    awaitlet_task *kc = spawn(&c);
    awaitlet_sleep(0.02);
    awaitlet_cancel(kc);
    awaitlet_join(kc);
    ck_assert_int_eq(c.err, ECANCELED);
    ck_assert(c.elapsed < 2);
    /* shielded: EINTR once, then acquire works (after the holder lets go) */
    struct try s = { .p = p, .timeout = NAN, .shield = 1, .again = 1 };
    awaitlet_task *ks = spawn(&s);
    awaitlet_cancel(ks);
    awaitlet_sleep(0.02);
    ck_assert_int_eq(s.err, EINTR);
    ck_assert_int_eq(pqawait_pool_release(p, held), 0);
    awaitlet_join(ks);
    ck_assert_ptr_nonnull(s.c2);
    /* cancelled before: fails although a connection is idle */
    ck_assert_uint_eq(stats(p).idle, 1);
    struct try b = { .p = p, .timeout = NAN, .cancel_self = 1 };
    awaitlet_join(spawn(&b));
    ck_assert_ptr_null(b.c);
    ck_assert_int_eq(b.err, ECANCELED);
    struct pqawait_pool_stats st = stats(p);
    ck_assert_uint_eq(st.timeouts, 2);
    ck_assert_uint_eq(st.interrupted, 4); /* deadline, cancel, EINTR, cancelled before */
    ck_assert_uint_eq(st.idle, 1);
    ck_assert_uint_eq(st.opened, 1);
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(failures)
{
    ck_assert_ptr_eq(pt_run(failures_task, NULL, 5), PTR(1));
}
END_TEST

/* A connection handed to the first waiter, which is cancelled before it
 * runs again, goes to the second waiter. */
static void *handoff_task(void *arg)
{
    (void)arg;
    pqawait_pool_options o = pt_options(0, 1);
    pqawait_pool *p = new_pool(pt_app(), &o);
    PGconn *held = pqawait_pool_acquire(p);
    ck_assert_ptr_nonnull(held);
    int pid = pt_pid(held);
    struct try b = { .p = p, .timeout = 5 }, c = { .p = p, .timeout = 5 };
    awaitlet_task *kb = spawn(&b), *kc = spawn(&c);
    ck_assert_uint_eq(stats(p).waiting, 2);
    ck_assert_int_eq(pqawait_pool_release(p, held), 0); /* handed to b ... */
    ck_assert_uint_eq(stats(p).in_use, 1);
    ck_assert_int_eq(awaitlet_cancel(kb), 0);          /* ... which is cancelled */
    awaitlet_join(kb);
    awaitlet_join(kc);
    ck_assert_ptr_null(b.c);
    ck_assert_int_eq(b.err, ECANCELED);
    ck_assert_ptr_nonnull(c.c);
    ck_assert_msg(c.elapsed < 1.0, "c waited %.3f s: the connection was lost", c.elapsed);
    struct pqawait_pool_stats s = stats(p);
    ck_assert_uint_eq(s.opened, 1);
    ck_assert_uint_eq(s.idle, 1);
    ck_assert_uint_eq(s.size, 1);
    PGconn *again = pqawait_pool_acquire(p);
    ck_assert_int_eq(pt_pid(again), pid); /* the same backend went round */
    pqawait_pool_release(p, again);
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(handoff_to_cancelled_waiter)
{
    ck_assert_ptr_eq(pt_run(handoff_task, NULL, 5), PTR(1));
}
END_TEST

static void *max_waiting_task(void *arg)
{
    (void)arg;
    pqawait_pool_options o = pt_options(0, 1);
    o.max_waiting = 2;
    pqawait_pool *p = new_pool(pt_app(), &o);
    PGconn *held = pqawait_pool_acquire(p);
    struct try w1 = { .p = p, .timeout = 5 }, w2 = { .p = p, .timeout = 5 },
               w3 = { .p = p, .timeout = 5 };
    awaitlet_task *k1 = spawn(&w1), *k2 = spawn(&w2), *k3 = spawn(&w3);
    ck_assert(awaitlet_done(k3)); /* refused at once */
    ck_assert_int_eq(w3.err, EAGAIN);
    ck_assert(w3.elapsed < 0.05);
    pqawait_pool_release(p, held);
    awaitlet_join(k1);
    awaitlet_join(k2);
    awaitlet_join(k3);
    ck_assert_ptr_nonnull(w1.c);
    ck_assert_ptr_nonnull(w2.c);
    ck_assert_uint_eq(stats(p).rejected, 1);
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(max_waiting)
{
    ck_assert_ptr_eq(pt_run(max_waiting_task, NULL, 5), PTR(1));
}
END_TEST

/* ---- a burst -------------------------------------------------------------------- */

#define BURST 200
static pqawait_pool *burst_pool;
static char burst_app[64];
static int burst_ok, burst_max_seen, burst_done;

static void *burst_worker(void *arg)
{
    (void)arg;
    PGconn *c = pqawait_pool_acquire(burst_pool);
    if (!c)
        return PTR(-1);
    long v = pt_int(c, "select 1 from pg_sleep(0.005)");
    pqawait_pool_release(burst_pool, c);
    burst_ok += v == 1;
    return PTR(1);
}

static void *burst_sampler(void *arg)
{
    (void)arg;
    while (!burst_done) {
        int n = pt_backends(burst_app);
        if (n > burst_max_seen)
            burst_max_seen = n;
        awaitlet_sleep(0.003);
    }
    return PTR(1);
}

static void *burst_task(void *arg)
{
    (void)arg;
    snprintf(burst_app, sizeof burst_app, "%s", pt_app());
    pqawait_pool_options o = pt_options(0, 5);
    o.timeout = 60;
    burst_pool = new_pool(burst_app, &o);
    pt_monitor(); /* connected before the burst */
    awaitlet_task *sampler = awaitlet_async_def(awaitlet_current_loop(), burst_sampler, NULL);
    awaitlet_task *t[BURST];
    for (int i = 0; i < BURST; i++)
        t[i] = awaitlet_async_def(awaitlet_current_loop(), burst_worker, NULL);
    struct pqawait_pool_stats s = stats(burst_pool);
    ck_assert_uint_le(s.size, 5);
    ck_assert_uint_ge(s.waiting, BURST - 5);
    for (int i = 0; i < BURST; i++)
        ck_assert_ptr_eq(awaitlet_join(t[i]), PTR(1));
    burst_done = 1;
    awaitlet_join(sampler);
    ck_assert_int_eq(burst_ok, BURST);
    s = stats(burst_pool);
    ck_assert_msg(s.opened == 5, "opened %llu connections for max_size 5", s.opened);
    ck_assert_msg(burst_max_seen <= 5 && burst_max_seen >= 1, "the server saw %d backends",
                  burst_max_seen);
    ck_assert_uint_eq(s.acquires, BURST);
    pqawait_pool_close(burst_pool);
    return PTR(1);
}

START_TEST(burst_never_exceeds_max)
{
    ck_assert_ptr_eq(pt_run(burst_task, NULL, 5), PTR(1));
}
END_TEST

/* ---- closing ---------------------------------------------------------------------- */

static void *close_task(void *arg)
{
    (void)arg;
    PT_APP(app);
    pqawait_pool_options o = pt_options(3, 3);
    pqawait_pool *p = new_pool(app, &o);
    ck_assert_int_eq(pqawait_pool_wait(p, 10), 0);
    PGconn *a = pqawait_pool_acquire(p), *b = pqawait_pool_acquire(p);
    PGconn *c5 = pqawait_pool_acquire(p);
    ck_assert(a && b && c5);
    struct try w4 = { .p = p, .timeout = 10 };
    awaitlet_task *k = spawn(&w4);
    ck_assert_uint_eq(stats(p).waiting, 1);
    ck_assert_int_eq(pqawait_pool_close(p), 0);
    awaitlet_join(k);
    ck_assert_ptr_null(w4.c);
    ck_assert_int_eq(w4.err, ESHUTDOWN);
    /* at once, not at its own 10 s timeout */
    ck_assert_msg(w4.elapsed < 2.0, "the waiter failed after %.2f s", w4.elapsed);
    /* still-checked-out connections work until released */
    ck_assert_int_eq(pt_int(a, "select 1"), 1);
    errno = 0;
    ck_assert_ptr_null(pqawait_pool_acquire(p));
    ck_assert_int_eq(errno, ESHUTDOWN);
    errno = 0;
    ck_assert_int_eq(pqawait_pool_close(p), -1);
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_int_eq(pt_wait_backends(app, 3, 5), 3);
    pqawait_pool_release(p, a);
    ck_assert_int_eq(pt_wait_backends(app, 2, 5), 2);
    pqawait_pool_release(p, b);
    pqawait_pool_release(p, c5); /* the pool is freed with this one */
    ck_assert_int_eq(pt_wait_backends(app, 0, 5), 0);

    /* a pool with only idle connections closes them at once */
    PT_APP(app2);
    pqawait_pool *p2 = new_pool(app2, &o);
    ck_assert_int_eq(pqawait_pool_wait(p2, 10), 0);
    ck_assert_int_eq(pt_backends(app2), 3);
    pqawait_pool_close(p2);
    ck_assert_int_eq(pt_wait_backends(app2, 0, 5), 0);
    return PTR(1);
}

START_TEST(close_pool)
{
    ck_assert_ptr_eq(pt_run(close_task, NULL, 5), PTR(1));
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("pool-acquire");
    TCase *tc = tcase_create("acquire");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, basic);
    tcase_add_test(tc, fifo);
    tcase_add_test(tc, failures);
    tcase_add_test(tc, handoff_to_cancelled_waiter);
    tcase_add_test(tc, max_waiting);
    tcase_add_test(tc, burst_never_exceeds_max);
    tcase_add_test(tc, close_pool);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
