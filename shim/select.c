/*
 * select.c -- the program's own waits inside a task: poll, ppoll, select,
 * pselect become awaitlet_poll.
 *
 * libpq programs wait themselves as well as inside libpq: select() on
 * PQsocket for LISTEN/NOTIFY (libpq's testlibpq2.c), ppoll() over many
 * connections (pgbench), select() on worker pipes (parallel pg_dump and
 * pg_restore).  Inside a task such a wait would block the whole loop.  So
 * inside a task -- main's under PQAWAIT_ASYNC_MAIN, a callback's under
 * PQAWAIT_EV_CALLBACKS, or any task of a relinked program -- these calls
 * become awaitlet_poll (lib/poll.c) when all of this holds:
 *   - the caller is a task, not in a signal handler, and libpq is not
 *     running in it (libpq's own waits are hooks.c's; a notice processor's
 *     poll stays real, as the shim's rules say);
 *   - the timeout is not zero (a zero timeout never blocks: the real call
 *     answers at once, which is also what awaitlet_poll's own looks use);
 *   - at least one descriptor is given, at most PQAWAIT__PROG_MAX.  A wait
 *     on no descriptor is a sleep (pg_usleep is select(0, ..., &tv)); it
 *     stays real on purpose: psql's \watch sleeps that way with a SIGINT
 *     handler that siglongjmps out of the sleep, and a jump from the loop's
 *     stack into a suspended task's would wreck both;
 *   - ppoll/pselect: no signal mask (a mask applied atomically for the
 *     wait cannot be applied to a loop that others share): real call.
 * Descriptors the loop cannot watch need no test: poll() reports them as
 * always ready (regular files) and awaitlet_poll's first zero-timeout look
 * returns them without waiting.
 *
 * What the caller sees is the real call's contract: poll's revents exactly
 * as the kernel's (awaitlet_poll reads them with a zero-timeout poll);
 * select's sets rewritten with Linux's own mapping (readable: POLLIN,
 * POLLHUP, POLLERR; writable: POLLOUT, POLLERR; exceptional: POLLPRI), its
 * count the number of bits set, EBADF for a descriptor that is not open,
 * and its timeval updated to the time not slept, as Linux does.
 * Cancellation of the task (awaitlet_cancel, a deadline) ends the wait
 * with -1 and errno ECANCELED/ETIMEDOUT: code that was written for poll()
 * takes it as an error, which is what a cancellation should be.  A signal
 * does not interrupt a cooperative wait (no EINTR): the handler runs on the
 * loop's side while the task sleeps.
 *
 * Suspension point: awaitlet_poll, in pqawait__prog_poll and the three
 * functions below -- nowhere else.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#include "preload.h"
#include "scope.h"

typedef int select_fn(int, fd_set *, fd_set *, fd_set *, struct timeval *);
typedef int pselect_fn(int, fd_set *, fd_set *, fd_set *, const struct timespec *,
                       const sigset_t *);
typedef int ppoll_fn(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);
typedef int ppoll_chk_fn(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *,
                         size_t);

static struct {
    select_fn *select;
    pselect_fn *pselect;
    ppoll_fn *ppoll;
    ppoll_chk_fn *__ppoll_chk;
} next;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int resolved;

static void resolve(void)
{
    *(void **)&next.select = dlsym(RTLD_NEXT, "select");
    *(void **)&next.pselect = dlsym(RTLD_NEXT, "pselect");
    *(void **)&next.ppoll = dlsym(RTLD_NEXT, "ppoll");
    *(void **)&next.__ppoll_chk = dlsym(RTLD_NEXT, "__ppoll_chk");
    __atomic_store_n(&resolved, 1, __ATOMIC_RELEASE);
}

static void init(void)
{
    if (__builtin_expect(!__atomic_load_n(&resolved, __ATOMIC_ACQUIRE), 0))
        pthread_once(&once, resolve);
}

/* Before main, on one thread: no pthread_once (its futex wake would be a
 * system call the program does not make without us). */
__attribute__((constructor)) static void select_ctor(void)
{
    if (!__atomic_load_n(&resolved, __ATOMIC_ACQUIRE))
        resolve();
}

#define NEXT(name) (init(), next.name)

/* The rest of pqawait__prog_ok (preload.h), inside a task. */
int pqawait__prog_ok_slow(void)
{
    return !awaitlet_in_signal_handler() && pqawait__current() == NULL;
}

static double seconds_ms(int ms)
{
    return ms < 0 ? -1 : (double)ms * 1e-3;
}

static double seconds_ts(const struct timespec *ts)
{
    return ts ? (double)ts->tv_sec + (double)ts->tv_nsec * 1e-9 : -1;
}

static int any_fd(const struct pollfd *fds, nfds_t n)
{
    for (nfds_t i = 0; i < n; i++)
        if (fds[i].fd >= 0)
            return 1;
    return 0;
}

/* awaitlet_poll for the program; counted. */
static int coop(struct pollfd *fds, nfds_t n, double timeout)
{
    pqawait__stats_task();
    PQAWAIT__STAT(WAITS);
    PQAWAIT__STAT(PROG_WAITS);
    return awaitlet_poll(fds, n, timeout); /* suspension point */
}

int pqawait__prog_poll(struct pollfd *fds, nfds_t nfds, int timeout_ms)
{
    if (!any_fd(fds, nfds))
        return PQAWAIT__REAL(poll)(fds, nfds, timeout_ms); /* a sleep: see above */
    return coop(fds, nfds, seconds_ms(timeout_ms));
}

static int ts_valid(const struct timespec *ts)
{
    return !ts || (ts->tv_sec >= 0 && ts->tv_nsec >= 0 && ts->tv_nsec < 1000000000L);
}

