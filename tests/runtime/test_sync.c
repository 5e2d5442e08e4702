/*
 * test_sync.c -- awaitlet_cond and awaitlet_sem.
 *
 * What the header promises and a pool relies on: waiters are woken in
 * arrival order; a timeout, a cancel, a deadline or a shield end a wait the
 * way they end an awaitlet_io; a wake-up given to a task that is cancelled
 * before it runs is passed on (never lost, never used by the cancelled
 * task); a semaphore never lets a newcomer take a permit a waiter was
 * handed; and under random interleavings of waits, posts, timeouts and
 * cancels the number of permits is conserved exactly (test_sync_misc.c,
 * with misuse and a loop destroyed under a waiter).  Tasks record what
 * their waits returned (sync_waiters.h); every check runs on the loop side.
 */

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>

#include "sync_waiters.h"

/* --- conditions -------------------------------------------------------------- */

START_TEST(cond_fifo_order)
{
    awaitlet_cond c;
    ck_assert_int_eq(awaitlet_cond_init(&c), 0);
    struct waiter w[8] = { 0 };
    awaitlet_task *t[8];
    reset_order();
    /* started in a scrambled id order: arrival order is what counts */
    static const int ids[8] = { 5, 2, 7, 0, 3, 6, 1, 4 };
    for (int i = 0; i < 8; i++) {
        w[i].cond = &c;
        t[i] = start(cond_waiter, &w[i], ids[i], -1.0);
    }
    for (int i = 0; i < 8; i++) {
        ck_assert_int_eq(awaitlet_cond_signal(&c), 1);
        ev_run(t_loop, EVRUN_NOWAIT);
        ck_assert_int_eq(norder, i + 1);
        ck_assert_int_eq(order[i], ids[i]);
    }
    ck_assert_int_eq(awaitlet_cond_signal(&c), 0); /* nobody left */
    for (int i = 0; i < 8; i++) {
        ASSERT_RC(w[i].rc, w[i].err, 1, 0);
        T_JOIN_EQ(t[i], T_PTR(ids[i]));
    }
    ck_assert_int_eq(awaitlet_cond_destroy(&c), 0);
}
END_TEST

START_TEST(cond_broadcast_wakes_those_waiting_now)
{
    awaitlet_cond c;
    awaitlet_cond_init(&c);
    struct waiter w[4] = { 0 };
    awaitlet_task *t[4];
    reset_order();
    for (int i = 0; i < 4; i++) {
        w[i].cond = &c;
        w[i].again = 1; /* waits again at once: this broadcast must not count it */
        t[i] = start(cond_waiter, &w[i], i, -1.0);
    }
    ck_assert_int_eq(awaitlet_cond_broadcast(&c), 4);
    ev_run(t_loop, EVRUN_NOWAIT);
    ck_assert_int_eq(norder, 4);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(order[i], i);
        ck_assert(!w[i].done); /* in its second wait */
    }
    ck_assert_int_eq(awaitlet_cond_broadcast(&c), 4);
    ev_run(t_loop, EVRUN_NOWAIT);
    for (int i = 0; i < 4; i++) {
        ASSERT_RC(w[i].rc2, w[i].err2, 1, 0);
        ck_assert_int_eq(order[4 + i], 100 + i);
        T_JOIN_EQ(t[i], T_PTR(i));
    }
    ck_assert_int_eq(awaitlet_cond_broadcast(&c), 0);
}
END_TEST

