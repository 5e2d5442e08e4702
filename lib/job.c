/*
 * job.c -- abandonable offloads: a blocking function on an offload worker
 * that the task may stop waiting for, time out on, or give up.
 *
 * awaitlet_offload_start / _wait / _abandon.  The job lives on the heap,
 * so the task need not stay put: its waits may time out or be
 * interrupted, and it may give the job up.  Who finishes last frees:
 *   - the worker, when fn returns: abandoned -> it runs the cleanup (still
 *     counted as running, so a fork waits for that too) and frees the job;
 *     a task waiting -> posted to the loop like any job (J_DONE); nobody
 *     waiting -> J_READY, held for the next wait or the abandon, and the
 *     worker never touches the loop (which may be gone by then);
 *   - the loop (awaitlet__async_cb), for a posted job: abandoned meanwhile
 *     -> cleanup and free; its waiter still suspended on it -> J_DELIVERED
 *     and resumed; otherwise J_READY;
 *   - the task: a wait that finds it J_READY or is resumed with it
 *     J_DELIVERED collects the result and frees it; an abandon of a J_READY
 *     job runs the cleanup at once.
 * A job is bound to its loop (ls->offloads, the async watcher) only while a
 * task waits on it or it is posted: a wait registers before the worker can
 * see it, and the registration is consumed either by the delivery or, for a
 * wait ended by its timeout or an interruption, by the waiter itself.
 *
 * The worker pool, its lock and the job's layout are offload.c's
 * (offload.h); this file adds the heap job's life cycle on top.
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "internal.h"
#include "offload.h"

/* A posted abandonable job reaches its loop (see the top of the file);
 * called by awaitlet__async_cb (offload.c).  The lock is not needed: a
 * posted job is touched by the loop's thread only. */
void awaitlet__job_deliver(struct awaitlet__job *j)
{
    struct awaitlet_job *hj = (struct awaitlet_job *)j;
    awaitlet_task *t = j->task;
    if (j->abandoned) {
        if (hj->cleanup)
            hj->cleanup(j->arg, j->result);
        free(hj);
    } else if (t && j->in_wait && t->state == ST_SUSPENDED && t->wait == W_JOB) {
        j->state = J_DELIVERED;
        awaitlet__wake(t, W_JOB);
    } else {
        /* its waiter is not waiting now (not yet, or queued to run after a
         * timeout or an interruption: in_wait is still set until it runs,
         * but it is no longer suspended on the job): held for it, its wait
         * finds the job J_READY */
        j->task = NULL;
        j->state = J_READY;
    }
}

/* With the lock held: the job's registered waiter goes (its wait ended, or
 * the job is abandoned).  A posted job keeps the registration until its
 * delivery consumes it. */
static void unregister_locked(struct awaitlet__job *j)
{
    awaitlet__loop *ls = j->ls;
    if (!j->task)
        return;
    j->task = NULL;
    if (j->state != J_DONE) {
        assert(ls->offloads > 0);
        if (--ls->offloads == 0)
            ev_async_stop(ls->loop, &ls->async);
    }
}

awaitlet_job *awaitlet_offload_start(awaitlet_fn fn, void *arg)
{
    awaitlet_task *t = awaitlet__cur;
    if (!fn) {
        errno = EINVAL;
        return NULL;
    }
    if (!t || awaitlet__sigdepth) {
        errno = EPERM;
        return NULL;
    }
    if (awaitlet__offload_atfork_err) {
        errno = awaitlet__offload_atfork_err;
        return NULL;
    }
    struct awaitlet_job *hj = calloc(1, sizeof *hj);
    if (!hj) {
        errno = ENOMEM;
        return NULL;
    }
    struct awaitlet__job *j = &hj->base;
    awaitlet__loop *ls = t->ls;
    j->fn = fn;
    j->arg = arg;
    j->ls = ls;
    j->state = J_NEW;
    j->heap = 1;
    /* The starter is its waiter from the start, as with awaitlet_offload:
     * the result always comes through the loop, so a job finishing before
     * the first wait does not let the task run on unsuspended. */
    if (ls->offloads++ == 0)
        ev_async_start(ls->loop, &ls->async);
    pthread_mutex_lock(&awaitlet__offload_lock);
    j->task = t;
    if (awaitlet__offload_submit_locked(j) < 0) {
        pthread_mutex_unlock(&awaitlet__offload_lock);
        assert(ls->offloads > 0);
        if (--ls->offloads == 0)
            ev_async_stop(ls->loop, &ls->async);
        free(hj);
        errno = EAGAIN;
        return NULL;
    }
    pthread_mutex_unlock(&awaitlet__offload_lock);
    awaitlet__offload_kick();
    return hj;
}

