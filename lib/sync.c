/*
 * sync.c -- conditions and counting semaphores between tasks.
 *
 * A pool of connections, a bounded queue, "wait until the others are done":
 * tasks need to wait for each other, not only for file descriptors.  Both
 * objects are one FIFO of waiters; a waiter's node lives in its own frame
 * (the task stays suspended while it is linked), and the task points at it
 * (t->sync) so that the runtime's other wakers -- its timeout timer, a
 * cancel, its deadline, a reclaim -- can take it out again
 * (awaitlet__sync_abort, called from wait.c).
 *
 * Who wakes a W_SYNC wait, and with what (t->wake):
 *   1        the object: signal, broadcast or post.  The node leaves the
 *            queue at once and the task goes on the ready list; until it
 *            runs it counts in `inflight` and may still lose the wake-up to
 *            an interruption (then it passes it on, below).
 *   0        its timeout timer (wait.c's timer_cb; resumed directly).
 *   -errno   an interruption (wait.c's interrupt_wait).
 * The last two leave the queue through awaitlet__sync_abort first.
 *
 * Passing a wake-up on: between being woken and running, a task may be
 * cancelled or pass its deadline (interrupt_wait ignores tasks already on
 * the ready list).  It must not take what it was given -- a semaphore's
 * permit, a condition's single signal -- so when it runs it first checks
 * for an interruption and, if there is one, gives the permit back (post:
 * to the next waiter or the count) or signals the next waiter, and fails.
 * A broadcast woke everybody, so nothing is passed on for it.
 *
 * The only suspension is the awaitlet__suspend in sync_wait; it decides
 * everything (arguments, thread, pending interruption, a free permit)
 * before it links the node and suspends.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include "internal.h"

#define COND_MAGIC 0x636f6e64u /* "cond" */
#define SEM_MAGIC  0x73656d61u /* "sema" */

struct awaitlet__syncnode {
    awaitlet_task *task;
    struct awaitlet__syncnode *prev, *next;
    struct sync_obj *obj;
    int by_signal;  /* woken by a signal or a permit (passed on if unused) */
    int linked;     /* in obj's queue */
};

struct sync_obj {
    uint32_t magic;
    int owned;                        /* owner is set */
    pthread_t owner;
    unsigned value;                   /* semaphore permits */
    unsigned inflight;                /* woken waiters that have not run yet */
    unsigned nwaiters;
    struct awaitlet__syncnode *head, *tail;
};

_Static_assert(sizeof(struct sync_obj) <= sizeof(awaitlet_cond), "awaitlet_cond too small");
_Static_assert(sizeof(struct sync_obj) <= sizeof(awaitlet_sem), "awaitlet_sem too small");
_Static_assert(_Alignof(struct sync_obj) <= _Alignof(awaitlet_cond), "awaitlet_cond misaligned");

static int fail(int e)
{
    errno = e;
    return -1;
}

/* The object behind a public pointer, checked: 0, or an errno.  Binds an
 * unowned object to the calling thread. */
static int obj_get(const void *p, uint32_t magic, struct sync_obj **out)
{
    struct sync_obj *o = (struct sync_obj *)p;
    if (!o || o->magic != magic)
        return EINVAL;
    pthread_t self = pthread_self();
    if (!o->owned) {
        o->owner = self;
        o->owned = 1;
    } else if (!pthread_equal(o->owner, self)) {
        return EXDEV;
    }
    *out = o;
    return 0;
}

static void obj_init(struct sync_obj *o, uint32_t magic, unsigned value)
{
    *o = (struct sync_obj){ .magic = magic, .value = value };
}

static void unlink_node(struct sync_obj *o, struct awaitlet__syncnode *n)
{
    assert(n->linked && o->nwaiters > 0);
    if (n->prev)
        n->prev->next = n->next;
    else
        o->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        o->tail = n->prev;
    n->prev = n->next = NULL;
    n->linked = 0;
    o->nwaiters--;
}

/* Wake the longest waiter with `by_signal`; 1 if there was one. */
static int wake_first(struct sync_obj *o, int by_signal)
{
    struct awaitlet__syncnode *n = o->head;
    if (!n)
        return 0;
    unlink_node(o, n);
    n->by_signal = by_signal;
    o->inflight++;
    awaitlet_task *t = n->task;
    ev_timer_stop(t->ls->loop, &t->timer); /* a later wait must not see it fire */
    awaitlet__make_ready(t, 1);
    return 1;
}

/* Hand one permit on: to the longest waiter, else to the count. */
static int sem_give(struct sync_obj *o)
{
    if (wake_first(o, 1))
        return 0;
    if (o->value == UINT_MAX)
        return EOVERFLOW;
    o->value++;
    return 0;
}

void awaitlet__sync_abort(awaitlet_task *t)
{
    struct awaitlet__syncnode *n = t->sync;
    if (!n)
        return;
    struct sync_obj *o = n->obj;
    if (n->linked) {
        unlink_node(o, n);
    } else {
        /* woken and never run: its loop is being destroyed (reclaim).  Wake
         * nobody from inside the destruction; a permit goes back to the
         * count, a signal is dropped (its waiters die with the loop too). */
        assert(o->inflight > 0);
        o->inflight--;
        if (n->by_signal && o->magic == SEM_MAGIC && o->value < UINT_MAX)
            o->value++;
    }
    t->sync = NULL;
}

/* The one place a cond or semaphore wait suspends.  Returns 1 (woken by the
 * object and kept it), 0 (timeout), or -errno. */
