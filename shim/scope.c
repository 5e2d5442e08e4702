/*
 * scope.c -- opening and closing cooperative scopes: the per-task frame
 * stack, when a wait must be fresh, fairness, cancel on interrupt, refused
 * calls.  (Who owns which connection: owners.c.)
 *
 * WHERE THE SHIM MAY SUSPEND A TASK -- nowhere else:
 *   1. hooks.c, poll: libpq's own wait on its connection's socket, inside a
 *      scope (awaitlet_io).
 *   2. hooks.c, getaddrinfo: a connect's host name lookup, inside a
 *      connect-type scope (awaitlet_offload_wait, bounded by the timeline;
 *      awaitlet_offload if no abandonable job can be started).
 *   3. pqawait__leave_yield: the fairness yield after the real call
 *      returned, while the scope still owns its connection (awaitlet_yield).
 *   4. pqawait__busy: one yield after a refused call, whose failure value
 *      was computed before (awaitlet_yield).
 *   5. cancel.c, pqawait_cancel: waiting for the cancel lane's answer
 *      (awaitlet_sleep, bounded).
 *   6. pqawait__before_call: a query-type call, owning its connection and
 *      before libpq runs, while the shim's cancel request for the previous
 *      statement is still on its way (bound.c: PostgreSQL could apply it to
 *      this one); awaitlet_sleep, at most the grace.
 * pqawait__enter never suspends: a wrapper owns its connection before its
 * task can be switched away.  The yields of 3 and 4 are awaitlet_yield: they
 * never report (or consume) a cancellation and keep the task's io watcher
 * armed.  Nothing suspends inside a signal handler (awaitlet refuses it).
 *
 * Frames.  Per-task state lives in one awaitlet key.  While a task is
 * inside libpq, the key holds its innermost frame (a struct on the
 * wrapper's C stack, so nothing is allocated); frames link outwards.
 * Otherwise the key holds the task's "wait state": the socket generation
 * (below) seen at its last wait, encoded as (gen << 1) | 1 so it can never
 * be mistaken for a frame pointer and needs no cleanup when the task ends.
 * The key's slot (awaitlet_key_slot) is asked for once per wrapped call;
 * frames are pushed and popped by writing it.
 * NULL means the task never waited through the shim.  Each frame carries
 * the wait state while it is innermost and hands it back when it leaves.
 *
 * Nesting.  libpq calls its own exported functions through the PLT
 * (PQexec -> PQsendQuery, PQgetResult; PQconnectdb -> PQconnectStart,
 * PQconnectPoll; lo_* -> PQfn).  A wrapper entered while libpq runs in the
 * innermost scope, on that scope's connection or with none, is libpq
 * calling itself: a plain pass-through (a connect that had no connection
 * yet learns it so).  A call on another connection -- user code called
 * back by libpq, such as a notice receiver running a query elsewhere --
 * opens a scope of its own: its own ownership, fresh waits, and cancel
 * target.  A call on a connection an outer frame of the same task owns is
 * passed through (plain libpq would run it too).  The common case --
 * libpq calling itself on the innermost scope's connection -- is decided
 * in the exported wrapper by one compare with the task's pass word
 * (scope.h), which push, pop and a connect learning its connection keep
 * equal to what the frame stack says.
 *
 * Fresh waits.  A task's ev_io stays armed between two equal waits, so a
 * socket closed and reopened under the same number in between would never
 * report (see AWAITLET_FRESH).  libpq closes and opens sockets in its
 * connect and reset paths, in PQfinish, and when it drops a broken
 * connection.  Every such event bumps the generation of that descriptor
 * number (a table indexed by fd; numbers 65,536 apart share an entry,
 * which costs at most a spurious epoll_ctl); a task whose next wait finds
 * its descriptor's generation changed since its last wait passes
 * AWAITLET_FRESH (one epoll_ctl).  A socket the shim saw go without its
 * number (a connection found dropped at PQfinish) bumps an all-descriptors
 * generation instead.  Generations are drawn from one counter, so "the
 * larger of the two" changes whenever either does.  Every wait of a
 * connect-type call is fresh, and leaves the next one fresh (libpq may
 * close the socket it waited on).  Steady-state query waits stay
 * syscall-free, however many connections come and go elsewhere.
 *
 * Shield.  A scope shields the task: if cancellation or a deadline made
 * libpq's poll fail, libpq would mark the command finished while the server
 * keeps sending, and the connection would be out of step for good.  The
 * interrupted wait comes back once with EINTR instead, and from then on the
 * shim decides what the interruption does to the call, on one timeline.
 * Only a real interruption counts (awaitlet_interruption: cancelled, or past
 * the deadline); a signal interrupting a system call is not one.
 *
 * THE INTERRUPTION TIMELINE (every bound the shim promises; issue 9).
 *   X      the interruption is first seen -- at a wait, because the shim's
 *          shield level reports its EINTR at the first wait after the task
 *          became interrupted, whether that happened during the call or
 *          before it.  For a statement, X belongs to the *statement*, not
 *          the call: bound.c keeps it per connection for as long as the
 *          connection stays busy (PQTRANS_ACTIVE: a query, a COPY, a
 *          pipeline), so a COPY or a PQgetResult loop made of many short
 *          calls shares one X; a call that leaves the connection idle ends
 *          the record, and the next statement (ROLLBACK) starts its own X.
 *          A connect-type call and PQfinish have their own X.
 *   X+G    grace over (G = 0.1 s, pqawait_set_interrupt_bounds).  Until
 *          then the call runs normally: ROLLBACK/COMMIT-sized statements
 *          and PQfinish complete.  Then:
 *            - a statement: a cancel request (the cancel lane, cancel.c:
 *              never waited for), if the connection is busy, and another
 *              while it has not ended (20 ms, 40 ms ... apart, one at a
 *              time, bound.c: PostgreSQL drops one that arrives before the
 *              statement runs); the wait goes on for libpq's own result,
 *              normally SQLSTATE 57014;
 *            - a connect (PQconnectdb & co., PQreset, PQping, a host-name
 *              lookup in flight included) or PQfinish: abandoned.  The wait
 *              fails (poll -1, errno ETIMEDOUT or ECANCELED; a lookup gets
 *              EAI_SYSTEM and is left to finish on its worker, whose late
 *              answer is freed there); libpq ends the call itself:
 *              CONNECTION_BAD, or PQfinish without its Terminate message.
 *   X+L    give up (L = 1 s): a statement that has still not ended (the
 *          cancel could not be delivered or was not answered: a frozen
 *          postmaster, a network that stopped forwarding) is abandoned:
 *          the connection's socket is replaced by a dead one (dup2 of a
 *          closed socketpair end, bound.c) and the wait reports ready, so
 *          libpq's own read sees end-of-file, drops the connection and
 *          returns its failure value with CONNECTION_BAD.  Nothing is left
 *          that a later call could misread: no byte of the old session can
 *          arrive any more.
 *   The cause is named: PQerrorMessage of an abandoned connection, and
 *   PQresultErrorMessage and PQresultVerboseErrorMessage of the result the
 *   abandoned call returned, end with
 *   a line "pqawait: ..." naming the deadline or the cancellation (bound.c)
 *   until PQfinish or PQreset.  Every other message is libpq's, unchanged.
 *   Decisions are taken only at waits (a call that does not wait ends by
 *   itself), each wait's timeout being the next point of the timeline, so a
 *   call is never held past it.  A task that is no longer interrupted (its
 *   deadline cleared, or set again in the future) has its timeline dropped
 *   at its next wait: normal behaviour again.  A cancel that reaches the
 *   server after the statement ended does nothing (an idle backend ignores
 *   it).
 *
 * Fairness.  A task parsing a large buffered result never reaches poll.
 * As an outermost call leaves, if the task has held the loop for more than
 * 2 ms since it last resumed (from any wait), it yields once before
 * returning.  One clock read per outermost call, as it leaves (ev_time,
 * vDSO); nothing at waits.  The running segment's start is known without
 * a clock read: whether the task was suspended since the last leave is
 * one compare of the runtime's per-thread resume counter
 * (awaitlet__resumes); if it was, the segment started at its wake-up,
 * which is the loop's time (ev_now, set as the poll returned) or, for a
 * task woken later in the same iteration, the previous leave's clock
 * reading on this thread, whichever is later.  Consecutive calls that do
 * not suspend accumulate.  (Code running in the task between its wake-up
 * and the call that calls ev_now_update -- awaitlet_set_deadline -- moves
 * the start later by that much: less yielding, never more.)
 *
 * Refused calls (BUSY).  A call on a connection another task owns does not
 * touch the connection at all: the wrapper computes libpq's failure value,
 * errno is EBUSY, and a task yields once.  PQfinish is the exception: it
 * shuts the owner's session down (shutdown(2) on its socket) so the
 * owner's call ends with libpq's own connection-lost error; the PGconn is
 * freed only by the owner's own PQfinish (owners.c remembers it).
 */
