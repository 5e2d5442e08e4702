/*
 * session.c -- the stress program's sessions: connecting, LISTEN,
 * notifications, and the repair that brings a session back to idle after
 * whatever chaos did (see stress.h).
 *
 * A repair runs with the slot's in_call set, like an operation: the task
 * suspends only inside libpq calls then (or in nap, with in_call clear),
 * so chaos may PQfinish the connection under it.  A write that failed is
 * checked here once the session works again: all of its rows or none.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pqawait.h"
#include "stress.h"

/* ---- sessions ---- */

/* Server notices (a terminated session's FATAL, pg_terminate_backend of a
 * pid that is gone) are counted, not printed: chaos makes thousands. */
void st_notice(void *arg, const char *msg)
{
    (void)msg;
    ST_ADD(((st_run *)arg)->notices, 1);
}

int st_connect(st_slot *s)
{
    st_run *run = s->lp->run;
    char ci[1400];
    int kind = s->id % 3; /* unix socket, TCP, TLS (host-name lookup on a worker) */
    const char *host = getenv("PQAWAIT_TEST_HOST"), *port = getenv("PQAWAIT_TEST_PORT"),
               *db = getenv("PQAWAIT_TEST_DB"), *root = getenv("PQAWAIT_TEST_SSLROOT");
    if (kind == 0)
        snprintf(ci, sizeof ci, "host='%s' port=%s", host, port);
    else if (kind == 1)
        snprintf(ci, sizeof ci, "host=127.0.0.1 port=%s sslmode=disable", port);
    else
        snprintf(ci, sizeof ci, "host=localhost port=%s sslmode=verify-full sslrootcert='%s'", port, root);
    size_t n = strlen(ci);
    snprintf(ci + n, sizeof ci - n, " dbname=%s user=pqa_trust gssencmode=disable application_name=%s-%d", db,
             run->prefix, s->id);
    s->conn = NULL; /* chaos leaves a slot without a connection alone */
    s->prepared = 0;
    s->backend = 0;
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        if (!st_excused(s))
            st_fail(run, "slot %d: connect: %.300s", s->id, PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    PQsetNoticeProcessor(c, st_notice, s->lp->run);
    s->conn = c;
    s->foreign_finished = 0;
    ST_ADD(run->reconnects, 1);
    return 0;
}

/* After a (re)connect: LISTEN again, note the backend. */
int st_session_setup(st_slot *s)
{
    char sql[128];
    snprintf(sql, sizeof sql, "listen \"%s\"", s->channel);
    PGresult *r = PQexec(s->conn, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (ok)
        s->backend = PQbackendPID(s->conn);
    s->prepared = 0;
    return ok ? 0 : -1;
}

void st_take_notifies(st_slot *s)
{
    if (!s->conn)
        return;
    PGnotify *n;
    while ((n = PQnotifies(s->conn)) != NULL) {
        int from = -1, to = -1;
        if (strcmp(n->relname, s->channel) != 0) {
            st_fail(s->lp->run, "slot %d got a notification on channel %s", s->id, n->relname);
        } else if (sscanf(n->extra, "final:%d:%d", &from, &to) == 2) {
            if (to != s->id)
                st_fail(s->lp->run, "slot %d got the final notification for slot %d", s->id, to);
            else
                s->final_got = 1;
        } else if (sscanf(n->extra, "from:%d:to:%d", &from, &to) != 2 || to != s->id) {
            st_fail(s->lp->run, "slot %d got a notification meant for another: %s", s->id, n->extra);
        } else {
            s->notified++;
            ST_ADD(s->lp->run->notifies_got, 1);
        }
        PQfreemem(n);
    }
}

/* Checks a write that failed earlier, on a healthy session: 0 done (or
 * nothing to do), -1 try again later. */
static int check_pending(st_slot *s)
{
    struct st_pending *p = &s->pending;
    if (!p->kind)
        return 0;
    char sql[512];
    if (p->kind == OP_COPY_IN)
        snprintf(sql, sizeof sql,
                 "select count(*), coalesce(sum(length(payload)), 0), coalesce(sum(ascii(payload)), 0)"
                 " from %s where slot = %d and seq = %lu",
                 st_table_copy, s->id, p->seq);
    else
        snprintf(sql, sizeof sql, "select coalesce(string_agg(k::text, ',' order by k), '') from %s"
                                  " where slot = %d and seq = %lu",
                 st_table_kv, s->id, p->seq);
    PGresult *r = PQexec(s->conn, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        PQclear(r);
        return -1;
    }
    /* all or nothing; nothing if it failed and the session survived (a
     * lost session leaves the commit's outcome unknown); all, if it
     * succeeded and only its clean-up failed (or nothing, if the delete
     * went through after all) */
    const char *how = p->succeeded ? "succeeded" : p->survived ? "failed, session survived" : "failed, session lost";
    if (p->kind == OP_COPY_IN) {
        long rows = atol(PQgetvalue(r, 0, 0));
        long long len = atoll(PQgetvalue(r, 0, 1)), first = atoll(PQgetvalue(r, 0, 2));
        if (rows != 0 && (p->survived || rows != p->rows || len != p->sumlen || first != p->sumfirst))
            st_fail(s->lp->run, "slot %d: a COPY IN (#%lu, %s) left %ld of %ld rows (length sum %lld of %lld)",
                    s->id, p->seq, how, rows, p->rows, len, p->sumlen);
    } else {
        const char *got = PQgetvalue(r, 0, 0);
        if (strcmp(got, "") != 0 && (p->survived || strcmp(got, "1,3") != 0))
            st_fail(s->lp->run, "slot %d: a transaction (#%lu, %s) left rows {%s}", s->id, p->seq, how, got);
    }
    PQclear(r);
    snprintf(sql, sizeof sql, "delete from %s where slot = %d and seq = %lu",
             p->kind == OP_COPY_IN ? st_table_copy : st_table_kv,
             s->id, p->seq);
    r = PQexec(s->conn, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (ok)
        p->kind = 0;
    return ok ? 0 : -1;
}

/* A pause between repair attempts.  in_call is 0 meanwhile: the task waits
 * outside libpq, where a PQfinish by chaos would free the connection. */
static void nap(st_slot *s)
{
    s->in_call = 0;
    (void)awaitlet_sleep(0.01);
    s->in_call = 1;
}

/* Ends whatever call a failure left unfinished (a COPY, results not read). */
static void drain(st_slot *s)
{
    PGresult *r;
    for (int i = 0; i < 100 && PQtransactionStatus(s->conn) == PQTRANS_ACTIVE; i++) {
        if ((r = PQgetResult(s->conn)) == NULL)
            break;
        int st = PQresultStatus(r);
        PQclear(r);
        if (st == PGRES_COPY_IN) {
            (void)PQputCopyEnd(s->conn, "stress: abandoned");
        } else if (st == PGRES_COPY_OUT) {
            char *buf;
            while (PQgetCopyData(s->conn, &buf, 0) > 0)
                PQfreemem(buf);
        }
        if (PQstatus(s->conn) != CONNECTION_OK)
            break;
    }
}

/* PQreset: a new session, so it needs LISTEN and its statement again. */
void st_reset_session(st_slot *s)
{
    s->backend = 0;
    s->prepared = 0;
    PQreset(s->conn);
    if (PQstatus(s->conn) == CONNECTION_OK)
        ST_ADD(s->lp->run->reconnects, 1);
}

/* A connection chaos PQfinish'ed while this task was using it is this
 * task's to free (include/pqawait.h: only the task that was inside libpq
 * with it may), before it ends. */
void st_drop_finished(st_slot *s)
{
    if (s->conn && s->foreign_finished) {
        PGconn *old = s->conn;
        s->conn = NULL;
        PQfinish(old);
    }
}

int st_cancelled(void)
{
    /* a deadline is chaos's too: cleared, the work goes on; a
     * cancellation stays */
    if (awaitlet_interrupted())
        awaitlet_set_deadline(awaitlet_current(), 0);
    return awaitlet_interrupted();
}

void st_repair(st_slot *s)
{
    s->in_call = 1;
    for (int attempt = 0; attempt < 50 && !s->lp->run->failures; attempt++) {
        st_drop_finished(s);
        /* A cancelled task's calls are cut short (its connects abandoned
         * after the grace): it leaves the repair to the slot's next task. */
        if (st_cancelled())
            break;
        if (attempt > 0)
            nap(s);
        if (!s->conn) {
            if (st_connect(s) < 0)
                continue;
        } else if (PQstatus(s->conn) != CONNECTION_OK) {
            st_reset_session(s);
        } else {
            if (PQpipelineStatus(s->conn) != PQ_PIPELINE_OFF) {
                PGresult *r;
                for (int i = 0; i < 64 && PQpipelineStatus(s->conn) != PQ_PIPELINE_OFF; i++) {
                    while ((r = PQgetResult(s->conn)) != NULL)
                        PQclear(r);
                    if (PQexitPipelineMode(s->conn) == 1)
                        break;
                    if (PQstatus(s->conn) != CONNECTION_OK)
                        break;
                }
                if (PQpipelineStatus(s->conn) != PQ_PIPELINE_OFF) {
                    st_reset_session(s); /* could not leave it cleanly */
                    continue;
                }
            }
            drain(s);
            if (PQtransactionStatus(s->conn) == PQTRANS_INTRANS || PQtransactionStatus(s->conn) == PQTRANS_INERROR)
                PQclear(PQexec(s->conn, "rollback"));
            if (PQtransactionStatus(s->conn) != PQTRANS_IDLE) {
                st_reset_session(s);
                continue;
            }
            if (!s->backend && st_session_setup(s) < 0)
                continue;
            if (check_pending(s) < 0)
                continue;
            s->in_call = 0;
            return;
        }
        /* a new session (or none): set up and checked on the next round */
    }
    s->in_call = 0;
}

