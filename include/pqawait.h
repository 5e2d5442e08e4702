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
 * (getaddrinfo) run on a worker thread (awaitlet_offload_start).  Results,
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
 * Which polls cooperate: only libpq's own waits -- one descriptor, the
 * connection's socket (any descriptor while a connect has no connection
 * yet), POLLIN and/or POLLOUT asked, a non-zero timeout -- made while
 * libpq itself runs in the task's call.  A zero-timeout poll, a poll with
 * other events or descriptors, and every poll made by a signal handler or
 * by user code libpq calls back (a notice processor or receiver) is the
 * real poll, as is getaddrinfo outside a connect.  What a cooperative poll
 * returns is what the kernel would: a hang-up reads POLLIN|POLLHUP.
 *
 * What is not cooperative, by design or necessity:
 *   - PQcancel and PQrequestCancel: PQcancel must stay async-signal-safe;
 *     use pqawait_cancel below from tasks.
 *   - GSSAPI/Kerberos traffic to a KDC that the GSS library makes on its
 *     own sockets (not the connection's).
 *   - lo_import / lo_export's local file I/O.
 *   - Processes where libpq's own calls do not reach the shim: static
 *     executables, a libpq loaded with dlopen(RTLD_DEEPBIND) or built with
 *     -Bsymbolic.  pqawait_interposed() tells.
 *
 * Where the shim may suspend the calling task, and nowhere else: inside
 * libpq's own waits (above) and host name lookups of a connect; once after
 * a call returned, if the task has held the loop for more than 2 ms
 * without waiting (a fairness yield, while the call still owns its
 * connection); once after a refused call (below); in pqawait_cancel; and
 * before a query-type call, owning its connection, while the shim's cancel
 * request for the connection's previous statement is still on its way (at
 * most 0.1 s, see Interruptions).  A call never suspends between its entry and taking ownership of its
 * connection.  The shim's yields never report or consume a cancellation
 * (awaitlet_yield), so a shielded application still gets its EINTR at its
 * own next wait -- except that a wait libpq makes while the task is
 * cancelled takes it (awaitlet reports EINTR once per shield; the shim
 * uses it to cancel the statement, see Interruptions).
 *
 * Interruptions -- the one rule.  For a task that is cancelled
 * (awaitlet_cancel) or past its deadline (awaitlet_set_deadline), every
 * libpq call ends within about 0.1 s plus a round trip of the moment the
 * interruption is first seen (during the call, or at its first wait when
 * the task was interrupted before it), and never waits without a bound:
 *   - A call runs normally for a grace of 0.1 s, so clean-up such as
 *     ROLLBACK, COMMIT or PQfinish completes.  For a statement the grace
 *     counts from its first interrupted wait, whichever call of the
 *     statement that is (a COPY's PQgetCopyData calls, a PQgetResult loop
 *     and a pipeline share one); each new statement gets its own.
 *   - A statement still running then is cancelled on the server (once;
 *     the request goes out on the shim's cancel threads, the task never
 *     waits for it): the call returns libpq's own result, normally the error
 *     with SQLSTATE 57014, with the connection in step.  PostgreSQL could
 *     apply a cancel that arrives late to the next statement, so the next
 *     call on the connection first waits (at most 0.1 s) until the request
 *     is through.
 *   - A connect (PQconnectdb & co., PQreset, PQping, PQconnectPoll, a
 *     host-name lookup in flight included) is abandoned then: it returns
 *     libpq's failure with CONNECTION_BAD (PQping: PQPING_NO_RESPONSE), the
 *     lookup being left to finish on its worker.  PQfinish completes.
 *   - When the cancel cannot be delivered or is not answered (a frozen
 *     postmaster, a network that stopped forwarding), the statement is given
 *     up 1 s after the interruption: the shim closes the connection's
 *     socket under libpq, whose own read then fails the call with its
 *     failure value (NULL or an error PGresult, -1, -2...) and
 *     CONNECTION_BAD.  Nothing of the old session can be misread later.
 *     PQfinish of such a connection returns at once.
 *   - The cause is named: after an abandonment, PQerrorMessage(conn) (while
 *     the connection is CONNECTION_BAD) and PQresultErrorMessage of the
 *     result the call returned end with a line "pqawait: connection closed:
 *     the task's deadline passed (awaitlet_set_deadline), and the statement
 *     had not ended 1.0 s later (cancel request: not answered)" or
 *     "pqawait: connection attempt abandoned: the task was cancelled
 *     (awaitlet_cancel)" -- until PQreset or PQfinish.  In every other case
 *     the messages are libpq's, byte for byte.
 *   - The task's next own awaitlet wait fails with ECANCELED or ETIMEDOUT
 *     (EINTR once if the application shields itself).
 *   - Clearing the deadline (awaitlet_set_deadline(task, 0), or a new one in
 *     the future) restores normal behaviour from the next wait on.
 * pqawait_set_interrupt_bounds changes the 0.1 s and the 1 s.  A signal
 * that interrupts a system call (an interval timer, a profiler) is not an
 * interruption.
 *
 * One connection, one task at a time.  While task A is inside libpq on a
 * connection, a call on that connection from another task or from a libev
 * callback is refused: it does not touch the connection at all (A's
 * results, PQerrorMessage and state stay exactly libpq's) and returns
 * libpq's failure value -- PQexec & co. NULL, PQsend* 0, PQflush -1,
 * PQgetCopyData -2, lo_* -1 or InvalidOid... (docs/shim.md lists them) --
 * with errno EBUSY; PQgetResult returns a PGRES_FATAL_ERROR result that has
 * no message (libpq offers no way to give a result one without writing
 * into the connection).  PQerrorMessage(conn) then still shows A's message.
 * A refused task yields once, so a caller looping on the failure lets A
 * finish.  PQreset from such a caller does nothing (errno EBUSY).  A call
 * from user code that libpq calls back inside A's own call (a notice
 * receiver) on A's connection is passed through, as plain libpq would; on
 * another connection it is a call of its own (own ownership, own cancel).
 *
 * PQfinish of a connection another task is inside libpq with shuts the
 * session down at once (shutdown(2) of its socket): A's call ends with
 * libpq's own connection-lost error ("server closed the connection
 * unexpectedly"), and the PGconn stays allocated for A -- PQerrorMessage and
 * PQstatus keep working, and A's own PQfinish frees it, as unmodified code
 * does.  Until then PQfinish of it from anybody but A does nothing (errno
 * EBUSY).  A must call PQfinish on it (otherwise it leaks).
 *
 * Signal handlers: every handler the program installs (sigaction, signal,
 * sigset, bsd_signal, sysv_signal) runs marked for awaitlet
 * (awaitlet_signal_enter/leave), so awaitlet's switching calls fail with
 * EPERM in it and the shim is plain libpq there.  sigaction and friends
 * report and behave exactly as without the shim (the user's own handler,
 * flags and mask; SIG_IGN and SIG_DFL as given).  A handler leaving by
 * siglongjmp/longjmp leaves the marking too.
 *
 * Notice processors and receivers (PQsetNoticeProcessor,
 * PQsetNoticeReceiver) run marked as user code; the setters return the
 * user's previous function as libpq's do.
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

