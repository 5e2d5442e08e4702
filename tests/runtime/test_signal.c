/*
 * test_signal.c -- signal handlers and yields.
 *
 * A signal handler runs on whatever stack it interrupted, often a task's,
 * so it must never switch: inside awaitlet_signal_enter/leave every call
 * that could switch or reschedule fails with EPERM.  The tests raise real
 * signals from inside a running task, so the handler really sits on the
 * task's stack.  awaitlet_yield is here too because it is the yield that
 * libraries (the shim's fairness) use: it must not swallow the single EINTR
 * a shielded task is owed.
 */
#include <dlfcn.h>
#include <poll.h>
#include <signal.h>

#include "helpers.h"

static int h_io, h_sleep, h_yield, h_join, h_cancel, h_deadline, h_offload, h_async, h_in;
static int h_join_ex, h_run, h_run_ex, h_detach, h_close, h_loop_close, h_walk, h_cancel_all;
static int h_close_fd;
static awaitlet_task *h_task;

static int walk_none(awaitlet_task *t, void *arg)
{
    (void)t, (void)arg;
    return 0;
}

static void *noop(void *arg)
{
    return arg;
}

static void handler(int sig)
{
    (void)sig;
    awaitlet_signal_enter();
    h_in = awaitlet_in_signal_handler();
    errno = 0;
    h_io = awaitlet_io(0, AWAITLET_READ, 0.01) == -1 ? errno : 0;
    errno = 0;
    h_sleep = awaitlet_sleep(0.01) == -1 ? errno : 0;
    errno = 0;
    h_yield = awaitlet_yield() == -1 ? errno : 0;
    errno = 0;
    h_join = awaitlet_join(h_task) == NULL ? errno : 0;
    errno = 0;
    h_cancel = awaitlet_cancel(h_task) == -1 ? errno : 0;
    errno = 0;
    h_deadline = awaitlet_set_deadline(h_task, 1) == -1 ? errno : 0;
    errno = 0;
    h_offload = awaitlet_offload(noop, NULL, NULL) == -1 ? errno : 0;
    errno = 0;
    h_async = awaitlet_async_def(t_loop, noop, NULL) == NULL ? errno : 0;
    errno = 0;
    h_join_ex = awaitlet_join_ex(h_task, NULL) == -1 ? errno : 0;
    errno = 0;
    h_run = awaitlet_run(t_loop, noop, T_PTR(1)) == NULL ? errno : 0;
    errno = 0;
    h_run_ex = awaitlet_run_ex(t_loop, noop, NULL, NULL) == -1 ? errno : 0;
    errno = 0;
    h_detach = awaitlet_detach(h_task) == -1 ? errno : 0;
    errno = 0;
    h_close = awaitlet_close(h_close_fd) == -1 ? errno : 0;
    errno = 0;
    h_loop_close = awaitlet_loop_close(t_loop) == -1 ? errno : 0;
    errno = 0;
    h_walk = awaitlet_loop_walk(t_loop, walk_none, NULL) == -1 ? errno : 0;
    errno = 0;
    h_cancel_all = awaitlet_loop_cancel_all(t_loop) == -1 ? errno : 0;
    awaitlet_signal_leave();
}

static void *raiser(void *arg)
{
    (void)arg;
    raise(SIGUSR1); /* the handler runs here, on this task's stack */
    /* after the handler everything works again */
    return awaitlet_sleep(0.001) == 0 ? T_PTR(1) : T_PTR(-1);
}

static void *sleeper(void *arg)
{
    (void)arg;
    return awaitlet_sleep(0.05) == 0 ? T_PTR(1) : T_PTR(-1);
}

START_TEST(marked_handler_refuses_switches)
{
    struct sigaction sa = { 0 }, old;
    int p[2];
    t_pipe(p);
    h_close_fd = p[0];
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    ck_assert_int_eq(sigaction(SIGUSR1, &sa, &old), 0);
    h_task = awaitlet_async_def(t_loop, sleeper, NULL);
    ck_assert_ptr_nonnull(h_task);
    awaitlet_task *t = awaitlet_async_def(t_loop, raiser, NULL);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(h_in, 1);
    ck_assert_int_eq(h_io, EPERM);
    ck_assert_int_eq(h_sleep, EPERM);
    ck_assert_int_eq(h_yield, EPERM);
    ck_assert_int_eq(h_join, EPERM);
    ck_assert_int_eq(h_cancel, EPERM);
    ck_assert_int_eq(h_deadline, EPERM);
    ck_assert_int_eq(h_offload, EPERM);
    ck_assert_int_eq(h_async, EPERM);
    ck_assert_int_eq(h_join_ex, EPERM);
    ck_assert_int_eq(h_run, EPERM);
    ck_assert_int_eq(h_run_ex, EPERM);
    ck_assert_int_eq(h_detach, EPERM);
    ck_assert_int_eq(h_close, EPERM);
    ck_assert_int_eq(h_loop_close, EPERM);
    ck_assert_int_eq(h_walk, EPERM);
    ck_assert_int_eq(h_cancel_all, EPERM);
    ck_assert_int_ge(fcntl(p[0], F_GETFD), 0); /* the refused close left it open */
    ck_assert_int_eq(awaitlet_in_signal_handler(), 0);
    T_JOIN_EQ(t, 1);
    T_JOIN_EQ(h_task, 1); /* neither cancelled, detached nor given a deadline */
    sigaction(SIGUSR1, &old, NULL);
    t_close2(p);
}
END_TEST

