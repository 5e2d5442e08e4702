/*
 * test_sync_misc.c -- awaitlet_cond and awaitlet_sem at their edges:
 * misuse (EPERM outside a task or in a marked signal handler, EINVAL, EXDEV
 * from another thread, EOVERFLOW, EBUSY while tasks wait or are being
 * woken), a loop destroyed under a waiter (it leaves the queue, its permit
 * comes back), and random interleavings of waits, posts, timeouts, cancels
 * and deadlines that must conserve the permits exactly.
 */
#include "sync_waiters.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>

/* --- errors ------------------------------------------------------------------ */

static void *wrong_thread(void *arg)
{
    awaitlet_sem *s = arg;
    int r = 0;
    errno = 0;
    if (awaitlet_sem_post(s) != -1 || errno != EXDEV)
        r |= 1;
    errno = 0;
    if (awaitlet_sem_trywait(s) != -1 || errno != EXDEV)
        r |= 2;
    return T_PTR(r);
}

static void *in_signal_handler(void *arg)
{
    awaitlet_cond *c = arg;
    int r = 0;
    awaitlet_signal_enter();
    errno = 0;
    if (awaitlet_cond_wait(c, 1.0) != -1 || errno != EPERM)
        r |= 1;
    errno = 0;
    if (awaitlet_cond_signal(c) != -1 || errno != EPERM)
        r |= 2;
    awaitlet_signal_leave();
    return T_PTR(r ? -r : 1);
}

START_TEST(errors)
{
    awaitlet_cond c, bad;
    awaitlet_sem s;
    memset(&bad, 0, sizeof bad);
    T_FAILS(awaitlet_cond_init(NULL), -1, EINVAL);
    T_FAILS(awaitlet_sem_init(NULL, 0), -1, EINVAL);
    awaitlet_cond_init(&c);
    awaitlet_sem_init(&s, UINT_MAX);
    /* outside a task */
    T_FAILS(awaitlet_cond_wait(&c, 1.0), -1, EPERM);
    T_FAILS(awaitlet_sem_wait(&s, 0.0), -1, EPERM);
    /* uninitialised or NULL */
    T_FAILS(awaitlet_cond_signal(&bad), -1, EINVAL);
    T_FAILS(awaitlet_cond_broadcast(NULL), -1, EINVAL);
    T_FAILS(awaitlet_sem_post((awaitlet_sem *)&bad), -1, EINVAL);
    T_FAILS(awaitlet_sem_post((awaitlet_sem *)&c), -1, EINVAL); /* a cond is no sem */
    ck_assert_uint_eq(awaitlet_sem_value(NULL), 0);
    T_FAILS(awaitlet_sem_post(&s), -1, EOVERFLOW);
    ck_assert_uint_eq(awaitlet_sem_value(&s), UINT_MAX);
    /* in a marked signal handler */
    awaitlet_task *t = awaitlet_async_def(t_loop, in_signal_handler, &c);
    T_JOIN_EQ(t, 1);
    /* another thread */
    pthread_t th;
    void *res;
    ck_assert_int_eq(pthread_create(&th, NULL, wrong_thread, &s), 0);
    ck_assert_int_eq(pthread_join(th, &res), 0);
    ck_assert_int_eq(T_INT(res), 0);
    /* destroy, then the object is no longer one */
    ck_assert_int_eq(awaitlet_sem_destroy(&s), 0);
    T_FAILS(awaitlet_sem_trywait(&s), -1, EINVAL);
    ck_assert_int_eq(awaitlet_cond_destroy(&c), 0);
    T_FAILS(awaitlet_cond_destroy(&c), -1, EINVAL);
}
END_TEST

static void *nan_wait(void *arg)
{
    awaitlet_cond *c = arg;
    errno = 0;
    int r = awaitlet_cond_wait(c, NAN);
    return T_PTR(r == -1 && errno == EINVAL ? 1 : -1);
}

START_TEST(errors_in_task)
{
    awaitlet_cond c;
    awaitlet_cond_init(&c);
    awaitlet_task *t = awaitlet_async_def(t_loop, nan_wait, &c);
    T_JOIN_EQ(t, 1);
    struct waiter w = { .cond = &c };
    t = start(cond_waiter, &w, 1, -1.0);
    T_FAILS(awaitlet_cond_destroy(&c), -1, EBUSY);
    awaitlet_cond_signal(&c);
    T_FAILS(awaitlet_cond_destroy(&c), -1, EBUSY); /* woken, not run yet */
    T_JOIN_EQ(t, 1);
    ck_assert_int_eq(awaitlet_cond_destroy(&c), 0);
}
END_TEST

/* ev_loop_destroy under a task waiting on a semaphore: the task is
 * reclaimed and leaves the queue, so the semaphore is free again. */
START_TEST(reclaim_leaves_queue)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    awaitlet_sem s;
    awaitlet_sem_init(&s, 0);
    struct waiter a = { .sem = &s, .id = 1, .timeout = -1 }, b = { .sem = &s, .id = 2, .timeout = -1 };
    ck_assert_ptr_nonnull(awaitlet_async_def(loop, sem_waiter, &a));
    ck_assert_ptr_nonnull(awaitlet_async_def(loop, sem_waiter, &b));
    awaitlet_sem_post(&s); /* a is woken, not run */
    ev_loop_destroy(loop);  /* prints one line: a bug in a program, on purpose here */
    ck_assert_uint_eq(awaitlet_sem_value(&s), 1); /* a's permit came back */
    ck_assert_int_eq(awaitlet_sem_destroy(&s), 0);
}
END_TEST

