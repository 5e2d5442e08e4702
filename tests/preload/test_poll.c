/*
 * test_poll.c -- awaitlet_poll: poll()'s contract for a task, suspending
 * only that task.
 *
 * Ready descriptors answer at once without suspending; a wait lets other
 * tasks run and returns the kernel's own revents (POLLIN, POLLHUP,
 * POLLNVAL) for exactly the descriptors that are ready; timeouts, negative
 * descriptors, more than 16 descriptors (the heap path), an event another
 * task consumed first (wait on), regular files, cancellation, deadlines and
 * shields; misuse gets EPERM/EINVAL.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>

#include "../runtime/helpers.h"

static int ticks;

START_TEST(test_misuse)
{
    struct pollfd p = {.fd = 0, .events = POLLIN};
    T_FAILS(awaitlet_poll(&p, 1, 0), -1, EPERM);
}
END_TEST

struct args {
    struct pollfd p[64];
    nfds_t n;
    double timeout;
    int rc, err;
    double took;
    unsigned iter_before, iter_after;
};

static void *poller(void *arg)
{
    struct args *a = arg;
    double t0 = t_now();
    a->iter_before = ev_iteration(t_loop);
    errno = 0;
    a->rc = awaitlet_poll(a->p, a->n, a->timeout);
    a->err = errno;
    a->iter_after = ev_iteration(t_loop);
    a->took = t_now() - t0;
    return NULL;
}

static void *bad_args(void *arg)
{
    (void)arg;
    struct pollfd p = {.fd = 0, .events = POLLIN};
    T_FAILS(awaitlet_poll(NULL, 1, 1), -1, EINVAL);
    T_FAILS(awaitlet_poll(&p, 1, 0.0 / 0.0), -1, EINVAL);
    T_FAILS(awaitlet_poll(&p, (nfds_t)1 << 21, 1), -1, EINVAL);
    return T_PTR(1);
}

START_TEST(test_bad_args)
{
    T_JOIN_EQ(awaitlet_async_def(t_loop, bad_args, NULL), 1);
}
END_TEST

START_TEST(test_ready_now)
{
    int a[2], b[2];
    t_pipe(a);
    t_pipe(b);
    ck_assert_int_eq(write(b[1], "x", 1), 1);
    struct args g = {.n = 2, .timeout = 5};
    g.p[0] = (struct pollfd){.fd = a[0], .events = POLLIN};
    g.p[1] = (struct pollfd){.fd = b[0], .events = POLLIN};
    awaitlet_task *t = awaitlet_async_def(t_loop, poller, &g);
    ck_assert(awaitlet_done(t)); /* never suspended */
    T_JOIN_EQ(t, NULL);
    ck_assert_int_eq(g.rc, 1);
    ck_assert_int_eq(g.p[0].revents, 0);
    ck_assert_int_eq(g.p[1].revents, POLLIN);
    t_close2(a);
    t_close2(b);
}
END_TEST

static void write_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    ck_assert_int_eq(write(*(int *)w->data, "y", 1), 1);
}

static void close_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    close(*(int *)w->data);
}

/* Ticks 5 times, then writes the byte the poller waits for: however slow
 * the machine (valgrind), the other task runs while the poll waits. */
static void *tick_then_write(void *arg)
{
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(awaitlet_sleep(0.002), 0);
        ticks++;
    }
    ck_assert_int_eq(write(*(int *)arg, "y", 1), 1);
    return NULL;
}

START_TEST(test_waits_others_run)
{
    int a[2], b[2];
    t_pipe(a);
    t_pipe(b);
    struct args g = {.n = 3, .timeout = 5};
    g.p[0] = (struct pollfd){.fd = a[0], .events = POLLIN};
    g.p[1] = (struct pollfd){.fd = -1, .events = POLLIN}; /* ignored */
    g.p[2] = (struct pollfd){.fd = b[0], .events = POLLIN | POLLOUT};
    ticks = 0;
    awaitlet_task *tk = awaitlet_async_def(t_loop, tick_then_write, &b[1]);
    awaitlet_task *t = awaitlet_async_def(t_loop, poller, &g);
    ck_assert(!awaitlet_done(t));
    T_JOIN_EQ(t, NULL);
    T_JOIN_EQ(tk, NULL);
    ck_assert_int_eq(g.rc, 1);
    ck_assert_int_eq(g.p[0].revents, 0);
    ck_assert_int_eq(g.p[1].revents, 0);
    ck_assert_int_eq(g.p[2].revents, POLLIN);
    ck_assert_int_eq(ticks, 5); /* the loop kept running the other task */
    t_close2(a);
    t_close2(b);
}
END_TEST

