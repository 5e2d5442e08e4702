/*
 * task.c -- the life of a task: start, switch, end, join, detach, run.
 *
 * Who runs whom: awaitlet__resume() saves the resumer's context in its own
 * frame and switches to the task; the task's next wait switches back there.
 * So a task started from inside another task runs on top of it until it
 * first waits, and later wake-ups come from libev callbacks on the loop's
 * side.  A task cannot free the stack it runs on: its end is finished by the
 * resumer, after the final switch away, as a step of its own (task_end):
 * reclaim the stack, call on_exit, and only then read the joiner and the
 * detached flag -- on_exit may have changed both.
 *
 * Released task structs stay on a small per-thread free list instead of going
 * back to malloc, both for speed and so that joining a released handle reads
 * a dead magic number rather than freed memory.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#ifdef AWAITLET_ASAN
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef AWAITLET_TSAN
#include <sanitizer/tsan_interface.h>
#endif

/* Exported (not in awaitlet.h): libpqawait reads these inline to tell plain
 * libpq calls outside tasks from the rest, and to find a task's key slot,
 * without a call per libpq call (shim/scope.h, pqawait__slot). */
__attribute__((visibility("default"))) AWAITLET__TLS awaitlet_task *awaitlet__cur;
/* Where a task's key slots are (awaitlet_key_slot, inline in libpqawait). */
__attribute__((visibility("default"))) const size_t awaitlet__locals_offset =
    offsetof(struct awaitlet_task, locals);
/* Where a task's shield level is, its intr_told right after it: the shim
 * raises and lowers it inline around every libpq call (shim/scope.h,
 * pqawait__shield_on/off: awaitlet_shield's logic, which wait.c keeps). */
__attribute__((visibility("default"))) const size_t awaitlet__shield_offset =
    offsetof(struct awaitlet_task, shield);
_Static_assert(offsetof(struct awaitlet_task, intr_told) == offsetof(struct awaitlet_task, shield) + sizeof(int),
               "shim/scope.h finds intr_told right after shield");
_Static_assert(sizeof(((struct awaitlet_task *)0)->intr_told) == sizeof(uint32_t), "intr_told is 32 bits");
/* libpqawait's word is the task's first (shim/scope.h, pqawait__pass). */
_Static_assert(offsetof(struct awaitlet_task, ext) == 0, "shim/scope.h reads the task's first word");
/* Resumes of any task on this thread: libpqawait's fairness check tells
 * from it, with no call, whether the running task was suspended since its
 * last look (shim/scope.c, Fairness). */
__attribute__((visibility("default"))) AWAITLET__TLS unsigned awaitlet__resumes;

/* All live tasks of the process, for the gdb script (script/awaitlet-gdb.py).
 * Touched only when tasks start and are released, never on a switch. */
awaitlet_task *awaitlet__all_tasks;
static pthread_mutex_t all_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long next_id;

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

/* ---- switching ----------------------------------------------------------- */

/* ThreadSanitizer fibers.  Each task is a fiber, created with the task and
 * dropped once it can never run again (its end, or its reclaim unrun).
 * Every switch is announced just before awaitlet__switch: to the task's
 * fiber when resuming it (remembering the resumer's, which may be another
 * task's), back to the resumer's when it suspends or ends.  Flags 0: TSan
 * orders each switch as a handoff, as it is -- one thread, one runner at a
 * time. */
#ifdef AWAITLET_TSAN
static void tsan_fiber_new(awaitlet_task *t)
{
    t->tsan_fiber = __tsan_create_fiber(0);
    if (t->name)
        __tsan_set_fiber_name(t->tsan_fiber, t->name);
}

static void tsan_fiber_drop(awaitlet_task *t)
{
    if (t->tsan_fiber)
        __tsan_destroy_fiber(t->tsan_fiber);
    t->tsan_fiber = NULL;
}
#define TSAN_TO_TASK(t) ((t)->tsan_back = __tsan_get_current_fiber(), __tsan_switch_to_fiber((t)->tsan_fiber, 0))
#define TSAN_TO_RESUMER(t) __tsan_switch_to_fiber((t)->tsan_back, 0)
#else
#define tsan_fiber_new(t) ((void)0)
#define tsan_fiber_drop(t) ((void)0)
#define TSAN_TO_TASK(t) ((void)0)
#define TSAN_TO_RESUMER(t) ((void)0)
#endif

/* The rest of a task's end, on the resumer's stack after the task's last
 * switch.  on_exit runs outside any task (awaitlet__cur NULL, the callback
 * depth raised), so it cannot suspend whoever resumed the task in the middle
 * of this step; the joiner and the detached flag are read after it. */
