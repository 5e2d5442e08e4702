/*
 * loop.c -- the runtime's state per libev loop: binding to a thread, the
 * ready list, closing, walking, destruction and fork.
 *
 * libev gives a loop no user pointer, so the state is found by the loop's
 * address in a process-wide list.  An address outlives its loop: the state
 * must go when the loop goes, or the next loop malloc puts there inherits
 * its tasks and watchers.  awaitlet_loop_close frees it explicitly; for a
 * plain ev_loop_destroy an ev_cleanup watcher (which libev runs just before
 * it destroys a loop, and which keeps no reference on the loop) does.
 *
 * A loop is bound to the first thread that starts a task on it, until
 * awaitlet_loop_close: a task and its watchers must only ever be touched by
 * one thread, and "it has no tasks right now" is no proof that no other
 * thread is running the loop.  After fork() the child has one thread, which
 * takes every loop over; libev must be told (ev_loop_fork), or the child's
 * epoll calls would change the parent's kernel set.
 *
 * Locking: loops_lock guards the list and each state's link in it; a
 * state's contents belong to its owner thread, except ntasks (atomic, read
 * by awaitlet_loop_tasks from any thread) and the offload completion list
 * (guarded by the offload pool's own lock, offload.c, which also handles
 * its own state across fork).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

static void join_break_cb(struct ev_loop *loop, ev_prepare *w, int revents);

static awaitlet__loop *loops;
static pthread_mutex_t loops_lock = PTHREAD_MUTEX_INITIALIZER;
/* Bumped whenever a state is freed: a thread's cached lookup is valid only
 * while the generation it saw is current. */
static unsigned long loops_gen;
static AWAITLET__TLS awaitlet__loop *last_ls;
static AWAITLET__TLS unsigned long last_gen;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

AWAITLET__TLS int awaitlet__cbdepth;

static void ready_cb(struct ev_loop *loop, ev_check *w, int revents);
static void cleanup_cb(struct ev_loop *loop, ev_cleanup *w, int revents);

static void idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)loop, (void)w, (void)revents; /* its being active is the point */
}

/* ---- fork ------------------------------------------------------------------ */

/* Every lock a forking thread could find held by a thread that does not
 * exist in the child: taken before fork, released on both sides after. */
static void fork_prepare(void)
{
    pthread_mutex_lock(&loops_lock);
    awaitlet__registry_lock();
}

static void fork_parent(void)
{
    awaitlet__registry_unlock();
    pthread_mutex_unlock(&loops_lock);
}

static void fork_child(void)
{
    pthread_t self = pthread_self();
    awaitlet__registry_unlock();
    for (awaitlet__loop *ls = loops; ls; ls = ls->next) {
        ev_loop_fork(ls->loop); /* a flag: the next ev_run rebuilds the kernel state */
        ls->owner = self;
    }
    pthread_mutex_unlock(&loops_lock);
}