START_TEST(test_timeout)
{
    int a[2];
    t_pipe(a);
    struct args g = {.n = 1, .timeout = 0.03};
    g.p[0] = (struct pollfd){.fd = a[0], .events = POLLIN, .revents = 0x7f};
    T_JOIN_EQ(awaitlet_async_def(t_loop, poller, &g), NULL);
    ck_assert_int_eq(g.rc, 0);
    ck_assert_int_eq(g.p[0].revents, 0);
    ck_assert(g.took >= 0.029);
    /* no descriptor at all: a sleep */
    g.p[0].fd = -1;
    T_JOIN_EQ(awaitlet_async_def(t_loop, poller, &g), NULL);
    ck_assert_int_eq(g.rc, 0);
    ck_assert(g.took >= 0.029);
    t_close2(a);
}
END_TEST

START_TEST(test_exact_revents)
{
    int a[2], s[2];
    t_pipe(a);
    struct args g = {.n = 1, .timeout = 5};
    g.p[0] = (struct pollfd){.fd = a[0], .events = POLLIN};
    ev_timer w;
    ev_timer_init(&w, close_cb, 0.02, 0);
    w.data = &a[1];
    ev_timer_start(t_loop, &w);
    T_JOIN_EQ(awaitlet_async_def(t_loop, poller, &g), NULL);
    ck_assert_int_eq(g.rc, 1);
    ck_assert_int_eq(g.p[0].revents, POLLHUP); /* the kernel's word, not "readable" */
    close(a[0]);
    /* a closed descriptor: POLLNVAL, at once */
    g.p[0] = (struct pollfd){.fd = a[0], .events = POLLIN};
    T_JOIN_EQ(awaitlet_async_def(t_loop, poller, &g), NULL);
    ck_assert_int_eq(g.rc, 1);
    ck_assert_int_eq(g.p[0].revents, POLLNVAL);
    /* a socket whose peer went away while we waited for POLLOUT only */
    t_socketpair(s);
    char big[65536] = {0};
    while (write(s[0], big, sizeof big) > 0)
        ;
    g.p[0] = (struct pollfd){.fd = s[0], .events = POLLOUT};
    ev_timer_set(&w, 0.02, 0);
    w.data = &s[1];
    ev_timer_start(t_loop, &w);
    T_JOIN_EQ(awaitlet_async_def(t_loop, poller, &g), NULL);
    ck_assert_int_eq(g.rc, 1);
    ck_assert(g.p[0].revents & POLLHUP);
    close(s[0]);
}
END_TEST

START_TEST(test_regular_file)
{
    char name[] = "/tmp/pqa-poll-XXXXXX";
    int fd = mkstemp(name);
    ck_assert_int_ge(fd, 0);
    unlink(name);
    struct args g = {.n = 1, .timeout = 5};
    g.p[0] = (struct pollfd){.fd = fd, .events = POLLIN | POLLOUT};
    awaitlet_task *t = awaitlet_async_def(t_loop, poller, &g);
    ck_assert(awaitlet_done(t));
    T_JOIN_EQ(t, NULL);
    ck_assert_int_eq(g.rc, 1);
    ck_assert_int_eq(g.p[0].revents, POLLIN | POLLOUT);
    close(fd);
}
END_TEST

START_TEST(test_many)
{
    int fds[40][2];
    struct args g = {.n = 40, .timeout = 5};
    for (int i = 0; i < 40; i++) {
        t_pipe(fds[i]);
        g.p[i] = (struct pollfd){.fd = fds[i][0], .events = POLLIN};
    }
    ev_timer w1, w2;
    ev_timer_init(&w1, write_cb, 0.02, 0);
    w1.data = &fds[33][1];
    ev_timer_start(t_loop, &w1);
    ev_timer_init(&w2, write_cb, 0.02, 0);
    w2.data = &fds[7][1];
    ev_timer_start(t_loop, &w2);
    T_JOIN_EQ(awaitlet_async_def(t_loop, poller, &g), NULL);
    ck_assert_int_eq(g.rc, 2);
    for (int i = 0; i < 40; i++) {
        ck_assert_int_eq(g.p[i].revents, (i == 7 || i == 33) ? POLLIN : 0);
        t_close2(fds[i]);
    }
}
END_TEST