static void task_end(awaitlet_task *t)
{
    awaitlet__stack_put(t->stack);
    t->stack = NULL;
    tsan_fiber_drop(t);
    if (t->on_exit) {
        awaitlet_task *cur = awaitlet__cur;
        t->state = ST_EXITING;
        awaitlet__cur = NULL;
        awaitlet__cbdepth++;
        t->on_exit(t, t->result, t->on_exit_data);
        awaitlet__cbdepth--;
        awaitlet__cur = cur;
        t->state = ST_DONE;
    }
    if (t->outer_join == OUTER_JOIN_TOP) {
        /* join_outside runs the loop at depth 1 until now; from a deeper
         * ev_run (a callback running the loop) the break would end that
         * one: a prepare watcher breaks at depth 1 instead (loop.c) */
        awaitlet__loop *ls = t->ls;
        if (ev_depth(ls->loop) == 1) {
            ev_break(ls->loop, EVBREAK_ONE);
        } else if (!ev_is_active(&ls->join_break)) {
            ev_prepare_start(ls->loop, &ls->join_break);
            ev_unref(ls->loop); /* keeps no ev_run going that would have ended */
        }
    }
    awaitlet_task *j = t->joiner;
    if (j) {
        j->joining = NULL;
        awaitlet__make_ready(j, 0); /* it collects (releases) t when it runs */
    }
    if (t->detached)
        awaitlet__release(t);
}

void awaitlet__resume(awaitlet_task *t)
{
    awaitlet__ctx here;
    awaitlet_task *prev = awaitlet__cur;

    assert(t->magic == AWAITLET__MAGIC);
    assert(t->state == ST_NEW || t->state == ST_SUSPENDED); /* never a finished task */
    t->back = &here;
    t->state = ST_RUNNING;
    t->wait = W_NONE;
    awaitlet__cur = t;
    awaitlet__resumes++;
    TSAN_TO_TASK(t);
#ifdef AWAITLET_ASAN
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, t->stack->lo, t->stack->size);
    awaitlet__switch(&here, &t->ctx);
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#else
    awaitlet__switch(&here, &t->ctx);
#endif
    awaitlet__cur = prev;
    if (t->state == ST_DONE)
        task_end(t);
    else
        t->state = ST_SUSPENDED;
}

void awaitlet__wake(awaitlet_task *t, int wait)
{
    assert(t->magic == AWAITLET__MAGIC);
    assert(t->state == ST_SUSPENDED && t->wait == wait);
    (void)wait;
    awaitlet__resume(t);
}

void awaitlet__suspend(awaitlet_task *t)
{
    t->suspended_once = 1;
    TSAN_TO_RESUMER(t);
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
    TSAN_TO_RESUMER(t); /* the resumer drops this fiber in task_end */
#ifdef AWAITLET_ASAN
    __sanitizer_start_switch_fiber(NULL, t->back_bottom, t->back_size);
#endif
    awaitlet__switch(&t->ctx, t->back);
    abort(); /* a finished task is never resumed */
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
    if (t->ls->orphaned && t->state != ST_DONE) {
        errno = EINVAL; /* its loop was destroyed under it */
        return -1;
    }
    return 0;
}

void awaitlet__registry_lock(void)
{
    pthread_mutex_lock(&all_lock);
}

void awaitlet__registry_unlock(void)
{
    pthread_mutex_unlock(&all_lock);
}

void awaitlet__release(awaitlet_task *t)
{
    assert(t->magic == AWAITLET__MAGIC); /* released twice otherwise */
    assert(t->state == ST_DONE);
    pthread_mutex_lock(&all_lock);
    if (t->all_prev)
        t->all_prev->all_next = t->all_next;
    else
        awaitlet__all_tasks = t->all_next;
    if (t->all_next)
        t->all_next->all_prev = t->all_prev;
    pthread_mutex_unlock(&all_lock);
    awaitlet__loop_unlink(t->ls, t);
    t->magic = AWAITLET__DEAD;
    if (nfree_tasks < FREE_TASKS_MAX)
        free_task_push(t);
    else
        free(t);
}

void awaitlet__reclaim(awaitlet_task *t)
{
    if (t->state != ST_DONE) {
        awaitlet__task_watchers_stop(t);
        awaitlet__stack_put(t->stack); /* nothing runs on it any more */
        t->stack = NULL;
        tsan_fiber_drop(t);
        t->state = ST_DONE;
    }
    awaitlet__release(t);
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
    awaitlet__loop *ls = awaitlet__loop_get(loop);
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
    t->stack = awaitlet__stack_get(opts->stack_size, !opts->no_guard, opts->guard_size);
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
    tsan_fiber_new(t);
    awaitlet__loop_link(ls, t);

    pthread_mutex_lock(&all_lock);
    t->id = ++next_id;
    awaitlet__stack_owner(t->stack, t->id, t->name);
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
    return awaitlet__valid(t) && (t->state == ST_DONE || t->state == ST_EXITING);
}

int awaitlet__fault_info(struct awaitlet__fault_info *fi)
{
    awaitlet_task *t = awaitlet__cur;
    if (!t || !t->stack)
        return 0;
    fi->stack = t->stack;
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
    awaitlet__stack_pool_trim();
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

/* One call where a library's wrapper used to make several (in_context,
 * in_signal_handler, getspecific, setspecific): the slot itself. */
void **awaitlet_key_slot(awaitlet_key key)
{
    awaitlet_task *t = awaitlet__cur;
    if (!t || awaitlet__sigdepth || (unsigned)key >= AWAITLET__KEYS)
        return NULL;
    return &t->locals[key];
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
