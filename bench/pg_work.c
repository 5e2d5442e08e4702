/*
 * pg_work.c -- the workloads as plain blocking libpq code, and the result
 * checks every variant applies.
 *
 * Variants a, b (tasks) and c (threads) run exactly these functions: this is
 * "the application", written as anybody writes blocking libpq code.  The
 * hand-written state machine (pg_libev.c) sends the same SQL through libpq's
 * async API and checks its results with the same pgb_check_* functions, so
 * no variant can get away with doing less.
 *
 * In a task (a, b) every libpq call here may suspend the task -- inside
 * libpq's own waits, through libpqawait -- and nothing else here does; in a
 * thread (c) the same calls block that thread.  The counters and flags they
 * touch are pg.h's relaxed atomics, so no call here makes a system call of
 * its own on the per-operation path.
 */
#include "pg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *const pgb_workload_names[] = {
    [PGB_SELECT1] = "select1", [PGB_POINT] = "point", [PGB_EXTENDED] = "extended",
    [PGB_COPY] = "copy",       [PGB_STORM] = "storm",
};

/* pgbench's own select-only transaction (pgbench -S), on its own table. */
const char *const pgb_point_sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
/* bench_copy holds 16384 rows of 63 characters: 1 MiB of COPY text. */
const char *const pgb_copy_sql = "COPY bench_copy TO STDOUT";

static atomic_int printed; /* failures printed so far */

void pgb_fail(PGconn *c, const char *what)
{
    atomic_fetch_add_explicit(&pgb.errors, 1, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&printed, 1, memory_order_relaxed) < 5) {
        const char *m = c ? PQerrorMessage(c) : strerror(errno);
        fprintf(stderr, "bench-pg: %s: %s%s", what, m, *m && m[strlen(m) - 1] == '\n' ? "" : "\n");
    }
}

void pgb_mark_connected(struct pgb_session *s)
{
    s->fd = s->conn ? PQsocket(s->conn) : -1;
    atomic_fetch_add_explicit(&pgb.connected, 1, memory_order_release);
}

void pgb_mark_failed(void)
{
    atomic_fetch_add_explicit(&pgb.failed, 1, memory_order_release);
}

int pgb_keep_going(const struct pgb_session *s)
{
    if (s->quota)
        return atomic_load_explicit(&s->ops, memory_order_relaxed) < (unsigned long)s->quota;
    return !atomic_load_explicit(&pgb.stop, memory_order_relaxed);
}

/* A relaxed load and store, not an atomic add: each counter has one writer,
 * and the readers (the sampler) only need a value that was current. */