START_TEST(cond_timeout_and_zero)
{
    awaitlet_cond c;
    awaitlet_cond_init(&c);
    struct waiter w = { .cond = &c }, z = { .cond = &c };
    /* a signal nobody waits for is not remembered */
    ck_assert_int_eq(awaitlet_cond_signal(&c), 0);
    awaitlet_task *tz = start(cond_waiter, &z, 1, 0.0);
    ck_assert(z.done);
    ASSERT_RC(z.rc, z.err, 0, 0);
    T_JOIN_EQ(tz, 1);
    awaitlet_task *t = start(cond_waiter, &w, 2, 0.05);
    T_JOIN_EQ(t, 2);
    ASSERT_RC(w.rc, w.err, 0, 0);
    ck_assert_msg(w.elapsed >= 0.045 && w.elapsed < 1.0, "timeout after %.3f s", w.elapsed);
    /* the timed-out waiter left the queue */
    ck_assert_int_eq(awaitlet_cond_signal(&c), 0);
    ck_assert_int_eq(awaitlet_cond_destroy(&c), 0);
}
END_TEST

/* A waiter woken early must not keep its timeout timer: a later sleep of
 * the same task would end when the old timeout passed. */
static awaitlet_cond stale_c;
static double stale_slept;

static void *stale_timer_task(void *arg)
{
    (void)arg;
    if (awaitlet_cond_wait(&stale_c, 0.05) != 1)
        return T_PTR(-1);
    double t0 = t_now();
    if (awaitlet_sleep(0.2) != 0)
        return T_PTR(-2);
    stale_slept = t_now() - t0;
    return T_PTR(1);
}

START_TEST(cond_signal_stops_the_timeout)
{
    awaitlet_cond_init(&stale_c);
    awaitlet_task *t = awaitlet_async_def(t_loop, stale_timer_task, NULL);
    awaitlet_cond_signal(&stale_c);
    T_JOIN_EQ(t, 1);
    ck_assert_msg(stale_slept >= 0.19, "the 0.2 s sleep ended after %.3f s", stale_slept);
}
END_TEST

START_TEST(cond_cancel_deadline_shield)
{
    awaitlet_cond c;
    awaitlet_cond_init(&c);
    struct waiter a = { .cond = &c }, b = { .cond = &c }, s = { .cond = &c, .again = 1 };
    awaitlet_task *ta = start(cond_waiter, &a, 1, 10.0);
    awaitlet_task *tb = start(cond_waiter, &b, 2, 10.0);
    s.shield = 1;
    awaitlet_task *ts = start(cond_waiter, &s, 3, 0.3);
    ck_assert_int_eq(awaitlet_set_deadline(tb, 0.03), 0);
    ck_assert_int_eq(awaitlet_cancel(ta), 0);
    ck_assert_int_eq(awaitlet_cancel(ts), 0);
    double t0 = t_now();
    T_JOIN_EQ(ta, 1);
    T_JOIN_EQ(tb, 2);
    T_JOIN_EQ(ts, 3);
    ASSERT_RC(a.rc, a.err, -1, ECANCELED);
    ASSERT_RC(b.rc, b.err, -1, ETIMEDOUT);
    ASSERT_RC(s.rc, s.err, -1, EINTR);  /* shielded: once */
    ASSERT_RC(s.rc2, s.err2, 0, 0);     /* then the wait runs to its timeout */
    ck_assert(t_now() - t0 < 2.0);
    /* every one of them left the queue */
    ck_assert_int_eq(awaitlet_cond_signal(&c), 0);
    ck_assert_int_eq(awaitlet_cond_destroy(&c), 0);
}
END_TEST

/* The first waiter is signalled, then cancelled (or its deadline passes)
 * before it runs: the signal goes to the second waiter. */