static int sync_wait(struct sync_obj *o, awaitlet_task *t, double timeout)
{
    struct awaitlet__syncnode n = { .task = t, .obj = o, .linked = 1 };
    awaitlet__disarm_io(t);
    n.prev = o->tail;
    if (o->tail)
        o->tail->next = &n;
    else
        o->head = &n;
    o->tail = &n;
    o->nwaiters++;
    t->sync = &n;
    if (timeout > 0) {
        struct ev_loop *loop = t->ls->loop;
        ev_now_update(loop); /* the loop's clock went stale while tasks ran */
        ev_timer_set(&t->timer, timeout, 0.);
        ev_timer_start(loop, &t->timer);
    }
    t->wait = W_SYNC;
    awaitlet__suspend(t);
    int r = t->wake;
    if (r != 1) {
        assert(!n.linked && t->sync == NULL); /* awaitlet__sync_abort did it */
        return r;
    }
    t->sync = NULL;
    assert(o->inflight > 0);
    o->inflight--;
    int ir = awaitlet__interrupt(t);
    if (ir) {
        /* woken, then cancelled (or past its deadline) before it ran: what
         * it was given goes to somebody who can use it */
        if (n.by_signal) {
            if (o->magic == SEM_MAGIC)
                (void)sem_give(o);
            else
                (void)wake_first(o, 1);
        }
        return ir;
    }
    return 1;
}

/* Checks shared by both waits: 0 when the task may go on, else -errno. */
static int wait_checks(const void *p, uint32_t magic, double timeout, awaitlet_task **tp,
                       struct sync_obj **op)
{
    awaitlet_task *t = awaitlet__cur;
    if (!t || awaitlet__sigdepth)
        return -EPERM;
    if (isnan(timeout))
        return -EINVAL;
    int e = obj_get(p, magic, op);
    if (e)
        return -e;
    *tp = t;
    return awaitlet__interrupt(t);
}

/* ---- conditions ------------------------------------------------------------ */

int awaitlet_cond_init(awaitlet_cond *c)
{
    if (!c)
        return fail(EINVAL);
    obj_init((struct sync_obj *)c, COND_MAGIC, 0);
    return 0;
}

int awaitlet_cond_wait(awaitlet_cond *c, double timeout)
{
    awaitlet_task *t;
    struct sync_obj *o;
    int r = wait_checks(c, COND_MAGIC, timeout, &t, &o);
    if (r)
        return fail(-r);
    if (timeout == 0)
        return 0;
    r = sync_wait(o, t, timeout);
    return r < 0 ? fail(-r) : r;
}

static int cond_wake(awaitlet_cond *c, int all)
{
    if (awaitlet__sigdepth)
        return fail(EPERM);
    struct sync_obj *o;
    int e = obj_get(c, COND_MAGIC, &o);
    if (e)
        return fail(e);
    if (!all)
        return wake_first(o, 1);
    /* only those waiting now: a woken task that waits again queues anew, but
     * it runs only after this returns */
    int n = 0;
    while (wake_first(o, 0))
        n++;
    return n;
}

int awaitlet_cond_signal(awaitlet_cond *c)
{
    return cond_wake(c, 0);
}

int awaitlet_cond_broadcast(awaitlet_cond *c)
{
    return cond_wake(c, 1);
}

static int obj_destroy(void *p, uint32_t magic)
{
    if (awaitlet__sigdepth)
        return fail(EPERM);
    struct sync_obj *o;
    int e = obj_get(p, magic, &o);
    if (e)
        return fail(e);
    if (o->nwaiters || o->inflight)
        return fail(EBUSY);
    o->magic = 0;
    return 0;
}

int awaitlet_cond_destroy(awaitlet_cond *c)
{
    return obj_destroy(c, COND_MAGIC);
}

/* ---- semaphores ------------------------------------------------------------ */

int awaitlet_sem_init(awaitlet_sem *s, unsigned value)
{
    if (!s)
        return fail(EINVAL);
    obj_init((struct sync_obj *)s, SEM_MAGIC, value);
    return 0;
}

int awaitlet_sem_wait(awaitlet_sem *s, double timeout)
{
    awaitlet_task *t;
    struct sync_obj *o;
    int r = wait_checks(s, SEM_MAGIC, timeout, &t, &o);
    if (r)
        return fail(-r);
    if (o->value > 0 && !o->head) { /* never past a waiter */
        o->value--;
        return 1;
    }
    if (timeout == 0)
        return 0;
    r = sync_wait(o, t, timeout);
    return r < 0 ? fail(-r) : r;
}

int awaitlet_sem_trywait(awaitlet_sem *s)
{
    if (awaitlet__sigdepth)
        return fail(EPERM);
    struct sync_obj *o;
    int e = obj_get(s, SEM_MAGIC, &o);
    if (e)
        return fail(e);
    if (o->value == 0 || o->head)
        return 0;
    o->value--;
    return 1;
}

int awaitlet_sem_post(awaitlet_sem *s)
{
    if (awaitlet__sigdepth)
        return fail(EPERM);
    struct sync_obj *o;
    int e = obj_get(s, SEM_MAGIC, &o);
    if (e)
        return fail(e);
    e = sem_give(o);
    return e ? fail(e) : 0;
}

unsigned awaitlet_sem_value(const awaitlet_sem *s)
{
    const struct sync_obj *o = (const struct sync_obj *)s;
    if (!o || o->magic != SEM_MAGIC)
        return 0;
    return __atomic_load_n(&o->value, __ATOMIC_RELAXED);
}

int awaitlet_sem_destroy(awaitlet_sem *s)
{
    return obj_destroy(s, SEM_MAGIC);
}
