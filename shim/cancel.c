/*
 * cancel.c -- pqawait_cancel: PQcancel that does not stall the loop.
 *
 * PQcancel opens a fresh blocking socket, connects, sends the cancel key
 * and waits for the server to close.  It is documented as safe to call
 * from a signal handler, so the shim leaves it alone: switching tasks
 * inside a signal handler is never safe.  pqawait_cancel is the variant
 * for tasks: the same request, made on a worker thread while the calling
 * task waits.  The scope code uses it to cancel a statement whose task was
 * interrupted.
 */
#include <awaitlet.h>

#include "real.h"

#include <pqawait.h>

struct cancel_call {
    PGcancel *cancel;
    char *errbuf;
    int errbufsize;
    int rc;
};

static void *cancel_worker(void *arg)
{
    struct cancel_call *c = arg;
    c->rc = PQcancel(c->cancel, c->errbuf, c->errbufsize);
    return NULL;
}

PQAWAIT_EXPORT int pqawait_cancel(PGcancel *cancel, char *errbuf, int errbufsize)
{
    struct cancel_call c = { cancel, errbuf, errbufsize, 0 };
    if (!awaitlet_in_context() || awaitlet_offload(cancel_worker, &c, NULL) < 0)
        cancel_worker(&c); /* outside a task; or no worker thread: block briefly */
    return c.rc;
}