/* The bounds of the interruption rule (see Interruptions above): `grace`
 * seconds during which an interrupted call runs normally (default 0.1), and
 * `give_up` seconds after which a statement whose cancel was not answered is
 * abandoned (default 1).  Applies from the next wait on; any thread.  0, or
 * -1 with errno EINVAL when a value is NaN, grace < 0, give_up <= grace or
 * give_up > 3600. */
int pqawait_set_interrupt_bounds(double grace, double give_up);

/* The library version, "MAJOR.MINOR.PATCH". */
const char *pqawait_version(void);

/* 1 when called by a task that is inside a libpq call running
 * cooperatively (for instance from a notice processor), else 0 (also in a
 * signal handler). */
int pqawait_in_scope(void);

/* 1 if libpq's calls in this process reach the shim: the process-wide
 * definitions of PQexec, poll and getaddrinfo are libpqawait's (or an
 * interceptor's ahead of it that forwards, as sanitizers do), and in every
 * loaded libpq the relocations for poll, getaddrinfo, connect and its own
 * PQsendQuery, PQgetResult... resolve to them.  0 means libpq works but
 * blocks the loop (link order, static linking, a libpq dlopen'ed with
 * RTLD_DEEPBIND or built with -Bsymbolic).  Reads the loaded objects'
 * dynamic sections: call it once, not per query.  Any thread. */
int pqawait_interposed(void);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif
#endif
