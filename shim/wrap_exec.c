/*
 * wrap_exec.c -- running commands: PQexec and friends, the asynchronous
 * send/flush/get-result calls, pipeline mode.
 *
 * Each call runs libpq's own code inside a scope, so PQexec keeps every
 * detail of its contract (PQexecStart's handling of a pending COPY, the
 * last result wins, errors accumulating in PQerrorMessage since 14) and
 * only its waits change: they suspend the task.  The asynchronous calls
 * are wrapped too, because in blocking mode PQsendQuery & co. flush with
 * a wait, and PQgetResult waits whenever the connection is busy.
 *
 * PQconsumeInput never waits; it is wrapped so that another task cannot
 * swallow the input a suspended owner is waiting for (which would leave
 * the owner waiting forever) and so a connection it drops is noticed.
 */
#include "wrap.h"

PQAWAIT__WRAP_CONN(PGresult *, PQexec, (PGconn *conn, const char *query), (conn, query),
                   PQAWAIT__SCOPE_QUERY, NULL)

PQAWAIT__WRAP_CONN(PGresult *, PQexecParams,
                   (PGconn *conn, const char *command, int nParams, const Oid *paramTypes,
                    const char *const *paramValues, const int *paramLengths,
                    const int *paramFormats, int resultFormat),
                   (conn, command, nParams, paramTypes, paramValues, paramLengths,
                    paramFormats, resultFormat),
                   PQAWAIT__SCOPE_QUERY, NULL)

PQAWAIT__WRAP_CONN(PGresult *, PQprepare,
                   (PGconn *conn, const char *stmtName, const char *query, int nParams,
                    const Oid *paramTypes),
                   (conn, stmtName, query, nParams, paramTypes), PQAWAIT__SCOPE_QUERY, NULL)

PQAWAIT__WRAP_CONN(PGresult *, PQexecPrepared,
                   (PGconn *conn, const char *stmtName, int nParams,
                    const char *const *paramValues, const int *paramLengths,
                    const int *paramFormats, int resultFormat),
                   (conn, stmtName, nParams, paramValues, paramLengths, paramFormats,
                    resultFormat),
                   PQAWAIT__SCOPE_QUERY, NULL)

PQAWAIT__WRAP_CONN(PGresult *, PQdescribePrepared, (PGconn *conn, const char *stmt),
                   (conn, stmt), PQAWAIT__SCOPE_QUERY, NULL)

PQAWAIT__WRAP_CONN(PGresult *, PQdescribePortal, (PGconn *conn, const char *portal),
                   (conn, portal), PQAWAIT__SCOPE_QUERY, NULL)

/* A foreign caller gets an error result made without the connection: the
 * status says failure (as for errors libpq detects locally), but there is
 * no message, since libpq offers no public way to give a result one
 * without writing it into a connection -- the owner's.  errno is EBUSY. */
PQAWAIT__WRAP_CONN(PGresult *, PQgetResult, (PGconn *conn), (conn),
                   PQAWAIT__SCOPE_QUERY, PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR))

PQAWAIT__WRAP_CONN(int, PQflush, (PGconn *conn), (conn), PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(int, PQconsumeInput, (PGconn *conn), (conn), PQAWAIT__SCOPE_QUERY, 0)

PQAWAIT__WRAP_CONN(int, PQsendQuery, (PGconn *conn, const char *query), (conn, query),
                   PQAWAIT__SCOPE_QUERY, 0)

PQAWAIT__WRAP_CONN(int, PQsendQueryParams,
                   (PGconn *conn, const char *command, int nParams, const Oid *paramTypes,
                    const char *const *paramValues, const int *paramLengths,
                    const int *paramFormats, int resultFormat),
                   (conn, command, nParams, paramTypes, paramValues, paramLengths,
                    paramFormats, resultFormat),
                   PQAWAIT__SCOPE_QUERY, 0)

PQAWAIT__WRAP_CONN(int, PQsendPrepare,
                   (PGconn *conn, const char *stmtName, const char *query, int nParams,
                    const Oid *paramTypes),
                   (conn, stmtName, query, nParams, paramTypes), PQAWAIT__SCOPE_QUERY, 0)

PQAWAIT__WRAP_CONN(int, PQsendQueryPrepared,
                   (PGconn *conn, const char *stmtName, int nParams,
                    const char *const *paramValues, const int *paramLengths,
                    const int *paramFormats, int resultFormat),
                   (conn, stmtName, nParams, paramValues, paramLengths, paramFormats,
                    resultFormat),
                   PQAWAIT__SCOPE_QUERY, 0)

PQAWAIT__WRAP_CONN(int, PQsendDescribePrepared, (PGconn *conn, const char *stmt),
                   (conn, stmt), PQAWAIT__SCOPE_QUERY, 0)

PQAWAIT__WRAP_CONN(int, PQsendDescribePortal, (PGconn *conn, const char *portal),
                   (conn, portal), PQAWAIT__SCOPE_QUERY, 0)

PQAWAIT__WRAP_CONN(int, PQsetnonblocking, (PGconn *conn, int arg), (conn, arg),
                   PQAWAIT__SCOPE_QUERY, -1)

#ifdef LIBPQ_HAS_PIPELINING
PQAWAIT__WRAP_CONN(int, PQpipelineSync, (PGconn *conn), (conn), PQAWAIT__SCOPE_QUERY, 0)

PQAWAIT__WRAP_CONN(int, PQexitPipelineMode, (PGconn *conn), (conn), PQAWAIT__SCOPE_QUERY, 0)

PQAWAIT__WRAP_CONN(int, PQsendFlushRequest, (PGconn *conn), (conn), PQAWAIT__SCOPE_QUERY, 0)
#endif

#ifdef LIBPQ_HAS_SEND_PIPELINE_SYNC
PQAWAIT__WRAP_CONN(int, PQsendPipelineSync, (PGconn *conn), (conn), PQAWAIT__SCOPE_QUERY, 0)
#endif

#ifdef LIBPQ_HAS_CLOSE_PREPARED
PQAWAIT__WRAP_CONN(PGresult *, PQclosePrepared, (PGconn *conn, const char *stmt),
                   (conn, stmt), PQAWAIT__SCOPE_QUERY, NULL)

PQAWAIT__WRAP_CONN(PGresult *, PQclosePortal, (PGconn *conn, const char *portal),
                   (conn, portal), PQAWAIT__SCOPE_QUERY, NULL)

PQAWAIT__WRAP_CONN(int, PQsendClosePrepared, (PGconn *conn, const char *stmt),
                   (conn, stmt), PQAWAIT__SCOPE_QUERY, 0)

PQAWAIT__WRAP_CONN(int, PQsendClosePortal, (PGconn *conn, const char *portal),
                   (conn, portal), PQAWAIT__SCOPE_QUERY, 0)
#endif