#include <assert.h>
#include <errno.h>
#include <sys/socket.h>
#include <time.h>

#include <awaitlet.h>
#include <ev.h>
#include <pqawait.h>

#include "bound.h"
#include "owners.h"
#include "preload.h"
#include "scope.h"

#define FAIRNESS_S 0.002

static PQAWAIT__TLS unsigned fair_resumes; /* awaitlet__resumes at the last look */
static PQAWAIT__TLS ev_tstamp fair_since; /* the running segment's start */
static PQAWAIT__TLS ev_tstamp fair_last;  /* the clock at the last leave */

/* sc->sock of a PQfinish or reset whose connection lost its socket before:
 * the number it had is unknown. */
#define SOCK_DROPPED (-2)

awaitlet_key pqawait__key = -1;
#define key pqawait__key

size_t pqawait__slot_off;

void pqawait__scope_init(void)
{
    awaitlet_key k;
    if (awaitlet_key_create(&k) == 0) {
        key = k;
        pqawait__slot_off = awaitlet__locals_offset + (size_t)k * sizeof(void *);
    }
}

/* ---- socket generations (see Fresh waits) ---- */

static uintptr_t gen_counter = 1;      /* every generation is a value of this */
uintptr_t pqawait__gen_all;            /* bumped for a socket of unknown number */
uintptr_t pqawait__fd_gen[PQAWAIT__FD_GENS];
#define gen_all pqawait__gen_all
#define fd_gen pqawait__fd_gen
#define FD_GENS PQAWAIT__FD_GENS

