/*
 * ops.c -- the stress program's operations: each a few libpq calls whose
 * results carry a token unique to the slot and the operation, checked on
 * the spot (see stress.h).
 *
 * The rule every operation keeps: a call that succeeds must return exactly
 * this slot's data -- whatever chaos did, a wrong value is a failure.  A
 * call that fails is a failure too, unless chaos hit the slot within the
 * last few seconds (st_hit) or the task is interrupted right now (the
 * interruption rule of include/pqawait.h: a cancelled task's statements end
 * with 57014, its connects are abandoned, a stuck statement is given up):
 * then the operation says so and the slot repairs its session (session.c).
 * Writes that failed are checked once the session is healthy again: a COPY
 * IN or a transaction left all of its rows or none (all only when the
 * connection was lost around the commit, whose outcome the client cannot
 * know), never a part.
 *
 * A slot's in_call is set for the whole of an operation and of a repair:
 * the slot's task is suspended only inside libpq calls then, so chaos may
 * PQfinish its connection (the shim shuts the session down under it).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq/libpq-fs.h>

#include "pqawait.h"
#include "stress.h"


const char *st_table_copy, *st_table_kv;

static const char *opname(int op)
{
    static const char *const n[N_OPS] = {"simple", "params", "prepared", "copy-out", "copy-in", "large-object",
                                         "transaction", "notify", "pipeline", "sleep", "reset"};
    return n[op];
}

/* A failed call: st_excused right after a fault, a failure otherwise.  Always
 * -1: the session needs a repair. */
int st_excused(const st_slot *s)
{
    return awaitlet_interrupted() || st_now() - s->last_fault < ST_FAULT_WINDOW ||
           (s->terminated != 0 && s->terminated == s->backend) || /* chaos ended this very session */
           s->foreign_finished; /* chaos PQfinish'ed it: shut down until the slot frees it */
}

/* A cancel request is asynchronous: PostgreSQL applies it to whatever its
 * backend runs when the signal arrives.  The shim makes the next call wait
 * for its own request at most 0.1 s (include/pqawait.h, Interruptions), so
 * on a server loaded enough to take seconds over a cancel connection, a
 * cancel sent for an earlier statement of the session can end a later one
 * with 57014.  Excused for LATE_CANCEL_WINDOW after a cancel of the slot,
 * and counted. */
#define LATE_CANCEL_WINDOW 30.0

static int late_cancel(const st_slot *s)
{
    const char *msg = s->conn ? PQerrorMessage(s->conn) : "";
    return st_now() - s->last_cancel < LATE_CANCEL_WINDOW &&
           strstr(msg, "canceling statement due to user request") != NULL; /* 57014's message */
}

static int failed(st_slot *s, int op, const char *what)
{
    if (st_excused(s)) {
        ST_ADD(s->lp->run->tolerated, 1);
        return -1;
    }
    if (late_cancel(s)) {
        ST_ADD(s->lp->run->late_cancels, 1);
        return -1;
    }
    const char *msg = s->conn ? PQerrorMessage(s->conn) : "(no connection)";
    /* the backend's pid, to find the session in the server's log */
    static const char *const kinds[N_FAULTS] = {"task cancel", "deadline", "pqawait_cancel", "foreign PQfinish",
                                                "pg_terminate_backend", "callback cancel", "callback deadline",
                                                "refused call"};
    st_fail(s->lp->run,
            "slot %d, %s #%lu, backend %d (session's %d), socket %d, no fault for %.1f s (the last: %s; foreign "
            "PQfinish pending %d, backend terminated %d): %s: %.300s",
            s->id, opname(op), s->seq, s->conn ? PQbackendPID(s->conn) : 0, s->backend, s->conn ? PQsocket(s->conn) : -1,
            st_now() - s->last_fault, s->last_fault > 0 ? kinds[s->last_kind] : "none", s->foreign_finished,
            s->terminated, what, msg);
    return -1;
}

