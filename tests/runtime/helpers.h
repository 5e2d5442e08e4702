/*
 * helpers.h -- shared bits of the awaitlet runtime test programs.
 *
 * Every test program gets a fresh non-default loop per test (so a test that
 * leaves a watcher behind cannot disturb the next one and valgrind sees the
 * loop freed), a monotonic clock, pipe/socketpair helpers that make both ends
 * nonblocking (a task must never block the loop thread in read/write), and
 * the "are we under valgrind / a sanitizer" switches that let the heavy tests
 * shrink or stay unregistered.  Header-only with static functions because
 * each test program is one translation unit.
 */
#ifndef AWAITLET_TEST_HELPERS_H
#define AWAITLET_TEST_HELPERS_H

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <ev.h>

#include "awaitlet.h"

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define T_HAVE_VALGRIND 1
#endif
#endif
#ifndef T_HAVE_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#if defined(__SANITIZE_ADDRESS__)
#define T_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define T_ASAN 1
#endif
#endif
#ifndef T_ASAN
#define T_ASAN 0
#endif

/* ThreadSanitizer: every task is a TSan fiber, whose creation clears
 * ~0.8 MB of TSan state -- tests that create thousands of tasks in a row
 * scale their rounds down under it. */
#if defined(__SANITIZE_THREAD__)
#define T_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define T_TSAN 1
#endif
#endif
#ifndef T_TSAN
#define T_TSAN 0
#endif

/* The loop of the current test; set up and torn down by t_loop_setup /
 * t_loop_teardown (checked fixtures, so they also run under CK_FORK=no). */
static struct ev_loop *t_loop;

static inline void t_loop_setup(void)
{
    t_loop = ev_loop_new(EVFLAG_AUTO);
    ck_assert_ptr_nonnull(t_loop);
}

static inline void t_loop_teardown(void)
{
    /* A test that leaves tasks alive is a bug in the test (or the runtime's
     * counting): ev_loop_destroy under live tasks is forbidden. */
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
    ck_assert_int_eq(awaitlet_loop_close(t_loop), 0);
    ev_loop_destroy(t_loop);
    t_loop = NULL;
}

static inline double t_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void t_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    ck_assert_int_ge(fl, 0);
    ck_assert_int_eq(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

static inline void t_pipe(int fds[2])
{
    ck_assert_int_eq(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
}

static inline void t_socketpair(int fds[2])
{
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
}

static inline void t_close2(int fds[2])
{
    if (fds[0] >= 0)
        close(fds[0]);
    if (fds[1] >= 0)
        close(fds[1]);
    fds[0] = fds[1] = -1;
}

#define T_PTR(i) ((void *)(intptr_t)(i))
#define T_INT(p) ((intptr_t)(p))

/* Join from outside a task and require success with the given result. */
#define T_JOIN_EQ(task, value)                                                 \
    do {                                                                       \
        errno = 0;                                                             \
        void *t_r_ = awaitlet_join(task);                                      \
        ck_assert_msg(t_r_ == (void *)(value),                                 \
                      "join returned %p (errno %d), expected %p", t_r_, errno, \
                      (void *)(value));                                        \
    } while (0)

/* Join with awaitlet_join_ex (from anywhere) and require success with the
 * given result. */
#define T_JOINX_EQ(task, value)                                                \
    do {                                                                       \
        void *t_r_ = (void *)-7;                                               \
        errno = 0;                                                             \
        int t_rc_ = awaitlet_join_ex(task, &t_r_);                             \
        ck_assert_msg(t_rc_ == 0 && t_r_ == (void *)(value),                   \
                      "join_ex returned %d (errno %d), result %p, expected %p",\
                      t_rc_, errno, t_r_, (void *)(value));                    \
    } while (0)

/* Run the loop (ONCE at a time, at most n times) until it has no tasks. */
static inline void t_drain(struct ev_loop *loop, int n)
{
    for (int i = 0; i < n && awaitlet_loop_tasks(loop) > 0; i++)
        ev_run(loop, EVRUN_ONCE);
}

/* Expect `expr` to fail: value `bad`, errno `err`. */
#define T_FAILS(expr, bad, err)                                                \
    do {                                                                       \
        errno = 0;                                                             \
        long t_v_ = (long)(intptr_t)(expr);                                    \
        int t_e_ = errno;                                                      \
        ck_assert_msg(t_v_ == (long)(intptr_t)(bad) && t_e_ == (err),          \
                      "%s: got %ld errno %d (%s), expected %ld errno %d (%s)", \
                      #expr, t_v_, t_e_, strerror(t_e_), (long)(intptr_t)(bad),\
                      (err), strerror(err));                                   \
    } while (0)

/* Run a suite and return the process exit status. */
static inline int t_run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* A tcase with the per-test loop fixture. */
static inline TCase *t_tcase(const char *name)
{
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, t_loop_setup, t_loop_teardown);
    return tc;
}

#endif
