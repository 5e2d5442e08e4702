/*
 * ev_callbacks.c -- PQAWAIT_EV_CALLBACKS=1: every libev watcher callback of
 * an unmodified program runs as a task, so a callback that blocks in libpq
 * suspends only itself.  Also the guard that keeps PQAWAIT_ASYNC_MAIN from
 * running a libev program's callbacks behind its back.
 *
 * The hook point is the loop's "invoke pending" function, which libev
 * documents for running callbacks in another context
 * (ev_set_invoke_pending_cb).  The program reaches libev through its PLT,
 * so ev_run, ev_loop_new and ev_default_loop are interposed here to install
 * our dispatcher on every loop the program uses -- never on a loop only the
 * runtime or the shim drive (their own calls are told apart by their
 * return address), and never on a loop whose program set an invoke
 * function of its own (we step aside for good).
 *
 * The dispatcher replaces ev_invoke_pending and keeps its exact order:
 * priorities from high to low, last-queued first within one (libev pops
 * its per-priority arrays from the top), w->pending cleared before the
 * callback.  libev gives no API to walk the pending queue, so its arrays
 * are located once by a probe on a scratch loop (ev_libev.c: feed known
 * watchers, find them, check every count); if the probe fails (another
 * libev), the mode says so on stderr and callbacks run plainly.
 *
 * For each pending watcher, in that order:
 *   - the runtime's and the shim's own watchers (tasks' io and timers, the
 *     ready list's check and idle, offload wake-ups) and libev's internal
 *     ones (its signal pipe, child and embed helpers, ev_once's relay, the
 *     dummy of ev_clear_pending), recognised by their callback's address,
 *     and every EV_CLEANUP event, run directly: never as tasks;
 *   - a program watcher whose previous callback is still suspended is left
 *     pending, in libev's own queue: its new events are OR-ed into that one
 *     entry by libev itself, exactly as when a plain program is too slow to
 *     keep up, and it is delivered once its callback has ended -- never a
 *     second, concurrent callback of the same watcher.  Left in libev's
 *     queue, a stop (ev_io_stop & co. clear the entry), a restart, an
 *     ev_io_set or ev_set_cb (read at invocation) all act as libev defines;
 *   - any other program watcher: its callback runs in a task.  The
 *     program callbacks of one dispatch run one after another, by plain
 *     calls, on the loop's runner task (a batch: one resume of a parked
 *     task per dispatch, not per callback); a callback that suspends keeps
 *     that task as its own, is recorded by watcher address as busy, in a
 *     slot that lives on its task's stack, until it ends, and the rest of
 *     the dispatch goes on in a new batch (docs/preload.md: the cost
 *     measured per callback).
 * Nothing here dereferences a watcher after its callback returned or
 * suspended: busy slots compare addresses only, and the queue holds only
 * what libev holds.  (A watcher freed by its own suspended callback and a
 * new watcher allocated at the same address would see its events wait
 * until that callback ends: over-cautious, never unsafe.)
 *
 * ev_invoke(loop, w, revents) of a program watcher runs its callback as a
 * task too; if w's callback is suspended, the event is fed to w instead
 * and delivered after it (libev's ev_feed_event).  ev_invoke_pending is not
 * interposed: libev calls it through a pointer once per iteration, and an
 * interposer would cost every libev program a call per iteration with the
 * modes off; a program that calls it directly (from inside a callback)
 * runs the pending callbacks libev's way, plainly.  ev_once callbacks
 * (relayed by libev's own watcher) run plainly.
 *
 * PQAWAIT_ASYNC_MAIN without this mode: main is a task, and a libev
 * program's callbacks run inside main's own ev_run, in main's task.  A
 * callback blocking in libpq suspends main -- and the runtime then runs the
 * same loop from outside to wait for it.  That outer run must not start the
 * program's other callbacks (the program never expected one to run while
 * another is in the middle): while main is suspended inside a program
 * ev_run of that loop, the dispatcher run from outside any task invokes
 * only the runtime's and libev's watchers and leaves the program's pending,
 * for main's ev_run to deliver when it resumes.
 *
 * Threads: a loop's state is touched only by the thread running it; the
 * list of states is behind one mutex, with a per-thread cache.  Several
 * loops in several threads each get their own dispatcher and tasks.
 */
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* <elf.h> (through <link.h>) names ELF versions EV_NONE and EV_CURRENT;
 * libev has an EV_NONE of its own */