/* A wrong answer: always a failure. */
static int wrong(st_slot *s, int op, const char *want, const char *got)
{
    st_fail(s->lp->run, "slot %d, %s #%lu: wanted \"%.100s\", got \"%.100s\"", s->id, opname(op), s->seq, want,
            got ? got : "(null)");
    return -1;
}

/* A random size below n -- the largest while the slot warms up, so that
 * every session's buffers reach their full size before RSS is sampled. */
static uint32_t size_below(st_slot *s, uint32_t n)
{
    return s->warming ? n - 1 : st_rand(&s->rng, n);
}

static void token(st_slot *s, char *buf, size_t cap, int part)
{
    snprintf(buf, cap, "s%d.%lu.%d", s->id, s->seq, part);
}

/* ---- the operations ---- */

static int expect_one(st_slot *s, int op, PGresult *r, const char *want)
{
    int rc = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        rc = failed(s, op, PQresStatus(PQresultStatus(r)));
    else if (strcmp(PQgetvalue(r, 0, 0), want) != 0)
        rc = wrong(s, op, want, PQgetvalue(r, 0, 0));
    PQclear(r);
    return rc;
}

static int op_simple(st_slot *s)
{
    char tok[64], sql[128];
    token(s, tok, sizeof tok, 0);
    snprintf(sql, sizeof sql, "select '%s'::text, pg_backend_pid()", tok);
    return expect_one(s, OP_SIMPLE, PQexec(s->conn, sql), tok);
}

static int op_params(st_slot *s)
{
    char tok[64], num[16], want[96];
    token(s, tok, sizeof tok, 0);
    int n = (int)st_rand(&s->rng, 100000);
    snprintf(num, sizeof num, "%d", n);
    snprintf(want, sizeof want, "%s:%d", tok, 2 * n);
    const char *pv[2] = {tok, num};
    return expect_one(s, OP_PARAMS,
                      PQexecParams(s->conn, "select $1::text || ':' || ($2::int * 2)::text", 2, NULL, pv, NULL,
                                   NULL, 0),
                      want);
}

static int op_prepared(st_slot *s)
{
    if (!s->prepared) {
        PGresult *r = PQprepare(s->conn, "st", "select $1::text || '+' || ($2::int + 1)::text", 2, NULL);
        int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        if (!ok)
            return failed(s, OP_PREPARED, "PQprepare");
        s->prepared = 1;
    }
    char tok[64], num[16], want[96];
    token(s, tok, sizeof tok, 1);
    int n = (int)st_rand(&s->rng, 1000);
    snprintf(num, sizeof num, "%d", n);
    snprintf(want, sizeof want, "%s+%d", tok, n + 1);
    const char *pv[2] = {tok, num};
    return expect_one(s, OP_PREPARED, PQexecPrepared(s->conn, "st", 2, pv, NULL, NULL, 0), want);
}

static int op_sleep(st_slot *s)
{
    char tok[64], secs[16];
    token(s, tok, sizeof tok, 2);
    snprintf(secs, sizeof secs, "%.3f", st_rand(&s->rng, 50) / 1000.0);
    const char *pv[2] = {tok, secs};
    return expect_one(s, OP_SLEEP,
                      PQexecParams(s->conn, "select $1::text, pg_sleep($2::float8)", 2, NULL, pv, NULL, NULL, 0), tok);
}