void pqawait__newsock(int fd)
{
    uintptr_t g = __atomic_add_fetch(&gen_counter, 1, __ATOMIC_RELAXED);
    __atomic_store_n(fd < 0 ? &gen_all : &fd_gen[(unsigned)fd % FD_GENS], g, __ATOMIC_RELAXED);
}

/* ---- frames ---- */

#define as_scope pqawait__as_scope

pqawait__scope *pqawait__current(void)
{
    pqawait__init(); /* orders the reads of key below after its creation */
    return as_scope(awaitlet_getspecific(key)); /* NULL outside tasks, or without a key */
}

static void push(pqawait__scope *f, void **slot, pqawait__scope *top, void *v)
{
    f->slot = slot;
    f->task = awaitlet__cur; /* awaitlet_current(), without the call */
    f->outer = top;
    f->state = f->pending = top ? top->state : (uintptr_t)v;
}

/* Make f's outer frame (or the wait state) current again. */
static void pop(pqawait__scope *f)
{
    assert(f->open);                                    /* left twice */
    assert(f->task == awaitlet__cur);                   /* left by another task */
    assert(as_scope(*f->slot) == f);                    /* frames left out of order */
    if (f->outer) {
        f->outer->state = f->state;
        *f->slot = f->outer;
    } else {
        *f->slot = (void *)f->state;
    }
    *pqawait__pass(f->task) = pqawait__pass_of(f->outer);
    f->open = 0;
}

int pqawait__callback_enter(pqawait__scope *f)
{
    f->open = 0;
    pqawait__init(); /* orders the read of key below after its creation */
    void **slot = pqawait__slot(); /* NULL in a marked signal handler */
    pqawait__scope *top = slot ? as_scope(*slot) : NULL;
    if (!top)
        return 0;
    f->conn = f->learned = NULL;
    f->owner = f->hnext = NULL;
    f->flags = PQAWAIT__F_CALLBACK;
    f->sock = -1;
    f->owning = f->tl = f->doomed = 0;
    push(f, slot, top, NULL);
    *slot = f;
    *pqawait__pass(f->task) = 0; /* user code: nothing passes through */
    f->open = 1;
    return 1;
}

void pqawait__callback_leave(pqawait__scope *f)
{
    int saved = errno;
    pop(f);
    errno = saved;
}

/* ---- fairness ---- */

