/*
 * stall_work.h -- the workloads of the stall tests, shared by test_stall.c
 * (direct to the server) and test_proxy.c (through the delaying proxy).
 *
 * Each workload runs inside a task beside the 1 ms stall meter and reports
 * what it actually did (rows, bytes), so a test can't pass by doing nothing.
 */
#ifndef PQA_TESTS_STALL_WORK_H
#define PQA_TESTS_STALL_WORK_H

#include <stddef.h>

#include "stall.h"

struct pqa_work {
    const char *conninfo;   /* where to connect (owned by the caller) */
    size_t size;            /* bytes to move, for the bulk workloads */
    char *src, *dst;        /* pqa_work_lo's files, made and checked outside
                               the task (their CPU time is the test's, not
                               the shim's) */
    void *keep;             /* a PGresult to PQclear after the measurement:
                               freeing 30 MB of rows is ~40 ms of plain CPU
                               in libpq, not a wait the shim could yield in */
    /* results */
    int ok;
    char err[512];
    unsigned long long rows, bytes;
};

typedef void (*pqa_work_fn)(struct pqa_work *w);

void pqa_work_connect(struct pqa_work *w);       /* connect + select 1 */
void pqa_work_ping(struct pqa_work *w);          /* PQping == PQPING_OK */
void pqa_work_sleep(struct pqa_work *w);         /* two pg_sleep(0.2) queries */
void pqa_work_copy_out(struct pqa_work *w);      /* COPY OUT of ~size bytes, 1000-byte rows */
void pqa_work_copy_out_wide(struct pqa_work *w); /* COPY OUT of ~size bytes, 20000-byte rows */
void pqa_work_select(struct pqa_work *w);        /* one PQexec with a ~size-byte result */
void pqa_work_copy_in(struct pqa_work *w);       /* COPY IN of ~size bytes */
void pqa_work_lo(struct pqa_work *w);            /* lo_import + lo_export of w->src to w->dst */

/* Runs fn(w) in a task on a fresh loop beside the stall meter; fails the
 * test if it takes longer than limit_s (a hang, e.g. data left inside
 * OpenSSL).  *st receives the measurement. */
void pqa_work_run(pqa_work_fn fn, struct pqa_work *w, double limit_s, pqa_stall *st);

/* As pqa_work_run, for n workloads at once (one task each) on one loop;
 * the measurement ends when the last one does. */
void pqa_work_run_many(const pqa_work_fn *fns, struct pqa_work *ws, int n, double limit_s,
                       pqa_stall *st);

/* n workloads at once through pqa_work_check's checks (one stall bound for
 * the whole run). */
void pqa_work_check_many(const char *const *names, const pqa_work_fn *fns, struct pqa_work *ws,
                         int n, double limit_s);

/* pqa_work_run, then asserts w->ok and the stall bound, printing a line.
 * For pqa_work_lo it also makes the size-byte source file first and checks
 * the exported copy afterwards. */
void pqa_work_check(const char *name, pqa_work_fn fn, struct pqa_work *w, double limit_s);

#endif