static int op_copy_out(st_slot *s)
{
    char tok[64], sql[256];
    token(s, tok, sizeof tok, 3);
    long k = 1 + (long)size_below(s, 500);
    snprintf(sql, sizeof sql, "copy (select '%s/' || i, i * i from generate_series(1, %ld) i) to stdout", tok, k);
    PGresult *r = PQexec(s->conn, sql);
    int st = PQresultStatus(r);
    PQclear(r);
    if (st != PGRES_COPY_OUT)
        return failed(s, OP_COPY_OUT, "COPY OUT did not start");
    char *buf;
    int n;
    long i = 0;
    int rc = 0;
    while ((n = PQgetCopyData(s->conn, &buf, 0)) > 0) {
        char want[128];
        i++;
        snprintf(want, sizeof want, "%s/%ld\t%ld\n", tok, i, i * i);
        if (rc == 0 && (i > k || strcmp(buf, want) != 0))
            rc = wrong(s, OP_COPY_OUT, want, buf);
        PQfreemem(buf);
    }
    if (n == -2)
        return rc ? rc : failed(s, OP_COPY_OUT, "PQgetCopyData");
    while ((r = PQgetResult(s->conn)) != NULL) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == 0)
            rc = failed(s, OP_COPY_OUT, "COPY OUT result");
        else if (PQresultStatus(r) == PGRES_COMMAND_OK && i != k && rc == 0)
            rc = wrong(s, OP_COPY_OUT, "all rows", "fewer rows, and success");
        PQclear(r);
        if (PQstatus(s->conn) != CONNECTION_OK)
            break;
    }
    return rc;
}

static int op_copy_in(st_slot *s)
{
    char sql[256];
    struct st_pending *pp = &s->pending, p = {.kind = OP_COPY_IN, .seq = s->seq, .rows = 1 + (long)size_below(s, 300)};
    *pp = p; /* the checksums follow below */
    snprintf(sql, sizeof sql, "copy %s (slot, seq, line, payload) from stdin", st_table_copy);
    PGresult *r = PQexec(s->conn, sql);
    int st = PQresultStatus(r);
    PQclear(r);
    if (st != PGRES_COPY_IN)
        return failed(s, OP_COPY_IN, "COPY IN did not start");
    int broke = 0;
    for (long line = 0; line < p.rows && !broke; line++) {
        char buf[300];
        int len = 1 + (int)size_below(s, 200);
        int at = snprintf(buf, sizeof buf, "%d\t%lu\t%ld\t", s->id, s->seq, line);
        for (int c = 0; c < len; c++)
            buf[at + c] = (char)('a' + st_rand(&s->rng, 26));
        p.sumlen += len;
        p.sumfirst += (unsigned char)buf[at];
        buf[at + len] = '\n';
        if (PQputCopyData(s->conn, buf, at + len + 1) != 1)
            broke = 1;
    }
    int rc = 0;
    if (broke || PQputCopyEnd(s->conn, NULL) != 1) {
        rc = failed(s, OP_COPY_IN, "sending COPY data");
    } else {
        while ((r = PQgetResult(s->conn)) != NULL) {
            if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == 0)
                rc = failed(s, OP_COPY_IN, "COPY IN result");
            PQclear(r);
            if (PQstatus(s->conn) != CONNECTION_OK)
                break;
        }
    }
    p.survived = PQstatus(s->conn) == CONNECTION_OK;
    p.succeeded = rc == 0;
    *pp = p;
    if (rc < 0)
        return rc; /* checked once the session is healthy again */
    p.survived = 0;
    /* success: exactly what was sent, then gone again */
    snprintf(sql, sizeof sql,
             "with d as (delete from %s where slot = %d and seq = %lu returning payload)"
             " select count(*) || ',' || coalesce(sum(length(payload)), 0) || ',' || coalesce(sum(ascii(payload)), 0)"
             " from d",
             st_table_copy, s->id, s->seq);
    char want[96];
    snprintf(want, sizeof want, "%ld,%lld,%lld", p.rows, p.sumlen, p.sumfirst);
    int rc2 = expect_one(s, OP_COPY_IN, PQexec(s->conn, sql), want);
    if (rc2 == 0)
        pp->kind = 0;
    else
        pp->survived = 0; /* succeeded: all rows, or none once deleted */
    return rc2;
}