static void signal_then_interrupt(int deadline)
{
    awaitlet_cond c;
    awaitlet_cond_init(&c);
    struct waiter a = { .cond = &c }, b = { .cond = &c };
    reset_order();
    awaitlet_task *ta = start(cond_waiter, &a, 1, -1.0);
    awaitlet_task *tb = start(cond_waiter, &b, 2, 5.0);
    ck_assert_int_eq(awaitlet_cond_signal(&c), 1); /* a is on the ready list */
    if (deadline) {
        ck_assert_int_eq(awaitlet_set_deadline(ta, 0.001), 0);
        usleep(3000);
        ev_run(t_loop, EVRUN_ONCE); /* the deadline timer fires before a runs */
    } else {
        ck_assert_int_eq(awaitlet_cancel(ta), 0);
    }
    ck_assert_int_eq(awaitlet_cond_destroy(&c), -1); /* a is still to run */
    ck_assert_int_eq(errno, EBUSY);
    T_JOIN_EQ(ta, 1);
    T_JOIN_EQ(tb, 2);
    ASSERT_RC(a.rc, a.err, -1, deadline ? ETIMEDOUT : ECANCELED);
    ASSERT_RC(b.rc, b.err, 1, 0);
    ck_assert_msg(b.elapsed < 1.0, "b woke after %.3f s: the signal was lost", b.elapsed);
    ck_assert_int_eq(norder, 1);
    ck_assert_int_eq(order[0], 2);
    ck_assert_int_eq(awaitlet_cond_destroy(&c), 0);
}

START_TEST(cond_signal_passed_on_after_cancel)
{
    signal_then_interrupt(0);
}
END_TEST

START_TEST(cond_signal_passed_on_after_deadline)
{
    signal_then_interrupt(1);
}
END_TEST

START_TEST(cond_broadcast_not_passed_on)
{
    awaitlet_cond c;
    awaitlet_cond_init(&c);
    struct waiter a = { .cond = &c }, b = { .cond = &c, .again = 1 };
    awaitlet_task *ta = start(cond_waiter, &a, 1, -1.0);
    awaitlet_task *tb = start(cond_waiter, &b, 2, 0.05);
    ck_assert_int_eq(awaitlet_cond_broadcast(&c), 2);
    awaitlet_cancel(ta);
    T_JOIN_EQ(ta, 1);
    T_JOIN_EQ(tb, 2);
    ASSERT_RC(a.rc, a.err, -1, ECANCELED);
    ASSERT_RC(b.rc, b.err, 1, 0);
    ASSERT_RC(b.rc2, b.err2, 0, 0); /* nothing extra was passed to its second wait */
}
END_TEST

/* --- semaphores -------------------------------------------------------------- */

START_TEST(sem_counts_and_fifo)
{
    awaitlet_sem s;
    ck_assert_int_eq(awaitlet_sem_init(&s, 2), 0);
    ck_assert_uint_eq(awaitlet_sem_value(&s), 2);
    struct waiter w[6] = { 0 };
    awaitlet_task *t[6];
    reset_order();
    for (int i = 0; i < 6; i++) {
        w[i].sem = &s;
        t[i] = start(sem_waiter, &w[i], i, -1.0);
    }
    /* two took a permit without waiting, four wait */
    ck_assert(w[0].done && w[1].done && !w[2].done);
    ck_assert_uint_eq(awaitlet_sem_value(&s), 0);
    for (int i = 2; i < 6; i++) {
        ck_assert_int_eq(awaitlet_sem_post(&s), 0);
        ck_assert_uint_eq(awaitlet_sem_value(&s), 0); /* handed over, not counted */
        ev_run(t_loop, EVRUN_NOWAIT);
        ck_assert_int_eq(order[i], i);
    }
    for (int i = 0; i < 6; i++) {
        ASSERT_RC(w[i].rc, w[i].err, 1, 0);
        T_JOIN_EQ(t[i], T_PTR(i));
    }
    ck_assert_int_eq(awaitlet_sem_post(&s), 0);
    ck_assert_uint_eq(awaitlet_sem_value(&s), 1);
    ck_assert_int_eq(awaitlet_sem_trywait(&s), 1);
    ck_assert_int_eq(awaitlet_sem_trywait(&s), 0);
    ck_assert_int_eq(awaitlet_sem_destroy(&s), 0);
}
END_TEST

/* A permit handed to a waiter that has not run yet is its own: neither a
 * trywait nor a new task's wait may take it. */
