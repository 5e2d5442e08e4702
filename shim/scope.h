/*
 * scope.h -- the "cooperative scope" every libpq entry point runs in.
 *
 * Inside a task, an exported wrapper (PQexec, PQconnectdb...) opens a scope
 * and calls the real libpq function.  While the scope is open, the shim's
 * poll and getaddrinfo (hooks.c) suspend the task instead of blocking the
 * thread.  libpq calls its own exported functions through the PLT, so a
 * wrapper re-entered by the same task is a plain pass-through: only the
 * outermost call of a task opens a scope.
 *
 * A scope also marks its connection as owned by the task, so that another
 * task (or a libev callback) calling into libpq on that connection while
 * the owner is suspended inside libpq gets libpq's own "another command is
 * already in progress" error instead of stealing the owner's results.
 */
#ifndef PQAWAIT_SCOPE_H
#define PQAWAIT_SCOPE_H

#include <stdint.h>

#include <libpq-fe.h>

#include "real.h"

/* What pqawait__enter decided. */
enum {
    PQAWAIT__PASS,   /* outside a task, or nested: call libpq, then pqawait__passed */
    PQAWAIT__BUSY,   /* conn is owned by another task: fail without I/O */
    PQAWAIT__SCOPED  /* scope open: call libpq, then pqawait__leave */
};

/* Scope flags. */
#define PQAWAIT__F_FRESH      0x01 /* every wait says AWAITLET_FRESH (sockets come and go) */
#define PQAWAIT__F_NEWSOCK    0x02 /* the call may close or open sockets */
#define PQAWAIT__F_FREES      0x04 /* the call frees conn: never touch it afterwards */
#define PQAWAIT__F_UNSHIELDED 0x08 /* a plain wait: cancellation ends it with an error */
#define PQAWAIT__F_CANCEL     0x10 /* on interruption, ask the server to cancel */

#define PQAWAIT__SCOPE_QUERY   (PQAWAIT__F_CANCEL)
#define PQAWAIT__SCOPE_CONNECT (PQAWAIT__F_FRESH | PQAWAIT__F_NEWSOCK)
#define PQAWAIT__SCOPE_FINISH  (PQAWAIT__F_NEWSOCK | PQAWAIT__F_FREES)
#define PQAWAIT__SCOPE_WAIT    (PQAWAIT__F_FRESH | PQAWAIT__F_UNSHIELDED)

typedef struct pqawait__scope pqawait__scope;
struct pqawait__scope {
    PGconn *conn;            /* NULL when the call has no connection yet */
    pqawait__scope *owner;   /* BUSY: the scope owning conn (NULL: none on this thread) */
    pqawait__scope *hnext;   /* chain in this thread's ownership table */
    uintptr_t state;         /* the task's wait state, see scope.c */
    uintptr_t pending;       /* the state a wait in progress will leave */
    int flags;
    int sock;                /* PQsocket(conn) on entry */
    unsigned char owning;    /* registered in the ownership table */
    unsigned char quiet;     /* interrupted before entry: never cancel the server */
    unsigned char cancel_sent;
    unsigned char finish_deferred; /* another party called PQfinish(conn) meanwhile */
};

/* Create the task key (from pqawait__init). */
void pqawait__scope_init(void);

/* Decide how a wrapper runs; fills *sc in every case. */
int pqawait__enter(pqawait__scope *sc, PGconn *conn, int flags);

/* Close a SCOPED call.  Preserves errno. */
void pqawait__leave(pqawait__scope *sc);

/* After a PASS call: notice sockets libpq closed or opened.  Preserves errno. */
void pqawait__passed(pqawait__scope *sc);

/* BUSY: append libpq's own "another command is already in progress" to the
 * connection's error message (when that is safe), yield once if in a task,
 * set errno EBUSY. */
void pqawait__busy(pqawait__scope *sc);

/* BUSY PQfinish: the owner finishes conn when its call returns. */
void pqawait__busy_finish(pqawait__scope *sc);

/* The open scope of the running task, or NULL (outside tasks, or a task
 * not inside libpq).  What decides whether poll/getaddrinfo cooperate. */
pqawait__scope *pqawait__current(void);

/* For the poll hook: the flags its next awaitlet_io needs (AWAITLET_FRESH
 * or 0); and the bookkeeping after a wait that suspended, with its result
 * (-1 after a sleep). */
int pqawait__wait_flags(pqawait__scope *sc);
void pqawait__waited(pqawait__scope *sc, int r);

/* For the poll hook: cancellation or the deadline arrived while shielded. */
void pqawait__interrupted(pqawait__scope *sc);

/* A socket may have been closed or opened: every task's next wait is
 * fresh. */
void pqawait__newsock(void);

#endif
