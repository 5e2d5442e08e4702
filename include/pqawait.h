/*
 * pqawait.h -- libpqawait: libpq's blocking calls, cooperative inside
 * awaitlet tasks.
 *
 * libpqawait exports libpq's blocking entry points under their own names
 * (PQconnectdb, PQexec, PQgetResult, PQputCopyData, PQgetCopyData, PQfn,
 * lo_read, PQping...; docs/shim.md has the full list).  Loaded ahead of
 * libpq -- linked before -lpq (pkg-config pqawait does that), or
 * LD_PRELOADed -- it changes nothing for code outside awaitlet tasks.
 * Inside a task, each such call runs libpq's own function in a
 * "cooperative scope": the waits libpq makes (one poll() on its socket)
 * suspend only the task (awaitlet_io), and host name lookups
 * (getaddrinfo) run on a worker thread (awaitlet_offload).  Results,
 * error messages and libpq's whole contract are unchanged, because libpq's
 * code produced them; only the waiting differs.  Existing blocking code
 * therefore runs concurrently, unmodified, when started as tasks.
 *
 * What is cooperative inside a task: every wait of the wrapped calls,
 * including connect_timeout, multi-host and SSL connection set-up, COPY
 * in both directions, the fast-path interface and large objects, PQping,
 * PQreset, and the queries libpq runs internally (PQsetClientEncoding,
 * PQencryptPasswordConn).
 *
 * What is not, by design or necessity:
 *   - PQcancel and PQrequestCancel: PQcancel must stay async-signal-safe;
 *     use pqawait_cancel below from tasks.
 *   - GSSAPI/Kerberos traffic to a KDC that the GSS library makes on its
 *     own sockets with anything but a one-descriptor poll.
 *   - lo_import / lo_export's local file I/O.
 *   - Processes where the shim is not in libpq's symbol lookup path:
 *     static executables, libpq loaded with dlopen(RTLD_LOCAL|RTLD_DEEPBIND)
 *     or a libpq copy built with -Bsymbolic.  pqawait_interposed() tells.
 *
 * Interruptions: while a task is inside libpq it is shielded
 * (awaitlet_shield).  If it is cancelled or passes its deadline during a
 * statement, the shim asks the server to cancel that statement (once) and
 * keeps waiting, so the call returns libpq's normal result -- typically the
 * error with SQLSTATE 57014 -- with the connection in step; the task's next
 * own awaitlet wait then fails with ECANCELED or ETIMEDOUT.  A connect is
 * not interrupted (it is bounded by connect_timeout).  A task that was
 * already cancelled when it called into libpq runs the call to its end
 * without cancelling anything, so clean-up such as ROLLBACK works.
 *
 * One connection, one task at a time.  While task A is suspended inside
 * libpq on a connection, a call on that connection from another task or
 * from a libev callback does no I/O: it fails the way libpq fails a
 * command issued while another is in progress (PQexec & co. return NULL,
 * PQsend* 0, PQgetResult an error result, PQflush -1...; the text "another
 * command is already in progress" is appended to PQerrorMessage when the
 * connection is mid-command) with errno EBUSY.  PQfinish from such a
 * caller is deferred: A's call finishes the connection when it returns, so
 * A must not use the connection afterwards.  PQreset from such a caller is
 * refused.
 *
 * Threads: tasks belong to their loop's thread (see awaitlet.h); a
 * connection must be used by one thread at a time, as libpq requires.  The
 * shim keeps its bookkeeping per thread and resolves libpq once,
 * thread-safely.
 */
#ifndef PQAWAIT_H
#define PQAWAIT_H

#include <libpq-fe.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

#define PQAWAIT_VERSION_MAJOR 0
#define PQAWAIT_VERSION_MINOR 1

/* As PQcancel: ask the server to cancel the command running on the
 * connection `cancel` was made for (PQgetCancel).  Returns 1 if the request
 * was sent, else 0 with an explanation in errbuf (errbufsize bytes; 256 is
 * the size libpq recommends).  Inside a task the request -- a blocking
 * connect, send and receive on a new socket -- runs on one of the shim's
 * cancel threads (never awaitlet's offload workers) while the calling task
 * waits cooperatively, shielded, for at most about
 * pqawait_set_cancel_timeout(); a request whose answer never came within
 * that bound counts as sent, as with PQcancel.  Outside a task, in a signal
 * handler, or when no cancel thread can be started, it is PQcancel itself
 * (then unbounded outside a task).  Unlike PQcancel it is NOT
 * async-signal-safe inside a task.  As with PQcancel, success does not mean
 * the command was cancelled: it may have finished first.  Any thread. */
int pqawait_cancel(PGcancel *cancel, char *errbuf, int errbufsize);

/* How long one cancel request made by the shim's cancel threads may take
 * before they give up on it: connecting is bounded by half of it, waiting
 * for the server's answer by the other half.  Default 5 s.  Applies to the
 * requests started afterwards; any thread.  0, or -1 with errno EINVAL
 * when seconds is NaN, <= 0 or more than 3600. */
int pqawait_set_cancel_timeout(double seconds);

/* The library version, "MAJOR.MINOR.PATCH". */
const char *pqawait_version(void);

/* 1 when called by a task that is inside a libpq call running
 * cooperatively (for instance from a notice processor), else 0. */
int pqawait_in_scope(void);

/* 1 if libpq's calls in this process reach the shim: the process-wide
 * definitions of PQexec, poll and getaddrinfo are libpqawait's.  0 means
 * libpq works but blocks the loop (link order, static linking, dlopen
 * with RTLD_LOCAL or RTLD_DEEPBIND). */
int pqawait_interposed(void);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif
#endif
