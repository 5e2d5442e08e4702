/*
 * cancel_wrap.c -- PQcancel and PQrequestCancel: async-signal-safe in a
 * signal handler, never blocking the loop in a task.
 *
 * PQcancel connects a blocking socket, sends and waits in recv() for the
 * postmaster to close: milliseconds normally, forever for a server that
 * does not answer.  Called by a task (an unmodified program's main under
 * PQAWAIT_ASYNC_MAIN, a callback under PQAWAIT_EV_CALLBACKS -- pg_dump's
 * DisconnectDatabase cancels a busy connection that way), that would stop
 * the whole loop.  So, from a task and outside any signal handler, both
 * calls run on the shim's cancel lane (cancel.c: its own threads, each
 * request bounded by pqawait_set_cancel_timeout) while the task waits
 * cooperatively: pqawait_cancel.  Everywhere else -- outside tasks, and in
 * every signal handler (the shim marks them all, signals.c), where psql's
 * SIGINT handler calls PQcancel while main sleeps in PQexec -- they are
 * libpq's own calls, async-signal-safe as libpq documents.
 *
 * PQrequestCancel reports a failure in the connection's error message.
 * The lane cannot write there, so a request the lane could not send is
 * made once more by libpq's own PQrequestCancel, on this thread, which
 * then leaves libpq's message where the caller looks for it (a request
 * that failed was not sent, so nothing is sent twice).
 *
 * Suspension point: pqawait_cancel (cancel.c's suspension point 5).
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>

#include <awaitlet.h>
#include <pqawait.h>

#include "preload.h"
#include "real.h"

typedef int cancel_fn(PGcancel *, char *, int);
typedef int request_fn(PGconn *);

static cancel_fn *real_cancel;
static request_fn *real_request;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int resolved; /* set by the constructor, or by pthread_once */

/* The lane's own fallback (pqawait__cancel_inline) calls PQcancel on this
 * thread: that one must be libpq's. */
static PQAWAIT__TLS int inside;

static void resolve(void)
{
    *(void **)&real_cancel = dlsym(RTLD_NEXT, "PQcancel");
    *(void **)&real_request = dlsym(RTLD_NEXT, "PQrequestCancel");
    __atomic_store_n(&resolved, 1, __ATOMIC_RELEASE);
}

static void init(void)
{
    if (!__atomic_load_n(&resolved, __ATOMIC_ACQUIRE))
        pthread_once(&once, resolve);
}

static int cooperative(void)
{
    return !inside && awaitlet_in_context() && !awaitlet_in_signal_handler();
}

PQAWAIT_EXPORT int PQcancel(PGcancel *cancel, char *errbuf, int errbufsize)
{
    init(); /* a load once the constructor ran: async-signal-safe */
    if (!real_cancel) {
        errno = ENOSYS;
        return 0;
    }
    if (!cancel || !cooperative())
        return real_cancel(cancel, errbuf, errbufsize);
    PQAWAIT__STAT(OFFLOADS);
    inside = 1;
    int r = pqawait_cancel(cancel, errbuf, errbufsize); /* suspends, bounded */
    inside = 0;
    return r;
}

PQAWAIT_EXPORT int PQrequestCancel(PGconn *conn)
{
    init();
    if (!real_request) {
        errno = ENOSYS;
        return 0;
    }
    if (!conn || !cooperative())
        return real_request(conn);
    PGcancel *c = PQgetCancel(conn);
    if (!c)
        return real_request(conn); /* libpq says why in conn */
    char errbuf[256];
    PQAWAIT__STAT(OFFLOADS);
    inside = 1;
    int r = pqawait_cancel(c, errbuf, (int)sizeof errbuf); /* suspends, bounded */
    inside = 0;
    PQfreeCancel(c);
    return r ? r : real_request(conn);
}

/* Resolved before any signal handler can run (pthread_once's first call
 * is not async-signal-safe), and without pthread_once: constructors run on
 * one thread, and its futex wake would be a system call the process did
 * not make without us. */
__attribute__((constructor)) static void cancel_wrap_ctor(void)
{
    if (!__atomic_load_n(&resolved, __ATOMIC_ACQUIRE))
        resolve();
}
