/*
 * wait.c -- how a task waits: io, sleep, cancellation, deadlines, shields.
 *
 * Each task owns one ev_io, one ev_timer for timeouts and sleeps, and one
 * ev_timer for its deadline.  The ev_io stays armed between consecutive
 * waits on the same fd and events, so the common "wait readable, read, wait
 * readable again" costs no epoll_ctl; it is stopped (which libev turns into
 * no syscall at all) as soon as the task waits on anything else, so a stale
 * registration can only survive a close() that happens between two equal
 * waits -- the case AWAITLET_FRESH and awaitlet_close (fdwait.c) exist for.
 *
 * Every place a task suspends is one awaitlet__suspend call below (io,
 * sleep, yield), in join.c (join), offload.c or sync.c (cond and semaphore
 * waits, W_SYNC: their timeouts and interruptions end here too, through
 * awaitlet__sync_abort); each first decides (argument checks, pending
 * interruption) and only then arms and suspends.
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <time.h>

#include "internal.h"

_Static_assert(AWAITLET_READ == EV_READ && AWAITLET_WRITE == EV_WRITE,
               "awaitlet.h's event constants must equal libev's");

/* Exported for libpqawait's inline pqawait__slot (awaitlet_key_slot). */
__attribute__((visibility("default"))) AWAITLET__TLS int awaitlet__sigdepth;

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    awaitlet_task *t = w->data;
    if (revents & EV_ERROR)
        awaitlet__io_forget(t); /* libev has stopped the watcher itself */
    if (t->state == ST_SUSPENDED && t->wait == W_READY)
        return; /* yielded: it runs later in this iteration and waits again;
                   level-triggered, so nothing is lost and no epoll_ctl */
    if (t->state != ST_SUSPENDED || t->wait != W_IO) {
        awaitlet__io_disarm(t); /* armed from an earlier wait; nobody listens */
        return;
    }
    if (revents & EV_ERROR)
        t->wake = -awaitlet__io_error(loop, w->fd, w->events & (EV_READ | EV_WRITE));
    else
        t->wake = revents & (EV_READ | EV_WRITE);
    if (ev_is_active(&t->timer)) /* a wait without timeout has none running */
        ev_timer_stop(loop, &t->timer);
    awaitlet__wake(t, W_IO);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    awaitlet_task *t = w->data;
    if (t->state != ST_SUSPENDED || (t->wait != W_IO && t->wait != W_SLEEP && t->wait != W_JOB
                                     && t->wait != W_SYNC))
        return;
    if (t->wait == W_SYNC)
        awaitlet__sync_abort(t); /* timed out: leave the cond/sem queue */
    t->wake = 0;
    awaitlet__wake(t, t->wait);
}

/* 0 when the task may wait; else the -errno its wait must end with. */
int awaitlet__interrupt(awaitlet_task *t)
{
    if (!(t->cancelled | t->deadline_passed))
        return 0;
    if (t->shield) {
        /* once per shield level: a library's inner shield (the shim's, around
         * a libpq call) getting its EINTR leaves the caller's own to come */
        uint32_t bit = 1u << (t->shield <= 32 ? t->shield - 1 : 31);
        if (t->intr_told & bit)
            return 0;
        t->intr_told |= bit;
        return -EINTR;
    }
    return t->cancelled ? -ECANCELED : -ETIMEDOUT;
}

/* Cancellation or the deadline arrived: end the task's current wait, if it
 * is one that may be interrupted.  `direct` when called from a libev
 * callback, where resuming at once is safe. */