START_TEST(sem_no_barging)
{
    awaitlet_sem s;
    awaitlet_sem_init(&s, 0);
    struct waiter a = { .sem = &s }, late = { .sem = &s };
    reset_order();
    awaitlet_task *ta = start(sem_waiter, &a, 1, -1.0);
    ck_assert_int_eq(awaitlet_sem_post(&s), 0);
    ck_assert_int_eq(awaitlet_sem_trywait(&s), 0);
    awaitlet_task *tl = start(sem_waiter, &late, 2, 0.0);
    ck_assert(late.done);
    ASSERT_RC(late.rc, late.err, 0, 0);
    T_JOIN_EQ(ta, 1);
    T_JOIN_EQ(tl, 2);
    ASSERT_RC(a.rc, a.err, 1, 0);
    /* and a waiter queued before the post beats a newcomer after it */
    struct waiter b = { .sem = &s }, c = { .sem = &s };
    reset_order();
    awaitlet_task *tb = start(sem_waiter, &b, 3, -1.0);
    awaitlet_sem_post(&s);
    awaitlet_task *tc = start(sem_waiter, &c, 4, -1.0); /* queues behind */
    ck_assert(!c.done);
    awaitlet_sem_post(&s);
    T_JOIN_EQ(tb, 3);
    T_JOIN_EQ(tc, 4);
    ck_assert_int_eq(order[0], 3);
    ck_assert_int_eq(order[1], 4);
}
END_TEST

/* The permit of a waiter cancelled after it was handed one goes to the next
 * waiter; with no next waiter, back to the count. */
START_TEST(sem_permit_passed_on_after_cancel)
{
    awaitlet_sem s;
    awaitlet_sem_init(&s, 0);
    struct waiter a = { .sem = &s }, b = { .sem = &s };
    reset_order();
    awaitlet_task *ta = start(sem_waiter, &a, 1, -1.0);
    awaitlet_task *tb = start(sem_waiter, &b, 2, 5.0);
    awaitlet_sem_post(&s);
    awaitlet_cancel(ta);
    T_JOIN_EQ(ta, 1);
    T_JOIN_EQ(tb, 2);
    ASSERT_RC(a.rc, a.err, -1, ECANCELED);
    ASSERT_RC(b.rc, b.err, 1, 0);
    ck_assert_msg(b.elapsed < 1.0, "b got the permit after %.3f s", b.elapsed);
    ck_assert_uint_eq(awaitlet_sem_value(&s), 0);

    struct waiter c = { .sem = &s };
    awaitlet_task *tc = start(sem_waiter, &c, 3, -1.0);
    awaitlet_sem_post(&s);
    ck_assert_uint_eq(awaitlet_sem_value(&s), 0);
    awaitlet_set_deadline(tc, 0.001);
    usleep(3000);
    ev_run(t_loop, EVRUN_ONCE);
    T_JOIN_EQ(tc, 3);
    ASSERT_RC(c.rc, c.err, -1, ETIMEDOUT);
    ck_assert_uint_eq(awaitlet_sem_value(&s), 1); /* back to the count */
    ck_assert_int_eq(awaitlet_sem_destroy(&s), 0);
}
END_TEST

/* Shielded: the permit is passed on and the wait says EINTR once; the next
 * wait at the same level works. */
START_TEST(sem_shield_eintr_once)
{
    awaitlet_sem s;
    awaitlet_sem_init(&s, 0);
    struct waiter a = { .sem = &s, .shield = 1, .again = 1 };
    awaitlet_task *ta = start(sem_waiter, &a, 1, 5.0);
    awaitlet_cancel(ta);
    ev_run(t_loop, EVRUN_NOWAIT);
    ASSERT_RC(a.rc, a.err, -1, EINTR);
    ck_assert(!a.done); /* second wait in progress despite the cancel */
    awaitlet_sem_post(&s);
    T_JOIN_EQ(ta, 1);
    ASSERT_RC(a.rc2, a.err2, 1, 0);
    ck_assert_uint_eq(awaitlet_sem_value(&s), 0);
}
END_TEST

