/*
 * hooks.c -- poll and getaddrinfo: the two places where libpq blocks.
 *
 * libpq's socket is always nonblocking; every wait it makes (connect steps
 * with connect_timeout, PQgetResult, flushing, COPY, PQfn...) goes through
 * pqSocketPoll, which is one poll() on one descriptor.  Host names are
 * looked up with getaddrinfo.  Both are reached through libpq's PLT, so
 * defining them here puts the shim in the path without copying any of
 * libpq's logic: results are byte-identical to libpq's because libpq's own
 * code produced them.
 *
 * They act only when the running task is inside a cooperative scope; for
 * everybody else (libev, the application, other threads, tasks outside
 * libpq) they are the real functions.  Inside a scope:
 *   poll(1 fd)  -> awaitlet_io on it (timeout kept across retries)
 *   poll(0 fds) -> awaitlet_sleep
 *   poll(>1)    -> the real poll, blocking (libpq never does this)
 *   getaddrinfo -> the real one on a worker thread (awaitlet_offload)
 * __poll_chk, what _FORTIFY_SOURCE builds may call instead of poll, is
 * routed the same way.
 */
#include <errno.h>
#include <time.h>

#include <awaitlet.h>
#include <ev.h>

#include "real.h"
#include "scope.h"

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Seconds left of a poll timeout in ms started at t0; -1: none. */
static double remaining(int timeout_ms, double t0)
{
    if (timeout_ms < 0)
        return -1;
    double left = (double)timeout_ms * 1e-3 - (mono() - t0);
    return left > 0 ? left : 0;
}

static int coop_sleep(pqawait__scope *sc, int timeout_ms)
{
    double t0 = timeout_ms < 0 ? 0 : mono();
    for (;;) {
        double left = remaining(timeout_ms, t0);
        if (left == 0)
            return 0;
        int r = awaitlet_sleep(left < 0 ? 1e9 : left);
        pqawait__waited(sc, -1); /* a sleep disarms the io watcher: costs nothing */
        if (r == 0 && timeout_ms >= 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
        if (r < 0)
            pqawait__interrupted(sc);
    }
}

static int coop_poll(pqawait__scope *sc, struct pollfd *fds, nfds_t nfds, int timeout_ms)
{
    if (nfds == 0 || fds[0].fd < 0)
        return coop_sleep(sc, timeout_ms); /* poll ignores negative fds */
    struct pollfd *p = &fds[0];
    int events = (p->events & POLLIN ? EV_READ : 0) | (p->events & POLLOUT ? EV_WRITE : 0);
    p->revents = 0;
    if (!events) /* only errors asked for: nothing awaitlet can wait on */
        return pqawait__real.poll(fds, nfds, timeout_ms);
    double t0 = timeout_ms < 0 ? 0 : mono(); /* libpq's query waits have none */
    for (;;) {
        double left = remaining(timeout_ms, t0);
        int r;
        if (left == 0) {
            r = awaitlet_io(p->fd, events, 0); /* a look, no suspension */
        } else {
            r = awaitlet_io(p->fd, events | pqawait__wait_flags(sc), left);
            pqawait__waited(sc, r);
        }
        if (r > 0) {
            p->revents = (short)((r & EV_READ ? POLLIN : 0) | (r & EV_WRITE ? POLLOUT : 0));
            if (!p->revents)
                p->revents = POLLERR;
            return 1;
        }
        if (r == 0)
            return 0;
        if (errno == EBADF) {
            p->revents = POLLNVAL; /* what poll says about a closed descriptor */
            return 1;
        }
        if (errno != EINTR)
            return -1; /* an unshielded wait cancelled, or a real error */
        pqawait__interrupted(sc);
    }
}

PQAWAIT_EXPORT int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
    pqawait__scope *sc;
    if (nfds <= 1 && (sc = pqawait__current()) != NULL)
        return coop_poll(sc, fds, nfds, timeout);
    if (!PQAWAIT__REAL(poll)) {
        errno = ENOSYS;
        return -1;
    }
    return pqawait__real.poll(fds, nfds, timeout);
}

PQAWAIT_EXPORT int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fdslen)
{
    pqawait__scope *sc;
    if (nfds <= 1 && fdslen / sizeof *fds >= nfds && (sc = pqawait__current()) != NULL)
        return coop_poll(sc, fds, nfds, timeout);
    if (!PQAWAIT__REAL(__poll_chk)) {
        errno = ENOSYS;
        return -1;
    }
    return pqawait__real.__poll_chk(fds, nfds, timeout, fdslen); /* checks, or aborts */
}

struct gai_call {
    const char *node, *service;
    const struct addrinfo *hints;
    struct addrinfo **res;
    int rc, err;
};

static void *gai_worker(void *arg)
{
    struct gai_call *c = arg;
    c->rc = pqawait__real.getaddrinfo(c->node, c->service, c->hints, c->res);
    c->err = errno; /* EAI_SYSTEM reports through errno */
    return NULL;
}

PQAWAIT_EXPORT int getaddrinfo(const char *node, const char *service,
                               const struct addrinfo *hints, struct addrinfo **res)
{
    if (!PQAWAIT__REAL(getaddrinfo)) {
        errno = ENOSYS;
        return EAI_SYSTEM;
    }
    if (!pqawait__current())
        return pqawait__real.getaddrinfo(node, service, hints, res);
    struct gai_call c = { node, service, hints, res, 0, 0 };
    if (awaitlet_offload(gai_worker, &c, NULL) < 0)
        gai_worker(&c); /* no worker thread: block rather than fail the connection */
    errno = c.err;
    return c.rc;
}
