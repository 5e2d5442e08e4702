/*
 * fault.h -- what the fault tests share: bystander tasks that prove a fault
 * on one server leaves everything else on the loop alone, cooperative
 * waiting for flags, and the time bounds.
 *
 * The fault tests (tests/fault/test_*.c) break real servers and real
 * connections -- crash a private server, stall or cut a proxied
 * connection, freeze a postmaster, promote a standby, pool through
 * pgbouncer -- and check what libpq calls inside tasks report, how fast,
 * and that the loop and the other tasks on it never notice.  They use the
 * shim tests' helpers (tests/shim: common, server2, proxy, stall).
 */
#ifndef PQA_TESTS_FAULT_H
#define PQA_TESTS_FAULT_H

#include <ev.h>
#include <libpq-fe.h>

#include "awaitlet.h"

#define PQA_BYSTANDERS_MAX 8

/* Tasks on the shared test server running short queries that return a
 * value unique to the task and the query, checking each, until stopped. */
typedef struct pqa_bystanders {
    int n;
    awaitlet_task *task[PQA_BYSTANDERS_MAX];
    int stop;
    unsigned long queries;  /* answered correctly */
    unsigned long wrong;    /* failed or carried another value */
    double max_latency;     /* longest query, seconds */
    char err[256];          /* the first failure */
} pqa_bystanders;

/* Starts n (<= PQA_BYSTANDERS_MAX) bystanders on loop; each connects to
 * the shared server itself (inside its task) and pauses 5 ms between
 * queries. */
void pqa_bystanders_start(pqa_bystanders *b, struct ev_loop *loop, int n);

/* Stops and joins them (inside a task of the same loop, or outside). */
void pqa_bystanders_stop(pqa_bystanders *b);

/* Fails the test unless every query of every bystander was right, at least
 * min_queries were answered, and none took longer than max_latency. */
void pqa_bystanders_check(const pqa_bystanders *b, unsigned long min_queries, double max_latency);

/* Inside a task: sleeps in 5 ms steps until *flag is non-zero or timeout
 * seconds passed; 0, or -1 on timeout (or if the task's sleep failed). */
int pqa_wait_flag(const int *flag, double timeout);

/* A time bound for the build: `seconds`, stretched 3x under a sanitizer
 * or valgrind. */
double pqa_bound(double seconds);

/* Fails the test unless msg contains one of the needles (NULL-terminated
 * list); what names the context in the failure message. */
void pqa_assert_names(const char *what, const char *msg, const char *const *needles);

/* Grows this process's descriptor table to hold at least n descriptors,
 * now.  In a process with threads the kernel waits for an RCU grace period
 * (~5-20 ms, asleep) each time the table doubles (expand_fdtable): a test
 * opening thousands of sockets inside a stall measurement would see those
 * waits as loop stalls of the kernel's making.  Call it inside the test
 * (Check's fork gives the child a table sized by its open descriptors). */
void pqa_grow_fd_table(int n);

/* The first line of a (libpq) message, for one-line reports; a static
 * buffer of 4 slots, so a printf may hold a few at once. */
const char *pqa_line(const char *msg);

/* Outside a task: runs the loop until every task of it has been released
 * or `timeout` seconds passed; fails the test in the latter case. */
void pqa_drain_loop(struct ev_loop *loop, double timeout);

#endif