START_TEST(sem_free_permit_and_timeout)
{
    awaitlet_sem s;
    awaitlet_sem_init(&s, 1);
    struct waiter a = { .sem = &s }, b = { .sem = &s }, z = { .sem = &s };
    awaitlet_task *ta = start(sem_waiter, &a, 1, 0.05); /* takes the free permit */
    ck_assert(a.done);
    T_JOIN_EQ(ta, 1);
    ASSERT_RC(a.rc, a.err, 1, 0);
    awaitlet_task *tb = start(sem_waiter, &b, 2, 0.05);
    T_JOIN_EQ(tb, 2);
    ASSERT_RC(b.rc, b.err, 0, 0);
    ck_assert_msg(b.elapsed >= 0.045 && b.elapsed < 1.0, "timeout after %.3f s", b.elapsed);
    awaitlet_task *tz = start(sem_waiter, &z, 3, 0.0); /* timeout 0: no wait */
    ck_assert(z.done);
    ASSERT_RC(z.rc, z.err, 0, 0);
    T_JOIN_EQ(tz, 3);
    /* the timed-out waiters left the queue: a post goes to the count */
    awaitlet_sem_post(&s);
    ck_assert_uint_eq(awaitlet_sem_value(&s), 1);
    ck_assert_int_eq(awaitlet_sem_destroy(&s), 0);
}
END_TEST

static void *cancelled_then_wait(void *arg)
{
    awaitlet_sem *s = arg;
    awaitlet_cancel(awaitlet_current());
    errno = 0;
    int rc = awaitlet_sem_wait(s, -1.0);
    return T_PTR(rc == -1 && errno == ECANCELED ? 1 : -1);
}

START_TEST(sem_cancelled_before_does_not_take)
{
    awaitlet_sem s;
    awaitlet_sem_init(&s, 1);
    awaitlet_task *t = awaitlet_async_def(t_loop, cancelled_then_wait, &s);
    T_JOIN_EQ(t, 1);
    ck_assert_uint_eq(awaitlet_sem_value(&s), 1);
}
END_TEST

/* A post from a plain libev callback (outside any task) wakes a waiter. */
static awaitlet_sem cb_sem;
static void post_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)w, (void)revents;
    ck_assert(!awaitlet_in_context());
    awaitlet_sem_post(&cb_sem);
}

START_TEST(sem_post_from_callback)
{
    awaitlet_sem_init(&cb_sem, 0);
    struct waiter a = { .sem = &cb_sem };
    awaitlet_task *ta = start(sem_waiter, &a, 1, 5.0);
    ev_timer tm;
    ev_timer_init(&tm, post_cb, 0.01, 0.);
    ev_timer_start(t_loop, &tm);
    T_JOIN_EQ(ta, 1);
    ASSERT_RC(a.rc, a.err, 1, 0);
    ck_assert(a.elapsed < 1.0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sync");
    TCase *tc = t_tcase("cond");
    tcase_add_test(tc, cond_fifo_order);
    tcase_add_test(tc, cond_broadcast_wakes_those_waiting_now);
    tcase_add_test(tc, cond_timeout_and_zero);
    tcase_add_test(tc, cond_signal_stops_the_timeout);
    tcase_add_test(tc, cond_cancel_deadline_shield);
    tcase_add_test(tc, cond_signal_passed_on_after_cancel);
    tcase_add_test(tc, cond_signal_passed_on_after_deadline);
    tcase_add_test(tc, cond_broadcast_not_passed_on);
    suite_add_tcase(s, tc);

    tc = t_tcase("sem");
    tcase_add_test(tc, sem_counts_and_fifo);
    tcase_add_test(tc, sem_no_barging);
    tcase_add_test(tc, sem_permit_passed_on_after_cancel);
    tcase_add_test(tc, sem_shield_eintr_once);
    tcase_add_test(tc, sem_free_permit_and_timeout);
    tcase_add_test(tc, sem_cancelled_before_does_not_take);
    tcase_add_test(tc, sem_post_from_callback);
    suite_add_tcase(s, tc);

    return t_run_suite(s);
}
