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
 *
 * A thread that sleeps in a window has not always blocked either: the
 * whole machine may have stopped (a hypervisor pause counts as neither CPU
 * nor run-queue time), and under valgrind, which runs a process's threads
 * one at a time under one lock, a thread that gives the lock up at a
 * system call sleeps until it gets it back while another thread of the
 * process holds it.  Neither is the loop's doing.  So a witness thread of
 * the meter's own sleeps 1 ms at a time (2 ms under valgrind/ASan, all
 * signals blocked) and records every span in which it could not run on
 * time.  A blocking wait of the loop stops only the loop's thread; the
 * witness goes on ticking through it.  At pqa_stall_stop each window that
 * slept has the witness's lost time inside it taken off its held and
 * blocked time.  (shim-interrupt's cancel from a task once "blocked"
 * 1.8 s under valgrind in CI; the meter's own check that it sees a real
 * blocking wait is shim-proxy's test_control_blocking_is_detected.)
 */
#ifndef PQA_TESTS_STALL_H
#define PQA_TESTS_STALL_H

#include <pthread.h>
#include <stddef.h>
#include <stdio.h>

#include <ev.h>

/* where the thread's clocks stood at one instant */
typedef struct pqa_stall_mark {
    double wall, rq, cpu; /* seconds: monotonic, run-queue wait, CPU time */
    long nvcsw, majflt;   /* voluntary context switches, major faults */
} pqa_stall_mark;

/* a window kept for pqa_stall_stop's correction */
typedef struct pqa_stall_window {
    pqa_stall_mark d;     /* its deltas; d.wall is its length */
    double open;          /* its start, monotonic */
    double held, blocked; /* as measured, before the correction */
    double lost;          /* the witness's lost time inside it (at stop) */
} pqa_stall_window;

/* a span in which the witness thread did not run on time */
typedef struct pqa_stall_span {
    double from, to;
} pqa_stall_span;

typedef struct pqa_stall {
    ev_timer tick;
    ev_check after_poll;
    ev_prepare before_poll;
    struct ev_loop *loop;
    pqa_stall_mark open;  /* at the start of the current window */
    int in_window;
    double last_tick;
    double max_gap;       /* longest window held (see above), seconds; final at stop */
    double max_blocked;   /* longest time slept inside a window; final at stop */
    double max_raw_gap;   /* longest gap between ticks, as measured */
    double raw_gap, raw_blocked; /* max_gap / max_blocked before the witness's correction */
    pqa_stall_window worst; /* the window pqa_stall_measure reports */
    unsigned long ticks, windows;
    int rq_fd;            /* /proc/thread-self/schedstat, -1 if unavailable */
    /* windows that slept and were long enough to matter, kept to be
     * corrected at stop; the others only count as they were */
    pqa_stall_window *kept;
    int nkept, kept_max;
    double keep_above;    /* a quarter of the bound: shorter windows cannot matter */
    double rest_gap, rest_blocked; /* the largest of the windows not kept */
    pqa_stall_window rest_gap_w, rest_blocked_w; /* ... and those windows */
    /* the witness thread (see above) */
    pthread_t witness;
    int witness_on, witness_stop; /* witness_stop: atomic */
    pthread_mutex_t mu;           /* guards lost, nlost */
    pqa_stall_span *lost;
    int nlost, lost_max;
} pqa_stall;

/* Starts measuring on loop (must be called on the loop's thread). */
void pqa_stall_start(pqa_stall *s, struct ev_loop *loop);

/* Stops measuring and the witness thread, and corrects the windows by the
 * witness's lost time: max_gap, max_blocked and worst are final only
 * after it.  A window still open (the loop left by ev_break or a finished
 * join, so not held by anything but the caller) is not counted. */
void pqa_stall_stop(pqa_stall *s);

/* The bound the tests assert: 10 ms, or 100 ms under valgrind/ASan. */
double pqa_stall_bound(void);

/* The measurement the bound applies to: max_blocked under valgrind,
 * max_gap otherwise (see above). */
double pqa_stall_measure(const pqa_stall *s);

/* The window measured in words (wall, run-queue, CPU, sleeps, major
 * faults, the witness's lost time) into buf, for failure messages;
 * returns buf. */
const char *pqa_stall_describe(const pqa_stall *s, char *buf, size_t size);

/* Asserts (Check) that the stall measured stayed under the bound; the
 * failure message starts with the printf-style context and describes the
 * window.  Include check.h first. */
#define pqa_stall_assert(st, ...)                                                                       \
    do {                                                                                                \
        char pqa_what_[160], pqa_why_[400];                                                             \
        snprintf(pqa_what_, sizeof pqa_what_, __VA_ARGS__);                                             \
        ck_assert_msg(pqa_stall_measure(st) < pqa_stall_bound(), "%s: the loop stalled %.1f ms (bound %.0f ms; %s)", \
                      pqa_what_, pqa_stall_measure(st) * 1e3, pqa_stall_bound() * 1e3,                    \
                      pqa_stall_describe((st), pqa_why_, sizeof pqa_why_));                              \
    } while (0)

#endif
