/*
 * test_close.c -- awaitlet_close: closing a descriptor tasks wait on.
 *
 * The kernel drops a closed fd from epoll without telling anyone, so a task
 * waiting on it would wait for its timeout (or forever), and a task that
 * keeps its registration between equal waits would wait on a number that now
 * means nothing -- or a new file.  awaitlet_close wakes every task of the
 * thread armed on the fd first: waiters get EBADF at once, armed tasks that
 * are not waiting lose the registration, so their next wait registers anew.
 * Every test uses generous timeouts and checks it did not need them.
 */
#include "helpers.h"

struct waiter {
    int fd, events;
    int rc, err;
    double took;
};

static void *waits(void *arg)
{
    struct waiter *w = arg;
    double t0 = t_now();
    errno = 0;
    w->rc = awaitlet_io(w->fd, w->events, 5.0);
    w->err = errno;
    w->took = t_now() - t0;
    return T_PTR(1);
}

static void *closes_later(void *arg)
{
    int fd = *(int *)arg;
    if (awaitlet_sleep(0.01) != 0)
        return T_PTR(-1);
    return T_PTR(awaitlet_close(fd) == 0 ? 1 : -2);
}

static void assert_ebadf(const struct waiter *w)
{
    ck_assert_msg(w->rc == -1 && w->err == EBADF, "wait returned %d errno %d after %.3f s", w->rc,
                  w->err, w->took);
    ck_assert_double_lt(w->took, 2.0);
}

START_TEST(close_wakes_waiters_with_ebadf)
{
    int p[2], s[2];
    t_pipe(p);
    t_socketpair(s);
    /* fill s[0] so a write wait really waits */
    char buf[4096];
    memset(buf, 'x', sizeof buf);
    while (write(s[0], buf, sizeof buf) > 0)
        ;
    struct waiter w[4] = {
        {p[0], EV_READ, 5, 0, 0},
        {p[0], EV_READ, 5, 0, 0},
        {s[0], EV_WRITE, 5, 0, 0},
        {s[0], EV_READ | EV_WRITE, 5, 0, 0},
    };
    awaitlet_task *t[4];
    for (int i = 0; i < 4; i++)
        ck_assert_ptr_nonnull(t[i] = awaitlet_async_def(t_loop, waits, &w[i]));
    awaitlet_task *c1 = awaitlet_async_def(t_loop, closes_later, &p[0]);
    awaitlet_task *c2 = awaitlet_async_def(t_loop, closes_later, &s[0]);
    for (int i = 0; i < 4; i++)
        T_JOIN_EQ(t[i], 1);
    T_JOIN_EQ(c1, 1);
    T_JOIN_EQ(c2, 1);
    for (int i = 0; i < 4; i++)
        assert_ebadf(&w[i]);
    ck_assert_int_eq(fcntl(p[0], F_GETFD), -1); /* really closed */
    close(p[1]);
    close(s[1]);
}
END_TEST

/* The same from a plain libev callback (outside any task). */
static void close_cb(struct ev_loop *loop, ev_timer *tm, int revents)
{
    (void)loop, (void)revents;
    *(int *)tm->data = awaitlet_close(*(int *)((int *)tm->data + 1));
}

START_TEST(close_from_callback)
{
    int p[2];
    t_pipe(p);
    struct waiter w = {p[0], EV_READ, 5, 0, 0};
    awaitlet_task *t = awaitlet_async_def(t_loop, waits, &w);
    ck_assert_ptr_nonnull(t);
    int data[2] = {5, p[0]};
    ev_timer tm;
    ev_timer_init(&tm, close_cb, 0.01, 0.);
    tm.data = data;
    ev_timer_start(t_loop, &tm);
    T_JOIN_EQ(t, 1);
    ck_assert_int_eq(data[0], 0);
    assert_ebadf(&w);
    close(p[1]);
}
END_TEST

/* A task closes the fd it waited on before, then waits on it again with the
 * same arguments (the hot path that keeps the registration): EBADF, not a
 * timeout.  Then the number comes back as a new pipe: an equal wait works on
 * the new file without AWAITLET_FRESH. */
struct reuse {
    int p[2];
    int rc_closed, err_closed;
    int rc_new_empty, rc_new_ready;
    double took;
};

