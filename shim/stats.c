/*
 * stats.c -- PQAWAIT_STATS: what the shim did, as one line on stderr.
 *
 *   pqawait: tasks=3 calls=120 waits=118 max_stall_ms=0.4 offloads=1 ...
 *
 * printed at exit (an atexit handler, registered when statistics are
 * switched on) and on demand (pqawait_stats_print).  Fields:
 *   tasks         tasks seen doing cooperative work (a libpq call in a
 *                 scope, or a wait of their own routed to awaitlet_poll),
 *                 each counted once
 *   calls         libpq calls that ran cooperatively (scopes opened)
 *   waits         cooperative waits: libpq's own polls inside scopes and
 *                 the program's own poll/select/ppoll/pselect in tasks
 *   max_stall_ms  the longest time one of those tasks' loops went from
 *                 its poll returning to its next poll, i.e. ran callbacks
 *                 and tasks without looking at its descriptors
 *   offloads      work handed to other threads: host-name lookups and
 *                 cancel requests
 *   prog_waits    of waits, the program's own (select.c)
 *   cb_tasks      libev callbacks run as tasks (PQAWAIT_EV_CALLBACKS)
 *   cb_suspended  of those, the ones that suspended
 *
 * Free when off: every counting site is PQAWAIT__STAT (preload.h), one
 * (relaxed atomic) load of pqawait__stats_on and a branch; nothing below runs, no clock is
 * read and no watcher exists.  When on: counters are per thread (no shared
 * cache line on the hot path), linked into a list on a thread's first
 * count and folded into the totals when the thread exits; a sum is taken
 * under the list's lock.  Stalls are measured by an ev_check (highest
 * priority: runs first after the poll) and an ev_prepare (lowest: last
 * before the next poll) on every loop a counted task runs on; both are
 * ev_unref'ed so they never keep a loop alive.  A forked child starts its
 * own count from zero, so each process's line is its own work.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <pqawait.h>

#include "preload.h"
#include "tsan.h"

struct counters {
    unsigned long long c[PQAWAIT__ST_N];
    double max_stall; /* seconds */
    struct counters *next, *prev;
    int linked;
};

static PQAWAIT__TLS struct counters mine;
/* Taken through pqawait__lock/unlock: a thread's first count can come from
 * inside the shim's poll (coop_poll's, select.c's), where TSan does not
 * see the lock itself (tsan.h). */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct counters *threads;
static unsigned long long retired[PQAWAIT__ST_N];
static double retired_stall;
static pthread_key_t exit_key;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static awaitlet_key task_key;
static int task_key_ok;

/* One per loop whose stalls are measured. */
struct stall_loop {
    struct ev_loop *loop;
    ev_prepare prepare;
    ev_check check;
    ev_cleanup cleanup;
    double polled; /* when its poll last returned; 0: not yet */
    struct stall_loop *next;
};
static struct stall_loop *stall_loops;
static PQAWAIT__TLS struct ev_loop *stall_last;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void thread_gone(void *unused)
{
    (void)unused;
    pqawait__lock(&mu);
    if (mine.linked) {
        for (int i = 0; i < PQAWAIT__ST_N; i++)
            retired[i] += mine.c[i];
        if (mine.max_stall > retired_stall)
            retired_stall = mine.max_stall;
        if (mine.prev)
            mine.prev->next = mine.next;
        else
            threads = mine.next;
        if (mine.next)
            mine.next->prev = mine.prev;
        memset(&mine, 0, sizeof mine);
    }
    pqawait__unlock(&mu);
}

/* The child has one thread: its count starts from zero, and the other
 * threads' blocks (their TLS, soon reused by glibc) are forgotten. */
static void fork_child(void)
{
    pthread_mutex_init(&mu, NULL);
    memset(retired, 0, sizeof retired);
    retired_stall = 0;
    int linked = mine.linked;
    memset(&mine, 0, sizeof mine);
    mine.linked = linked;
    /* the forking task goes on in the child: one task of the child's */
    if (linked && task_key_ok && awaitlet_in_context() && awaitlet_getspecific(task_key))
        mine.c[PQAWAIT__ST_TASKS] = 1;
    threads = linked ? &mine : NULL;
}

/* The at-exit line comes from the process it is meant for: one linked
 * against libpq or libev, not the shell or the Perl pg_wrapper that the
 * environment passes through on its way. */
static int line_wanted = -1;

static void at_exit(void)
{
    if (line_wanted < 0)
        line_wanted = pqawait__process_needs("libpq.so") || pqawait__process_needs("libev.so");
    if (pqawait__stats_enabled() && line_wanted)
        (void)pqawait_stats_print();
}

static void init_once(void)
{
    (void)pthread_key_create(&exit_key, thread_gone);
    (void)pthread_atfork(NULL, NULL, fork_child);
    task_key_ok = awaitlet_key_create(&task_key) == 0;
    atexit(at_exit);
}

void pqawait__stats_init(void)
{
    pthread_once(&once, init_once);
}

void pqawait__stats_bump(int which)
{
    if (!mine.linked) {
        pqawait__stats_init();
        pqawait__lock(&mu);
        mine.linked = 1;
        mine.prev = NULL;
        mine.next = threads;
        if (threads)
            threads->prev = &mine;
        threads = &mine;
        pqawait__unlock(&mu);
        (void)pthread_setspecific(exit_key, &mine);
    }
    __atomic_store_n(&mine.c[which], mine.c[which] + 1, __ATOMIC_RELAXED);
}

/* ---- stalls ---- */

