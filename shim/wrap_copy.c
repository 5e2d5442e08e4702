/*
 * wrap_copy.c -- COPY, current and deprecated API.
 *
 * Sending COPY data waits whenever the socket buffer is full (blocking
 * mode); receiving waits for the next row (PQgetCopyData with async 0,
 * PQgetline).  Inside a scope every such wait goes through the loop, so a
 * long COPY streams without starving other tasks or timers.  Cancelling
 * the task mid-COPY asks the server to cancel it; the COPY then ends with
 * the server's error through libpq's usual path.
 */
#include <stdio.h>

#include "wrap.h"

PQAWAIT__WRAP_CONN(int, PQputCopyData, (PGconn *conn, const char *buffer, int nbytes),
                   (conn, buffer, nbytes), PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(int, PQputCopyEnd, (PGconn *conn, const char *errormsg),
                   (conn, errormsg), PQAWAIT__SCOPE_QUERY, -1)

/* In a task, a row libpq has buffered already comes without a scope: the
 * non-blocking form is the blocking one's first step, so the answer is the
 * same, and only a call that would wait needs one (scope.h,
 * pqawait__copy_probe). */
PQAWAIT__WRAP_FULL(int, PQgetCopyData, (PGconn *conn, char **buffer, int async),
                   (conn, buffer, async), conn, PQAWAIT__SCOPE_QUERY, -2, (void)0,
                   if (!async && pqawait__copy_probe(slot_, conn)) {
                       int got_ = real_(conn, buffer, 1);
                       if (got_ != 0)
                           return pqawait__copy_probed(conn, got_);
                   })

PQAWAIT__WRAP_CONN(int, PQgetline, (PGconn *conn, char *buffer, int length),
                   (conn, buffer, length), PQAWAIT__SCOPE_QUERY, EOF)

PQAWAIT__WRAP_CONN(int, PQputline, (PGconn *conn, const char *string), (conn, string),
                   PQAWAIT__SCOPE_QUERY, EOF)

PQAWAIT__WRAP_CONN(int, PQputnbytes, (PGconn *conn, const char *buffer, int nbytes),
                   (conn, buffer, nbytes), PQAWAIT__SCOPE_QUERY, EOF)

PQAWAIT__WRAP_CONN(int, PQendcopy, (PGconn *conn), (conn), PQAWAIT__SCOPE_QUERY, 1)