static void *closes_own_fd(void *arg)
{
    struct reuse *r = arg;
    if (write(r->p[1], "a", 1) != 1 || awaitlet_io(r->p[0], EV_READ, 1.0) != EV_READ)
        return T_PTR(-1);
    int rd = r->p[0], wr = r->p[1];
    if (awaitlet_close(rd) != 0)
        return T_PTR(-2);
    double t0 = t_now();
    errno = 0;
    r->rc_closed = awaitlet_io(rd, EV_READ, 1.0);
    r->err_closed = errno;
    r->took = t_now() - t0;
    close(wr);
    if (pipe2(r->p, O_NONBLOCK | O_CLOEXEC) != 0)
        return T_PTR(-3);
    if (r->p[0] != rd)
        return T_PTR(-4); /* the test needs the number back */
    r->rc_new_empty = awaitlet_io(r->p[0], EV_READ, 0.03);
    if (write(r->p[1], "b", 1) != 1)
        return T_PTR(-5);
    r->rc_new_ready = awaitlet_io(r->p[0], EV_READ, 2.0);
    return T_PTR(1);
}

START_TEST(close_drops_kept_registration)
{
    struct reuse r;
    memset(&r, 0, sizeof r);
    t_pipe(r.p);
    ck_assert_ptr_eq(awaitlet_run(t_loop, closes_own_fd, &r), T_PTR(1));
    ck_assert_msg(r.rc_closed == -1 && r.err_closed == EBADF,
                  "wait on the closed fd returned %d errno %d after %.3f s", r.rc_closed,
                  r.err_closed, r.took);
    ck_assert_double_lt(r.took, 0.5);
    ck_assert_int_eq(r.rc_new_empty, 0);
    ck_assert_int_eq(r.rc_new_ready, EV_READ);
    t_close2(r.p);
}
END_TEST

/* A task that yields keeps its registration; another task closes the fd
 * meanwhile: the yielder is not woken with an error (it was not waiting),
 * but its next equal wait fails with EBADF. */
struct yielder {
    int fd;
    int step;
    int rc, err;
};

static void *yields_on_fd(void *arg)
{
    struct yielder *y = arg;
    if (awaitlet_io(y->fd, EV_WRITE, 1.0) != EV_WRITE)
        return T_PTR(-1);
    y->step = 1;
    while (y->step == 1)
        if (awaitlet_yield() != 0)
            return T_PTR(-2);
    errno = 0;
    y->rc = awaitlet_io(y->fd, EV_WRITE, 1.0);
    y->err = errno;
    return T_PTR(1);
}

static void *closes_when_told(void *arg)
{
    struct yielder *y = arg;
    while (y->step == 0)
        if (awaitlet_yield() != 0)
            return T_PTR(-1);
    int rc = awaitlet_close(y->fd);
    y->step = 2;
    return T_PTR(rc == 0 ? 1 : -2);
}

START_TEST(close_while_armed_not_waiting)
{
    int p[2];
    t_pipe(p);
    struct yielder y = {p[1], 0, 5, 0};
    awaitlet_task *a = awaitlet_async_def(t_loop, yields_on_fd, &y);
    awaitlet_task *b = awaitlet_async_def(t_loop, closes_when_told, &y);
    T_JOIN_EQ(a, 1);
    T_JOIN_EQ(b, 1);
    ck_assert_int_eq(y.rc, -1);
    ck_assert_int_eq(y.err, EBADF);
    close(p[0]);
}
END_TEST

START_TEST(close_plain_cases)
{
    int p[2];
    t_pipe(p);
    ck_assert_int_eq(awaitlet_close(p[0]), 0); /* nobody waits: just close */
    T_FAILS(awaitlet_close(p[0]), -1, EBADF);  /* close's own answer */
    T_FAILS(awaitlet_close(-1), -1, EBADF);
    T_FAILS(awaitlet_close(1 << 20), -1, EBADF);
    ck_assert_int_eq(awaitlet_close(p[1]), 0);
}
END_TEST

static Suite *close_suite(void)
{
    Suite *s = suite_create("close");
    TCase *tc = t_tcase("close");
    tcase_add_test(tc, close_wakes_waiters_with_ebadf);
    tcase_add_test(tc, close_from_callback);
    tcase_add_test(tc, close_drops_kept_registration);
    tcase_add_test(tc, close_while_armed_not_waiting);
    tcase_add_test(tc, close_plain_cases);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return t_run_suite(close_suite());
}
