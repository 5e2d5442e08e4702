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
 * real poll (or, for the program's own waits, see below), as is
 * getaddrinfo outside a connect.  What a cooperative poll
 * returns is what the kernel would: a hang-up reads POLLIN|POLLHUP.
 *
 * What is not cooperative, by design or necessity:
 *   - PQcancel and PQrequestCancel stay libpq's own, async-signal-safe
 *     calls outside tasks and in every signal handler; from a task (outside
 *     handlers) they run on the shim's cancel lane as pqawait_cancel does,
 *     so they never block the loop (a PQrequestCancel the lane could not
 *     send is retried by libpq's own, for its error message).
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
 *   - A statement still running then is cancelled on the server (the
 *     request goes out on the shim's cancel threads, the task never waits
 *     for it; PostgreSQL drops a request that arrives before the statement
 *     runs, so while the statement has not ended another goes 20 ms, 40 ms
 *     ... later, one at a time, until the give-up point below): the call
 *     returns libpq's own result, normally the error
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
 *     the connection is CONNECTION_BAD) and PQresultErrorMessage (and
 *     PQresultVerboseErrorMessage) of the result the call returned end with
 *     a line "pqawait: connection closed: the task's deadline passed
 *     (awaitlet_set_deadline), and the statement had not ended 1.0 s
 *     later (cancel request: not answered)" (or "cancel requests: 3 sent,
 *     the last answered, but the statement did not end") or
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
 * The program's own waits: inside a task, outside libpq and signal
 * handlers, poll, ppoll, select and pselect with a non-zero timeout, 1 to
 * 1024 descriptors and (ppoll, pselect) no signal mask are awaitlet_poll:
 * only the task waits, with the real call's contract (docs/preload.md).
 *
 * Unmodified binaries: LD_PRELOAD with PQAWAIT_ASYNC_MAIN=1 runs main() as
 * a task, PQAWAIT_EV_CALLBACKS=1 runs every libev callback as a task,
 * PQAWAIT_STATS=1 prints the statistics below at exit (docs/preload.md).
 * Read once at start-up; with neither mode on, nothing changes.
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
 * that bound counts as sent, as with PQcancel; one whose server did not
 * accept the connection within half of it fails (0) with errbuf
 * "pqawait: the cancel request to HOST:PORT was not accepted within N s
 * (...pqawait_set_cancel_timeout); libpq: <libpq's text>".  Outside a task, in a signal
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

/* ---- Connection pool (shim/pool*.c; docs/pool.md has the whole contract) --
 *
 * A pool of libpq connections for the tasks of one libev loop.  Each loop
 * (each thread) has its own pools; every call but pqawait_pool_stats must
 * be made on the loop's thread (else EXDEV).  The pool runs its own tasks
 * on the loop: a maintainer that opens connections in the background (up to
 * max_size in all, however many tasks ask at once), closes those past their
 * lifetime or idle too long, and backs off while the server cannot be
 * reached; one task per connect; one per connection being reset after a
 * release.  Tasks waiting in acquire are served in arrival order.
 *
 * Connections are ordinary PGconns: use them with plain (blocking-style)
 * libpq inside tasks, then give them back with pqawait_pool_release --
 * never PQfinish them.  The next user never sees the previous one's state
 * (see release).
 *
 * fork(): a child never uses or closes the parent's connections.  In the
 * child every connection the pool had at the fork is cut off from its
 * server socket at once (the descriptor is replaced, so nothing the child
 * does -- PQfinish's Terminate, an SSL close, a query -- can reach the
 * parent's session); the child's pool drops them silently and opens its own.
 * A connection checked out before the fork must not be used in the child;
 * releasing it there is fine.
 *
 * Multi-host conninfo: connections are made with PQconnectStart and
 * PQconnectPoll, so libpq walks the hosts and applies target_session_attrs
 * itself (a pool with target_session_attrs=standby gets standbys only, one
 * with read-write the primary).  As in libpq's blocking connect, each host
 * gets the conninfo's connect_timeout (at least 2 s, libpq's rule; without
 * one, the pool's connect_timeout) and a host that says nothing for that
 * long is skipped: the attempt goes on with the hosts after it. */
struct ev_loop;
typedef struct pqawait_pool pqawait_pool;

/* Reset policy flags (pqawait_pool_options.reset). */
#define PQAWAIT_POOL_DISCARD_ALL 1 /* run DISCARD ALL on every release */

typedef struct pqawait_pool_options {
    int max_size;           /* connections at most (default 10) */
    int min_size;           /* kept open even when idle (default 4, <= max) */
    double timeout;         /* acquire waits at most this long, seconds
                               (default 30; < 0: no limit; 0: never waits) */
    int max_waiting;        /* tasks waiting in acquire at most; beyond it
                               acquire fails at once with EAGAIN (default 0:
                               no limit) */
    double max_lifetime;    /* a connection is closed (when idle or released)
                               after this long, less a random 0-5 % so they
                               do not all expire together (default 3600;
                               <= 0: never) */
    double max_idle;        /* connections beyond min_size idle this long are
                               closed (default 600; <= 0: never) */
    double check_idle;      /* acquire checks a connection that sat idle at
                               least this long with an empty query, and
                               replaces it if dead or silent for
                               check_timeout (default -1: never; 0: on every
                               checkout) */
    double check_timeout;   /* the check's answer waited for at most this
                               long, and never past acquire's own timeout
                               (default 2) */
    double connect_timeout; /* one host's connection attempt at most, when
                               the conninfo sets no connect_timeout
                               (default 10) */
    double backoff_max;     /* failed connects are retried after 0.1 s,
                               doubling up to this (default 10), +-10 % */
    double reset_timeout;   /* cleaning a released connection at most; then
                               it is cut off and discarded (default 5) */
    int reset;              /* flags: PQAWAIT_POOL_DISCARD_ALL */
    int connect_parallel;   /* connects in progress at once (default 2) */
    /* Optional: called in a pool task right after each connect (e.g. SET,
     * PREPARE); may use the connection with blocking libpq calls.  Return 0
     * to keep it, -1 to discard it (counted as a failed connect). */
    int (*configure)(PGconn *conn, void *arg);
    void *configure_arg;
    /* Optional: called in the reset task on every release, after the
     * rollback (and DISCARD ALL); 0 keeps the connection, -1 discards. */
    int (*reset_cb)(PGconn *conn, void *arg);
    void *reset_arg;
    /* Optional: the notice processor every connection gets at connect and
     * gets back on every release (default: libpq's, printing to stderr).
     * Set it here, not in configure: release restores this one. */
    PQnoticeProcessor notice_processor;
    void *notice_arg;
    const char *name;       /* names the pool's tasks (copied) */
} pqawait_pool_options;

/* Fill o with the defaults above. */
void pqawait_pool_options_init(pqawait_pool_options *o);

/* A new pool for the tasks of `loop`, connecting with `conninfo` (a
 * connection string or URI, multi-host allowed; copied).  opts NULL: the
 * defaults.  Starts the maintainer at once, which opens min_size
 * connections in the background (pqawait_pool_wait waits for them).  Call
 * it on the loop's thread, inside or outside a task.  NULL with errno:
 * EINVAL (loop or conninfo NULL, conninfo unparsable -- PQconninfoParse says
 * why --, an option out of range: max_size < 1, min_size > max_size, NaN or
 * a negative time where none is allowed, connect_parallel < 0), EXDEV (the
 * loop belongs to another thread), EPERM (in a marked signal handler),
 * ENOMEM, or what starting its task gave (EAGAIN). */
pqawait_pool *pqawait_pool_new(struct ev_loop *loop, const char *conninfo,
                               const pqawait_pool_options *opts);

/* Inside a task: a connection, CONNECTION_OK and idle (no transaction),
 * waiting (FIFO) at most the pool's timeout for one to come free or be
 * opened.  Suspends only while waiting (and while checking a connection,
 * see check_idle).  NULL with errno:
 *   ETIMEDOUT  the pool's timeout passed -- or the task's own deadline did
 *              (awaitlet_set_deadline): awaitlet_interrupted() is 1 only in
 *              the second case
 *   ECANCELED  the task was cancelled (before or while waiting)
 *   EINTR      a shielded task was cancelled or passed its deadline (once)
 *   EAGAIN     max_waiting tasks are waiting already (nothing waited)
 *   ESHUTDOWN  the pool was closed (before or while waiting)
 *   EPERM      outside a task, or in a marked signal handler
 *   EXDEV      another thread's pool;  EINVAL  pool NULL or not a pool
 * A connection handed to a task that was cancelled before it ran again goes
 * to the next waiter: a failed acquire never holds a connection. */
PGconn *pqawait_pool_acquire(pqawait_pool *pool);
/* The same with its own timeout in seconds (< 0: none, 0: never wait). */
PGconn *pqawait_pool_acquire_timeout(pqawait_pool *pool, double timeout);

/* Give conn back.  Never suspends (except, rarely, inside the PQfinish of a
 * connection it closes: see pool.h), so it may be called in a task, from a
 * libev callback or on_exit, on the pool's thread, also after
 * pqawait_pool_close.  Client-side settings are restored at once (notice
 * processor and receiver, blocking mode, error verbosity and context,
 * tracing; pending notifications are dropped).  Then:
 *   CONNECTION_BAD                       closed (counted lost)
 *   idle, nothing else to do             to the next waiter, or idle
 *   in a transaction, failed transaction,
 *   a statement still running or results
 *   unread, COPY in either direction,
 *   DISCARD ALL or reset_cb asked        a reset task cleans it -- cancels
 *                                        what runs, ends COPY, ROLLBACK
 *                                        shielded, DISCARD ALL, reset_cb --
 *                                        within reset_timeout, then gives it
 *                                        on if it came out OK and idle,
 *                                        else closes it (discarded)
 *   pipeline mode, or COPY BOTH          closed (discarded) unless the
 *                                        pipeline is empty and can be left
 *   past its lifetime, pool closed       closed
 * 0, or -1 with errno EINVAL (pool invalid, conn NULL or not checked out of
 * this pool: nothing done), EXDEV, EPERM (in a marked signal handler). */
int pqawait_pool_release(pqawait_pool *pool, PGconn *conn);

/* Inside a task: wait until min_size connections are open (at most
 * `timeout` seconds; < 0: no limit).  0, or -1 with errno ETIMEDOUT (then
 * pqawait_pool_error() says why connects fail), ESHUTDOWN, ECANCELED,
 * EINTR, EPERM, EXDEV, EINVAL as for acquire. */
int pqawait_pool_wait(pqawait_pool *pool, double timeout);

/* The last connect failure's message (libpq's), or NULL when the last
 * connect succeeded.  Valid until the pool's next connect attempt ends; the
 * pool's thread only. */
const char *pqawait_pool_error(pqawait_pool *pool);

/* Close the pool: tasks waiting in acquire fail with ESHUTDOWN, idle
 * connections are closed now, connects in progress are abandoned,
 * connections being reset are closed when their reset ends, and checked-out
 * ones when they are released.  Never suspends (as release).  The pool's
 * tasks end during the next loop iterations (awaitlet_loop_tasks counts
 * them until then); the pool's memory is freed when the last of them ended
 * and the last connection came back.  After close, pass the handle only to
 * pqawait_pool_release (connections checked out before) -- acquire on a
 * closed pool that still exists fails ESHUTDOWN, but it may be gone.
 * 0, or -1 with errno EINVAL (not a pool, or closed already), EXDEV, EPERM
 * (marked signal handler). */
int pqawait_pool_close(pqawait_pool *pool);

/* Statistics since the pool was made; any thread may ask while the pool
 * exists (each field is read atomically; together they are a near
 * snapshot). */
struct pqawait_pool_stats {
    unsigned size;          /* connections: idle + in use + resetting +
                               connecting */
    unsigned idle, in_use, waiting, connecting, resetting;
    unsigned long long acquires;   /* successful acquires */
    unsigned long long waits;      /* acquires (successful or not) that waited */
    unsigned long long wait_ns;    /* total time they waited, nanoseconds */
    unsigned long long timeouts;   /* acquires failed by the pool's timeout */
    unsigned long long rejected;   /* acquires failed EAGAIN (max_waiting) */
    unsigned long long interrupted;/* acquires failed by cancel or deadline */
    unsigned long long opened;     /* connects that succeeded */
    unsigned long long connect_failures;
    unsigned long long closed;     /* closed by the pool: lifetime, idle time,
                                      pool close */
    unsigned long long lost;       /* found broken: on release, while idle,
                                      by a checkout check */
    unsigned long long discarded;  /* released in a state that could not be
                                      cleaned (or whose reset failed) */
    unsigned long long resets;     /* released connections cleaned by a reset
                                      task and reused */
};
/* Fill *out.  0, or -1 with errno EINVAL (pool or out NULL, not a pool). */
int pqawait_pool_stats(pqawait_pool *pool, struct pqawait_pool_stats *out);

/* Statistics (also switched on by PQAWAIT_STATS=1 in the environment at
 * start-up; then printed at exit).  All counts are since the process (or,
 * after fork, the child) started, summed over its threads:
 *   tasks         tasks seen doing cooperative work (a libpq call or a
 *                 wait of their own routed to awaitlet_poll), each once
 *   calls         libpq calls that ran cooperatively (scopes opened)
 *   waits         cooperative waits: libpq's own, and the program's own
 *                 poll/select/ppoll/pselect inside tasks (prog_waits)
 *   offloads      host-name lookups and cancel requests handed to other
 *                 threads
 *   cb_tasks      libev callbacks run as tasks (PQAWAIT_EV_CALLBACKS),
 *                 cb_suspended of them suspended at least once
 *   max_stall_ms  the longest time a loop running counted tasks went from
 *                 its poll returning to its next poll
 * Off by default; while off nothing is counted and nothing is measured
 * (no clock reads, no watchers).  Any thread. */
typedef struct pqawait_stats {
    unsigned long long tasks, calls, waits, offloads;
    unsigned long long prog_waits, cb_tasks, cb_suspended;
    double max_stall_ms;
} pqawait_stats;

/* Switch counting on (1) or off (0); switching on also registers the
 * at-exit line.  0, or -1 with errno EINVAL for another value. */
int pqawait_stats_enable(int on);

/* The counts so far (*out zeroed when nothing was counted). */
void pqawait_stats_get(pqawait_stats *out);

/* Write the line "pqawait: tasks=N calls=N waits=N max_stall_ms=X
 * offloads=N prog_waits=N cb_tasks=N cb_suspended=N" to stderr (fd 2,
 * one write).  0, or -1 with write's errno. */
int pqawait_stats_print(void);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif
#endif