static void atfork_init(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* ---- lookup ---------------------------------------------------------------- */

static awaitlet__loop *find_locked(struct ev_loop *loop)
{
    for (awaitlet__loop *ls = loops; ls; ls = ls->next)
        if (ls->loop == loop)
            return ls;
    return NULL;
}

static void unlink_locked(awaitlet__loop *ls)
{
    for (awaitlet__loop **p = &loops; *p; p = &(*p)->next)
        if (*p == ls) {
            *p = ls->next;
            break;
        }
    __atomic_store_n(&loops_gen, loops_gen + 1, __ATOMIC_RELAXED);
}

awaitlet__loop *awaitlet__loop_get(struct ev_loop *loop)
{
    awaitlet__loop *ls = last_ls;
    if (ls && last_gen == __atomic_load_n(&loops_gen, __ATOMIC_RELAXED) && ls->loop == loop)
        return ls; /* cached only while this thread owns it */
    pthread_once(&atfork_once, atfork_init);
    pthread_mutex_lock(&loops_lock);
    ls = find_locked(loop);
    if (!ls) {
        ls = calloc(1, sizeof *ls);
        if (!ls) {
            pthread_mutex_unlock(&loops_lock);
            errno = ENOMEM;
            return NULL;
        }
        ls->loop = loop;
        ls->owner = pthread_self();
        ev_check_init(&ls->check, ready_cb);
        ev_set_priority(&ls->check, EV_MINPRI);
        ev_idle_init(&ls->idle, idle_cb);
        ev_cleanup_init(&ls->cleanup, cleanup_cb);
        ev_async_init(&ls->async, awaitlet__async_cb);
        ev_prepare_init(&ls->join_break, join_break_cb);
        ls->check.data = ls->idle.data = ls->cleanup.data = ls->async.data = ls;
        ev_cleanup_start(loop, &ls->cleanup); /* holds no reference on the loop */
        ls->next = loops;
        loops = ls;
    } else if (!pthread_equal(ls->owner, pthread_self())) {
        pthread_mutex_unlock(&loops_lock);
        errno = EXDEV;
        return NULL;
    }
    last_ls = ls;
    last_gen = loops_gen;
    pthread_mutex_unlock(&loops_lock);
    return ls;
}

/* The state of loop if this thread owns it: 0 with *out (NULL for a loop
 * the runtime does not know), or -errno. */
static int find_own(struct ev_loop *loop, awaitlet__loop **out)
{
    if (awaitlet__sigdepth)
        return -EPERM;
    if (!loop)
        return -EINVAL;
    pthread_mutex_lock(&loops_lock);
    awaitlet__loop *ls = find_locked(loop);
    int bad = ls && !pthread_equal(ls->owner, pthread_self());
    pthread_mutex_unlock(&loops_lock);
    if (bad)
        return -EXDEV;
    *out = ls;
    return 0;
}

/* Stop what the state has on its loop and free it (already unlinked). */
static void free_state(awaitlet__loop *ls)
{
    struct ev_loop *loop = ls->loop;
    ev_check_stop(loop, &ls->check);
    ev_idle_stop(loop, &ls->idle);
    ev_async_stop(loop, &ls->async);
    if (ev_is_active(&ls->join_break)) {
        ev_ref(loop);
        ev_prepare_stop(loop, &ls->join_break);
    }
    ev_cleanup_stop(loop, &ls->cleanup);
    if (last_ls == ls)
        last_ls = NULL;
    free(ls);
}

/* ---- the loop's tasks ------------------------------------------------------ */

void awaitlet__loop_link(awaitlet__loop *ls, awaitlet_task *t)
{
    t->loop_prev = NULL;
    t->loop_next = ls->tasks;
    if (ls->tasks)
        ls->tasks->loop_prev = t;
    ls->tasks = t;
    __atomic_store_n(&ls->ntasks, ls->ntasks + 1, __ATOMIC_RELAXED);
}

void awaitlet__loop_unlink(awaitlet__loop *ls, awaitlet_task *t)
{
    if (ls->walk_next == t)
        ls->walk_next = t->loop_next;
    if (t->loop_prev)
        t->loop_prev->loop_next = t->loop_next;
    else
        ls->tasks = t->loop_next;
    if (t->loop_next)
        t->loop_next->loop_prev = t->loop_prev;
    assert(ls->ntasks > 0);
    __atomic_store_n(&ls->ntasks, ls->ntasks - 1, __ATOMIC_RELAXED);
    if (ls->orphaned && ls->ntasks == 0) { /* its loop is gone: only we knew it */
            if (last_ls == ls)
            last_ls = NULL;
        free(ls);
    }
}

unsigned awaitlet_loop_tasks(struct ev_loop *loop)
{
    unsigned n = 0;
    pthread_mutex_lock(&loops_lock);
    awaitlet__loop *ls = find_locked(loop);
    if (ls)
        n = __atomic_load_n(&ls->ntasks, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&loops_lock);
    return n;
}

/* A top-level join's task ended inside a nested ev_run (task.c,
 * task_end): break when the join's own ev_run (depth 1) is about to poll. */
static void join_break_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    if (ev_depth(loop) != 1)
        return; /* still inside the nested one; prepares never keep a poll from blocking */
    ev_ref(loop); /* undoes task_end's ev_unref */
    ev_prepare_stop(loop, w);
    ev_break(loop, EVBREAK_ONE);
}

/* ---- ready list -------------------------------------------------------------- */

void awaitlet__loop_nudge(awaitlet__loop *ls)
{
    if (!ev_is_active(&ls->check) && !ls->orphaned) {
        ev_check_start(ls->loop, &ls->check);
        ev_idle_start(ls->loop, &ls->idle);
    }
}

void awaitlet__make_ready(awaitlet_task *t, int wake)
{
    awaitlet__loop *ls = t->ls;
    assert(t->magic == AWAITLET__MAGIC);
    /* the running task queueing itself (a yield), or a waiting one being
     * woken; never a task already queued: that would make a cycle */
    assert(t->state == ST_RUNNING || (t->state == ST_SUSPENDED && t->wait != W_READY));
    t->wake = wake;
    t->wait = W_READY;
    t->ready_next = NULL;
    if (ls->ready_tail)
        ls->ready_tail->ready_next = t;
    else
        ls->ready_head = t;
    ls->ready_tail = t;
    awaitlet__loop_nudge(ls);
}

/* Runs the tasks that were ready when it started, after every other watcher
 * that was ready in this iteration (the check watcher has the lowest
 * priority): a yield lets everything else run first.  Tasks made ready
 * meanwhile wait for the next iteration, whose poll the idle watcher keeps
 * from blocking, so a task yielding in a loop cannot starve the loop. */
static void ready_cb(struct ev_loop *loop, ev_check *w, int revents)
{
    (void)revents;
    awaitlet__loop *ls = w->data;
    awaitlet_task *t = ls->ready_head;
    ls->ready_head = ls->ready_tail = NULL;
    while (t) {
        awaitlet_task *next = t->ready_next;
        t->ready_next = NULL;
        awaitlet__wake(t, W_READY);
        t = next;
    }
    if (!ls->ready_head) {
        ev_check_stop(loop, w);
        ev_idle_stop(loop, &ls->idle);
    }
}