static void stall_check_cb(struct ev_loop *loop, ev_check *w, int revents)
{
    (void)loop, (void)revents;
    struct stall_loop *s = w->data;
    s->polled = mono();
}

static void stall_prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop, (void)revents;
    struct stall_loop *s = w->data;
    if (s->polled > 0) {
        double d = mono() - s->polled;
        if (d > mine.max_stall)
            __atomic_store(&mine.max_stall, &d, __ATOMIC_RELAXED);
    }
}

static void stall_cleanup_cb(struct ev_loop *loop, ev_cleanup *w, int revents)
{
    (void)loop, (void)revents;
    struct stall_loop *s = w->data;
    pqawait__lock(&mu);
    for (struct stall_loop **p = &stall_loops; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            break;
        }
    pqawait__unlock(&mu);
    if (stall_last == loop)
        stall_last = NULL;
    /* Stopped before they are freed: libev keeps active watchers in
     * arrays, and the runtime's own cleanup watcher, stopped after this
     * one ran, moves the array's last one -- this, if still active --
     * into its slot (a write into freed memory).  The unref'ed two are
     * ref'ed back first, as libev asks. */
    ev_ref(loop);
    ev_check_stop(loop, &s->check);
    ev_ref(loop);
    ev_prepare_stop(loop, &s->prepare);
    ev_cleanup_stop(loop, &s->cleanup);
    free(s);
}

void pqawait__stats_loop(struct ev_loop *loop)
{
    if (!pqawait__stats_enabled() || !loop || loop == stall_last)
        return;
    stall_last = loop;
    pqawait__stats_init();
    pqawait__lock(&mu);
    struct stall_loop *s = stall_loops;
    while (s && s->loop != loop)
        s = s->next;
    if (s) {
        pqawait__unlock(&mu);
        return;
    }
    if (!(s = calloc(1, sizeof *s))) {
        pqawait__unlock(&mu);
        return;
    }
    s->loop = loop;
    s->next = stall_loops;
    stall_loops = s;
    pqawait__unlock(&mu);
    ev_check_init(&s->check, stall_check_cb);
    ev_set_priority(&s->check, EV_MAXPRI);
    ev_prepare_init(&s->prepare, stall_prepare_cb);
    ev_set_priority(&s->prepare, EV_MINPRI);
    ev_cleanup_init(&s->cleanup, stall_cleanup_cb);
    s->check.data = s->prepare.data = s->cleanup.data = s;
    ev_check_start(loop, &s->check);
    ev_unref(loop);
    ev_prepare_start(loop, &s->prepare);
    ev_unref(loop);
    ev_cleanup_start(loop, &s->cleanup);
}

void pqawait__stats_task(void)
{
    if (!pqawait__stats_enabled() || !awaitlet_in_context())
        return;
    pqawait__stats_init();
    if (task_key_ok && !awaitlet_getspecific(task_key) &&
        awaitlet_setspecific(task_key, (void *)1) == 0)
        pqawait__stats_bump(PQAWAIT__ST_TASKS);
    pqawait__stats_loop(awaitlet_current_loop());
}

/* ---- public ---- */

PQAWAIT_EXPORT int pqawait_stats_enable(int on)
{
    if (on != 0 && on != 1) {
        errno = EINVAL;
        return -1;
    }
    if (on)
        pqawait__stats_init();
    __atomic_store_n(&pqawait__stats_on, on, __ATOMIC_RELAXED);
    return 0;
}

PQAWAIT_EXPORT void pqawait_stats_get(pqawait_stats *out)
{
    unsigned long long c[PQAWAIT__ST_N];
    double stall;
    if (!out)
        return;
    pqawait__stats_init();
    pqawait__lock(&mu);
    memcpy(c, retired, sizeof c);
    stall = retired_stall;
    for (struct counters *t = threads; t; t = t->next) {
        for (int i = 0; i < PQAWAIT__ST_N; i++)
            c[i] += __atomic_load_n(&t->c[i], __ATOMIC_RELAXED);
        double s;
        __atomic_load(&t->max_stall, &s, __ATOMIC_RELAXED);
        if (s > stall)
            stall = s;
    }
    pqawait__unlock(&mu);
    out->tasks = c[PQAWAIT__ST_TASKS];
    out->calls = c[PQAWAIT__ST_CALLS];
    out->waits = c[PQAWAIT__ST_WAITS];
    out->offloads = c[PQAWAIT__ST_OFFLOADS];
    out->prog_waits = c[PQAWAIT__ST_PROG_WAITS];
    out->cb_tasks = c[PQAWAIT__ST_CB_TASKS];
    out->cb_suspended = c[PQAWAIT__ST_CB_SUSPENDED];
    out->max_stall_ms = stall * 1e3;
}

PQAWAIT_EXPORT int pqawait_stats_print(void)
{
    pqawait_stats s;
    char line[320];
    pqawait_stats_get(&s);
    int n = snprintf(line, sizeof line,
                     "pqawait: tasks=%llu calls=%llu waits=%llu max_stall_ms=%.1f offloads=%llu "
                     "prog_waits=%llu cb_tasks=%llu cb_suspended=%llu\n",
                     s.tasks, s.calls, s.waits, s.max_stall_ms, s.offloads, s.prog_waits,
                     s.cb_tasks, s.cb_suspended);
    if (n < 0)
        return -1;
    if ((size_t)n >= sizeof line)
        n = (int)sizeof line - 1;
    for (int off = 0; off < n;) {
        ssize_t w = write(2, line + off, (size_t)(n - off));
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        off += (int)w;
    }
    return 0;
}
