/*
 * owners.h -- which scope owns which connection, and which connections a
 * foreign PQfinish shut down (per thread; see owners.c).
 */
#ifndef PQAWAIT_OWNERS_H
#define PQAWAIT_OWNERS_H

#include <stddef.h>

#include <awaitlet.h>
#include <libpq-fe.h>

#include "real.h"

typedef struct pqawait__scope pqawait__scope;

/* This thread's share of the ownership state, one thread-local so that a
 * wrapper's plain-outside-a-task test (scope.h) finds both fields through
 * one address load.  owned: connections registered on this thread, 0 lets
 * plain-libpq callers skip every lookup; owns: this thread is counted in
 * pqawait__owner_threads. */
struct pqawait__thread_state {
    size_t owned;
    int owns;
    int lock;                  /* held around every change of this thread's
                                  table; a publisher takes it to copy the
                                  table (owners.c); atomic */
    pqawait__scope *single;    /* the scope registered while the thread owned
                                  nothing else: not hashed (owners.c) */
};
extern PQAWAIT__TLS struct pqawait__thread_state pqawait__thr;
#define pqawait__owned (pqawait__thr.owned)
#define pqawait__thread_owns (pqawait__thr.owns)

/* The scope owning conn on this thread, or NULL. */
pqawait__scope *pqawait__owner_find(const PGconn *conn);

/* Register sc (sc->conn set, not owned yet) / unregister it (by pointer:
 * its conn may be freed already): pqawait__owner_add/remove, inline in
 * scope.h for the common case (the thread's single scope, the registry
 * off); these do everything else. */
void pqawait__owner_add_slow(pqawait__scope *sc);
void pqawait__owner_remove_slow(pqawait__scope *sc);

/* The process-wide registry's state (owners.c): 0 while only the
 * per-thread tables know who owns what. */
extern int pqawait__registry;

/* 1 if a scope of *another thread* owns conn right now (a PGconn used by
 * two threads at once: misuse, refused with EBUSY).  Cheap while only one
 * thread has ever run scopes. */
int pqawait__owner_elsewhere(const PGconn *conn);

/* A foreign PQfinish shut conn down while `owner` (a task) was using it:
 * the PGconn stays allocated until the owner's own PQfinish.  Remembered
 * per thread; a second report of the same conn changes nothing. */
void pqawait__doomed_add(PGconn *conn, awaitlet_task *owner);

/* PQfinish(conn) by `caller` (NULL outside tasks): 1 if conn is doomed and
 * the caller is not its owner -- the call must do nothing; 0 otherwise
 * (and conn is forgotten when the owner finishes it). */
int pqawait__doomed_refuse(PGconn *conn, awaitlet_task *caller);

#endif
