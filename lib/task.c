/*
 * task.c -- the life of a task: start, switch, end, join, detach, cancel.
 *
 * Who runs whom: awaitlet__resume() saves the resumer's context in its own
 * frame and switches to the task; the task's next wait switches back there.
 * So a task started from inside another task runs on top of it until it
 * first waits, and later wake-ups come from libev callbacks on the loop's
 * side.  A task cannot free the stack it runs on: its end is finished by the
 * resumer, after the final switch away.
 *
 * Released task structs stay on a small per-thread free list instead of going
 * back to malloc, both for speed and so that joining a released handle reads
 * a dead magic number rather than freed memory.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#ifdef AWAITLET_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

AWAITLET__TLS awaitlet_task *awaitlet__cur;

/* All live tasks of the process, for the gdb script (script/awaitlet-gdb.py).
 * Touched only when tasks start and are released, never on a switch. */
awaitlet_task *awaitlet__all_tasks;
static pthread_mutex_t all_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long next_id;

/* Loop states of the process; each is owned by one thread while it has tasks. */
static awaitlet__loop *loops;
static pthread_mutex_t loops_lock = PTHREAD_MUTEX_INITIALIZER;
static AWAITLET__TLS awaitlet__loop *last_ls;

static AWAITLET__TLS awaitlet_task *free_tasks;
static AWAITLET__TLS unsigned nfree_tasks;
#define FREE_TASKS_MAX 1024
static pthread_key_t free_key;
static pthread_once_t free_once = PTHREAD_ONCE_INIT;

/* A thread's spare task structs go with the thread. */
static void free_tasks_at_exit(void *unused)
{
    (void)unused;
    while (free_tasks) {
        awaitlet_task *t = free_tasks;
        free_tasks = t->ready_next;
        free(t);
    }
    nfree_tasks = 0;
}

static void free_key_init(void)
{
    pthread_key_create(&free_key, free_tasks_at_exit);
}

static void free_task_push(awaitlet_task *t)
{
    if (!free_tasks) {
        pthread_once(&free_once, free_key_init);
        pthread_setspecific(free_key, &free_key); /* any non-NULL value arms it */
    }
    t->ready_next = free_tasks;
    free_tasks = t;
    nfree_tasks++;
}

static int nkeys;

/* ---- loop state -------------------------------------------------------- */

static void ready_cb(struct ev_loop *loop, ev_check *w, int revents);
static void idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)loop, (void)w, (void)revents; /* its being active is the point */
}

static void loop_activate(awaitlet__loop *ls)
{
    ls->owner = pthread_self();
    ev_check_init(&ls->check, ready_cb);
    ev_set_priority(&ls->check, EV_MINPRI);
    ev_idle_init(&ls->idle, idle_cb);
    ev_async_init(&ls->async, awaitlet__async_cb);
    ls->check.data = ls->idle.data = ls->async.data = ls;
    ls->ready_head = ls->ready_tail = NULL;
}

/* The state of loop for the calling thread, created on first use.  NULL with
 * errno EINVAL when another thread has live tasks on that loop. */
static awaitlet__loop *loop_get(struct ev_loop *loop)
{
    awaitlet__loop *ls = last_ls;
    if (ls && ls->loop == loop && ls->ntasks && pthread_equal(ls->owner, pthread_self()))
        return ls;
    pthread_mutex_lock(&loops_lock);
    for (ls = loops; ls; ls = ls->next)
        if (ls->loop == loop)
            break;
    if (!ls) {
        ls = calloc(1, sizeof *ls);
        if (!ls) {
            pthread_mutex_unlock(&loops_lock);
            errno = ENOMEM;
            return NULL;
        }
        ls->loop = loop;
        loop_activate(ls);
        ls->next = loops;
        loops = ls;
    } else if (ls->ntasks == 0) {
        /* idle: maybe a new loop at an old address.  Its watchers may still
         * be active only in the instant after its last task ended (a task
         * started from an on_exit callback): then it is the same loop. */
        if (!ev_is_active(&ls->check) && !ev_is_active(&ls->async))
            loop_activate(ls);
        else
            ls->owner = pthread_self();
    } else if (!pthread_equal(ls->owner, pthread_self())) {
        pthread_mutex_unlock(&loops_lock);
        errno = EINVAL;
        return NULL;
    }
    pthread_mutex_unlock(&loops_lock);
    last_ls = ls;
    return ls;
}

