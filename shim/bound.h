/*
 * bound.h -- what the interruption timeline (scope.c) keeps beyond one
 * call: per-statement records, abandoned connections and their messages
 * (see bound.c).
 */
#ifndef PQAWAIT_BOUND_H
#define PQAWAIT_BOUND_H

#include <awaitlet.h>
#include <libpq-fe.h>

#include "cancel.h"

/* The timeline's constants (pqawait_set_interrupt_bounds), seconds. */
double pqawait__grace(void);
double pqawait__give_up(void);

/* Records of interrupted statements in the process; 0 lets scopes skip
 * every lookup. */
extern int pqawait__stmts;

/* The statement running on conn was first seen interrupted (in task
 * `task`, for cause ECANCELED/ETIMEDOUT) at `now`: returns the time its
 * timeline started -- `now` for a new record, the record's own time when
 * the same task's same statement was seen before. */
double pqawait__stmt_seen(PGconn *conn, awaitlet_task *task, double now, int cause);

/* The statement on conn is past its grace and has not ended, at `now`
 * (mono() seconds): start a cancel request for it unless one is on its
 * way, or the last one went less than the back-off ago (20 ms after the
 * first, then doubling, at most 1 s: PostgreSQL drops a request that
 * arrives before the statement runs).  Returns when to call again (an
 * absolute time), or -1: no request can be sent.  Never waits. */
double pqawait__stmt_cancel(PGconn *conn, double now);

/* The task is not interrupted any more: forget conn's record. */
void pqawait__stmt_forget(PGconn *conn);

/* A query-type call on conn is leaving: if the statement is over (conn
 * idle or broken), its record ends.  Cheap when there are none. */
void pqawait__stmt_leave(PGconn *conn);

/* Give up on the statement on conn: its socket fd is replaced by a dead
 * one (libpq's next read sees end-of-file, its next write EPIPE) and conn
 * is marked with a line naming `cause` and what became of the cancel. */
void pqawait__stmt_abandon(PGconn *conn, int fd, int cause);

/* A connect-type call on conn was abandoned for `cause`: mark conn. */
void pqawait__connect_abandoned(PGconn *conn, int cause);

/* Mark the result an abandoned call returned, so that
 * PQresultErrorMessage names the cause too.  NULL: nothing. */
void pqawait__result_abandoned(PGconn *conn, PGresult *res);

/* Cancel requests of the shim still on their way for statements that have
 * ended (0: none anywhere; a relaxed read). */
extern int pqawait__flying;

/* 1 if the shim's cancel request for conn's previous statement is still on
 * its way (PostgreSQL could apply it to the next statement); forgets it
 * once it has arrived. */
int pqawait__cancel_flying(const PGconn *conn);

/* PQfinish(conn) or PQreset(conn) begins: forget everything about conn
 * (by pointer: it may be freed right after). */
void pqawait__conn_forget(const PGconn *conn);

#endif
