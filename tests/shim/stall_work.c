/*
 * stall_work.c -- stall-test workloads and their runner (see stall_work.h).
 */
#include "stall_work.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#define FAIL(w, ...) (snprintf((w)->err, sizeof (w)->err, __VA_ARGS__), (w)->ok = 0)

static PGconn *open_conn(struct pqa_work *w)
{
    PGconn *c = PQconnectdb(w->conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        FAIL(w, "connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    return c;
}

void pqa_work_connect(struct pqa_work *w)
{
    PGconn *c = open_conn(w);
    if (!c)
        return;
    PGresult *r = PQexec(c, "select 1");
    w->ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!w->ok)
        FAIL(w, "select 1: %s", PQerrorMessage(c));
    w->rows = (unsigned long long)PQntuples(r);
    PQclear(r);
    PQfinish(c);
}

void pqa_work_ping(struct pqa_work *w)
{
    PGPing p = PQping(w->conninfo);
    w->ok = p == PQPING_OK;
    if (!w->ok)
        FAIL(w, "PQping -> %d", p);
    w->rows = 1;
}

void pqa_work_sleep(struct pqa_work *w)
{
    PGconn *c = open_conn(w);
    if (!c)
        return;
    w->ok = 1;
    for (int i = 0; i < 2 && w->ok; i++) {
        PGresult *r = PQexec(c, "select pg_sleep(0.2), 'slept'");
        if (PQresultStatus(r) != PGRES_TUPLES_OK || strcmp(PQgetvalue(r, 0, 1), "slept") != 0)
            FAIL(w, "pg_sleep: %s", PQerrorMessage(c));
        else
            w->rows++;
        PQclear(r);
    }
    PQfinish(c);
}

static void copy_out(struct pqa_work *w, size_t row)
{
    PGconn *c = open_conn(w);
    if (!c)
        return;
    char sql[256];
    unsigned long long want = w->size / (row + 1);
    snprintf(sql, sizeof sql, "copy (select repeat('x', %zu) from generate_series(1, %llu)) to stdout",
             row, want);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COPY_OUT) {
        FAIL(w, "copy out: %s", PQerrorMessage(c));
        PQclear(r);
        PQfinish(c);
        return;
    }
    PQclear(r);
    char *buf;
    int n;
    while ((n = PQgetCopyData(c, &buf, 0)) > 0) {
        w->rows++;
        w->bytes += (unsigned long long)n;
        if ((size_t)n != row + 1)
            FAIL(w, "row %llu has %d bytes", w->rows, n);
        PQfreemem(buf);
    }
    r = PQgetResult(c);
    w->ok = n == -1 && PQresultStatus(r) == PGRES_COMMAND_OK && w->rows == want &&
            w->bytes == want * (row + 1);
    if (!w->ok)
        FAIL(w, "copy out end %d: %s rows %llu/%llu", n, PQerrorMessage(c), w->rows, want);
    PQclear(r);
    PQfinish(c);
}

void pqa_work_copy_out(struct pqa_work *w) { copy_out(w, 1000); }

void pqa_work_select(struct pqa_work *w)
{
    PGconn *c = open_conn(w);
    if (!c)
        return;
    char sql[256];
    unsigned long long want = w->size / 1000;
    snprintf(sql, sizeof sql, "select repeat('s', 1000) from generate_series(1, %llu)", want);
    PGresult *r = PQexec(c, sql);
    w->ok = PQresultStatus(r) == PGRES_TUPLES_OK && (unsigned long long)PQntuples(r) == want;
    if (!w->ok)
        FAIL(w, "select: %s", PQerrorMessage(c));
    w->rows = (unsigned long long)PQntuples(r);
    for (int i = 0; i < PQntuples(r); i++)
        w->bytes += (unsigned long long)PQgetlength(r, i, 0);
    w->keep = r;
    PQfinish(c);
}
void pqa_work_copy_out_wide(struct pqa_work *w) { copy_out(w, 20000); }

void pqa_work_copy_in(struct pqa_work *w)
{
    PGconn *c = open_conn(w);
    if (!c)
        return;
    PQclear(PQexec(c, "create temp table stall_in (i int, a text)"));
    /* the server parses every row but keeps one in 1000: the work is the
     * transfer, not the table */
    PGresult *r = PQexec(c, "copy stall_in from stdin where i % 1000 = 0");
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        FAIL(w, "copy in: %s", PQerrorMessage(c));
        PQclear(r);
        PQfinish(c);
        return;
    }
    PQclear(r);
    char row[1100];
    memset(row, 'y', sizeof row);
    unsigned long long n = w->size / 1000;
    for (unsigned long long i = 1; i <= n; i++) {
        int k = snprintf(row, 20, "%llu\t", i);
        row[k] = 'y';
        row[999] = '\n';
        if (PQputCopyData(c, row, 1000) != 1) {
            FAIL(w, "put: %s", PQerrorMessage(c));
            break;
        }
        w->bytes += 1000;
    }
    if (PQputCopyEnd(c, NULL) != 1)
        FAIL(w, "end: %s", PQerrorMessage(c));
    r = PQgetResult(c);
    w->ok = PQresultStatus(r) == PGRES_COMMAND_OK && strtoull(PQcmdTuples(r), NULL, 10) == n / 1000;
    if (!w->ok)
        FAIL(w, "copy in result: %s (%s)", PQerrorMessage(c), PQcmdTuples(r));
    PQclear(r);
    while ((r = PQgetResult(c)) != NULL)
        PQclear(r);
    r = PQexec(c, "select count(*), coalesce(sum(length(a)), 0) from stall_in");
    if (w->ok && strtoull(PQgetvalue(r, 0, 0), NULL, 10) != n / 1000)
        FAIL(w, "server kept %s rows of %llu", PQgetvalue(r, 0, 0), n);
    w->rows = n;
    PQclear(r);
    PQfinish(c);
}

