/*
 * wrap_misc.c -- the fast-path interface, large objects, and the calls
 * that run a query behind the caller's back.
 *
 * PQfn and the lo_* functions have no asynchronous form in libpq, which is
 * why other cooperative drivers leave them blocking; here they simply run
 * in a scope.  lo_import and lo_export also read or write a local file:
 * that disk I/O stays blocking.  PQsetClientEncoding, PQencryptPasswordConn
 * (with algorithm NULL) and PQchangePassword run a PQexec inside.
 *
 * PostgreSQL 17's cancel connection (PQcancelBlocking, PQcancelStart,
 * PQcancelPoll) connects like PQconnectdb does, so it gets a connect-type
 * scope.  PQsocketPoll is a plain wait on a caller's socket: inside a task
 * it suspends the task, unshielded, so cancellation ends it with -1 and
 * errno ECANCELED (or ETIMEDOUT).  These are compiled only when the
 * build-time libpq-fe.h declares them.
 */
#include "wrap.h"

PQAWAIT__WRAP_CONN(PGresult *, PQfn,
                   (PGconn *conn, int fnid, int *result_buf, int *result_len,
                    int result_is_int, const PQArgBlock *args, int nargs),
                   (conn, fnid, result_buf, result_len, result_is_int, args, nargs),
                   PQAWAIT__SCOPE_QUERY, NULL)

PQAWAIT__WRAP_CONN(int, lo_open, (PGconn *conn, Oid lobjId, int mode), (conn, lobjId, mode),
                   PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(int, lo_close, (PGconn *conn, int fd), (conn, fd), PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(int, lo_read, (PGconn *conn, int fd, char *buf, size_t len),
                   (conn, fd, buf, len), PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(int, lo_write, (PGconn *conn, int fd, const char *buf, size_t len),
                   (conn, fd, buf, len), PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(int, lo_lseek, (PGconn *conn, int fd, int offset, int whence),
                   (conn, fd, offset, whence), PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(pg_int64, lo_lseek64, (PGconn *conn, int fd, pg_int64 offset, int whence),
                   (conn, fd, offset, whence), PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(int, lo_tell, (PGconn *conn, int fd), (conn, fd), PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(pg_int64, lo_tell64, (PGconn *conn, int fd), (conn, fd),
                   PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(int, lo_truncate, (PGconn *conn, int fd, size_t len), (conn, fd, len),
                   PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(int, lo_truncate64, (PGconn *conn, int fd, pg_int64 len), (conn, fd, len),
                   PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(Oid, lo_creat, (PGconn *conn, int mode), (conn, mode),
                   PQAWAIT__SCOPE_QUERY, InvalidOid)

PQAWAIT__WRAP_CONN(Oid, lo_create, (PGconn *conn, Oid lobjId), (conn, lobjId),
                   PQAWAIT__SCOPE_QUERY, InvalidOid)

PQAWAIT__WRAP_CONN(int, lo_unlink, (PGconn *conn, Oid lobjId), (conn, lobjId),
                   PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(Oid, lo_import, (PGconn *conn, const char *filename), (conn, filename),
                   PQAWAIT__SCOPE_QUERY, InvalidOid)

PQAWAIT__WRAP_CONN(Oid, lo_import_with_oid, (PGconn *conn, const char *filename, Oid lobjId),
                   (conn, filename, lobjId), PQAWAIT__SCOPE_QUERY, InvalidOid)

PQAWAIT__WRAP_CONN(int, lo_export, (PGconn *conn, Oid lobjId, const char *filename),
                   (conn, lobjId, filename), PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(int, PQsetClientEncoding, (PGconn *conn, const char *encoding),
                   (conn, encoding), PQAWAIT__SCOPE_QUERY, -1)

PQAWAIT__WRAP_CONN(char *, PQencryptPasswordConn,
                   (PGconn *conn, const char *passwd, const char *user, const char *algorithm),
                   (conn, passwd, user, algorithm), PQAWAIT__SCOPE_QUERY, NULL)

#ifdef LIBPQ_HAS_CHANGE_PASSWORD
PQAWAIT__WRAP_CONN(PGresult *, PQchangePassword,
                   (PGconn *conn, const char *user, const char *passwd),
                   (conn, user, passwd), PQAWAIT__SCOPE_QUERY, NULL)
#endif

#ifdef LIBPQ_HAS_ASYNC_CANCEL
PQAWAIT__WRAP(int, PQcancelBlocking, (PGcancelConn *cancelConn), (cancelConn),
              NULL, PQAWAIT__SCOPE_CONNECT, 0)

PQAWAIT__WRAP(int, PQcancelStart, (PGcancelConn *cancelConn), (cancelConn),
              NULL, PQAWAIT__SCOPE_CONNECT, 0)

PQAWAIT__WRAP(PostgresPollingStatusType, PQcancelPoll, (PGcancelConn *cancelConn),
              (cancelConn), NULL, PQAWAIT__SCOPE_CONNECT, PGRES_POLLING_FAILED)
#endif

#ifdef LIBPQ_HAS_SOCKET_POLL
PQAWAIT__WRAP(int, PQsocketPoll, (int sock, int forRead, int forWrite, pg_usec_time_t end_time),
              (sock, forRead, forWrite, end_time), NULL, PQAWAIT__SCOPE_WAIT, -1)
#endif