static int op_lo(st_slot *s)
{
    size_t size = 1 + size_below(s, 65536);
    char *data = malloc(size), *back = malloc(size);
    int rc = -1;
    if (!data || !back)
        goto out;
    for (size_t i = 0; i < size; i++)
        data[i] = (char)st_rand(&s->rng, 256);
    PGresult *r = PQexec(s->conn, "begin");
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        rc = failed(s, OP_LO, "begin");
        goto out;
    }
    Oid oid = lo_creat(s->conn, INV_WRITE | INV_READ);
    int fd = oid == InvalidOid ? -1 : lo_open(s->conn, oid, INV_WRITE | INV_READ);
    if (fd < 0 || lo_write(s->conn, fd, data, size) != (int)size || lo_lseek(s->conn, fd, 0, SEEK_SET) != 0) {
        rc = failed(s, OP_LO, "lo_creat/open/write/lseek");
        goto out;
    }
    size_t got = 0;
    while (got < size) {
        int n = lo_read(s->conn, fd, back + got, size - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    if (got != size) {
        rc = failed(s, OP_LO, "lo_read");
        goto out;
    }
    if (memcmp(data, back, size) != 0) {
        rc = wrong(s, OP_LO, "the bytes written", "other bytes");
        goto out;
    }
    if (lo_close(s->conn, fd) != 0 || lo_unlink(s->conn, oid) != 1) {
        rc = failed(s, OP_LO, "lo_close/unlink");
        goto out;
    }
    r = PQexec(s->conn, "commit");
    ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    rc = ok ? 0 : failed(s, OP_LO, "commit");
out:
    free(data);
    free(back);
    return rc;
}

/* Rows 1 and 3 survive: 2 is rolled back to the savepoint. */
static int op_txn(st_slot *s)
{
    char sql[768];
    snprintf(sql, sizeof sql,
             "begin; insert into %1$s values (%2$d, %3$lu, 1); savepoint a;"
             " insert into %1$s values (%2$d, %3$lu, 2); rollback to savepoint a;"
             " insert into %1$s values (%2$d, %3$lu, 3); commit",
             st_table_kv, s->id, s->seq);
    struct st_pending *pp = &s->pending;
    *pp = (struct st_pending){.kind = OP_TXN, .seq = s->seq};
    PGresult *r = PQexec(s->conn, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        pp->survived = PQstatus(s->conn) == CONNECTION_OK;
        return failed(s, OP_TXN, "transaction");
    }
    pp->succeeded = 1;
    snprintf(sql, sizeof sql,
             "with d as (delete from %s where slot = %d and seq = %lu returning k)"
             " select coalesce(string_agg(k::text, ',' order by k), '') from d",
             st_table_kv, s->id, s->seq);
    int rc = expect_one(s, OP_TXN, PQexec(s->conn, sql), "1,3");
    if (rc == 0)
        pp->kind = 0;
    return rc;
}

static int op_notify(st_slot *s)
{
    st_loop *lp = s->lp;
    st_slot *t = &lp->slots[st_rand(&s->rng, (uint32_t)lp->nslots)];
    char payload[96];
    snprintf(payload, sizeof payload, "from:%d:to:%d:%lu", s->id, t->id, s->seq);
    const char *pv[2] = {t->channel, payload};
    PGresult *r = PQexecParams(s->conn, "select pg_notify($1, $2), 'sent'", 2, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        ST_ADD(lp->run->notifies_sent, 1);
    return expect_one(s, OP_NOTIFY, r, "");
}

static int op_pipeline(st_slot *s)
{
    int m = 2 + (int)size_below(s, 4);
    char tok[6][64];
    if (PQenterPipelineMode(s->conn) != 1)
        return failed(s, OP_PIPELINE, "PQenterPipelineMode");
    for (int i = 0; i < m; i++) {
        token(s, tok[i], sizeof tok[i], 10 + i);
        const char *pv[1] = {tok[i]};
        if (PQsendQueryParams(s->conn, "select $1::text", 1, NULL, pv, NULL, NULL, 0) != 1)
            return failed(s, OP_PIPELINE, "PQsendQueryParams");
    }
    if (PQpipelineSync(s->conn) != 1)
        return failed(s, OP_PIPELINE, "PQpipelineSync");
    for (int i = 0; i < m; i++) {
        PGresult *r = PQgetResult(s->conn);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            PQclear(r);
            return failed(s, OP_PIPELINE, "pipeline result");
        }
        if (strcmp(PQgetvalue(r, 0, 0), tok[i]) != 0) {
            int rc = wrong(s, OP_PIPELINE, tok[i], PQgetvalue(r, 0, 0));
            PQclear(r);
            return rc;
        }
        PQclear(r);
        if ((r = PQgetResult(s->conn)) != NULL) { /* the end of this query's results */
            PQclear(r);
            return wrong(s, OP_PIPELINE, "the end of a result", "another result");
        }
    }
    PGresult *r = PQgetResult(s->conn);
    int sync = PQresultStatus(r) == PGRES_PIPELINE_SYNC;
    PQclear(r);
    if (!sync || PQexitPipelineMode(s->conn) != 1)
        return failed(s, OP_PIPELINE, "pipeline sync / exit");
    return 0;
}

static int op_reset(st_slot *s)
{
    st_reset_session(s);
    if (PQstatus(s->conn) != CONNECTION_OK)
        return failed(s, OP_RESET, "PQreset");
    return st_session_setup(s) < 0 ? failed(s, OP_RESET, "listen after PQreset") : 0;
}

int st_op(st_slot *s, int op)
{
    static const unsigned char weights[N_OPS] = {
        [OP_SIMPLE] = 14, [OP_PARAMS] = 14, [OP_PREPARED] = 12, [OP_COPY_OUT] = 8, [OP_COPY_IN] = 8, [OP_LO] = 6,
        [OP_TXN] = 8, [OP_NOTIFY] = 10, [OP_PIPELINE] = 8, [OP_SLEEP] = 10, [OP_RESET] = 2,
    };
    unsigned total = 0;
    for (int i = 0; i < N_OPS; i++)
        total += weights[i];
    unsigned pick = st_rand(&s->rng, total);
    if (op < 0)
        for (op = 0; pick >= weights[op]; op++)
            pick -= weights[op];
    if (!s->conn || PQstatus(s->conn) != CONNECTION_OK || s->foreign_finished || !s->backend || s->pending.kind ||
        PQtransactionStatus(s->conn) != PQTRANS_IDLE || PQpipelineStatus(s->conn) != PQ_PIPELINE_OFF)
        return -1; /* a repair first (it checks a pending write; a cancelled
                      task may have left the session before its repair) */
    s->seq++;
    s->in_call = 1;
    int rc;
    switch (op) {
    case OP_SIMPLE: rc = op_simple(s); break;
    case OP_PARAMS: rc = op_params(s); break;
    case OP_PREPARED: rc = op_prepared(s); break;
    case OP_COPY_OUT: rc = op_copy_out(s); break;
    case OP_COPY_IN: rc = op_copy_in(s); break;
    case OP_LO: rc = op_lo(s); break;
    case OP_TXN: rc = op_txn(s); break;
    case OP_NOTIFY: rc = op_notify(s); break;
    case OP_PIPELINE: rc = op_pipeline(s); break;
    case OP_SLEEP: rc = op_sleep(s); break;
    default: rc = op_reset(s); break;
    }
    s->in_call = 0;
    if (rc == 0)
        ST_ADD(s->lp->run->ops[op], 1);
    st_take_notifies(s);
    if (rc == 0 && (PQstatus(s->conn) != CONNECTION_OK || PQtransactionStatus(s->conn) != PQTRANS_IDLE))
        rc = -1; /* e.g. a cancel that came in after the last check */
    return rc;
}

int st_warm_up(st_slot *s)
{
    static const int kinds[] = {OP_SIMPLE, OP_PARAMS, OP_PREPARED, OP_COPY_OUT, OP_COPY_IN, OP_LO,
                                OP_TXN, OP_NOTIFY, OP_PIPELINE};
    int rc = 0;
    s->warming = 1;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0] && rc == 0; i++)
        rc = st_op(s, kinds[i]);
    s->warming = 0;
    return rc;
}
