/*
 * wrap_connect.c -- connecting, resetting, pinging and closing.
 *
 * These calls resolve host names (getaddrinfo, run on a worker thread
 * inside a scope) and walk through addresses and hosts, closing one socket
 * and opening the next -- usually under the same descriptor number.  So
 * every wait they make is AWAITLET_FRESH, and each call, inside a task or
 * not, tells the shim that sockets changed (pqawait__newsock), making
 * every task's next wait fresh as well.
 *
 * connect_timeout keeps working unchanged: libpq turns it into poll
 * timeouts, which the poll hook honours.  A task cancelled or past its
 * deadline has its connect abandoned after the grace (scope.c's timeline):
 * the wait fails and libpq ends the attempt with CONNECTION_BAD, whose
 * PQerrorMessage then names the cause (bound.c).  PQreset and PQresetStart
 * start a new attempt: what the shim remembered of the old one (its
 * interrupted statement, the abandonment line) is forgotten first; so it is
 * by PQfinish.
 *
 * PQfinish on a connection another task is suspended in shuts the session
 * down at once (the owner's call ends with libpq's connection-lost error)
 * but leaves the PGconn to its owner, whose own PQfinish frees it; until
 * then PQfinish of it by anybody else does nothing (errno EBUSY).  PQreset
 * on such a connection is refused (errno EBUSY, nothing done).
 */
#include "wrap.h"

PQAWAIT__WRAP(PGconn *, PQconnectdb, (const char *conninfo), (conninfo),
              NULL, PQAWAIT__SCOPE_CONNECT, NULL)

PQAWAIT__WRAP(PGconn *, PQconnectdbParams,
              (const char *const *keywords, const char *const *values, int expand_dbname),
              (keywords, values, expand_dbname), NULL, PQAWAIT__SCOPE_CONNECT, NULL)

PQAWAIT__WRAP(PGconn *, PQsetdbLogin,
              (const char *pghost, const char *pgport, const char *pgoptions,
               const char *pgtty, const char *dbName, const char *login, const char *pwd),
              (pghost, pgport, pgoptions, pgtty, dbName, login, pwd),
              NULL, PQAWAIT__SCOPE_CONNECT, NULL)

PQAWAIT__WRAP(PGconn *, PQconnectStart, (const char *conninfo), (conninfo),
              NULL, PQAWAIT__SCOPE_CONNECT, NULL)

PQAWAIT__WRAP(PGconn *, PQconnectStartParams,
              (const char *const *keywords, const char *const *values, int expand_dbname),
              (keywords, values, expand_dbname), NULL, PQAWAIT__SCOPE_CONNECT, NULL)

PQAWAIT__WRAP_CONN(PostgresPollingStatusType, PQconnectPoll, (PGconn *conn), (conn),
                   PQAWAIT__SCOPE_CONNECT, PGRES_POLLING_FAILED)

PQAWAIT__WRAP_PRE(int, PQresetStart, (PGconn *conn), (conn), conn,
                  PQAWAIT__SCOPE_CONNECT, 0, pqawait__conn_forget(conn))

PQAWAIT__WRAP_CONN(PostgresPollingStatusType, PQresetPoll, (PGconn *conn), (conn),
                   PQAWAIT__SCOPE_CONNECT, PGRES_POLLING_FAILED)

PQAWAIT__WRAP(PGPing, PQping, (const char *conninfo), (conninfo),
              NULL, PQAWAIT__SCOPE_CONNECT, PQPING_NO_ATTEMPT)

PQAWAIT__WRAP(PGPing, PQpingParams,
              (const char *const *keywords, const char *const *values, int expand_dbname),
              (keywords, values, expand_dbname), NULL, PQAWAIT__SCOPE_CONNECT, PQPING_NO_ATTEMPT)

PQAWAIT_EXPORT void PQreset(PGconn *conn)
{
    pqawait__scope sc;
    if (!PQAWAIT__REAL(PQreset)) {
        errno = ENOSYS;
        return;
    }
    switch (pqawait__enter(&sc, conn, PQAWAIT__SCOPE_CONNECT)) {
    case PQAWAIT__BUSY:
        pqawait__busy(&sc);
        return;
    case PQAWAIT__PASS:
        pqawait__conn_forget(conn);
        pqawait__real.PQreset(conn);
        pqawait__passed(&sc);
        return;
    default:
        pqawait__conn_forget(conn);
        pqawait__real.PQreset(conn);
        if (sc.tl == PQAWAIT__TL_GONE)
            pqawait__abandoned_return(&sc, NULL, conn);
        pqawait__leave_yield(&sc);
        pqawait__leave(&sc);
        return;
    }
}

PQAWAIT_EXPORT void PQfinish(PGconn *conn)
{
    pqawait__scope sc;
    if (!PQAWAIT__REAL(PQfinish)) {
        errno = ENOSYS;
        return;
    }
    if (!conn) { /* libpq ignores it; no need for a scope */
        pqawait__real.PQfinish(conn);
        return;
    }
    if (pqawait__finish_refused(conn))
        return; /* shut down by a foreign PQfinish: only its owner frees it */
    switch (pqawait__enter(&sc, conn, PQAWAIT__SCOPE_FINISH)) {
    case PQAWAIT__BUSY:
        pqawait__busy_finish(&sc);
        return;
    case PQAWAIT__PASS:
        pqawait__callbacks_forget(conn);
        pqawait__conn_forget(conn);
        pqawait__real.PQfinish(conn);
        pqawait__passed(&sc);
        return;
    default:
        pqawait__callbacks_forget(conn);
        pqawait__conn_forget(conn);
        pqawait__real.PQfinish(conn); /* the Terminate message may need a wait */
        pqawait__leave(&sc);
        return;
    }
}
