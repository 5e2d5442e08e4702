/*
 * test_time.c -- the clock side of waiting: io timeouts, sleep and yield.
 *
 * Timeouts are measured against the monotonic clock: awaitlet_io with a
 * timeout returns 0 after about `timeout`, never noticeably before, and an
 * event that comes first wins.  awaitlet_sleep(0) is a yield that must let
 * every other ready task and watcher run first -- checked with an order log
 * and with a reader whose fd became readable just before the yield.
 */
#include "helpers.h"

#include <stdio.h>

/* Early-wakeup tolerance: libev measures timeouts from its cached loop time,
 * which may be a little older than the moment the task called in. */
#define EARLY 0.005

/* --- timeouts ------------------------------------------------------------- */

struct timed {
    int fd, events;
    double timeout;
    int rc, err;
    double elapsed;
};

static void *timed_io(void *arg)
{
    struct timed *t = arg;
    double t0 = t_now();
    errno = 0;
    t->rc = awaitlet_io(t->fd, t->events, t->timeout);
    t->err = errno;
    t->elapsed = t_now() - t0;
    return T_PTR(1);
}

START_TEST(io_timeout_returns_zero_after_timeout)
{
    int p[2];
    t_pipe(p);
    static const double timeouts[] = {0.05, 0.12};
    for (size_t i = 0; i < sizeof timeouts / sizeof *timeouts; i++) {
        struct timed t = {p[0], EV_READ, timeouts[i], -5, 0, 0};
        ck_assert_ptr_eq(awaitlet_run(t_loop, timed_io, &t), T_PTR(1));
        ck_assert_int_eq(t.rc, 0);
        ck_assert_msg(t.elapsed >= timeouts[i] - EARLY, "woke after %.4f s, timeout %.3f",
                      t.elapsed, timeouts[i]);
        ck_assert_msg(t.elapsed < timeouts[i] + 0.5, "woke after %.4f s, timeout %.3f",
                      t.elapsed, timeouts[i]);
    }
    t_close2(p);
}
END_TEST

START_TEST(io_timeout_zero_polls)
{
    int p[2];
    t_pipe(p);
    /* Not ready: 0 at once. */
    struct timed t = {p[0], EV_READ, 0.0, -5, 0, 0};
    ck_assert_ptr_eq(awaitlet_run(t_loop, timed_io, &t), T_PTR(1));
    ck_assert_int_eq(t.rc, 0);
    ck_assert_double_lt(t.elapsed, 0.05);
    /* Ready: the events. */
    struct timed w = {p[1], EV_WRITE, 0.0, -5, 0, 0};
    ck_assert_ptr_eq(awaitlet_run(t_loop, timed_io, &w), T_PTR(1));
    ck_assert_int_eq(w.rc, EV_WRITE);
    ck_assert_int_eq(write(p[1], "x", 1), 1);
    struct timed r = {p[0], EV_READ, 0.0, -5, 0, 0};
    ck_assert_ptr_eq(awaitlet_run(t_loop, timed_io, &r), T_PTR(1));
    ck_assert_int_eq(r.rc, EV_READ);
    ck_assert_double_lt(r.elapsed, 0.05);
    t_close2(p);
}
END_TEST

static void *late_writer(void *arg)
{
    int fd = *(int *)arg;
    if (awaitlet_sleep(0.06) != 0)
        return T_PTR(-1);
    return T_PTR(write(fd, "x", 1));
}

START_TEST(io_negative_timeout_waits_for_event)
{
    int p[2];
    t_pipe(p);
    struct timed t = {p[0], EV_READ, -1.0, -5, 0, 0};
    awaitlet_task *r = awaitlet_async_def(t_loop, timed_io, &t);
    awaitlet_task *w = awaitlet_async_def(t_loop, late_writer, &p[1]);
    ck_assert_ptr_nonnull(r);
    ck_assert_ptr_nonnull(w);
    T_JOIN_EQ(r, 1);
    T_JOIN_EQ(w, 1);
    ck_assert_int_eq(t.rc, EV_READ);
    ck_assert_double_ge(t.elapsed, 0.06 - EARLY);
    t_close2(p);
}
END_TEST

START_TEST(io_event_beats_timeout)
{
    int p[2];
    t_pipe(p);
    struct timed t = {p[0], EV_READ, 5.0, -5, 0, 0};
    awaitlet_task *r = awaitlet_async_def(t_loop, timed_io, &t);
    awaitlet_task *w = awaitlet_async_def(t_loop, late_writer, &p[1]);
    T_JOIN_EQ(r, 1);
    T_JOIN_EQ(w, 1);
    ck_assert_int_eq(t.rc, EV_READ);
    ck_assert_double_lt(t.elapsed, 1.0); /* the 5 s timer did not hold it */
    t_close2(p);
}
END_TEST