void pgb_count(struct pgb_session *s)
{
    atomic_store_explicit(&s->ops, atomic_load_explicit(&s->ops, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

long pgb_rss_bytes(void)
{
    long size, resident;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return -1;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * sysconf(_SC_PAGESIZE);
}

const char *pgb_next_aid(struct pgb_session *s, char buf[16])
{
    unsigned x = s->rng; /* xorshift32: cheap, and each session its own */
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    s->rng = x;
    snprintf(buf, 16, "%u", 1 + x % PGB_POINT_ROWS);
    return buf;
}

int pgb_check_tuples(PGconn *c, PGresult *r)
{
    if (!r) {
        pgb_fail(c, "query");
        return -1;
    }
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        atomic_fetch_add_explicit(&pgb.errors, 1, memory_order_relaxed);
        if (atomic_fetch_add_explicit(&printed, 1, memory_order_relaxed) < 5)
            fprintf(stderr, "bench-pg: query: %s (%d rows): %s\n",
                    PQresStatus(PQresultStatus(r)), PQntuples(r), PQresultErrorMessage(r));
        return -1;
    }
    return 0;
}

int pgb_check_copy_end(PGconn *c, PGresult *r, long bytes)
{
    if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
        pgb_fail(c, "COPY end");
        return -1;
    }
    if (bytes != PGB_COPY_BYTES) {
        atomic_fetch_add_explicit(&pgb.errors, 1, memory_order_relaxed);
        fprintf(stderr, "bench-pg: COPY delivered %ld bytes, not %ld\n", bytes, PGB_COPY_BYTES);
        return -1;
    }
    return 0;
}

static int exec_select1(PGconn *c)
{
    PGresult *r = PQexec(c, "SELECT 1");
    int rc = pgb_check_tuples(c, r);
    PQclear(r);
    return rc;
}

static int exec_point(struct pgb_session *s)
{
    char aid[16];
    const char *v[1] = { pgb_next_aid(s, aid) };
    PGresult *r = pgb.workload == PGB_POINT
                      ? PQexecPrepared(s->conn, "point", 1, v, NULL, NULL, 0)
                      : PQexecParams(s->conn, pgb_point_sql, 1, NULL, v, NULL, NULL, 0);
    int rc = pgb_check_tuples(s->conn, r);
    PQclear(r);
    return rc;
}

static int exec_copy(PGconn *c)
{
    PGresult *r = PQexec(c, pgb_copy_sql);
    long bytes = 0;
    char *buf;
    int n, rc;
    if (!r || PQresultStatus(r) != PGRES_COPY_OUT) {
        pgb_fail(c, "COPY");
        PQclear(r);
        return -1;
    }
    PQclear(r);
    while ((n = PQgetCopyData(c, &buf, 0)) > 0) {
        bytes += n;
        PQfreemem(buf);
    }
    if (n == -2) {
        pgb_fail(c, "PQgetCopyData");
        return -1;
    }
    r = PQgetResult(c);
    rc = pgb_check_copy_end(c, r, bytes);
    PQclear(r);
    while ((r = PQgetResult(c)))
        PQclear(r);
    return rc;
}

static PGconn *connect_checked(void)
{
    PGconn *c = PQconnectdb(pgb.conninfo);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        pgb_fail(c, "connect");
        PQfinish(c);
        return NULL;
    }
    return c;
}

int pgb_connect(struct pgb_session *s)
{
    s->rng = 2463534242u + 7919u * (unsigned)s->index;
    if (pgb.workload == PGB_STORM)
        return 0;
    if (!(s->conn = connect_checked()))
        return -1;
    if (pgb.workload == PGB_POINT) {
        PGresult *r = PQprepare(s->conn, "point", pgb_point_sql, 1, NULL);
        int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        if (!ok) {
            pgb_fail(s->conn, "PQprepare");
            return -1;
        }
    }
    return 0;
}

void pgb_disconnect(struct pgb_session *s)
{
    PQfinish(s->conn);
    s->conn = NULL;
}

int pgb_churn_once(void)
{
    PGconn *c = connect_checked();
    int rc;
    if (!c)
        return -1;
    rc = exec_select1(c);
    PQfinish(c);
    return rc;
}

int pgb_op(struct pgb_session *s)
{
    switch (pgb.workload) {
    case PGB_SELECT1:
        return exec_select1(s->conn);
    case PGB_POINT:
    case PGB_EXTENDED:
        return exec_point(s);
    case PGB_COPY:
        return exec_copy(s->conn);
    case PGB_STORM:
        return pgb_churn_once();
    }
    return -1;
}

void pgb_session_main(struct pgb_session *s, int (*wait_go)(void))
{
    if (pgb_connect(s) < 0 || (pgb.hold && pgb_op(s) < 0)) {
        pgb_mark_failed();
        goto out;
    }
    pgb_mark_connected(s);
    if (wait_go() < 0) {
        pgb_fail(NULL, "waiting for the start");
        goto out;
    }
    while (pgb_keep_going(s)) {
        if (pgb_op(s) < 0)
            break;
        pgb_count(s);
    }
out:
    if (s->conn)
        pgb_disconnect(s);
    atomic_fetch_add_explicit(&pgb.finished, 1, memory_order_release);
}

void pgb_churn_main(int (*wait_go)(void))
{
    if (wait_go() < 0)
        return;
    while (!atomic_load_explicit(&pgb.stop, memory_order_relaxed) &&
           atomic_load_explicit(&pgb.finished, memory_order_acquire) < pgb.sessions) {
        if (pgb_churn_once() < 0)
            return;
        atomic_fetch_add_explicit(&pgb.churn_ops, 1, memory_order_relaxed);
    }
}
