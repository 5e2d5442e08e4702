/*
 * fdwait.c -- which tasks are registered on which fd: awaitlet_close, and
 * what an EV_ERROR really means.
 *
 * A task keeps its ev_io armed between equal waits (wait.c), so a close()
 * in between leaves a registration the kernel has silently dropped: the next
 * equal wait would wait for nothing.  awaitlet_close needs to find every
 * task armed on the fd, so each thread keeps an index fd -> tasks whose
 * watcher is armed on it.  It changes only where a registration changes
 * (arming a new fd or events, disarming), never on the equal-wait hot path.
 * Per thread, because a task and its loop belong to one thread; so
 * awaitlet_close sees the calling thread's tasks only.
 *
 * libev reports every failed kernel registration the same way, as EV_ERROR
 * after its next poll: a closed fd, but also an open one epoll refused for
 * lack of memory (ENOMEM) or past fs.epoll.max_user_watches (ENOSPC).
 * Telling them apart costs syscalls, spent only on that error path.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "internal.h"

static AWAITLET__TLS awaitlet_task **heads; /* by fd */
static AWAITLET__TLS int nheads;
static pthread_key_t heads_key;
static pthread_once_t heads_once = PTHREAD_ONCE_INIT;

/* A thread's index goes with the thread. */
static void heads_free(void *unused)
{
    (void)unused;
    free(heads);
    heads = NULL;
    nheads = 0;
}

static void heads_key_init(void)
{
    pthread_key_create(&heads_key, heads_free);
}

static int heads_grow(int fd)
{
    int n = nheads ? nheads : 64;
    while (n <= fd)
        n *= 2;
    awaitlet_task **h = realloc(heads, (size_t)n * sizeof *h);
    if (!h)
        return -1;
    memset(h + nheads, 0, (size_t)(n - nheads) * sizeof *h);
    if (!heads) {
        pthread_once(&heads_once, heads_key_init);
        pthread_setspecific(heads_key, &heads_key); /* any non-NULL value arms it */
    }
    heads = h;
    nheads = n;
    return 0;
}

static void fd_unlink(awaitlet_task *t)
{
    if (!t->fd_linked)
        return;
    if (t->fd_prev)
        t->fd_prev->fd_next = t->fd_next;
    else
        heads[t->fd_slot] = t->fd_next;
    if (t->fd_next)
        t->fd_next->fd_prev = t->fd_prev;
    t->fd_prev = t->fd_next = NULL;
    t->fd_linked = 0;
}

void awaitlet__io_disarm(awaitlet_task *t)
{
    if (ev_is_active(&t->io))
        ev_io_stop(t->ls->loop, &t->io);
    fd_unlink(t);
}

void awaitlet__io_forget(awaitlet_task *t)
{
    fd_unlink(t);
}

int awaitlet__io_arm(awaitlet_task *t, int fd, int events)
{
    awaitlet__io_disarm(t);
    /* libev aborts on an fd epoll refuses with EBADF: check it, but only
     * here, where the kernel registration changes anyway */
    if (fcntl(fd, F_GETFD) < 0)
        return -EBADF;
    if (fd >= nheads && heads_grow(fd) < 0)
        return -ENOMEM;
    t->fd_slot = fd;
    t->fd_prev = NULL;
    t->fd_next = heads[fd];
    if (t->fd_next)
        t->fd_next->fd_prev = t;
    heads[fd] = t;
    t->fd_linked = 1;
    ev_io_set(&t->io, fd, events);
    ev_io_start(t->ls->loop, &t->io);
    /* libev tells the kernel in its next iteration, and reports a refusal
     * only after that iteration's poll: keep the poll from blocking, or a
     * refused registration would surface only at the wait's timeout */
    awaitlet__loop_nudge(t->ls);
    return 0;
}

int awaitlet__io_error(struct ev_loop *loop, int fd, int events)
{
    if (fcntl(fd, F_GETFD) < 0)
        return EBADF;
    int e = ENOMEM; /* select's and poll's only other reason */
    if (ev_backend(loop) == EVBACKEND_EPOLL) {
        /* ask the kernel again, on a set of our own, what it objects to */
        int ep = epoll_create1(EPOLL_CLOEXEC);
        if (ep < 0)
            return errno;
        struct epoll_event ev = {.events = (events & EV_READ ? EPOLLIN : 0u) |
                                           (events & EV_WRITE ? EPOLLOUT : 0u)};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0 && errno != EPERM)
            e = errno;
        close(ep);
    }
    return e;
}

int awaitlet_close(int fd)
{
    if (awaitlet__sigdepth) {
        errno = EPERM;
        return -1;
    }
    if (fd >= 0 && fd < nheads) {
        awaitlet_task *t;
        while ((t = heads[fd])) {
            int waiting = t->state == ST_SUSPENDED && t->wait == W_IO;
            awaitlet__io_disarm(t); /* unlinks it: the head moves on */
            if (waiting) {
                ev_timer_stop(t->ls->loop, &t->timer);
                awaitlet__make_ready(t, -EBADF);
            }
        }
    }
    return close(fd);
}