/* --- random interleavings ---------------------------------------------------- */

#define RT_TASKS 24
#define RT_PERMITS 5

struct rt {
    awaitlet_sem sem;
    awaitlet_cond cond;
    unsigned seed;
    int holders, max_holders;
    long taken, given;
    long produced, consumed, items;
    int stop;
};

static struct rt rt;

static unsigned rt_rand(void)
{
    rt.seed = rt.seed * 1103515245u + 12345u;
    return (rt.seed >> 8) & 0xffffff;
}

/* Takes a permit, holds it a little, gives it back; or consumes an item. */
static void *rt_worker(void *arg)
{
    intptr_t id = T_INT(arg);
    while (!rt.stop) {
        double timeout = (rt_rand() % 4) == 0 ? 0.0 : (rt_rand() % 3) * 0.001;
        if (id % 2) {
            int r = awaitlet_sem_wait(&rt.sem, timeout ? timeout : -1.0);
            if (r == 1) {
                rt.taken++;
                if (++rt.holders > rt.max_holders)
                    rt.max_holders = rt.holders;
                if (rt.holders > RT_PERMITS)
                    return T_PTR(-1);
                awaitlet_yield();
                rt.holders--;
                rt.given++;
                awaitlet_sem_post(&rt.sem);
            } else if (r < 0 && errno != ECANCELED && errno != ETIMEDOUT) {
                return T_PTR(-2);
            } else if (r < 0) {
                return T_PTR(0); /* interrupted: ends */
            }
        } else {
            while (rt.items == 0 && !rt.stop) {
                int r = awaitlet_cond_wait(&rt.cond, timeout ? timeout : -1.0);
                if (r < 0)
                    return errno == ECANCELED || errno == ETIMEDOUT ? T_PTR(0) : T_PTR(-3);
            }
            if (rt.items > 0) {
                rt.items--;
                rt.consumed++;
            }
        }
    }
    return T_PTR(0);
}

static void *rt_producer(void *arg)
{
    (void)arg;
    for (int i = 0; i < 3000; i++) {
        rt.items++;
        rt.produced++;
        awaitlet_cond_signal(&rt.cond);
        if (rt_rand() % 3 == 0)
            awaitlet_yield();
    }
    return T_PTR(0);
}

START_TEST(random_interleavings_conserve)
{
    memset(&rt, 0, sizeof rt);
    rt.seed = 12345u + (unsigned)_i;
    awaitlet_sem_init(&rt.sem, RT_PERMITS);
    awaitlet_cond_init(&rt.cond);
    awaitlet_task *t[RT_TASKS];
    for (int i = 0; i < RT_TASKS; i++)
        t[i] = awaitlet_async_def(t_loop, rt_worker, T_PTR(i));
    awaitlet_task *prod = awaitlet_async_def(t_loop, rt_producer, NULL);
    /* drive the loop, cancelling or giving deadlines to random tasks and
     * restarting those that ended */
    for (int round = 0; round < 400; round++) {
        ev_run(t_loop, EVRUN_NOWAIT);
        int i = (int)(rt_rand() % RT_TASKS);
        if (awaitlet_done(t[i])) {
            T_JOIN_EQ(t[i], 0);
            t[i] = awaitlet_async_def(t_loop, rt_worker, T_PTR(i));
        } else if (rt_rand() % 2) {
            awaitlet_cancel(t[i]);
        } else {
            awaitlet_set_deadline(t[i], 0.0005);
        }
        /* woken-but-not-run waiters may signal/post from outside tasks too */
        if (rt_rand() % 5 == 0 && awaitlet_sem_trywait(&rt.sem) == 1)
            awaitlet_sem_post(&rt.sem);
    }
    T_JOIN_EQ(prod, 0);
    rt.stop = 1;
    awaitlet_cond_broadcast(&rt.cond);
    for (int i = 0; i < RT_TASKS; i++)
        T_JOIN_EQ(t[i], 0);
    ck_assert_msg(rt.holders == 0 && rt.taken == rt.given, "taken %ld given %ld", rt.taken,
                  rt.given);
    ck_assert_uint_eq(awaitlet_sem_value(&rt.sem), RT_PERMITS);
    ck_assert_int_le(rt.max_holders, RT_PERMITS);
    ck_assert_int_gt(rt.taken, 100);
    ck_assert_int_eq(rt.produced, rt.consumed + rt.items);
    ck_assert_int_eq(awaitlet_sem_destroy(&rt.sem), 0);
    ck_assert_int_eq(awaitlet_cond_destroy(&rt.cond), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sync-misc");
    TCase *tc = t_tcase("errors");
    tcase_add_test(tc, errors);
    tcase_add_test(tc, errors_in_task);
    suite_add_tcase(s, tc);

    tc = tcase_create("reclaim");
    tcase_add_test(tc, reclaim_leaves_queue);
    suite_add_tcase(s, tc);

    tc = t_tcase("random");
    tcase_add_loop_test(tc, random_interleavings_conserve, 0, 4);
    suite_add_tcase(s, tc);
    return t_run_suite(s);
}