unsigned awaitlet_loop_tasks(struct ev_loop *loop)
{
    unsigned n = 0;
    pthread_mutex_lock(&loops_lock);
    for (awaitlet__loop *ls = loops; ls; ls = ls->next)
        if (ls->loop == loop)
            n = ls->ntasks;
    pthread_mutex_unlock(&loops_lock);
    return n;
}

/* ---- switching ----------------------------------------------------------- */

void awaitlet__resume(awaitlet_task *t)
{
    awaitlet__ctx here;
    awaitlet_task *prev = awaitlet__cur;

    t->back = &here;
    t->state = ST_RUNNING;
    t->wait = W_NONE;
    awaitlet__cur = t;
#ifdef AWAITLET_ASAN
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, t->stack->lo, t->stack->size);
    awaitlet__switch(&here, &t->ctx);
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#else
    awaitlet__switch(&here, &t->ctx);
#endif
    awaitlet__cur = prev;
    if (t->state == ST_DONE) {
        /* finish on the resumer's stack: the task's stack is free now */
        awaitlet_task *j = t->joiner;
        awaitlet__stack_put(t->stack);
        t->stack = NULL;
        if (t->on_exit)
            t->on_exit(t, t->result, t->on_exit_data);
        if (j) {
            j->joining = NULL;
            awaitlet__make_ready(j, 0);
        }
        if (t->detached)
            awaitlet__release(t);
    } else {
        t->state = ST_SUSPENDED;
    }
}

void awaitlet__suspend(awaitlet_task *t)
{
    t->suspended_once = 1;
#ifdef AWAITLET_ASAN
    __sanitizer_start_switch_fiber(&t->asan_fake, t->back_bottom, t->back_size);
    awaitlet__switch(&t->ctx, t->back);
    __sanitizer_finish_switch_fiber(t->asan_fake, &t->back_bottom, &t->back_size);
#else
    awaitlet__switch(&t->ctx, t->back);
#endif
}

static void task_main(void *arg)
{
    awaitlet_task *t = arg;
#ifdef AWAITLET_ASAN
    __sanitizer_finish_switch_fiber(NULL, &t->back_bottom, &t->back_size);
#endif
    t->result = t->fn(t->arg);
    awaitlet__task_watchers_stop(t);
    t->state = ST_DONE;
#ifdef AWAITLET_ASAN
    __sanitizer_start_switch_fiber(NULL, t->back_bottom, t->back_size);
#endif
    awaitlet__switch(&t->ctx, t->back);
    abort(); /* a finished task is never resumed */
}

/* ---- ready list ------------------------------------------------------------ */

void awaitlet__make_ready(awaitlet_task *t, int wake)
{
    awaitlet__loop *ls = t->ls;
    t->wake = wake;
    t->wait = W_READY;
    t->ready_next = NULL;
    if (ls->ready_tail)
        ls->ready_tail->ready_next = t;
    else
        ls->ready_head = t;
    ls->ready_tail = t;
    if (!ev_is_active(&ls->check)) {
        ev_check_start(ls->loop, &ls->check);
        ev_idle_start(ls->loop, &ls->idle);
    }
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
        awaitlet__resume(t);
        t = next;
    }
    if (!ls->ready_head) {
        ev_check_stop(loop, w);
        ev_idle_stop(loop, &ls->idle);
    }
}

/* ---- creation and release ------------------------------------------------ */

int awaitlet__valid(const awaitlet_task *t)
{
    return t && t->magic == AWAITLET__MAGIC;
}

int awaitlet__check_thread(const awaitlet_task *t)
{
    if (!awaitlet__valid(t)) {
        errno = EINVAL;
        return -1;
    }
    if (!pthread_equal(t->ls->owner, pthread_self())) {
        errno = EXDEV;
        return -1;
    }
    return 0;
}