static void interrupt_wait(awaitlet_task *t, int direct)
{
    if (t->state != ST_SUSPENDED)
        return; /* running: its next wait sees the flag */
    if (t->wait != W_IO && t->wait != W_SLEEP && t->wait != W_JOIN && t->wait != W_JOB
        && t->wait != W_SYNC)
        return; /* queued already, or offloaded work that cannot be interrupted */
    int r = awaitlet__interrupt(t);
    if (!r)
        return;
    ev_timer_stop(t->ls->loop, &t->timer);
    if (t->wait == W_SYNC)
        awaitlet__sync_abort(t);
    if (t->wait == W_JOIN && t->joining) {
        t->joining->joiner = NULL;
        t->joining = NULL;
    }
    if (direct) {
        t->wake = r;
        awaitlet__wake(t, t->wait);
    } else {
        awaitlet__make_ready(t, r);
    }
}

static void deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    awaitlet_task *t = w->data;
    t->deadline_passed = 1;
    interrupt_wait(t, 1);
}

void awaitlet__task_watchers_init(awaitlet_task *t)
{
    ev_init(&t->io, io_cb);
    ev_init(&t->timer, timer_cb);
    ev_init(&t->deadline, deadline_cb);
    t->io.data = t->timer.data = t->deadline.data = t;
}

void awaitlet__task_watchers_stop(awaitlet_task *t)
{
    struct ev_loop *loop = t->ls->loop;
    awaitlet__io_disarm(t);
    ev_timer_stop(loop, &t->timer);
    ev_timer_stop(loop, &t->deadline);
    if (t->sync) /* reclaimed while in (or just woken from) a cond/sem wait */
        awaitlet__sync_abort(t);
}

void awaitlet__disarm_io(awaitlet_task *t)
{
    awaitlet__io_disarm(t);
}

static int fail(int r)
{
    errno = -r;
    return -1;
}

/* timeout 0: look without waiting (one poll syscall, no switch).  A signal
 * arriving during the call interrupts even a zero-timeout ppoll; the
 * contract has no EINTR for that, so look again. */
static int io_now(int fd, int events)
{
    struct pollfd p = { .fd = fd, .events = (short)((events & EV_READ ? POLLIN : 0) |
                                                    (events & EV_WRITE ? POLLOUT : 0)) };
    static const struct timespec zero;
    while (ppoll(&p, 1, &zero, NULL) < 0)
        if (errno != EINTR)
            return -1;
    if (p.revents & POLLNVAL)
        return fail(-EBADF);
    int ready = 0;
    if (p.revents & (POLLIN | POLLERR | POLLHUP))
        ready |= EV_READ;
    if (p.revents & (POLLOUT | POLLERR | POLLHUP))
        ready |= EV_WRITE;
    return ready & events;
}

int awaitlet_io(int fd, int events, double timeout)
{
    awaitlet_task *t = awaitlet__cur;
    if (!t || awaitlet__sigdepth)
        return fail(-EPERM);
    int fresh = events & AWAITLET_FRESH;
    events &= ~AWAITLET_FRESH;
    if (fd < 0 || !(events & (EV_READ | EV_WRITE)) || (events & ~(EV_READ | EV_WRITE)) ||
        isnan(timeout))
        return fail(-EINVAL);
    int r = awaitlet__interrupt(t);
    if (r)
        return fail(r);
    if (timeout == 0)
        return io_now(fd, events);

    struct ev_loop *loop = t->ls->loop;
    ev_io *w = &t->io;
    if (fresh || !ev_is_active(w) || w->fd != fd || (w->events & (EV_READ | EV_WRITE)) != events) {
        r = awaitlet__io_arm(t, fd, events);
        if (r)
            return fail(r);
    }
    if (timeout > 0) {
        ev_now_update(loop); /* the loop's clock went stale while tasks ran */
        ev_timer_set(&t->timer, timeout, 0.);
        ev_timer_start(loop, &t->timer);
    }
    t->wait = W_IO;
    awaitlet__suspend(t);
    r = t->wake;
    return r < 0 ? fail(r) : r;
}