START_TEST(signal_marks_nest)
{
    awaitlet_signal_enter();
    awaitlet_signal_enter();
    awaitlet_signal_leave();
    ck_assert_int_eq(awaitlet_in_signal_handler(), 1);
    awaitlet_signal_leave();
    ck_assert_int_eq(awaitlet_in_signal_handler(), 0);
    awaitlet_signal_leave(); /* unbalanced: harmless */
    ck_assert_int_eq(awaitlet_in_signal_handler(), 0);
}
END_TEST

/* --- yields ------------------------------------------------------------- */

static void *yield_then_wait(void *arg)
{
    (void)arg;
    awaitlet_shield(1);
    awaitlet_cancel(awaitlet_current());
    /* a library yielding for fairness must leave the EINTR to the caller */
    for (int i = 0; i < 3; i++)
        if (awaitlet_yield() != 0)
            return T_PTR(-1);
    errno = 0;
    if (awaitlet_sleep(0.001) != -1 || errno != EINTR)
        return T_PTR(-2);
    awaitlet_shield(0);
    if (awaitlet_yield() != 0) /* never reports, even unshielded */
        return T_PTR(-3);
    if (awaitlet_sleep(0.001) != -1 || errno != ECANCELED)
        return T_PTR(-4);
    return T_PTR(1);
}

START_TEST(yield_does_not_consume_interruption)
{
    awaitlet_task *t = awaitlet_async_def(t_loop, yield_then_wait, NULL);
    ck_assert_ptr_nonnull(t);
    T_JOIN_EQ(t, 1);
}
END_TEST

static char order[16];
static int norder;

static void *yield_logger(void *arg)
{
    char c = (char)T_INT(arg);
    for (int i = 0; i < 2; i++) {
        order[norder++] = c;
        if (awaitlet_yield() != 0)
            return T_PTR(-1);
    }
    return T_PTR(1);
}

START_TEST(yield_lets_others_run)
{
    norder = 0;
    awaitlet_task *a = awaitlet_async_def(t_loop, yield_logger, T_PTR('a'));
    awaitlet_task *b = awaitlet_async_def(t_loop, yield_logger, T_PTR('b'));
    T_JOIN_EQ(a, 1);
    T_JOIN_EQ(b, 1);
    order[norder] = 0;
    ck_assert_str_eq(order, "abab");
    T_FAILS(awaitlet_yield(), -1, EPERM); /* outside a task */
}
END_TEST

/* --- a zero-timeout wait and a signal ------------------------------------ */

/* The program's ppoll: libawaitlet's calls bind to it (the executable comes
 * first).  Armed, it behaves as the kernel does when a signal arrives during
 * the call: the handler runs, the call fails with EINTR. */
static int ppoll_interrupts, ppoll_calls, got_sigusr2;

int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *mask)
{
    static int (*real)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);
    if (!real)
        real = (int (*)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *))
            dlsym(RTLD_NEXT, "ppoll");
    ppoll_calls++;
    if (ppoll_interrupts > 0) {
        ppoll_interrupts--;
        raise(SIGUSR2);
        errno = EINTR;
        return -1;
    }
    return real(fds, n, ts, mask);
}

static void on_usr2(int sig)
{
    (void)sig;
    got_sigusr2++;
}

static void *polls_now(void *arg)
{
    int fd = *(int *)arg;
    errno = 0;
    int rc = awaitlet_io(fd, AWAITLET_WRITE, 0);
    return T_PTR(rc == AWAITLET_WRITE ? 1 : -100 - errno);
}

START_TEST(zero_timeout_wait_retries_eintr)
{
    struct sigaction sa = { 0 }, old;
    sa.sa_handler = on_usr2;
    sigemptyset(&sa.sa_mask);
    ck_assert_int_eq(sigaction(SIGUSR2, &sa, &old), 0);
    int p[2];
    t_pipe(p);
    got_sigusr2 = 0;
    ppoll_calls = 0;
    ppoll_interrupts = 2;
    ck_assert_ptr_eq(awaitlet_run(t_loop, polls_now, &p[1]), T_PTR(1));
    ck_assert_int_eq(got_sigusr2, 2);
    ck_assert_int_eq(ppoll_calls, 3);
    ppoll_interrupts = 0;
    t_close2(p);
    sigaction(SIGUSR2, &old, NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("signal");
    TCase *tc = t_tcase("signal");
    tcase_add_test(tc, marked_handler_refuses_switches);
    tcase_add_test(tc, signal_marks_nest);
    tcase_add_test(tc, yield_does_not_consume_interruption);
    tcase_add_test(tc, yield_lets_others_run);
    tcase_add_test(tc, zero_timeout_wait_retries_eintr);
    suite_add_tcase(s, tc);
    return t_run_suite(s);
}