static int ts_zero(const struct timespec *ts)
{
    return ts && ts->tv_sec == 0 && ts->tv_nsec == 0;
}

PQAWAIT_EXPORT int ppoll(struct pollfd *fds, nfds_t nfds, const struct timespec *tmo,
                         const sigset_t *sigmask)
{
    if (!NEXT(ppoll)) {
        errno = ENOSYS;
        return -1;
    }
    if (!sigmask && !ts_zero(tmo) && ts_valid(tmo) && pqawait__prog_ok(nfds) && any_fd(fds, nfds))
        return coop(fds, nfds, seconds_ts(tmo));
    return next.ppoll(fds, nfds, tmo, sigmask);
}

PQAWAIT_EXPORT int __ppoll_chk(struct pollfd *fds, nfds_t nfds, const struct timespec *tmo,
                               const sigset_t *sigmask, size_t fdslen)
{
    if (!NEXT(__ppoll_chk)) {
        errno = ENOSYS;
        return -1;
    }
    if (fdslen / sizeof *fds >= nfds && !sigmask && !ts_zero(tmo) && ts_valid(tmo) &&
        pqawait__prog_ok(nfds) && any_fd(fds, nfds))
        return coop(fds, nfds, seconds_ts(tmo));
    return next.__ppoll_chk(fds, nfds, tmo, sigmask, fdslen); /* checks, or aborts */
}

/* select's sets as pollfds: NULL when select must stay real (no fd set). */
static int sets_to_poll(int nfds, fd_set *r, fd_set *w, fd_set *e, struct pollfd *p)
{
    int n = 0;
    for (int fd = 0; fd < nfds; fd++) {
        short ev = 0;
        if (r && FD_ISSET(fd, r))
            ev |= POLLIN;
        if (w && FD_ISSET(fd, w))
            ev |= POLLOUT;
        if (e && FD_ISSET(fd, e))
            ev |= POLLPRI;
        if (ev) {
            p[n].fd = fd;
            p[n].events = ev;
            p[n].revents = 0;
            n++;
        }
    }
    return n;
}

/* The answer in select's terms: the count of bits set, or -1 EBADF. */
static int poll_to_sets(const struct pollfd *p, int n, int nfds, fd_set *r, fd_set *w, fd_set *e)
{
    for (int i = 0; i < n; i++)
        if (p[i].revents & POLLNVAL) {
            errno = EBADF; /* and select leaves the sets as they were */
            return -1;
        }
    int count = 0;
    for (int fd = 0; fd < nfds; fd++) { /* the kernel writes back only these */
        if (r)
            FD_CLR(fd, r);
        if (w)
            FD_CLR(fd, w);
        if (e)
            FD_CLR(fd, e);
    }
    for (int i = 0; i < n; i++) {
        short ev = p[i].events, rev = p[i].revents;
        if ((ev & POLLIN) && (rev & (POLLIN | POLLHUP | POLLERR))) {
            FD_SET(p[i].fd, r);
            count++;
        }
        if ((ev & POLLOUT) && (rev & (POLLOUT | POLLERR))) {
            FD_SET(p[i].fd, w);
            count++;
        }
        if ((ev & POLLPRI) && (rev & POLLPRI)) {
            FD_SET(p[i].fd, e);
            count++;
        }
    }
    return count;
}

/* The cooperative select: -2 when it must be the real one. */
static int coop_select(int nfds, fd_set *r, fd_set *w, fd_set *e, double timeout,
                       double *slept)
{
    if (nfds <= 0 || nfds > FD_SETSIZE || !pqawait__prog_ok((nfds_t)nfds))
        return -2;
    struct pollfd *p = malloc((size_t)nfds * sizeof *p);
    if (!p)
        return -2;
    int n = sets_to_poll(nfds, r, w, e, p);
    if (n == 0) {
        free(p);
        return -2; /* a sleep: see the top of this file */
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = coop(p, (nfds_t)n, timeout);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *slept = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    if (rc > 0)
        rc = poll_to_sets(p, n, nfds, r, w, e);
    else if (rc == 0)
        (void)poll_to_sets(p, n, nfds, r, w, e); /* all empty */
    free(p);
    return rc;
}

PQAWAIT_EXPORT int select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *tv)
{
    if (!NEXT(select)) {
        errno = ENOSYS;
        return -1;
    }
    if (!(tv && tv->tv_sec == 0 && tv->tv_usec == 0) &&
        !(tv && (tv->tv_sec < 0 || tv->tv_usec < 0 || tv->tv_usec >= 1000000))) {
        double slept = 0, timeout = tv ? (double)tv->tv_sec + (double)tv->tv_usec * 1e-6 : -1;
        int rc = coop_select(nfds, r, w, e, timeout, &slept);
        if (rc != -2) {
            if (tv) { /* Linux: the time not slept */
                double left = timeout - slept;
                if (left < 0 || rc == 0)
                    left = 0;
                tv->tv_sec = (time_t)left;
                tv->tv_usec = (suseconds_t)((left - (double)tv->tv_sec) * 1e6);
            }
            return rc;
        }
    }
    return next.select(nfds, r, w, e, tv);
}

PQAWAIT_EXPORT int pselect(int nfds, fd_set *r, fd_set *w, fd_set *e, const struct timespec *ts,
                           const sigset_t *sigmask)
{
    if (!NEXT(pselect)) {
        errno = ENOSYS;
        return -1;
    }
    if (!sigmask && !ts_zero(ts) && ts_valid(ts)) {
        double slept;
        int rc = coop_select(nfds, r, w, e, seconds_ts(ts), &slept);
        if (rc != -2)
            return rc;
    }
    return next.pselect(nfds, r, w, e, ts, sigmask);
}