/* ---- close, walk, cancel_all --------------------------------------------------- */

int awaitlet_loop_close(struct ev_loop *loop)
{
    awaitlet__loop *ls;
    int r = find_own(loop, &ls);
    if (r < 0) {
        errno = -r;
        return -1;
    }
    if (!ls)
        return 0;
    /* only the owner gets here, so nothing else can add tasks meanwhile */
    if (__atomic_load_n(&ls->ntasks, __ATOMIC_RELAXED) || ls->walking) {
        errno = EBUSY;
        return -1;
    }
    pthread_mutex_lock(&loops_lock);
    unlink_locked(ls);
    pthread_mutex_unlock(&loops_lock);
    free_state(ls);
    return 0;
}

int awaitlet_loop_walk(struct ev_loop *loop, int (*cb)(awaitlet_task *task, void *arg), void *arg)
{
    awaitlet__loop *ls;
    int r = cb ? find_own(loop, &ls) : -EINVAL;
    if (r < 0) {
        errno = -r;
        return -1;
    }
    if (!ls)
        return 0;
    if (ls->walking) {
        errno = EBUSY;
        return -1;
    }
    /* cb runs outside any task, like on_exit: it cannot suspend the task
     * that called the walk (if any) in the middle of the walk */
    awaitlet_task *cur = awaitlet__cur;
    awaitlet__cur = NULL;
    awaitlet__cbdepth++;
    ls->walking = 1;
    for (awaitlet_task *t = ls->tasks; t && !r; t = ls->walk_next) {
        ls->walk_next = t->loop_next; /* a release during cb advances it */
        r = cb(t, arg);
    }
    ls->walk_next = NULL;
    ls->walking = 0;
    awaitlet__cbdepth--;
    awaitlet__cur = cur;
    return r;
}

static int cancel_one(awaitlet_task *t, void *arg)
{
    if (!awaitlet_done(t) && awaitlet_cancel(t) == 0)
        ++*(int *)arg;
    return 0;
}

int awaitlet_loop_cancel_all(struct ev_loop *loop)
{
    int n = 0;
    if (awaitlet_loop_walk(loop, cancel_one, &n) < 0)
        return -1;
    return n;
}

/* ---- destruction under live tasks -------------------------------------------- */

/* libev is destroying the loop.  Without tasks this is the normal end of a
 * loop nobody closed.  With tasks it is a bug in the program: say so once,
 * and make sure nothing of the old loop survives at its address.  Tasks that
 * are suspended or ended are reclaimed (their stacks are reused, their
 * handles read as released); a task running right now (the destroy came
 * from inside one), or one whose job is on an offload worker (which still
 * writes into its stack and wakes the loop), cannot be: then every task's
 * watchers are stopped while the loop still exists, the state is orphaned
 * (freed when its last task is released; only ended tasks may still be
 * joined or detached) and nothing of it touches the loop again. */
static void cleanup_cb(struct ev_loop *loop, ev_cleanup *w, int revents)
{
    (void)revents;
    awaitlet__loop *ls = w->data;
    pthread_mutex_lock(&loops_lock);
    unlink_locked(ls);
    pthread_mutex_unlock(&loops_lock);
    unsigned n = __atomic_load_n(&ls->ntasks, __ATOMIC_RELAXED);
    if (n == 0) {
        free_state(ls);
        return;
    }
    int reclaim = pthread_equal(ls->owner, pthread_self()) && !ls->walking;
    for (awaitlet_task *t = ls->tasks; t && reclaim; t = t->loop_next)
        if (t->state != ST_DONE &&
            !(t->state == ST_SUSPENDED && t->wait != W_OFFLOAD && t->wait != W_JOB))
            reclaim = 0;
    fprintf(stderr,
            "awaitlet: ev_loop_destroy(%p) with %u task%s not released (awaitlet_loop_close "
            "would have said EBUSY); %s\n",
            (void *)loop, n, n == 1 ? "" : "s",
            reclaim ? "reclaimed without running them, their handles are invalid now"
                    : "some are running or offloaded: left as they are, never use them again");
    if (reclaim) {
        while (ls->tasks)
            awaitlet__reclaim(ls->tasks);
        free_state(ls);
    } else {
        for (awaitlet_task *t = ls->tasks; t; t = t->loop_next)
            awaitlet__task_watchers_stop(t);
        ev_check_stop(loop, &ls->check);
        ev_idle_stop(loop, &ls->idle);
        ev_async_stop(loop, &ls->async);
        if (ev_is_active(&ls->join_break)) {
            ev_ref(loop);
            ev_prepare_stop(loop, &ls->join_break);
        }
        ls->ready_head = ls->ready_tail = NULL;
        ls->orphaned = 1;
        if (last_ls == ls)
            last_ls = NULL;
    }
}