void pqawait__leave_yield(pqawait__scope *sc)
{
    /* Only as the outermost call leaves; not for PQfinish, whose conn is
     * freed (a new PGconn may get its address while we would yield). */
    if (sc->outer || (sc->flags & (PQAWAIT__F_UNSHIELDED | PQAWAIT__F_FREES)))
        return;
    ev_tstamp now = ev_time();
    unsigned resumes = awaitlet__resumes;
    if (resumes != fair_resumes) {
        /* suspended since the last look (a wait, a yield, or another task
         * ran): the segment started at the wake-up -- the poll's time, or
         * a later task's leave in the same iteration */
        ev_tstamp polled = ev_now(awaitlet_current_loop());
        fair_resumes = resumes;
        fair_since = fair_last > polled ? fair_last : polled;
    }
    fair_last = now;
    if (now - fair_since <= FAIRNESS_S)
        return;
    /* Suspension point 3.  The yield resumes us after the loop has polled
     * and run every other ready watcher, expired timers included; the next
     * look sees the resume and starts a new segment. */
    int saved = errno;
    (void)awaitlet_yield();
    errno = saved;
}

/* ---- entering and leaving ---- */

int pqawait__enter(pqawait__scope *sc, PGconn *conn, int flags)
{
    pqawait__init(); /* orders the read of key below after its creation */
    return pqawait__enter_at(sc, pqawait__slot(), conn, flags);
}

int pqawait__enter_at(pqawait__scope *sc, void **slot, PGconn *conn, int flags)
{
    sc->open = sc->owning = sc->tl = sc->doomed = 0;
    sc->owner = sc->outer = NULL;
    sc->learned = NULL;
    sc->slot = NULL;
    sc->conn = conn;
    sc->flags = flags;
    sc->sock = conn ? PQsocket(conn) : -1;
    if (sc->sock < 0 && conn && (flags & PQAWAIT__F_NEWSOCK) && PQstatus(conn) == CONNECTION_BAD)
        sc->sock = SOCK_DROPPED; /* its socket went where the shim did not see it */
    if (!slot) {
        /* Outside a task, or in a marked signal handler. */
        int in_task = awaitlet_in_context();
        if (in_task && awaitlet_in_signal_handler())
            return PQAWAIT__PASS; /* a handler gets plain libpq */
        if (!in_task && pqawait__owned == 0) {
            /* No connection of this thread is inside libpq: nothing to own
             * or track -- but a connection another thread's task is inside
             * is not ours to use. */
            return conn && pqawait__owner_elsewhere(conn) ? PQAWAIT__BUSY /* owner NULL */
                                                          : PQAWAIT__PASS;
        }
        if (in_task || awaitlet_in_signal_handler())
            return PQAWAIT__PASS; /* no task key (none was left for the shim), a handler */
        /* A libev callback touching a connection a suspended task is using
         * would steal its results and leave the task waiting forever. */
        if (conn && ((sc->owner = pqawait__owner_find(conn)) != NULL || pqawait__owner_elsewhere(conn)))
            return PQAWAIT__BUSY;
        return PQAWAIT__PASS;
    }
    void *v = *slot;
    pqawait__scope *top = as_scope(v);
    if (top && !(top->flags & PQAWAIT__F_CALLBACK)) {
        /* libpq is running in this task's innermost scope */
        if (!conn || conn == top->conn || conn == top->learned)
            return PQAWAIT__PASS; /* libpq calling itself */
        if (!top->conn && (top->flags & PQAWAIT__F_CONNECT) && !top->learned) {
            top->learned = conn; /* PQconnectdb's PQconnectPoll: the new connection */
            *pqawait__pass(awaitlet__cur) = pqawait__pass_of(top);
            return PQAWAIT__PASS;
        }
    }
    if (conn && pqawait__owned && (sc->owner = pqawait__owner_find(conn)) != NULL) {
        if (sc->owner->task != awaitlet__cur)
            return PQAWAIT__BUSY;
        sc->owner = NULL; /* this task's own frame further out */
        return PQAWAIT__PASS;
    }
    if (conn && __atomic_load_n(&pqawait__owner_threads, __ATOMIC_RELAXED) > pqawait__thread_owns &&
        pqawait__owner_elsewhere(conn))
        return PQAWAIT__BUSY; /* a task of another thread is inside it */
    /* Open a scope (nested inside a callback if top is one). */
    push(sc, slot, top, v);
    *slot = sc;
    *pqawait__pass(sc->task) = ~(uintptr_t)conn; /* pqawait__pass_of(sc) */
    sc->open = 1;
    if (!(flags & PQAWAIT__F_UNSHIELDED))
        pqawait__shield_on(sc->task); /* interruptions: see the timeline */
    if (conn)
        pqawait__owner_add(sc);
    if (__builtin_expect(pqawait__stats_enabled(), 0)) { /* PQAWAIT_STATS (stats.c) */
        pqawait__stats_task();
        pqawait__stats_bump(PQAWAIT__ST_CALLS);
    }
    return PQAWAIT__SCOPED;
}