#undef EV_NONE
#undef EV_CURRENT
#include <ev.h>

#include "ev_libev.h"
#include "preload.h"

#define BUCKETS 64
#define CB_STACK (256u << 10)

typedef void cb_fn(struct ev_loop *, ev_watcher *, int);

struct slot;

/* One per loop the dispatcher is installed on (or stepped aside from). */
struct evl {
    struct ev_loop *loop;
    struct evl *next;
    int tasks;        /* callbacks as tasks */
    int foreign;      /* the program set its own invoke function */
    int main_depth;   /* program ev_run calls of this loop inside main's task */
    int held;         /* the last dispatch left program watchers pending */
    int prog_runs;    /* program ev_run calls of this loop in progress */
    int dispatching;  /* dispatch depth (nested ev_run from callbacks) */
    awaitlet_runner *runner; /* callbacks run on its parked task */
    unsigned nbusy;
    struct slot *busy[BUCKETS];
    ev_idle nudge;    /* one non-blocking iteration when held ones may run */
};

/* A callback task that suspended: on that task's stack. */
struct slot {
    ev_watcher *w;
    struct evl *evl;
    struct slot *next;
    int registered;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct evl *loops;
static PQAWAIT__TLS struct evl *last;

/* ---- per-loop state ---- */

static struct evl *find(struct ev_loop *loop)
{
    struct evl *e = last;
    if (e && e->loop == loop)
        return e;
    pthread_mutex_lock(&mu);
    for (e = loops; e && e->loop != loop; e = e->next)
        ;
    pthread_mutex_unlock(&mu);
    if (e)
        last = e;
    return e;
}

static void nudge_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)loop, (void)w, (void)revents; /* its being active is the point */
}

static void nudge_stop(struct evl *e)
{
    if (ev_is_active(&e->nudge)) {
        ev_ref(e->loop);
        ev_idle_stop(e->loop, &e->nudge);
    }
}

static void dispatch(struct ev_loop *loop);

/* The state for loop, created (and the dispatcher installed unless the
 * program has its own) on first use; NULL when the mode cannot work. */
static struct evl *install(struct ev_loop *loop, int tasks)
{
    struct evl *e = find(loop);
    if (!e) {
        if (!pqawait__ev_layout_ok || !(e = calloc(1, sizeof *e)))
            return NULL;
        e->loop = loop;
        ev_idle_init(&e->nudge, nudge_cb);
        pqawait__ev_next.ev_set_invoke_pending_cb(loop, dispatch);
        pthread_mutex_lock(&mu);
        e->next = loops;
        loops = e;
        pthread_mutex_unlock(&mu);
        last = e;
    }
    if (tasks && !e->tasks && !e->foreign) {
        e->tasks = 1;
        pqawait__stats_loop(loop);
    }
    return e->foreign ? NULL : e;
}

static void forget(struct ev_loop *loop)
{
    pthread_mutex_lock(&mu);
    struct evl *e = NULL;
    for (struct evl **p = &loops; *p; p = &(*p)->next)
        if ((*p)->loop == loop) {
            e = *p;
            *p = e->next;
            break;
        }
    pthread_mutex_unlock(&mu);
    if (!e)
        return;
    if (last == e)
        last = NULL;
    nudge_stop(e);
    if (e->runner && !e->dispatching)
        awaitlet_runner_free(e->runner); /* ends its parked task */
    for (int i = 0; i < BUCKETS; i++) /* suspended callbacks outlive it */
        for (struct slot *s = e->busy[i]; s; s = s->next)
            s->evl = NULL;
    if (!e->foreign)
        pqawait__ev_next.ev_set_invoke_pending_cb(loop, pqawait__ev_next.ev_invoke_pending);
    free(e);
}

/* ---- busy watchers ---- */