void pqa_work_lo(struct pqa_work *w)
{
    PGconn *c = open_conn(w);
    if (!c)
        return;
    /* libpq's lo_import/lo_export need a transaction (psql adds one too) */
    PQclear(PQexec(c, "begin"));
    Oid oid = lo_import(c, w->src);
    if (oid == InvalidOid) {
        FAIL(w, "lo_import: %s", PQerrorMessage(c));
    } else if (lo_export(c, oid, w->dst) != 1) {
        FAIL(w, "lo_export: %s", PQerrorMessage(c));
    } else {
        w->ok = 1;
        lo_unlink(c, oid);
    }
    PQclear(PQexec(c, "commit"));
    PQfinish(c);
}

static void lo_prepare(struct pqa_work *w)
{
    w->src = pqa_temp_file(w->size, 42);
    w->dst = pqa_temp_file(0, 0);
}

static void lo_verify(struct pqa_work *w)
{
    size_t a = 0, b = 0;
    char *da = pqa_read_file(w->src, &a), *db = pqa_read_file(w->dst, &b);
    w->bytes = b;
    if (w->ok && !(da && db && a == b && a == w->size && memcmp(da, db, a) == 0))
        FAIL(w, "exported %zu bytes differ from the %zu imported", b, a);
    free(da);
    free(db);
    unlink(w->src);
    unlink(w->dst);
    free(w->src);
    free(w->dst);
    w->src = w->dst = NULL;
}

/* ---- runner ---- */

struct runner {
    const pqa_work_fn *fns;
    struct pqa_work *ws;
    int n, left;
    pqa_stall *st;
    ev_timer limit;
};

struct one {
    struct runner *r;
    int i;
};

static void *work_task(void *arg)
{
    struct one *o = arg;
    struct runner *r = o->r;
    r->fns[o->i](&r->ws[o->i]);
    if (--r->left == 0) { /* the last one ends the measurement */
        pqa_stall_stop(r->st);
        ev_timer_stop(awaitlet_current_loop(), &r->limit);
    }
    return o;
}

static void on_limit(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    ck_abort_msg("workload still running after %.0f s: hung (data left unread?)", t->repeat);
}

void pqa_work_run_many(const pqa_work_fn *fns, struct pqa_work *ws, int n, double limit_s,
                       pqa_stall *st)
{
    struct runner r = {.fns = fns, .ws = ws, .n = n, .left = n, .st = st};
    struct one *ones = calloc((size_t)n, sizeof *ones);
    awaitlet_task **t = calloc((size_t)n, sizeof *t);
    ck_assert(ones && t);
    struct ev_loop *loop = pqa_loop_new();
    ev_timer_init(&r.limit, on_limit, limit_s, 0);
    r.limit.repeat = limit_s; /* only for the message */
    ev_timer_start(loop, &r.limit);
    pqa_stall_start(st, loop);
    for (int i = 0; i < n; i++) {
        ones[i] = (struct one){&r, i};
        t[i] = awaitlet_async_def(loop, work_task, &ones[i]);
        ck_assert_msg(t[i] != NULL, "awaitlet_async_def: %s", strerror(errno));
    }
    for (int i = 0; i < n; i++) {
        errno = 0;
        ck_assert_msg(awaitlet_join(t[i]) == &ones[i], "awaitlet_join: %s", strerror(errno));
    }
    ev_loop_destroy(loop);
    free(ones);
    free(t);
}

void pqa_work_run(pqa_work_fn fn, struct pqa_work *w, double limit_s, pqa_stall *st)
{
    pqa_work_run_many(&fn, w, 1, limit_s, st);
}

static void report(const char *name, double el, const struct pqa_work *w, const pqa_stall *st)
{
    printf("%-28s %7.3f s  rows %-8llu bytes %-10llu ticks %-6lu held %6.2f ms (tick gap %6.2f, "
           "blocked %6.2f)\n",
           name, el, w->rows, w->bytes, st->ticks, st->max_gap * 1e3, st->max_raw_gap * 1e3,
           st->max_blocked * 1e3);
    fflush(stdout);
}

static void assert_bound(const char *name, const pqa_stall *st)
{
    char why[256];
    ck_assert_msg(pqa_stall_measure(st) < pqa_stall_bound(),
                  "%s: the loop was held %.2f ms (blocked %.2f ms; bound %.0f ms; %s)", name, st->max_gap * 1e3,
                  st->max_blocked * 1e3, pqa_stall_bound() * 1e3, pqa_stall_describe(st, why, sizeof why));
}

void pqa_work_check(const char *name, pqa_work_fn fn, struct pqa_work *w, double limit_s)
{
    pqa_work_check_many(&name, &fn, w, 1, limit_s);
}

void pqa_work_check_many(const char *const *names, const pqa_work_fn *fns, struct pqa_work *ws,
                         int n, double limit_s)
{
    pqa_stall st;
    for (int i = 0; i < n; i++)
        if (fns[i] == pqa_work_lo)
            lo_prepare(&ws[i]);
    double t0 = pqa_now();
    pqa_work_run_many(fns, ws, n, limit_s, &st);
    double el = pqa_now() - t0;
    for (int i = 0; i < n; i++) {
        PQclear(ws[i].keep);
        ws[i].keep = NULL;
        if (fns[i] == pqa_work_lo)
            lo_verify(&ws[i]);
        report(names[i], el, &ws[i], &st);
    }
    for (int i = 0; i < n; i++)
        ck_assert_msg(ws[i].ok, "%s: %s", names[i], ws[i].err);
    assert_bound(n == 1 ? names[0] : "all together", &st);
}