PQAWAIT__TLS unsigned pqawait__copy_rows;

/* pqawait__copy_probe's case where a connection of this thread is inside
 * libpq, or another thread ever owned one. */
int pqawait__copy_probe_owned(const PGconn *conn)
{
    if (pqawait__owned && pqawait__owner_find(conn))
        return 0; /* another task's: the scope path refuses it */
    if (__atomic_load_n(&pqawait__owner_threads, __ATOMIC_RELAXED) > pqawait__thread_owns &&
        pqawait__owner_elsewhere(conn))
        return 0;
    return 1;
}

int pqawait__copy_probed(PGconn *conn, int r)
{
    if (r < 0 && __atomic_load_n(&pqawait__stmts, __ATOMIC_RELAXED)) {
        int saved = errno;
        pqawait__stmt_leave(conn); /* the statement may be over */
        errno = saved;
    }
    return r;
}

/* The call may have closed sc->sock, or given conn another socket. */
static void after_call(pqawait__scope *sc)
{
    /* Not sc->learned: PQping frees the connection it made (a nested
     * PQfinish) before its scope leaves.  A connect's final socket needs
     * no bump anyway: its number was free, and its waits leave the task's
     * next one fresh. */
    PGconn *c = sc->conn;
    int now = c && !(sc->flags & PQAWAIT__F_FREES) ? PQsocket(c) : -1;
    if (sc->flags & PQAWAIT__F_NEWSOCK) {
        /* connects, resets, PQfinish: the socket on entry may be gone */
        if (sc->sock >= 0 || sc->sock == SOCK_DROPPED)
            pqawait__newsock(sc->sock >= 0 ? sc->sock : -1);
        if (now >= 0 && now != sc->sock)
            pqawait__newsock(now);
    } else if (sc->conn && now != sc->sock) {
        if (sc->sock >= 0)
            pqawait__newsock(sc->sock);
        if (now >= 0)
            pqawait__newsock(now);
    }
}

void pqawait__passed(pqawait__scope *sc)
{
    int saved = errno;
    after_call(sc);
    errno = saved;
}

void pqawait__leave(pqawait__scope *sc)
{
    int saved = errno;
    if (sc->doomed) {
        /* A foreign PQfinish shut the session down during the call.  A
         * connect may have opened another socket since: shut that too. */
        int s = PQsocket(sc->conn);
        if (s >= 0)
            (void)shutdown(s, SHUT_RDWR);
        pqawait__doomed_add(sc->conn, sc->task);
    }
    if ((sc->flags & PQAWAIT__F_CANCEL) && sc->conn && __atomic_load_n(&pqawait__stmts, __ATOMIC_RELAXED))
        pqawait__stmt_leave(sc->conn); /* the statement may be over */
    if (sc->owning)
        pqawait__owner_remove(sc); /* by pointer: conn may be freed already */
    after_call(sc);
    if (!(sc->flags & PQAWAIT__F_UNSHIELDED))
        pqawait__shield_off(sc->task);
    pop(sc);
    errno = saved;
}

void pqawait__busy(pqawait__scope *sc)
{
    (void)sc;
    /* A caller that ignores the failure and loops (PQgetResult until NULL)
     * would otherwise spin without ever letting the owner finish.
     * Suspension point 4: the failure value is computed already and
     * nothing below touches the connection. */
    if (awaitlet_in_context() && !awaitlet_in_signal_handler())
        (void)awaitlet_yield();
    errno = EBUSY;
}

void pqawait__busy_finish(pqawait__scope *sc)
{
    pqawait__scope *o = sc->owner;
    if (!o) {
        /* The owner runs on another thread: its scope is not ours to
         * touch.  Shut the session down (the owner's call ends with
         * libpq's connection-lost error) and leave the PGconn alone. */
        int s = PQsocket(sc->conn);
        if (s >= 0)
            (void)shutdown(s, SHUT_RDWR);
        errno = EBUSY;
        return;
    }
    assert(o->open && o->conn == sc->conn);
    if (o->flags & PQAWAIT__F_FREES)
        return; /* the owner is finishing it already */
    o->doomed = 1;
    int s = PQsocket(sc->conn);
    if (s >= 0)
        (void)shutdown(s, SHUT_RDWR); /* the owner's next read sees the end */
}

int pqawait__finish_refused(PGconn *conn)
{
    awaitlet_task *me = awaitlet_in_context() ? awaitlet_current() : NULL;
    if (!pqawait__doomed_refuse(conn, me))
        return 0;
    int s = PQsocket(conn); /* the owner may have reconnected it meanwhile */
    if (s >= 0)
        (void)shutdown(s, SHUT_RDWR);
    errno = EBUSY;
    return 1;
}

