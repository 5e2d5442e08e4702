/*
 * fork_child.h -- a forked child that reports one line, for the fork tests
 * (tests/runtime/test_fork.c and tests/shim/test_fork.c).
 *
 * The child runs a function that leaves "" in its message buffer when all
 * is well, or says what went wrong; the child writes the line to a pipe and
 * ends with SIGKILL, so nothing runs at its exit: no atexit code, no
 * PQfinish on sockets the parent still uses, no valgrind leak check of
 * memory that belonged to threads the child never had.  The parent reads
 * the line with a time limit; a child that does not answer is killed and
 * reported as hung, so a regression fails the test instead of hanging it.
 * Header-only (static functions), like helpers.h; needs <check.h> first.
 */
#ifndef AWAITLET_TEST_FORK_CHILD_H
#define AWAITLET_TEST_FORK_CHILD_H

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef void (*t_child_fn)(void *arg, char *msg, size_t cap);

struct t_child {
    pid_t pid;
    int fd;
};

static inline struct t_child t_fork_child(t_child_fn fn, void *arg)
{
    int p[2];
    ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
    struct t_child c = { fork(), p[0] };
    ck_assert_int_ge(c.pid, 0);
    if (c.pid == 0) {
        char msg[600] = "";
        close(p[0]);
        fn(arg, msg, sizeof msg);
        if (!msg[0])
            snprintf(msg, sizeof msg, "ok");
        ssize_t n = write(p[1], msg, strlen(msg));
        (void)n;
        raise(SIGKILL);
    }
    close(p[1]);
    return c;
}

/* Set *flag to 1 after `seconds`, from a thread of its own: for a job that
 * must still be running when fork() is called -- fork waits for running
 * offloads, so the release has to come from elsewhere. */
struct t_release {
    atomic_int *flag;
    double seconds;
};

static void *t_release_thread(void *arg)
{
    struct t_release *r = arg;
    usleep((useconds_t)(r->seconds * 1e6));
    atomic_store(r->flag, 1);
    free(r);
    return NULL;
}

static inline void t_release_after(atomic_int *flag, double seconds)
{
    struct t_release *r = malloc(sizeof *r);
    ck_assert_ptr_nonnull(r);
    r->flag = flag;
    r->seconds = seconds;
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, t_release_thread, r), 0);
    pthread_detach(th);
}

static inline double t_fork_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The child's line ("ok" when it had nothing to complain about), or why
 * there is none: it hung past `limit` seconds (and was killed), or died. */
static inline const char *t_child_answer(struct t_child c, double limit)
{
    static char buf[700];
    double t0 = t_fork_now();
    size_t n = 0;
    for (;;) {
        int left = (int)((limit - (t_fork_now() - t0)) * 1000);
        struct pollfd pf = { .fd = c.fd, .events = POLLIN };
        if (left <= 0 || poll(&pf, 1, left) == 0) {
            kill(c.pid, SIGKILL);
            waitpid(c.pid, NULL, 0);
            close(c.fd);
            snprintf(buf, sizeof buf, "child hung: no answer within %.0f s", limit);
            return buf;
        }
        ssize_t r = read(c.fd, buf + n, sizeof buf - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = 0;
    close(c.fd);
    int st = 0;
    waitpid(c.pid, &st, 0);
    if (!n)
        snprintf(buf, sizeof buf, "child died without answering (status %#x)", st);
    return buf;
}

#define T_CHILD_OK(c, limit)                                                  \
    do {                                                                      \
        const char *ans_ = t_child_answer((c), (limit));                      \
        ck_assert_msg(strcmp(ans_, "ok") == 0, "child: %s", ans_);            \
    } while (0)

/* In a child function: keep the first complaint. */
static inline void t_say(char *msg, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline void t_say(char *msg, size_t cap, const char *fmt, ...)
{
    if (msg[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, cap, fmt, ap);
    va_end(ap);
}

/* In a child function with parameters msg and cap: complain and return. */
#define T_CHILD_FAIL(...)                                                     \
    do {                                                                      \
        t_say(msg, cap, __VA_ARGS__);                                         \
        return;                                                               \
    } while (0)

#endif
