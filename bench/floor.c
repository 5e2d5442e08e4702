/*
 * floor.c -- the least any library can do to run libpq's blocking calls in
 * a task: libpq's own poll() on its socket becomes awaitlet_io, and nothing
 * else happens.  Linked into bench-pg-floor (variant a without libpqawait),
 * it measures the floor under the in-task instruction target of issue 10:
 * libpq's blocking path, libev, the runtime's wait and a hook with no
 * checks at all.  What libpqawait spends above it is its contract's (the
 * connection's owner, the interruption rule, fairness, the statistics, the
 * socket-change check: docs/performance.md, "Where the floor is").
 *
 * Not a usable shim: no owner checks, no cancel on interruption, no
 * getaddrinfo, no signal or nested-call care, libpq's poll told apart from
 * others only by being the one poll of one descriptor made inside a task.
 */
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>

#include <awaitlet.h>

#include "pg.h"

unsigned long pgb_floor_polls;

static int (*real_poll)(struct pollfd *, nfds_t, int);

__attribute__((constructor)) static void floor_init(void)
{
    real_poll = (int (*)(struct pollfd *, nfds_t, int))dlsym(RTLD_NEXT, "poll");
    if (!real_poll) {
        fprintf(stderr, "bench-pg-floor: no poll below this one\n");
        exit(1);
    }
}

int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
    if (nfds != 1 || !awaitlet_in_context())
        return real_poll(fds, nfds, timeout);
    pgb_floor_polls++;
    int ev = (fds->events & POLLIN ? AWAITLET_READ : 0) | (fds->events & POLLOUT ? AWAITLET_WRITE : 0);
    int r = awaitlet_io(fds->fd, ev, timeout < 0 ? -1.0 : timeout / 1000.0);
    if (r < 0)
        return -1;
    fds->revents = (short)((r & AWAITLET_READ ? POLLIN : 0) | (r & AWAITLET_WRITE ? POLLOUT : 0));
    return r != 0;
}
