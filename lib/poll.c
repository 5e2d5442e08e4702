/*
 * poll.c -- awaitlet_poll: poll(2) for several descriptors, suspending only
 * the calling task.
 *
 * Programs wait themselves too: select() on PQsocket for LISTEN/NOTIFY,
 * poll()/ppoll() loops over many connections (pgbench, parallel vacuumdb),
 * pg_dump's leader waiting on its workers' pipes.  awaitlet_io covers one
 * descriptor; this covers a set, with poll()'s contract, so the shim can
 * route a task's own poll/select/ppoll/pselect here (shim/select.c).
 *
 * How: first one zero-timeout poll() of the whole set -- one system call
 * whatever the size of the set.  If anything is ready (or invalid:
 * POLLNVAL) that is the answer, exactly the kernel's, and no watcher is
 * touched: a program polling a busy set in a loop (pgbench) mostly ends
 * here.  Otherwise one ev_io per descriptor is started (on the task's
 * stack for small sets) and the task waits as in awaitlet_sleep -- wait
 * kind W_SLEEP, so the task's timeout timer, cancellation and deadlines
 * work exactly as for a sleep -- until a watcher fires; then the watchers
 * are stopped and a second zero-timeout poll() gives the kernel's own
 * revents (a hang-up is POLLHUP, not "readable").  If that finds nothing
 * (the event was consumed meanwhile, or it was one nobody asked for) the
 * task waits again for the rest of its timeout.
 *
 * Cost of a wait that does suspend: libev registers each descriptor at its
 * next iteration (one epoll_ctl each; a descriptor it still knows from the
 * previous call costs one EEXIST'ed epoll_ctl), and stopping costs nothing.
 * Keeping registrations across calls would save those, but a poll() caller
 * never says when it closed a descriptor, and a registration the kernel
 * dropped silently at close() would make a later poll on a reused number
 * wait forever.  Correctness first; docs/preload.md has the measurements.
 *
 * Descriptors poll() reports as always ready (regular files, most
 * character devices) never reach the watchers: the first look returns
 * them.  Negative descriptors are ignored, as poll() does.
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>

#include "internal.h"

#define POLL_STACK_WATCHERS 16
#define POLL_MAX (1u << 20)

struct pw {
    ev_io io;
    awaitlet_task *t;
};

static int fail(int e)
{
    errno = e;
    return -1;
}

/* The kernel's answer now; a signal notwithstanding. */
static int look(struct pollfd *fds, nfds_t n)
{
    int r;
    do
        r = poll(fds, n, 0);
    while (r < 0 && errno == EINTR);
    return r;
}

static void pw_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    awaitlet_task *t = ((struct pw *)w)->t;
    if (t->state != ST_SUSPENDED || t->wait != W_SLEEP)
        return; /* woken already in this iteration */
    ev_timer_stop(t->ls->loop, &t->timer);
    t->wake = 1;
    awaitlet__wake(t, W_SLEEP);
}

static int ev_events(short events)
{
    int e = 0;
    if (events & (POLLIN | POLLPRI | POLLRDNORM | POLLRDBAND))
        e |= EV_READ;
    if (events & (POLLOUT | POLLWRNORM | POLLWRBAND))
        e |= EV_WRITE;
    /* POLLERR/POLLHUP are reported whatever was asked: wake on readability
     * and let the exact look decide */
    return e ? e : EV_READ;
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int awaitlet_poll(struct pollfd *fds, nfds_t nfds, double timeout)
{
    awaitlet_task *t = awaitlet__cur;
    if (!t || awaitlet__sigdepth)
        return fail(EPERM);
    if ((nfds && !fds) || nfds > POLL_MAX || isnan(timeout))
        return fail(EINVAL);
    int r = awaitlet__interrupt(t);
    if (r)
        return fail(-r);
    r = look(fds, nfds);
    if (r != 0 || timeout == 0)
        return r;

    struct pw here[POLL_STACK_WATCHERS], *pw = here;
    nfds_t nw = 0;
    for (nfds_t i = 0; i < nfds; i++)
        nw += fds[i].fd >= 0;
    if (nw > POLL_STACK_WATCHERS && !(pw = malloc(nw * sizeof *pw)))
        return fail(ENOMEM);

    struct ev_loop *loop = t->ls->loop;
    double until = timeout > 0 ? mono() + timeout : 0;
    /* The task's own io watcher (awaitlet_io's kept registration) stays:
     * on the same fd it makes this watcher's registration free. */
    for (;;) {
        nfds_t k = 0;
        for (nfds_t i = 0; i < nfds; i++) {
            if (fds[i].fd < 0)
                continue;
            ev_io_init(&pw[k].io, pw_cb, fds[i].fd, ev_events(fds[i].events));
            pw[k].t = t;
            ev_io_start(loop, &pw[k].io);
            k++;
        }
        if (timeout > 0) {
            double left = until - mono();
            ev_now_update(loop);
            ev_timer_set(&t->timer, left > 0 ? left : 0, 0.);
            ev_timer_start(loop, &t->timer);
        }
        t->wake = 0;
        t->wait = W_SLEEP;
        awaitlet__suspend(t); /* the one place awaitlet_poll suspends */
        for (nfds_t i = 0; i < k; i++)
            ev_io_stop(loop, &pw[i].io);
        ev_timer_stop(loop, &t->timer);
        r = t->wake;
        if (r < 0) { /* cancelled, deadline, shielded EINTR */
            r = fail(-r);
            break;
        }
        r = look(fds, nfds);
        if (r != 0 || t->wake == 0 || (timeout > 0 && mono() >= until))
            break; /* ready, failed, or the timeout passed (r is 0 then) */
        /* woken for an event that is gone or was not asked for: wait on */
        r = awaitlet__interrupt(t);
        if (r) {
            r = fail(-r);
            break;
        }
    }
    if (pw != here)
        free(pw);
    return r;
}
