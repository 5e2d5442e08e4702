/*
 * sync_waiters.h -- the tasks test_sync.c and test_sync_misc.c wait with:
 * each waits once (or twice) on a cond or a semaphore and records what the
 * wait returned, its errno and how long it took; wake-ups append the
 * task's id to `order`.  Header-only with static functions, like helpers.h.
 */
#ifndef AWAITLET_TEST_SYNC_WAITERS_H
#define AWAITLET_TEST_SYNC_WAITERS_H

#include "helpers.h"

/* What the tasks record, in the order things happened. */
static int order[64];
static int norder;

struct waiter {
    int id;
    awaitlet_cond *cond;
    awaitlet_sem *sem;
    double timeout;
    int shield;
    int rc, err;        /* the first wait */
    int rc2, err2;      /* a second wait (same object), if `again` */
    int again;
    double elapsed;
    int done;
};

/* One waiter, cond or sem: the first wait, timed, and an optional second. */
static int wait_cond(struct waiter *w)
{
    return awaitlet_cond_wait(w->cond, w->timeout);
}

static int wait_sem(struct waiter *w)
{
    return awaitlet_sem_wait(w->sem, w->timeout);
}

static void *waiter_run(struct waiter *w, int (*wait)(struct waiter *))
{
    if (w->shield)
        awaitlet_shield(1);
    double t0 = t_now();
    errno = 0;
    w->rc = wait(w);
    w->err = errno;
    w->elapsed = t_now() - t0;
    if (w->rc == 1)
        order[norder++] = w->id;
    if (w->again) {
        errno = 0;
        w->rc2 = wait(w);
        w->err2 = errno;
        if (w->rc2 == 1)
            order[norder++] = 100 + w->id;
    }
    if (w->shield)
        awaitlet_shield(0);
    w->done = 1;
    return T_PTR(w->id);
}

static void *cond_waiter(void *arg)
{
    return waiter_run(arg, wait_cond);
}

static void *sem_waiter(void *arg)
{
    return waiter_run(arg, wait_sem);
}

static inline awaitlet_task *start(awaitlet_fn fn, struct waiter *w, int id, double timeout)
{
    w->id = id;
    w->timeout = timeout;
    w->rc = w->rc2 = -5;
    awaitlet_task *t = awaitlet_async_def(t_loop, fn, w);
    ck_assert_ptr_nonnull(t);
    return t;
}

#define ASSERT_RC(rc, err, want_rc, want_err)                                  \
    ck_assert_msg((rc) == (want_rc) && ((want_rc) != -1 || (err) == (want_err)), \
                  #rc ": got %d errno %d (%s), want %d errno %d", (rc), (err),  \
                  strerror(err), (want_rc), (want_err))

static inline void reset_order(void)
{
    norder = 0;
    memset(order, 0, sizeof order);
}

#endif
