/*
 * test_epoll.c -- waits cost no epoll_ctl unless their fd or events change.
 *
 * The program defines epoll_ctl itself, counting every call and forwarding
 * to libc's; libev's calls bind to it (an executable's symbols come first),
 * so the count is exact and deterministic -- unlike timing, this can be a
 * pass/fail test.  The loop is forced onto the epoll backend.
 */
#include <dlfcn.h>
#include <sys/epoll.h>

#include "helpers.h"

static unsigned long nctl;
/* failure injection: registrations of this fd fail with this errno */
static int inject_fd = -1, inject_errno;

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    static int (*real)(int, int, int, struct epoll_event *);
    if (!real)
        real = (int (*)(int, int, int, struct epoll_event *))dlsym(RTLD_NEXT, "epoll_ctl");
    nctl++;
    if (fd == inject_fd && op != EPOLL_CTL_DEL) {
        errno = inject_errno;
        return -1;
    }
    return real(epfd, op, fd, ev);
}

static void epoll_loop_setup(void)
{
    t_loop = ev_loop_new(EVBACKEND_EPOLL);
    ck_assert_ptr_nonnull(t_loop);
    ck_assert_uint_eq(ev_backend(t_loop), EVBACKEND_EPOLL);
}

enum { ROUNDS = 2000 };

struct pp {
    int fd;
    int flags;   /* extra awaitlet_io flags (AWAITLET_FRESH) */
    int sleepy;  /* 1: sleep(0) between waits, the watcher must be re-armed;
                    2: awaitlet_yield between waits, it stays armed */
};

static void *pingpong(void *arg)
{
    struct pp *p = arg;
    char c = 'x';
    for (int i = 0; i < ROUNDS; i++) {
        if (write(p->fd, &c, 1) != 1)
            return T_PTR(-1);
        if (awaitlet_io(p->fd, EV_READ | p->flags, 5.0) != EV_READ)
            return T_PTR(-2);
        if (read(p->fd, &c, 1) != 1)
            return T_PTR(-3);
        if (p->sleepy == 1 && awaitlet_sleep(0) != 0)
            return T_PTR(-4);
        if (p->sleepy == 2 && awaitlet_yield() != 0)
            return T_PTR(-5);
    }
    return T_PTR(1);
}

static unsigned long run_pair(int flags, int sleepy)
{
    int sv[2];
    t_socketpair(sv);
    /* one byte in flight so the two sides take turns */
    struct pp a = { sv[0], flags, sleepy }, b = { sv[1], flags, sleepy };
    unsigned long before = nctl;
    awaitlet_task *ta = awaitlet_async_def(t_loop, pingpong, &a);
    awaitlet_task *tb = awaitlet_async_def(t_loop, pingpong, &b);
    T_JOIN_EQ(ta, 1);
    T_JOIN_EQ(tb, 1);
    unsigned long n = nctl - before;
    t_close2(sv);
    return n;
}

START_TEST(equal_waits_make_no_epoll_ctl)
{
    unsigned long n = run_pair(0, 0);
    /* 2 tasks x 2000 waits: only the first registration of each fd (and
     * libev's own set-up) may touch epoll */
    ck_assert_msg(n <= 4, "%lu epoll_ctl calls for %d waits", n, 2 * ROUNDS);
}
END_TEST

START_TEST(fresh_waits_reregister)
{
    /* the control: with AWAITLET_FRESH every wait re-registers, so the
     * counter above is really watching libev's epoll_ctl calls */
    unsigned long n = run_pair(AWAITLET_FRESH, 0);
    ck_assert_msg(n >= (unsigned long)ROUNDS, "%lu epoll_ctl calls, expected >= %d", n, ROUNDS);
}
END_TEST

START_TEST(waiting_elsewhere_costs_at_most_one_per_wait)
{
    unsigned long n = run_pair(0, 1);
    ck_assert_msg(n <= 2UL * ROUNDS + 4, "%lu epoll_ctl calls", n);
}
END_TEST

START_TEST(yields_keep_the_registration)
{
    /* a yield between equal waits (what the shim's fairness does) keeps the
     * task's ev_io armed: no epoll_ctl per round, unlike sleep(0) above */
    unsigned long n = run_pair(0, 2);
    ck_assert_msg(n <= 4, "%lu epoll_ctl calls for %d waits with yields", n, 2 * ROUNDS);
}
END_TEST

/* libev reports every failed registration as EV_ERROR; only a closed fd is
 * EBADF.  The kernel refusing an open fd (out of memory, or the
 * max_user_watches limit: ENOSPC) must come out as what it is. */
static void *waits_read(void *arg)
{
    int *io = arg;
    errno = 0;
    io[1] = awaitlet_io(io[0], EV_READ, 2.0);
    io[2] = errno;
    return T_PTR(1);
}

START_TEST(refused_registration_is_not_ebadf)
{
    int p[2];
    t_pipe(p);
    static const int errs[] = {ENOSPC, ENOMEM};
    for (int i = 0; i < 2; i++) {
        inject_fd = p[0];
        inject_errno = errs[i];
        int io[3] = {p[0], 5, 0};
        double t0 = t_now();
        ck_assert_ptr_eq(awaitlet_run(t_loop, waits_read, io), T_PTR(1));
        ck_assert_msg(io[1] == -1 && io[2] == errs[i], "wait returned %d errno %d (%s), expected %s",
                      io[1], io[2], strerror(io[2]), strerror(errs[i]));
        ck_assert_double_lt(t_now() - t0, 1.0);
        /* the kernel accepts it again: the next wait registers and works */
        inject_fd = -1;
        ck_assert_int_eq(write(p[1], "x", 1), 1);
        io[1] = 5;
        ck_assert_ptr_eq(awaitlet_run(t_loop, waits_read, io), T_PTR(1));
        ck_assert_int_eq(io[1], EV_READ);
        char c;
        ck_assert_int_eq(read(p[0], &c, 1), 1);
    }
    t_close2(p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("epoll");
    TCase *tc = tcase_create("epoll_ctl");
    tcase_add_checked_fixture(tc, epoll_loop_setup, t_loop_teardown);
    tcase_add_test(tc, equal_waits_make_no_epoll_ctl);
    tcase_add_test(tc, fresh_waits_reregister);
    tcase_add_test(tc, waiting_elsewhere_costs_at_most_one_per_wait);
    tcase_add_test(tc, yields_keep_the_registration);
    tcase_add_test(tc, refused_registration_is_not_ebadf);
    suite_add_tcase(s, tc);
    return t_run_suite(s);
}