/* --- sleep and yield ------------------------------------------------------ */

static void *sleeper(void *arg)
{
    double s = *(double *)arg;
    double t0 = t_now();
    if (awaitlet_sleep(s) != 0)
        return NULL;
    *(double *)arg = t_now() - t0;
    return T_PTR(1);
}

START_TEST(sleep_duration)
{
    double d = 0.08;
    ck_assert_ptr_eq(awaitlet_run(t_loop, sleeper, &d), T_PTR(1));
    ck_assert_double_ge(d, 0.08 - EARLY);
    ck_assert_double_lt(d, 0.6);
    d = -3.0; /* a yield, not an error */
    ck_assert_ptr_eq(awaitlet_run(t_loop, sleeper, &d), T_PTR(1));
    ck_assert_double_lt(d, 0.05);
}
END_TEST

START_TEST(sleeps_overlap)
{
    /* Ten tasks sleeping 0.1 s each take about 0.1 s, not 1 s. */
    double d[10];
    awaitlet_task *t[10];
    double t0 = t_now();
    for (int i = 0; i < 10; i++) {
        d[i] = 0.1;
        t[i] = awaitlet_async_def(t_loop, sleeper, &d[i]);
        ck_assert_ptr_nonnull(t[i]);
    }
    for (int i = 0; i < 10; i++)
        T_JOIN_EQ(t[i], 1);
    ck_assert_double_lt(t_now() - t0, 0.5);
}
END_TEST

static char ylog[64];
static int ylen;

static void *yielder(void *arg)
{
    char c = (char)T_INT(arg);
    for (int i = 0; i < 4; i++) {
        ylog[ylen++] = c;
        if (awaitlet_sleep(0) != 0)
            return T_PTR(-1);
    }
    return T_PTR(1);
}

START_TEST(yield_interleaves)
{
    memset(ylog, 0, sizeof ylog);
    ylen = 0;
    awaitlet_task *a = awaitlet_async_def(t_loop, yielder, T_PTR('A'));
    awaitlet_task *b = awaitlet_async_def(t_loop, yielder, T_PTR('B'));
    T_JOIN_EQ(a, 1);
    T_JOIN_EQ(b, 1);
    ck_assert_int_eq(ylen, 8);
    /* Each yield lets the other task run before this one continues. */
    for (int i = 1; i < ylen; i++)
        ck_assert_msg(ylog[i] != ylog[i - 1], "no interleaving: %s", ylog);
}
END_TEST

struct yio {
    int p[2];
    int reader_done;
    int seen_by_writer;
};

static void *yio_reader(void *arg)
{
    struct yio *y = arg;
    if (awaitlet_io(y->p[0], EV_READ, 5.0) != EV_READ)
        return T_PTR(-1);
    y->reader_done = 1;
    return T_PTR(1);
}

static void *yio_writer(void *arg)
{
    struct yio *y = arg;
    if (write(y->p[1], "x", 1) != 1)
        return T_PTR(-1);
    /* The reader's fd is ready now: a yield must let it run first. */
    if (awaitlet_sleep(0) != 0)
        return T_PTR(-1);
    y->seen_by_writer = y->reader_done;
    return T_PTR(1);
}

START_TEST(yield_lets_ready_io_task_run)
{
    struct yio y;
    memset(&y, 0, sizeof y);
    t_pipe(y.p);
    awaitlet_task *r = awaitlet_async_def(t_loop, yio_reader, &y);
    awaitlet_task *w = awaitlet_async_def(t_loop, yio_writer, &y);
    T_JOIN_EQ(w, 1);
    T_JOIN_EQ(r, 1);
    ck_assert_int_eq(y.seen_by_writer, 1);
    t_close2(y.p);
}
END_TEST

static Suite *time_suite(void)
{
    Suite *s = suite_create("time");
    TCase *tc = t_tcase("timeouts");
    tcase_add_test(tc, io_timeout_returns_zero_after_timeout);
    tcase_add_test(tc, io_timeout_zero_polls);
    tcase_add_test(tc, io_negative_timeout_waits_for_event);
    tcase_add_test(tc, io_event_beats_timeout);
    suite_add_tcase(s, tc);

    tc = t_tcase("sleep");
    tcase_add_test(tc, sleep_duration);
    tcase_add_test(tc, sleeps_overlap);
    tcase_add_test(tc, yield_interleaves);
    tcase_add_test(tc, yield_lets_ready_io_task_run);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return t_run_suite(time_suite());
}
