/*
 * stall.h -- measures how long an event loop goes without turning.
 *
 * A 1 ms repeating ev_timer notes the time at every tick; the longest gap
 * between ticks is how long the loop was held by something (a blocking
 * libpq wait, or a task that never yields).  That is the observable the
 * shim promises: libpq calls inside tasks never hold the loop.
 *
 * On a shared machine the kernel may also take the CPU away from the loop's
 * thread for a while; that is not the loop's fault, so each gap is also
 * measured minus the time the thread spent runnable-but-waiting on the run
 * queue (/proc/thread-self/schedstat, 2nd field).  A blocking poll() is
 * sleeping, not runnable, so it still shows in full; busy CPU work without
 * yielding shows in full too.  Both numbers are reported; tests assert on
 * the adjusted one (`max_gap`).
 *
 * Under valgrind, CPU-bound steps run ~50x slower (one TLS handshake step
 * takes most of a second), so there the tests bound only the part of each
 * gap the thread spent neither running nor runnable (`max_blocked`: the
 * signature of a blocking wait) and report the rest.
 */
#ifndef PQA_TESTS_STALL_H
#define PQA_TESTS_STALL_H

#include <ev.h>

typedef struct pqa_stall {
    ev_timer tick;
    struct ev_loop *loop;
    double last;          /* monotonic time of the previous tick */
    double last_rq;       /* run-queue wait of this thread at that tick */
    double last_cpu;      /* CPU time of this thread at that tick */
    double max_gap;       /* longest gap minus run-queue wait, seconds */
    double max_raw_gap;   /* longest gap as measured */
    double max_blocked;   /* longest gap minus run-queue wait and CPU time */
    unsigned long ticks;
    int rq_fd;            /* /proc/thread-self/schedstat, -1 if unavailable */
} pqa_stall;

/* Starts measuring on loop (must be called on the loop's thread). */
void pqa_stall_start(pqa_stall *s, struct ev_loop *loop);

/* Stops the timer and closes the measurement; the gap up to now counts. */
void pqa_stall_stop(pqa_stall *s);

/* The bound the tests assert: 10 ms, or 100 ms under valgrind/ASan. */
double pqa_stall_bound(void);

/* The measurement the bound applies to: max_blocked under valgrind,
 * max_gap otherwise (see above). */
double pqa_stall_measure(const pqa_stall *s);

#endif