/* Checks shared by wait and abandon: 0, or -1 with errno. */
static int job_check(const struct awaitlet_job *hj)
{
    if (!hj) {
        errno = EINVAL;
        return -1;
    }
    if (awaitlet__sigdepth) {
        errno = EPERM;
        return -1;
    }
    if (!pthread_equal(hj->base.ls->owner, pthread_self())) {
        errno = EXDEV;
        return -1;
    }
    return 0;
}

/* Collect a finished job's result and free it: 1, or -1 with errno for a
 * job that could not run (a fork child without workers). */
static int collect(struct awaitlet_job *hj, void **result)
{
    int err = hj->base.err;
    if (!err && result)
        *result = hj->base.result;
    free(hj);
    if (err) {
        errno = err;
        return -1;
    }
    return 1;
}

int awaitlet_offload_wait(awaitlet_job *hj, double timeout, void **result)
{
    awaitlet_task *t = awaitlet__cur;
    if (job_check(hj) < 0)
        return -1;
    struct awaitlet__job *j = &hj->base;
    if (!t) {
        errno = EPERM;
        return -1;
    }
    if (isnan(timeout)) {
        errno = EINVAL;
        return -1;
    }
    if (t->ls != j->ls) {
        errno = EXDEV;
        return -1;
    }
    awaitlet__loop *ls = j->ls;
    pthread_mutex_lock(&awaitlet__offload_lock);
    if (j->in_wait) {
        pthread_mutex_unlock(&awaitlet__offload_lock);
        errno = EBUSY; /* another task waits on it */
        return -1;
    }
    if (j->state == J_READY) {
        unregister_locked(j);
        pthread_mutex_unlock(&awaitlet__offload_lock);
        return collect(hj, result);
    }
    int r = awaitlet__interrupt(t);
    if (r || timeout == 0) {
        pthread_mutex_unlock(&awaitlet__offload_lock);
        if (!r)
            return 0;
        errno = -r;
        return -1;
    }
    /* Register (unless registered already: by the start, or a posted job
     * still holding an earlier wait's registration) before the worker can
     * look. */
    if (!j->task && j->state != J_DONE && ls->offloads++ == 0)
        ev_async_start(ls->loop, &ls->async);
    j->task = t;
    awaitlet__offload_restart_locked(); /* a fork child: no worker runs it yet */
    pthread_mutex_unlock(&awaitlet__offload_lock);

    awaitlet__disarm_io(t);
    if (timeout > 0) {
        ev_now_update(ls->loop);
        ev_timer_set(&t->timer, timeout, 0.);
        ev_timer_start(ls->loop, &t->timer);
    }
    t->wait = W_JOB;
    j->in_wait = 1;
    /* Suspends until the delivery (deliver_heap), the timeout (timer_cb) or
     * an interruption (wait.c's interrupt_wait) resumes it. */
    awaitlet__suspend(t);
    j->in_wait = 0;
    ev_timer_stop(ls->loop, &t->timer);
    r = t->wake;

    pthread_mutex_lock(&awaitlet__offload_lock);
    if (j->state == J_DELIVERED || j->state == J_READY) {
        /* delivered, or finished and processed while we were queued to run */
        j->task = NULL; /* the delivery consumed the registration */
        pthread_mutex_unlock(&awaitlet__offload_lock);
        return collect(hj, result);
    }
    /* Timed out or interrupted: stay registered while the job is posted
     * (its delivery will consume it), else give the registration up. */
    unregister_locked(j);
    pthread_mutex_unlock(&awaitlet__offload_lock);
    if (r < 0) {
        errno = -r;
        return -1;
    }
    return 0;
}

int awaitlet_offload_abandon(awaitlet_job *hj, void (*cleanup)(void *arg, void *result))
{
    if (job_check(hj) < 0)
        return -1;
    struct awaitlet__job *j = &hj->base;
    pthread_mutex_lock(&awaitlet__offload_lock);
    if (j->in_wait) {
        pthread_mutex_unlock(&awaitlet__offload_lock);
        errno = EBUSY;
        return -1;
    }
    hj->cleanup = cleanup;
    if (j->state == J_DONE) {
        /* posted: the delivery cleans up (and consumes the registration) */
        j->task = NULL;
        j->abandoned = 1;
        pthread_mutex_unlock(&awaitlet__offload_lock);
        return 0;
    }
    unregister_locked(j);
    if (j->state == J_READY) {
        pthread_mutex_unlock(&awaitlet__offload_lock);
        if (cleanup)
            cleanup(j->arg, j->result);
        free(hj);
        return 0;
    }
    /* queued or running: the worker cleans up and never touches the loop */
    j->abandoned = 1;
    pthread_mutex_unlock(&awaitlet__offload_lock);
    return 0;
}
