/*
 * cancel.h -- the cancel lane: cancel requests sent by the shim's own
 * threads, each bounded in time (see cancel.c).
 */
#ifndef PQAWAIT_CANCEL_H
#define PQAWAIT_CANCEL_H

#include <libpq-fe.h>

typedef struct pqawait__cancel pqawait__cancel;

/* What became of a request. */
enum {
    PQAWAIT__CANCEL_PENDING,    /* queued or being sent */
    PQAWAIT__CANCEL_ANSWERED,   /* sent, and the server closed the connection */
    PQAWAIT__CANCEL_UNANSWERED, /* sent, but no answer within the bound */
    PQAWAIT__CANCEL_FAILED      /* not sent (errbuf says why) */
};

/* Queue PQcancel(cancel) on the lane and return at once; `owned`: the lane
 * frees `cancel` when done.  Returns the request (the caller holds one
 * reference), or NULL with errno (ENOMEM, or EAGAIN: no cancel thread could
 * be started and none exists). */
pqawait__cancel *pqawait__cancel_start(PGcancel *cancel, int owned);

/* The request's state (any thread; acquire ordering). */
int pqawait__cancel_state(const pqawait__cancel *c);

/* The explanation of a FAILED request (valid while referenced). */
const char *pqawait__cancel_error(const pqawait__cancel *c);

/* Drop the caller's reference. */
void pqawait__cancel_release(pqawait__cancel *c);

/* PQcancel on the calling thread, bounded like a lane request (for when no
 * lane thread can be started). */
int pqawait__cancel_inline(PGcancel *cancel, char *errbuf, int errbufsize);

#endif