void awaitlet__release(awaitlet_task *t)
{
    pthread_mutex_lock(&all_lock);
    if (t->all_prev)
        t->all_prev->all_next = t->all_next;
    else
        awaitlet__all_tasks = t->all_next;
    if (t->all_next)
        t->all_next->all_prev = t->all_prev;
    pthread_mutex_unlock(&all_lock);
    t->ls->ntasks--;
    t->magic = AWAITLET__DEAD;
    if (nfree_tasks < FREE_TASKS_MAX)
        free_task_push(t);
    else
        free(t);
}

awaitlet_task *awaitlet_async_def_opts(struct ev_loop *loop, awaitlet_fn fn, void *arg,
                                       const awaitlet_options *opts)
{
    static const awaitlet_options defaults;
    if (!opts)
        opts = &defaults;
    if (awaitlet__sigdepth) {
        errno = EPERM;
        return NULL;
    }
    if (!loop || !fn || opts->stack_size > ((size_t)1 << 30)) {
        errno = EINVAL;
        return NULL;
    }
    awaitlet__loop *ls = loop_get(loop);
    if (!ls)
        return NULL;
    if (awaitlet__overflow_init() < 0)
        return NULL;

    awaitlet_task *t = free_tasks;
    if (t) {
        free_tasks = t->ready_next;
        nfree_tasks--;
    } else if (!(t = malloc(sizeof *t))) {
        errno = ENOMEM;
        return NULL;
    }
    memset(t, 0, sizeof *t);
    t->stack = awaitlet__stack_get(opts->stack_size, !opts->no_guard);
    if (!t->stack) {
        int e = errno;
        free_task_push(t);
        errno = e;
        return NULL;
    }
    t->magic = AWAITLET__MAGIC;
    t->ls = ls;
    t->fn = fn;
    t->arg = arg;
    t->name = opts->name;
    t->detached = opts->detached != 0;
    t->assert_await = opts->assert_await_occurs != 0;
    t->on_exit = opts->on_exit;
    t->on_exit_data = opts->on_exit_data;
    awaitlet__task_watchers_init(t);
    awaitlet__ctx_init(&t->ctx, t->stack->lo, t->stack->size, task_main, t);
    ls->ntasks++;

    pthread_mutex_lock(&all_lock);
    t->id = ++next_id;
    t->all_next = awaitlet__all_tasks;
    if (t->all_next)
        t->all_next->all_prev = t;
    awaitlet__all_tasks = t;
    pthread_mutex_unlock(&all_lock);

    awaitlet__resume(t);
    return t;
}

awaitlet_task *awaitlet_async_def(struct ev_loop *loop, awaitlet_fn fn, void *arg)
{
    return awaitlet_async_def_opts(loop, fn, arg, NULL);
}

/* ---- join and detach ----------------------------------------------------- */

static void *collect(awaitlet_task *t)
{
    void *r = t->result;
    int never = t->assert_await && !t->suspended_once;
    awaitlet__release(t);
    if (never) {
        errno = ENOMSG;
        return NULL;
    }
    return r;
}

