/*
 * preload.h -- what the LD_PRELOAD ways in share (internal): the modes read
 * from the environment at start-up (preload.c), the statistics (stats.c),
 * main as a task (async_main.c), libev callbacks as tasks (ev_callbacks.c)
 * and the program's own waits inside tasks (select.c).
 *
 * Every mode is off unless its variable says 1, and then costs one load
 * and a predicted branch where it is tested; nothing here reads a clock or
 * makes a system call while it is off.
 */
#ifndef PQAWAIT_PRELOAD_H
#define PQAWAIT_PRELOAD_H

#include <poll.h>

#include <awaitlet.h>

#include "real.h"

struct ev_loop;

/* preload.c: the modes, read once before main (constructor). */
extern int pqawait__async_main;   /* PQAWAIT_ASYNC_MAIN=1 */
extern int pqawait__ev_callbacks; /* PQAWAIT_EV_CALLBACKS=1 */
extern int pqawait__stats_on;     /* PQAWAIT_STATS=1, or pqawait_stats_enable(1) */
void pqawait__preload_init(void);

/* pqawait__stats_on as every counting site reads it: a relaxed atomic
 * load (any thread may switch it: pqawait_stats_enable), the same single
 * mov as a plain one. */
static inline int pqawait__stats_enabled(void)
{
    return __atomic_load_n(&pqawait__stats_on, __ATOMIC_RELAXED);
}

/* stats.c */
enum { PQAWAIT__ST_TASKS, PQAWAIT__ST_CALLS, PQAWAIT__ST_WAITS, PQAWAIT__ST_OFFLOADS,
       PQAWAIT__ST_PROG_WAITS, PQAWAIT__ST_CB_TASKS, PQAWAIT__ST_CB_SUSPENDED,
       PQAWAIT__ST_N };
void pqawait__stats_bump(int which);
/* A task entered a cooperative scope or made a cooperative wait: count it
 * once (first time seen) and watch its loop's stalls. */
void pqawait__stats_task(void);
/* Watch loop's stalls (prepare/check timestamps), once per loop. */
void pqawait__stats_loop(struct ev_loop *loop);
/* ev_loop_destroy is coming: drop stats watchers of loop (ev_callbacks.c). */
void pqawait__stats_init(void);

#define PQAWAIT__STAT(which)                                  \
    do {                                                      \
        if (__builtin_expect(pqawait__stats_enabled(), 0))    \
            pqawait__stats_bump(PQAWAIT__ST_##which);         \
    } while (0)

/* async_main.c: the task running main() (NULL when not in that mode), and
 * whether addr lies in the text of libawaitlet or libpqawait. */
extern awaitlet_task *pqawait__main_task;
int pqawait__our_code(const void *addr);
/* 1 if a loaded object other than libpqawait/libawaitlet is linked against
 * a library whose soname starts so ("libpq.so", "libev.so"). */
int pqawait__process_needs(const char *soname_prefix);

/* ev_callbacks.c: libev's own ev_default_loop, past our interposer. */
struct ev_loop *pqawait__ev_default_loop(unsigned flags);

/* select.c: the program's own poll() inside a task.  pqawait__prog_ok says
 * whether a wait with that many descriptors belongs to awaitlet_poll:
 * inside a task, not in a signal handler, not while libpq runs (its own
 * waits are hooks.c's), and not a huge set. */
#define PQAWAIT__PROG_MAX 1024
int pqawait__prog_ok_slow(void);
/* Inline: every poll of the process asks, mostly from outside any task,
 * where one call into the runtime answers it. */
static inline int pqawait__prog_ok(nfds_t nfds)
{
    return nfds - 1 < PQAWAIT__PROG_MAX && awaitlet_in_context() && pqawait__prog_ok_slow();
}
int pqawait__prog_poll(struct pollfd *fds, nfds_t nfds, int timeout_ms);

#endif
