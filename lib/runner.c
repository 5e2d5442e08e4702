/*
 * runner.c -- many short functions as tasks, at the price of two switches
 * each: awaitlet_runner.
 *
 * PQAWAIT_EV_CALLBACKS runs every libev callback of a program as a task,
 * and nearly all of them never suspend.  awaitlet_async_def for each would
 * cost a task: a struct, a pooled stack, a fresh context, the registry
 * lock twice, a release.  A runner keeps one task parked instead: a call
 * resumes it with the function, the function runs on the runner's stack,
 * and if it returns without suspending the runner parks again -- two
 * switches in all.  If it suspends, the runner's task is given to it for
 * good (detached: released when the function returns) and the next call
 * starts a new runner task.
 *
 * The parked task is an ordinary task of its loop while it exists (it
 * counts in awaitlet_loop_tasks, and awaitlet_loop_close says EBUSY):
 * free the runner before closing the loop.  Functions that ran on the same
 * runner task share it: awaitlet_current() and task-local values are the
 * same between them; cancellation, a deadline and shields are cleared each
 * time it parks, so one function's leave nothing to the next.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

struct awaitlet_runner {
    struct ev_loop *loop;
    awaitlet_options opts;
    awaitlet_task *t;  /* the runner task, parked or running a job; NULL: none */
    int parked;
    int busy;          /* a job is running on it (t may still be NULL: its start) */
    int doomed;        /* freed by its own job: free when the job is over */
    int ended;         /* the doomed runner's task has ended */
    awaitlet_fn fn;    /* the job handed over; NULL at a resume: quit */
    void *arg;
    int *captured;     /* the running job's flag, on the runner's stack */
};

static void *runner_main(void *arg)
{
    awaitlet_runner *r = arg;
    awaitlet_task *self = awaitlet__cur;
    for (;;) {
        awaitlet_fn fn = r->fn;
        void *a = r->arg;
        if (!fn)
            return NULL; /* freed */
        int captured = 0;
        r->fn = NULL;
        r->captured = &captured;
        fn(a); /* may suspend: then the runner gave us up (captured) */
        if (captured)
            return NULL; /* our own task now; r may be gone */
        r->captured = NULL;
        r->busy = 0;
        if (r->doomed) {
            r->ended = 1; /* the call that ran us frees r */
            return NULL;
        }
        /* park: whatever this job did to the task is not the next one's */
        self->cancelled = self->deadline_passed = 0;
        self->intr_told = 0;
        self->shield = 0;
        ev_timer_stop(r->loop, &self->deadline);
        r->parked = 1;
        self->wait = W_NONE;
        awaitlet__suspend(self); /* resumed only by awaitlet_runner_call/free */
    }
}

awaitlet_runner *awaitlet_runner_new(struct ev_loop *loop, const awaitlet_options *opts)
{
    if (!loop || (opts && (opts->detached || opts->on_exit || opts->assert_await_occurs))) {
        errno = EINVAL;
        return NULL;
    }
    awaitlet_runner *r = calloc(1, sizeof *r);
    if (!r) {
        errno = ENOMEM;
        return NULL;
    }
    r->loop = loop;
    if (opts)
        r->opts = *opts;
    r->opts.detached = 1;
    return r;
}

int awaitlet_runner_call(awaitlet_runner *r, awaitlet_fn fn, void *arg)
{
    if (!r || !fn) {
        errno = EINVAL;
        return -1;
    }
    if (awaitlet__sigdepth) {
        errno = EPERM;
        return -1;
    }
    if (r->busy) {
        /* called from inside the runner's own job (a nested loop run):
         * that job keeps the runner; this one gets a task of its own */
        awaitlet_task *t = awaitlet_async_def_opts(r->loop, fn, arg, &r->opts);
        if (!t)
            return -1;
        /* detached: released (a dead handle) if it ended already */
        return awaitlet__valid(t) ? 1 : 0;
    }
    r->fn = fn;
    r->arg = arg;
    r->busy = 1;
    if (r->t) {
        if (awaitlet__check_thread(r->t) < 0) {
            r->busy = 0;
            return -1;
        }
        r->parked = 0;
        awaitlet__resume(r->t);
    } else {
        r->parked = 0;
        r->t = awaitlet_async_def_opts(r->loop, runner_main, r, &r->opts);
        if (!r->t) {
            r->fn = NULL;
            r->busy = 0;
            return -1;
        }
    }
    if (r->parked)
        return 0;
    if (r->ended) { /* fn freed the runner, then ended */
        free(r);
        return 0;
    }
    /* fn suspended: the task is its own from now on (detached) */
    *r->captured = 1;
    r->captured = NULL;
    r->t = NULL;
    r->busy = 0;
    if (r->doomed)
        free(r);
    return 1;
}

void awaitlet_runner_free(awaitlet_runner *r)
{
    if (!r)
        return;
    if (r->busy) {
        r->doomed = 1; /* from inside its own job: when the job is over */
        return;
    }
    if (r->t && r->parked && !awaitlet__sigdepth && awaitlet__check_thread(r->t) == 0) {
        r->fn = NULL; /* quit: runner_main returns, the detached task is released */
        r->parked = 0;
        awaitlet__resume(r->t);
    }
    free(r);
}