/* ---- waits ---- */

/* ---- the interruption timeline (see the top of the file) ---- */

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void pqawait__interrupted(pqawait__scope *sc)
{
    if (sc->tl != PQAWAIT__TL_NONE || !(sc->flags & (PQAWAIT__F_CANCEL | PQAWAIT__F_CONNECT | PQAWAIT__F_FREES)))
        return;
    int cause = awaitlet_interruption();
    if (!cause)
        return; /* an EINTR of the kernel's, not an interruption */
    double now = mono();
    sc->cause = cause;
    sc->since = (sc->flags & PQAWAIT__F_CANCEL) && sc->conn
                    ? pqawait__stmt_seen(sc->conn, sc->task, now, cause) /* the statement's X */
                    : now;
    sc->tl = PQAWAIT__TL_GRACE;
}

void pqawait__before_call(pqawait__scope *sc)
{
    if (!(sc->flags & PQAWAIT__F_CANCEL) || !sc->conn || sc->outer)
        return;
    if (!pqawait__cancel_flying(sc->conn))
        return;
    int saved = errno;
    double until = mono() + pqawait__grace(), step = 0.0005;
    /* Suspension point 6.  Normally a millisecond: the request's
     * connection closes right after the postmaster signalled the backend. */
    while (mono() < until) {
        if (awaitlet_sleep(step) < 0) {
            if (errno == EINTR && awaitlet_interrupted())
                pqawait__interrupted(sc); /* this shield level's EINTR: the timeline starts */
            else
                break;
        }
        if (!pqawait__cancel_flying(sc->conn))
            break;
        if (step < 0.008)
            step *= 2;
    }
    errno = saved;
}

void pqawait__abandoned_return(pqawait__scope *sc, PGresult *res, PGconn *conn)
{
    int saved = errno;
    if (conn && (sc->flags & PQAWAIT__F_CONNECT))
        pqawait__connect_abandoned(conn, sc->cause); /* PQconnectdb's own PGconn */
    if (res && sc->conn)
        pqawait__result_abandoned(sc->conn, res);
    errno = saved;
}

/* Abandon sc's call now (see pqawait__timeline). */
static void abandon(pqawait__scope *sc)
{
    sc->tl = PQAWAIT__TL_GONE;
    if (sc->flags & PQAWAIT__F_CANCEL)
        pqawait__stmt_abandon(sc->conn, sc->sock, sc->cause); /* the dead socket */
    else if (sc->flags & PQAWAIT__F_CONNECT)
        pqawait__connect_abandoned(sc->conn ? sc->conn : sc->learned, sc->cause);
    /* PQfinish: its wait fails, libpq frees the connection regardless */
}

static void cut(double *left, double until)
{
    if (*left < 0 || until < *left)
        *left = until > 0 ? until : 0;
}

int pqawait__timeline(pqawait__scope *sc, double *left)
{
    if (sc->tl == PQAWAIT__TL_GONE)
        return 1;
    if (!awaitlet_interrupted()) {
        /* the deadline was cleared or moved to the future: normal again */
        if ((sc->flags & PQAWAIT__F_CANCEL) && sc->conn)
            pqawait__stmt_forget(sc->conn);
        sc->tl = PQAWAIT__TL_NONE;
        return 0;
    }
    double now = mono(), grace = pqawait__grace();
    if (sc->tl == PQAWAIT__TL_GRACE) {
        if (now < sc->since + grace) {
            cut(left, sc->since + grace - now);
            return 0;
        }
        if (!(sc->flags & PQAWAIT__F_CANCEL)) {
            abandon(sc); /* a connect, a PQfinish: nothing to cancel */
            return 1;
        }
        sc->tl = PQAWAIT__TL_CANCEL;
        sc->again = 0;
    }
    /* The statement has not ended: cancel it, again while it runs (the
     * first request goes even at the give-up point, to stop it there). */
    double give_up = sc->since + pqawait__give_up();
    if (sc->again >= 0 && now >= sc->again && (now < give_up || sc->again == 0))
        sc->again = pqawait__stmt_cancel(sc->conn, now); /* never waits */
    if (now >= give_up) {
        abandon(sc);
        return 1;
    }
    cut(left, give_up - now);
    if (sc->again >= 0)
        cut(left, sc->again - now);
    return 0;
}