/* Two tasks poll the same pipe; the first to run takes the byte, the
 * other finds nothing and must wait on for the next one. */
static int shared_fd;
static int got[2];

static void *taker(void *arg)
{
    int me = (int)T_INT(arg);
    struct pollfd p = {.fd = shared_fd, .events = POLLIN};
    while (got[me] == 0) {
        int r = awaitlet_poll(&p, 1, 5);
        ck_assert_int_eq(r, 1);
        char c;
        if (read(shared_fd, &c, 1) == 1)
            got[me] = c;
    }
    return NULL;
}

START_TEST(test_consumed_by_another)
{
    int a[2];
    t_pipe(a);
    shared_fd = a[0];
    got[0] = got[1] = 0;
    awaitlet_task *t0 = awaitlet_async_def(t_loop, taker, T_PTR(0));
    awaitlet_task *t1 = awaitlet_async_def(t_loop, taker, T_PTR(1));
    ev_timer w1, w2;
    ev_timer_init(&w1, write_cb, 0.02, 0);
    ev_timer_init(&w2, write_cb, 0.08, 0);
    w1.data = w2.data = &a[1];
    ev_timer_start(t_loop, &w1);
    ev_timer_start(t_loop, &w2);
    T_JOIN_EQ(t0, NULL);
    T_JOIN_EQ(t1, NULL);
    ck_assert_int_eq(got[0] + got[1], 'y' + 'y');
    t_close2(a);
}
END_TEST

static void *cancelled(void *arg)
{
    int *fd = arg;
    struct pollfd p = {.fd = *fd, .events = POLLIN};
    T_FAILS(awaitlet_poll(&p, 1, 5), -1, ECANCELED);
    return T_PTR(1);
}

static void *deadline(void *arg)
{
    int *fd = arg;
    struct pollfd p = {.fd = *fd, .events = POLLIN};
    T_FAILS(awaitlet_poll(&p, 1, 5), -1, ETIMEDOUT);
    return T_PTR(1);
}

static void *shielded(void *arg)
{
    int *fd = arg;
    struct pollfd p = {.fd = *fd, .events = POLLIN};
    awaitlet_shield(1);
    T_FAILS(awaitlet_poll(&p, 1, 5), -1, EINTR);
    ck_assert_int_eq(awaitlet_poll(&p, 1, 0.01), 0); /* once only */
    awaitlet_shield(0);
    return T_PTR(1);
}

START_TEST(test_interrupted)
{
    int a[2];
    t_pipe(a);
    awaitlet_task *t = awaitlet_async_def(t_loop, cancelled, &a[0]);
    ck_assert_int_eq(awaitlet_cancel(t), 0);
    T_JOIN_EQ(t, 1);
    t = awaitlet_async_def(t_loop, deadline, &a[0]);
    ck_assert_int_eq(awaitlet_set_deadline(t, 0.02), 0);
    T_JOIN_EQ(t, 1);
    t = awaitlet_async_def(t_loop, shielded, &a[0]);
    ck_assert_int_eq(awaitlet_cancel(t), 0);
    T_JOIN_EQ(t, 1);
    t_close2(a);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("poll");
    TCase *tc = t_tcase("awaitlet_poll");
    tcase_add_test(tc, test_misuse);
    tcase_add_test(tc, test_bad_args);
    tcase_add_test(tc, test_ready_now);
    tcase_add_test(tc, test_waits_others_run);
    tcase_add_test(tc, test_timeout);
    tcase_add_test(tc, test_exact_revents);
    tcase_add_test(tc, test_regular_file);
    tcase_add_test(tc, test_many);
    tcase_add_test(tc, test_consumed_by_another);
    tcase_add_test(tc, test_interrupted);
    suite_add_tcase(s, tc);
    return t_run_suite(s);
}