static unsigned bucket(const void *w)
{
    return (unsigned)(((uintptr_t)w >> 4) % BUCKETS);
}

static int busy(struct evl *e, const ev_watcher *w)
{
    for (struct slot *s = e->busy[bucket(w)]; s; s = s->next)
        if (s->w == w)
            return 1;
    return 0;
}

static void busy_add(struct evl *e, struct slot *s)
{
    unsigned b = bucket(s->w);
    s->next = e->busy[b];
    e->busy[b] = s;
    s->registered = 1;
    e->nbusy++;
}

/* The callback of s ended: its watcher's held events may run now. */
static void busy_remove(struct slot *s)
{
    struct evl *e = s->evl;
    if (!e)
        return; /* its loop was destroyed meanwhile */
    for (struct slot **p = &e->busy[bucket(s->w)]; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            e->nbusy--;
            break;
        }
    if (e->held && !ev_is_active(&e->nudge)) {
        ev_idle_start(e->loop, &e->nudge);
        ev_unref(e->loop);
    }
}

/* ---- running one callback ---- */

static int program_watcher(const ev_watcher *w, int revents)
{
    uintptr_t cb = (uintptr_t)w->cb;
    if (revents & EV_CLEANUP)
        return 0; /* during ev_loop_destroy: the loop is going away */
    if (cb >= pqawait__libev_lo && cb < pqawait__libev_hi)
        return 0;
    return !pqawait__our_code((const void *)cb);
}

struct job {
    struct evl *evl;
    struct ev_loop *loop;
    ev_watcher *w;
    cb_fn *cb;
    int revents;
    int finished;     /* ended without suspending (written while the
                         dispatcher still waits in awaitlet_async_def) */
    struct slot *slot;
};

static void *cb_task(void *arg)
{
    struct job *j = arg;
    struct slot s = {j->w, j->evl, NULL, 0};
    j->slot = &s;
    j->cb(j->loop, j->w, j->revents); /* may suspend: then j is gone */
    if (s.registered)
        busy_remove(&s);
    else
        j->finished = 1;
    return NULL;
}

/* The runner's parked task is a task of the loop: it lives while the
 * program runs the loop, and goes when no ev_run of the program and no
 * dispatch is in progress, so a program (or the runtime) that counts or
 * closes the loop's tasks afterwards finds none of ours. */
static void runner_retire(struct evl *e)
{
    if (e->runner && !e->dispatching && !e->prog_runs) {
        awaitlet_runner_free(e->runner);
        e->runner = NULL;
    }
}

static awaitlet_runner *runner_of(struct evl *e, struct ev_loop *loop)
{
    if (!e->runner) {
        awaitlet_options o = {.stack_size = CB_STACK, .name = "libev callback"};
        e->runner = awaitlet_runner_new(loop, &o);
    }
    return e->runner;
}

/* One callback as a task (ev_invoke). */
static void run_task(struct evl *e, struct ev_loop *loop, ev_watcher *w, int revents)
{
    struct job j = {e, loop, w, (cb_fn *)w->cb, revents, 0, NULL};
    awaitlet_runner *r = runner_of(e, loop);
    /* the callback runs on the runner's task until it ends or suspends;
     * the caller itself never suspends here */
    if (!r || awaitlet_runner_call(r, cb_task, &j) < 0) {
        j.cb(loop, w, revents); /* no task (another thread's loop, no memory): plainly */
        return;
    }
    PQAWAIT__STAT(CB_TASKS);
    if (!j.finished) {
        PQAWAIT__STAT(CB_SUSPENDED);
        busy_add(e, j.slot);
    }
}

/* Take entry k of priority index pri out of libev's queue, as
 * ev_invoke_pending would (w->pending cleared); entries above it move down
 * and learn their new positions. */
static ev_watcher *take(struct ev_loop *loop, int pri, int k, int *revents)
{
    pending_entry *arr = PEND(loop)[pri];
    int cnt = CNT(loop)[pri];
    ev_watcher *w = arr[k].w;
    *revents = arr[k].events;
    for (int i = k; i < cnt - 1; i++) {
        arr[i] = arr[i + 1];
        arr[i].w->pending = i + 1;
    }
    CNT(loop)[pri] = cnt - 1;
    w->pending = 0;
    return w;
}