int awaitlet_sleep(double seconds)
{
    awaitlet_task *t = awaitlet__cur;
    if (!t || awaitlet__sigdepth)
        return fail(-EPERM);
    if (isnan(seconds))
        return fail(-EINVAL);
    int r = awaitlet__interrupt(t);
    if (r)
        return fail(r);
    awaitlet__disarm_io(t);
    if (seconds <= 0) {
        awaitlet__make_ready(t, 0);
        awaitlet__suspend(t);
        r = t->wake;
        if (r == 0)
            r = awaitlet__interrupt(t); /* cancelled while queued */
    } else {
        struct ev_loop *loop = t->ls->loop;
        ev_now_update(loop);
        ev_timer_set(&t->timer, seconds, 0.);
        ev_timer_start(loop, &t->timer);
        t->wait = W_SLEEP;
        awaitlet__suspend(t);
        r = t->wake;
    }
    return r < 0 ? fail(r) : 0;
}

int awaitlet_yield(void)
{
    awaitlet_task *t = awaitlet__cur;
    if (!t || awaitlet__sigdepth)
        return fail(-EPERM);
    awaitlet__make_ready(t, 0);
    awaitlet__suspend(t);
    return 0;
}

/* Not instrumented by ThreadSanitizer: a handler may run on a thread TSan
 * has not set up yet (a signal landing on a just-created thread), where an
 * instrumented function crashes in __tsan_func_entry.  They touch only the
 * thread's own counter. */
#if defined(__SANITIZE_THREAD__)
#define NO_TSAN __attribute__((no_sanitize_thread))
#else
#define NO_TSAN
#endif

NO_TSAN void awaitlet_signal_enter(void)
{
    awaitlet__sigdepth++;
}

NO_TSAN void awaitlet_signal_leave(void)
{
    if (awaitlet__sigdepth > 0)
        awaitlet__sigdepth--;
}

int awaitlet_in_signal_handler(void)
{
    return awaitlet__sigdepth > 0;
}

int awaitlet_cancel(awaitlet_task *t)
{
    if (awaitlet__sigdepth)
        return fail(-EPERM);
    if (awaitlet__check_thread(t) < 0)
        return -1;
    if (t->state == ST_DONE || t->state == ST_EXITING)
        return fail(-ESRCH);
    t->cancelled = 1;
    interrupt_wait(t, 0);
    return 0;
}

int awaitlet_set_deadline(awaitlet_task *t, double seconds)
{
    if (awaitlet__sigdepth)
        return fail(-EPERM);
    if (awaitlet__check_thread(t) < 0)
        return -1;
    if (isnan(seconds))
        return fail(-EINVAL);
    if (t->state == ST_DONE || t->state == ST_EXITING)
        return fail(-ESRCH);
    struct ev_loop *loop = t->ls->loop;
    ev_timer_stop(loop, &t->deadline);
    /* the new deadline (or none) replaces the old one, passed or not; a
     * shielded task is owed a new EINTR when the new one passes */
    t->deadline_passed = 0;
    if (!t->cancelled)
        t->intr_told = 0;
    if (seconds <= 0)
        return 0;
    ev_now_update(loop);
    ev_timer_set(&t->deadline, seconds, 0.);
    ev_timer_start(loop, &t->deadline);
    return 0;
}

/* shim/scope.h's pqawait__shield_on/off do the same inline (through
 * awaitlet__shield_offset): a change here is a change there. */
int awaitlet_shield(int on)
{
    awaitlet_task *t = awaitlet__cur;
    if (!t)
        return fail(-EPERM);
    if (on)
        return ++t->shield;
    if (t->shield == 0)
        return fail(-EINVAL);
    if (t->shield <= 32)
        t->intr_told &= ~(1u << (t->shield - 1)); /* the level being lifted */
    return --t->shield;
}

int awaitlet_interrupted(void)
{
    awaitlet_task *t = awaitlet__cur;
    return t && (t->cancelled | t->deadline_passed);
}

int awaitlet_interruption(void)
{
    awaitlet_task *t = awaitlet__cur;
    if (!t || !(t->cancelled | t->deadline_passed))
        return 0;
    return t->cancelled ? ECANCELED : ETIMEDOUT; /* the order awaitlet__interrupt reports */
}
