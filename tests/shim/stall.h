/*
 * stall.h -- measures how long an event loop is held without turning.
 *
 * The loop is held while it runs callbacks and tasks: from the moment the
 * backend poll returns (an ev_check watcher of the highest priority, the
 * first thing run after the poll) to the moment it is about to poll again
 * (an ev_prepare of the lowest priority, the last thing run before it).
 * The longest such window is what the shim promises to keep short: libpq
 * calls inside tasks never sleep there, and never compute there for long.
 * A 1 ms repeating ev_timer keeps the loop turning and counts ticks; the
 * gaps between ticks are reported too (`max_raw_gap`) but include the poll.
 *
 * A window's wall time is not all the loop's doing on a shared machine:
 *   - the thread may wait on the run queue (preempted, runnable):
 *     /proc/thread-self/schedstat, 2nd field; never counted;
 *   - the hypervisor may take the virtual CPU away (steal): the guest
 *     counts it neither as CPU time nor as run-queue wait, so it looks
 *     like sleeping.  It is told apart by the thread's voluntary context
 *     switches (getrusage RUSAGE_THREAD): a thread that never went to
 *     sleep in the window cannot have blocked in it, whatever the clock
 *     says.  (fault-bouncer's 2,000 tasks once "blocked" 11.5 ms on a
 *     quiet 2-core VM with no sleep at all.)
 * So per window: held = CPU time if the thread never slept, else wall
 * minus run-queue wait; blocked = held minus CPU time (the part spent
 * sleeping: a blocking wait, a major page fault, a kernel lock).
 *
 * Under valgrind, CPU-bound steps run ~50x slower (one TLS handshake step
 * takes most of a second), so there the tests bound only `max_blocked`
 * (the signature of a blocking wait) and report the rest.
 */
#ifndef PQA_TESTS_STALL_H
#define PQA_TESTS_STALL_H

#include <stddef.h>

#include <ev.h>

/* where the thread's clocks stood at one instant */
typedef struct pqa_stall_mark {
    double wall, rq, cpu; /* seconds: monotonic, run-queue wait, CPU time */
    long nvcsw, majflt;   /* voluntary context switches, major faults */
} pqa_stall_mark;

typedef struct pqa_stall {
    ev_timer tick;
    ev_check after_poll;
    ev_prepare before_poll;
    struct ev_loop *loop;
    pqa_stall_mark open;  /* at the start of the current window */
    int in_window;
    double last_tick;
    double max_gap;       /* longest window held (see above), seconds */
    double max_blocked;   /* longest time slept inside a window */
    double max_raw_gap;   /* longest gap between ticks, as measured */
    pqa_stall_mark worst; /* the longest window's own deltas */
    unsigned long ticks, windows;
    int rq_fd;            /* /proc/thread-self/schedstat, -1 if unavailable */
} pqa_stall;

/* Starts measuring on loop (must be called on the loop's thread). */
void pqa_stall_start(pqa_stall *s, struct ev_loop *loop);

/* Stops measuring.  A window still open (the loop left by ev_break or a
 * finished join, so not held by anything but the caller) is not counted. */
void pqa_stall_stop(pqa_stall *s);

/* The bound the tests assert: 10 ms, or 100 ms under valgrind/ASan. */
double pqa_stall_bound(void);

/* The measurement the bound applies to: max_blocked under valgrind,
 * max_gap otherwise (see above). */
double pqa_stall_measure(const pqa_stall *s);

/* The longest window in words (wall, run-queue, CPU, sleeps, major faults)
 * into buf, for failure messages; returns buf. */
const char *pqa_stall_describe(const pqa_stall *s, char *buf, size_t size);

#endif