/* The next watcher to invoke, taken out of libev's queue, in
 * ev_invoke_pending's order (a fresh look from the top each time: a
 * callback's feed queues at the top); NULL when only held ones are left
 * (*held says whether there are any).  *prog: a program watcher. */
static ev_watcher *next_pending(struct evl *e, struct ev_loop *loop, int hold, int *held,
                                int *prog, int *revents)
{
    *held = 0;
    for (int pri = NUMPRI - 1; pri >= 0; pri--) {
        pending_entry *arr = PEND(loop)[pri];
        for (int k = CNT(loop)[pri] - 1; k >= 0; k--) {
            *prog = program_watcher(arr[k].w, arr[k].events);
            if (*prog && (hold || (e->nbusy && busy(e, arr[k].w)))) {
                *held = 1;
                continue;
            }
            return take(loop, pri, k, revents);
        }
    }
    return NULL;
}

/* A batch: the program callbacks of one dispatch, run one after another by
 * plain calls on one runner task, so a callback that never suspends costs a
 * call, not two switches.  It ends (done) at an empty queue, or at a
 * watcher that is not the program's (the runtime's and libev's run on the
 * loop's side, outside any task: plain_w), or -- not done -- when a
 * callback suspends: the runner task is then that callback's own, and
 * when the callback returns the task ends there; the dispatcher starts a
 * new batch for the rest.  The batch lives on the dispatcher's stack and
 * is not touched once a callback suspended. */
struct batch {
    struct evl *evl;
    struct ev_loop *loop;
    int hold;
    int done, held;
    ev_watcher *plain_w;
    int plain_revents;
    struct slot *slot; /* the running callback's, on the task's stack */
};

static void *batch_task(void *arg)
{
    struct batch *b = arg;
    struct evl *e = b->evl;
    struct ev_loop *loop = b->loop;
    for (;;) {
        int held, prog, revents;
        ev_watcher *w = next_pending(e, loop, b->hold, &held, &prog, &revents);
        if (!w || !prog) {
            b->held = held;
            b->plain_w = w;
            b->plain_revents = revents;
            b->done = 1;
            return NULL;
        }
        struct slot s = {w, e, NULL, 0};
        b->slot = &s;
        PQAWAIT__STAT(CB_TASKS);
        ((cb_fn *)w->cb)(loop, w, revents); /* may suspend: then b is gone */
        if (s.registered) { /* it had suspended: this task was its own */
            busy_remove(&s);
            return NULL;
        }
    }
}

static void dispatch(struct ev_loop *loop)
{
    struct evl *e = find(loop);
    if (!e || e->foreign) {
        pqawait__ev_next.ev_invoke_pending(loop);
        return;
    }
    nudge_stop(e);
    e->dispatching++;
    /* main suspended inside the program's own ev_run of this loop, and we
     * run from outside any task: only non-program watchers may run */
    int hold = e->main_depth > 0 && !awaitlet_in_context();
    int held = 0;
    for (;;) {
        ev_watcher *w;
        int revents = 0, prog = 0;
        awaitlet_runner *r = e->tasks && !hold ? runner_of(e, loop) : NULL;
        if (r) {
            struct batch b = {e, loop, hold, 0, 0, NULL, 0, NULL};
            int rc = awaitlet_runner_call(r, batch_task, &b);
            if (rc >= 0) {
                if (!b.done) { /* a callback suspended; the rest in a new batch */
                    PQAWAIT__STAT(CB_SUSPENDED);
                    busy_add(e, b.slot);
                    continue;
                }
                held = b.held;
                if (!b.plain_w)
                    break;
                ((cb_fn *)b.plain_w->cb)(loop, b.plain_w, b.plain_revents);
                continue;
            }
            /* no task (another thread's loop, no memory, a signal handler):
             * the next one plainly */
        }
        w = next_pending(e, loop, hold, &held, &prog, &revents);
        if (!w)
            break;
        ((cb_fn *)w->cb)(loop, w, revents);
    }
    e->held = held;
    e->dispatching--;
    runner_retire(e);
}