void *awaitlet_join(awaitlet_task *t)
{
    awaitlet_task *self = awaitlet__cur;
    if (awaitlet__sigdepth) {
        errno = EPERM;
        return NULL;
    }
    if (awaitlet__check_thread(t) < 0)
        return NULL;
    if (t->detached || t->joiner) {
        errno = EINVAL;
        return NULL;
    }
    if (t == self) {
        errno = EDEADLK;
        return NULL;
    }
    if (self) {
        if (self->ls != t->ls) {
            errno = EXDEV;
            return NULL;
        }
        if (t->state != ST_DONE) {
            for (awaitlet_task *x = t; x; x = x->joining)
                if (x == self) { /* t waits, through joins, for us */
                    errno = EDEADLK;
                    return NULL;
                }
            int r = awaitlet__interrupt(self);
            if (r == 0) {
                awaitlet__disarm_io(self);
                t->joiner = self;
                self->joining = t;
                self->wait = W_JOIN;
                awaitlet__suspend(self);
                r = self->wake;
            }
            if (r < 0) {
                if (t->joiner == self)
                    t->joiner = NULL;
                self->joining = NULL;
                errno = -r;
                return NULL;
            }
        }
        return collect(t);
    }
    /* outside a task: run the loop until the task ends */
    struct ev_loop *loop = t->ls->loop;
    while (t->state != ST_DONE) {
        /* ev_run reports whether any watcher is still active: none, and
         * nothing queued, means nothing can ever end the task */
        if (!ev_run(loop, EVRUN_ONCE) && t->state != ST_DONE && !t->ls->ready_head) {
            errno = EDEADLK;
            return NULL;
        }
    }
    return collect(t);
}

void *awaitlet_run(struct ev_loop *loop, awaitlet_fn fn, void *arg)
{
    awaitlet_task *t = awaitlet_async_def(loop, fn, arg);
    return t ? awaitlet_join(t) : NULL;
}

int awaitlet_detach(awaitlet_task *t)
{
    if (awaitlet__check_thread(t) < 0)
        return -1;
    if (t->detached || t->joiner) {
        errno = EINVAL;
        return -1;
    }
    t->detached = 1;
    if (t->state == ST_DONE)
        awaitlet__release(t);
    return 0;
}

/* ---- queries --------------------------------------------------------------- */

int awaitlet_in_context(void)
{
    return awaitlet__cur != NULL;
}

awaitlet_task *awaitlet_current(void)
{
    return awaitlet__cur;
}

struct ev_loop *awaitlet_current_loop(void)
{
    return awaitlet__cur ? awaitlet__cur->ls->loop : NULL;
}

int awaitlet_done(const awaitlet_task *t)
{
    return awaitlet__valid(t) && t->state == ST_DONE;
}

int awaitlet__fault_info(struct awaitlet__fault_info *fi)
{
    awaitlet_task *t = awaitlet__cur;
    if (!t || !t->stack)
        return 0;
    fi->guard_lo = t->stack->map;
    fi->guard_hi = t->stack->guarded ? (const char *)t->stack->lo : (const char *)t->stack->map;
    fi->stack_size = t->stack->size;
    fi->name = t->name;
    fi->id = t->id;
    return 1;
}

/* ---- settings and task-local values ------------------------------------- */

int awaitlet_set_default_stack_size(size_t bytes)
{
    if (bytes < 16 * 1024 || bytes > ((size_t)1 << 30)) {
        errno = EINVAL;
        return -1;
    }
    __atomic_store_n(&awaitlet__default_stack_size, bytes, __ATOMIC_RELAXED);
    return 0;
}

int awaitlet_set_stack_pool(int stacks)
{
    if (stacks < 0) {
        errno = EINVAL;
        return -1;
    }
    __atomic_store_n(&awaitlet__pool_max, stacks, __ATOMIC_RELAXED);
    return 0;
}

int awaitlet_key_create(awaitlet_key *key)
{
    int k = __atomic_fetch_add(&nkeys, 1, __ATOMIC_RELAXED);
    if (k >= AWAITLET__KEYS) {
        errno = EAGAIN;
        return -1;
    }
    *key = k;
    return 0;
}

void *awaitlet_getspecific(awaitlet_key key)
{
    awaitlet_task *t = awaitlet__cur;
    if (!t || key < 0 || key >= AWAITLET__KEYS)
        return NULL;
    return t->locals[key];
}

int awaitlet_setspecific(awaitlet_key key, const void *value)
{
    awaitlet_task *t = awaitlet__cur;
    if (!t) {
        errno = EPERM;
        return -1;
    }
    if (key < 0 || key >= AWAITLET__KEYS || key >= __atomic_load_n(&nkeys, __ATOMIC_RELAXED)) {
        errno = EINVAL;
        return -1;
    }
    t->locals[key] = (void *)value;
    return 0;
}
