/*
 * join.c -- waiting for a task's end and collecting its result: joins from
 * inside a task (suspending the joiner) and from outside one (running the
 * loop), awaitlet_run, and detaching.  (Moved out of task.c, which keeps
 * the switch and the end step that wakes a joiner or breaks a top-level
 * join's loop.)
 */
#include <errno.h>

#include "internal.h"

/* ---- join and detach ----------------------------------------------------- */

/* The result of an ended task, releasing it: 0, or -ENOMSG. */
static int collect(awaitlet_task *t, void **result)
{
    void *r = t->result;
    int never = t->assert_await && !t->suspended_once;
    awaitlet__release(t);
    if (never)
        return -ENOMSG;
    if (result)
        *result = r;
    return 0;
}

/* Inside a task: wait for t's end.  Decides first (every refusal before
 * anything changes), then suspends -- the one place a join suspends; woken
 * by t's end step (wake 0) or by an interruption (interrupt_wait, -errno). */
static int join_inside(awaitlet_task *self, awaitlet_task *t)
{
    if (self->ls != t->ls)
        return -EXDEV;
    for (awaitlet_task *x = t; x; x = x->joining)
        if (x == self) /* t waits, through joins, for us */
            return -EDEADLK;
    int r = awaitlet__interrupt(self);
    if (r)
        return r;
    awaitlet__disarm_io(self);
    t->joiner = self;
    self->joining = t;
    self->wait = W_JOIN;
    awaitlet__suspend(self);
    r = self->wake;
    if (r < 0) {
        if (t->joiner == self)
            t->joiner = NULL;
        self->joining = NULL;
    }
    return r;
}

/* Outside a task: run the loop until t ends.  Meanwhile t counts as joined
 * (outer_join), so nobody else may join or detach it.  Called at the top
 * (not from inside a callback of this loop: ev_depth 0), the loop runs
 * until t's end breaks it (task_end; OUTER_JOIN_TOP): an iteration costs
 * nothing here, where one ev_run(EVRUN_ONCE) per iteration cost an ev_run
 * entry and exit each (awaitlet_run's whole program pays it).  From inside
 * a callback, one iteration at a time as before. */
static int join_outside(awaitlet_task *t)
{
    if (t->state == ST_EXITING)
        return -EDEADLK; /* from t's own on_exit: t ends after it returns */
    if (awaitlet__cbdepth)
        return -EPERM; /* a runtime callback may not run the loop */
    awaitlet__loop *ls = t->ls;
    struct ev_loop *loop = ls->loop;
    int top = ev_depth(loop) == 0;
    int r = 0;
    t->outer_join = top ? OUTER_JOIN_TOP : OUTER_JOIN_STEP;
    while (t->state != ST_DONE) {
        /* ev_run reports whether any watcher is still active: none, and
         * nothing queued, means nothing can ever end the task */
        if (!ev_run(loop, top ? 0 : EVRUN_ONCE) && t->state != ST_DONE && !ls->ready_head) {
            r = -EDEADLK;
            break;
        }
    }
    if (top && ev_is_active(&ls->join_break)) { /* not needed after all */
        ev_ref(loop);
        ev_prepare_stop(loop, &ls->join_break);
    }
    t->outer_join = 0;
    return r;
}

/* 0 with t released and *result set, or -errno; t is released on success
 * and on -ENOMSG only. */
static int join_core(awaitlet_task *t, void **result)
{
    awaitlet_task *self = awaitlet__cur;
    if (awaitlet__sigdepth)
        return -EPERM;
    if (awaitlet__check_thread(t) < 0)
        return -errno;
    if (t->detached || t->joiner || t->outer_join)
        return -EINVAL;
    if (t == self)
        return -EDEADLK;
    if (t->state != ST_DONE) {
        int r = self ? join_inside(self, t) : join_outside(t);
        if (r < 0)
            return r;
    }
    return collect(t, result);
}

int awaitlet_join_ex(awaitlet_task *t, void **result)
{
    int saved = errno; /* other tasks ran meanwhile and left theirs */
    int r = join_core(t, result);
    errno = r ? -r : saved;
    return r ? -1 : 0;
}

void *awaitlet_join(awaitlet_task *t)
{
    void *res = NULL;
    return awaitlet_join_ex(t, &res) == 0 ? res : NULL;
}

int awaitlet_run_ex(struct ev_loop *loop, awaitlet_fn fn, void *arg, void **result)
{
    int saved = errno;
    awaitlet_task *self = awaitlet__cur;
    int r = 0;
    /* refuse before starting anything a join could not wait for */
    if (awaitlet__sigdepth)
        r = -EPERM;
    else if (!loop || !fn)
        r = -EINVAL;
    else if (self && self->ls->loop != loop)
        r = -EXDEV;
    else if (self)
        r = awaitlet__interrupt(self);
    else if (awaitlet__cbdepth)
        r = -EPERM;
    if (r) {
        errno = -r;
        return -1;
    }
    awaitlet_task *t = awaitlet_async_def(loop, fn, arg);
    if (!t)
        return -1;
    r = join_core(t, result);
    if (r == 0) {
        errno = saved;
        return 0;
    }
    if (r != -ENOMSG) {
        /* the caller stops waiting; nobody else holds the handle, so the
         * task is wound down and released when it ends */
        if (!awaitlet_done(t))
            awaitlet_cancel(t);
        awaitlet_detach(t);
    }
    errno = -r;
    return -1;
}

void *awaitlet_run(struct ev_loop *loop, awaitlet_fn fn, void *arg)
{
    void *res = NULL;
    return awaitlet_run_ex(loop, fn, arg, &res) == 0 ? res : NULL;
}

int awaitlet_detach(awaitlet_task *t)
{
    if (awaitlet__sigdepth) {
        errno = EPERM;
        return -1;
    }
    if (awaitlet__check_thread(t) < 0)
        return -1;
    if (t->detached || t->joiner || t->outer_join) {
        errno = EINVAL;
        return -1;
    }
    t->detached = 1;
    if (t->state == ST_DONE) /* ST_EXITING: its end step releases it */
        awaitlet__release(t);
    return 0;
}