/* ---- the interposed libev calls ---- */

static int active(void)
{
    return pqawait__ev_hooks;
}

static __attribute__((noinline)) int ev_run_hooked(struct ev_loop *loop, int flags,
                                                    const void *caller);

PQAWAIT_EXPORT int ev_run(struct ev_loop *loop, int flags)
{
    /* the runtime's joins call this once per loop iteration: with the modes
     * off (resolved by the constructor) it is two loads, two branches and
     * the jump to libev's, no frame */
    if (__builtin_expect(!pqawait__ev_hooks && pqawait__ev_next.ev_run != NULL, 1))
        return pqawait__ev_next.ev_run(loop, flags);
    return ev_run_hooked(loop, flags, __builtin_return_address(0));
}

static int ev_run_hooked(struct ev_loop *loop, int flags, const void *caller)
{
    pqawait__ev_init();
    if (!active() || pqawait__our_code(caller))
        return pqawait__ev_next.ev_run(loop, flags);
    struct evl *e = pqawait__ev_callbacks ? install(loop, 1) : NULL;
    int in_main = pqawait__main_task && awaitlet_current() == pqawait__main_task &&
                  awaitlet_current_loop() == loop;
    if (in_main && !e)
        e = install(loop, 0);
    if (in_main && e)
        e->main_depth++;
    if (e)
        e->prog_runs++;
    int r = pqawait__ev_next.ev_run(loop, flags);
    if (e && find(loop) == e) { /* not destroyed from a callback */
        if (in_main)
            e->main_depth--;
        e->prog_runs--;
        runner_retire(e);
    }
    return r;
}

PQAWAIT_EXPORT struct ev_loop *ev_loop_new(unsigned int flags)
{
    pqawait__ev_init();
    struct ev_loop *loop = pqawait__ev_next.ev_loop_new(flags);
    if (loop && pqawait__ev_callbacks && !pqawait__our_code(__builtin_return_address(0)))
        (void)install(loop, 1);
    return loop;
}

PQAWAIT_EXPORT struct ev_loop *ev_default_loop(unsigned int flags)
{
    pqawait__ev_init();
    struct ev_loop *loop = pqawait__ev_next.ev_default_loop(flags);
    if (loop && pqawait__ev_callbacks && !pqawait__our_code(__builtin_return_address(0)))
        (void)install(loop, 1);
    return loop;
}

PQAWAIT_EXPORT void ev_set_invoke_pending_cb(struct ev_loop *loop, ev_loop_callback cb)
{
    pqawait__ev_init();
    if (active() && !pqawait__our_code(__builtin_return_address(0))) {
        /* the program runs its callbacks its own way: step aside for good */
        struct evl *e = find(loop);
        if (!e && (e = calloc(1, sizeof *e))) {
            e->loop = loop;
            ev_idle_init(&e->nudge, nudge_cb);
            pthread_mutex_lock(&mu);
            e->next = loops;
            loops = e;
            pthread_mutex_unlock(&mu);
        }
        if (e)
            e->foreign = 1;
    }
    pqawait__ev_next.ev_set_invoke_pending_cb(loop, cb);
}

PQAWAIT_EXPORT void ev_invoke(struct ev_loop *loop, void *w, int revents)
{
    pqawait__ev_init();
    struct evl *e = active() ? find(loop) : NULL;
    ev_watcher *ww = w;
    if (!e || e->foreign || !e->tasks || !program_watcher(ww, revents) ||
        pqawait__our_code(__builtin_return_address(0))) {
        pqawait__ev_next.ev_invoke(loop, w, revents);
        return;
    }
    if (e->nbusy && busy(e, ww)) {
        pqawait__ev_next.ev_feed_event(loop, w, revents); /* after its running callback */
        return;
    }
    run_task(e, loop, ww, revents);
    runner_retire(e); /* called outside any ev_run: nothing keeps it */
}

PQAWAIT_EXPORT void ev_loop_destroy(struct ev_loop *loop)
{
    pqawait__ev_init();
    if (active())
        forget(loop);
    pqawait__ev_next.ev_loop_destroy(loop);
}
