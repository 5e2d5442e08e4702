/*
 * scope.h -- the "cooperative scope" every libpq entry point runs in.
 *
 * Inside a task, an exported wrapper (PQexec, PQconnectdb...) opens a scope
 * and calls the real libpq function.  While the scope is the task's
 * innermost frame, the shim's poll and getaddrinfo (hooks.c) suspend the
 * task for libpq's own waits instead of blocking the thread.
 *
 * Frames form a stack per task (the task key points at the innermost):
 *   - a scope, for a libpq call;
 *   - a callback frame, pushed while libpq runs user code (a notice
 *     processor or receiver, callbacks.c): inside it the hooks are the
 *     real functions again, and a libpq call made from it opens a scope of
 *     its own.
 * libpq calls its own exported functions through the PLT; such a call on
 * the innermost scope's connection (or with none) is a plain pass-through.
 *
 * A scope also marks its connection as owned by the task (owners.c), so
 * that another task (or a libev callback) calling into libpq on that
 * connection while the owner is suspended gets libpq's failure value with
 * errno EBUSY instead of stealing the owner's results.
 *
 * Where the shim may suspend a task is listed at the top of scope.c.
 */
#ifndef PQAWAIT_SCOPE_H
#define PQAWAIT_SCOPE_H

#include <assert.h>
#include <pthread.h>
#include <stdint.h>

#include <awaitlet.h>
#include <libpq-fe.h>

#include "bound.h"
#include "owners.h"
#include "real.h"

/* What pqawait__enter decided. */
enum {
    PQAWAIT__PASS,   /* outside a task, nested, or in a signal handler:
                        call libpq, then pqawait__passed */
    PQAWAIT__BUSY,   /* conn is owned by another task: fail without touching it */
    PQAWAIT__SCOPED  /* scope open: call libpq, then pqawait__leave */
};

/* Scope flags. */
#define PQAWAIT__F_FRESH      0x01 /* every wait says AWAITLET_FRESH (sockets come and go) */
#define PQAWAIT__F_NEWSOCK    0x02 /* the call may close or open sockets */
#define PQAWAIT__F_FREES      0x04 /* the call frees conn: never touch it afterwards */
#define PQAWAIT__F_UNSHIELDED 0x08 /* a plain wait: cancellation ends it with an error */
#define PQAWAIT__F_CANCEL     0x10 /* on interruption, ask the server to cancel */
#define PQAWAIT__F_CONNECT    0x20 /* a connect: host name lookups, changing sockets */
#define PQAWAIT__F_ANYFD      0x40 /* the wait is on a caller's socket (PQsocketPoll) */
#define PQAWAIT__F_CALLBACK   0x80 /* not a scope: libpq is running user code */

#define PQAWAIT__SCOPE_QUERY   (PQAWAIT__F_CANCEL)
#define PQAWAIT__SCOPE_CONNECT (PQAWAIT__F_FRESH | PQAWAIT__F_NEWSOCK | PQAWAIT__F_CONNECT)
#define PQAWAIT__SCOPE_FINISH  (PQAWAIT__F_NEWSOCK | PQAWAIT__F_FREES)
#define PQAWAIT__SCOPE_WAIT    (PQAWAIT__F_FRESH | PQAWAIT__F_UNSHIELDED | PQAWAIT__F_ANYFD)

struct pqawait__cancel;

typedef struct pqawait__scope pqawait__scope;
struct pqawait__scope {
    PGconn *conn;            /* the call's connection; NULL: none (yet) */
    PGconn *learned;         /* connect without conn: the one libpq is making */
    pqawait__scope *outer;   /* the frame this one is nested in; NULL: outermost */
    pqawait__scope *owner;   /* BUSY: the scope owning conn */
    pqawait__scope *hnext;   /* chain in this thread's ownership table */
    pqawait__scope *gnext;   /* chain in the process-wide registry (owners.c) */
    void **slot;             /* the task's key slot (awaitlet_key_slot); NULL: none */
    pthread_t thread;        /* owning: the thread it runs on */
    awaitlet_task *task;     /* the task that opened the frame */
    uintptr_t state;         /* the task's wait state, see scope.c */
    uintptr_t pending;       /* the state a wait in progress will leave */
    double since;            /* the interruption timeline's start (X), see scope.c */
    double again;            /* TL_CANCEL: when to look at the cancel requests again; -1 never */
    int flags;
    int sock;                /* PQsocket(conn) on entry (-2: lost unseen, scope.c) */
    int cause;               /* ECANCELED / ETIMEDOUT, once the timeline runs */
    unsigned char open;      /* pushed and not left yet */
    unsigned char owning;    /* registered in the ownership table */
    unsigned char tl;        /* where on the timeline: PQAWAIT__TL_* */
    unsigned char doomed;    /* a foreign PQfinish shut conn down meanwhile */
    unsigned char global;    /* owning: in the process-wide registry too (owners.c) */
};

/* Where a scope is on the interruption timeline (scope.c). */
enum {
    PQAWAIT__TL_NONE,        /* not interrupted, as far as its waits saw */
    PQAWAIT__TL_GRACE,       /* interrupted; running normally until X+grace */
    PQAWAIT__TL_CANCEL,      /* a statement past its grace: cancel requests (again while it
                                runs, bound.c), until X+give-up */
    PQAWAIT__TL_GONE         /* abandoned: every further wait ends at once */
};

/* Create the task key (from pqawait__init). */
void pqawait__scope_init(void);

/* Decide how a wrapper runs; fills *sc in every case.  Never suspends. */
int pqawait__enter(pqawait__scope *sc, PGconn *conn, int flags);

/* pqawait__enter with the running task's key slot already asked for
 * (slot = awaitlet_key_slot(pqawait__key), NULL outside tasks). */
int pqawait__enter_at(pqawait__scope *sc, void **slot, PGconn *conn, int flags);

/* The shim's task key (-1 until pqawait__scope_init). */
extern awaitlet_key pqawait__key;

/* Threads that ever owned a connection (owners.c), and whether this one
 * has: another thread's scope can only exist when the count is larger. */
extern int pqawait__owner_threads;
/* pqawait__thread_owns, pqawait__owned: owners.h */

/* A wrapper whose decision needs no scope, computed inline before
 * anything else: plain libpq -- outside a task with no connection of this
 * thread inside libpq and no other thread ever owning one
 * (pqawait__plain_outside), or libpq calling itself inside this task's
 * innermost scope on its connection (pqawait__pass_matches).  Such a call
 * needs nothing afterwards either: calls that open or close sockets
 * (F_NEWSOCK) always take the full path, and a nested call's socket
 * change is seen by the scope around it.  Anything else: ask
 * pqawait__enter_at (which passes the remaining nested cases through). */
/* libawaitlet's running task (NULL outside tasks), exported by lib/task.c
 * for this one test: reading it inline saves a call per libpq call made
 * outside tasks.  Both libraries' thread-locals are initial-exec already. */
extern __thread __attribute__((tls_model("initial-exec"))) awaitlet_task *awaitlet__cur;
extern __thread __attribute__((tls_model("initial-exec"))) int awaitlet__sigdepth;
extern const size_t awaitlet__locals_offset;
/* Where the task's shield level is (lib/task.c); intr_told follows it. */
extern const size_t awaitlet__shield_offset;
/* Resumes of any task on this thread (lib/task.c), for fairness. */
extern __thread __attribute__((tls_model("initial-exec"))) unsigned awaitlet__resumes;

/* awaitlet_key_slot(pqawait__key), inline: NULL outside tasks, in a marked
 * signal handler, or without a key. */
/* Where the shim's key slot is in a task: awaitlet__locals_offset +
 * pqawait__key slots, in bytes; 0 until the key exists (no slot is at 0). */
extern size_t pqawait__slot_off;

static inline void **pqawait__slot(void)
{
    awaitlet_task *t = awaitlet__cur;
    size_t off = pqawait__slot_off;
    if (!t || awaitlet__sigdepth || !off)
        return NULL;
    return (void **)((char *)t + off);
}

/* awaitlet_shield(1) and awaitlet_shield(0) for task t (the running one),
 * inline (lib/wait.c keeps the same logic): the level, and the bit of the
 * level being lifted cleared, so that a new level is owed a new EINTR. */
static inline void pqawait__shield_on(awaitlet_task *t)
{
    ++*(int *)((char *)t + awaitlet__shield_offset);
}

static inline void pqawait__shield_off(awaitlet_task *t)
{
    int *level = (int *)((char *)t + awaitlet__shield_offset);
    uint32_t *told = (uint32_t *)(level + 1);
    assert(*level > 0); /* lowered more than raised */
    if (*level <= 32)
        *told &= ~(1u << (*level - 1));
    --*level;
}

/* Register sc as its connection's owner (owners.c) -- inline, the common
 * case: a thread counted as an owner already, owning nothing else, the
 * registry off and its table's lock free (one exchange, two stores, one
 * release store); everything else in pqawait__owner_add_slow. */
static inline void pqawait__owner_add(pqawait__scope *sc)
{
    struct pqawait__thread_state *th = &pqawait__thr;
    assert(sc->conn && !sc->owning && !sc->owner); /* enter_at found no owner */
    if (__builtin_expect(th->owns && !th->owned, 1) &&
        __builtin_expect(!__atomic_exchange_n(&th->lock, 1, __ATOMIC_ACQUIRE), 1)) {
        if (__builtin_expect(!__atomic_load_n(&pqawait__registry, __ATOMIC_RELAXED), 1)) {
            sc->owning = 1;
            sc->global = 0;
            th->single = sc;
            th->owned = 1;
            __atomic_store_n(&th->lock, 0, __ATOMIC_RELEASE);
            return;
        }
        __atomic_store_n(&th->lock, 0, __ATOMIC_RELEASE);
    }
    pqawait__owner_add_slow(sc);
}

/* Unregister sc (by pointer: its conn may be freed already) -- inline when
 * it is the thread's single scope and not in the registry. */
static inline void pqawait__owner_remove(pqawait__scope *sc)
{
    struct pqawait__thread_state *th = &pqawait__thr;
    assert(sc->owning && th->owned > 0);
    if (__builtin_expect(th->single == sc, 1) &&
        __builtin_expect(!__atomic_exchange_n(&th->lock, 1, __ATOMIC_ACQUIRE), 1)) {
        if (__builtin_expect(!sc->global, 1)) { /* a publisher sets it under the lock */
            th->single = NULL;
            th->owned--;
            __atomic_store_n(&th->lock, 0, __ATOMIC_RELEASE);
            sc->owning = 0;
            return;
        }
        __atomic_store_n(&th->lock, 0, __ATOMIC_RELEASE);
    }
    pqawait__owner_remove_slow(sc);
}

/* Outside tasks: 1 if the call is plain libpq (no connection of this
 * thread inside libpq and no other thread ever owning one). */
static inline int pqawait__plain_outside(const PGconn *conn, int flags)
{
    /* owned first: it is 0 far more often than conn is NULL */
    return !(flags & PQAWAIT__F_NEWSOCK) && (!pqawait__owned || !conn) &&
           __atomic_load_n(&pqawait__owner_threads, __ATOMIC_RELAXED) <= pqawait__thread_owns;
}

/* The task's pass word: its first word (lib/internal.h keeps it for us,
 * zero when the task starts).  While libpq runs in the task's innermost
 * frame, a scope, on connection c (the scope's, or the one a connect
 * learned; NULL if neither), the word is ~c; otherwise (no frame, a
 * callback frame) it is 0, which no ~c equals (no connection lives at
 * address ~0).  scope.c writes it wherever the innermost frame changes
 * (push, pop, a connect learning its connection), so a wrapper inside a
 * task knows "libpq calling itself" from one load and one compare -- a
 * marked signal handler included: a handler's call on that connection got
 * plain libpq before as well (enter_at's PASS), and the scope around it
 * sees any socket change. */
static inline uintptr_t *pqawait__pass(awaitlet_task *t)
{
    return (uintptr_t *)(void *)t;
}

/* The pass word frame f (the new innermost frame; NULL: none) stands for. */
static inline uintptr_t pqawait__pass_of(const pqawait__scope *f)
{
    if (!f || (f->flags & PQAWAIT__F_CALLBACK))
        return 0;
    return ~(uintptr_t)(f->conn ? f->conn : f->learned);
}

/* In task t: 1 if a call on conn is libpq calling itself (conn is its
 * innermost scope's, or NULL inside a scope). */
static inline int pqawait__pass_matches(awaitlet_task *t, const PGconn *conn)
{
    return *pqawait__pass(t) == ~(uintptr_t)conn;
}

/* PQgetCopyData(conn, buf, 0) in a task (slot non-NULL), not nested: 1 if
 * libpq's non-blocking form may be tried first, without a scope -- nothing
 * of this task is inside libpq, conn is not another task's or thread's, no
 * cancel request of the shim is on its way, and this is not every 16th
 * row (that one takes the scope, and its fairness check).  Never suspends. */
extern PQAWAIT__TLS unsigned pqawait__copy_rows;
int pqawait__copy_probe_owned(const PGconn *conn);

static inline int pqawait__copy_probe(void **slot, const PGconn *conn)
{
    const void *top;
    if (!slot || !conn || ((top = *slot) && !((uintptr_t)top & 1u)) ||
        (++pqawait__copy_rows & 15) == 0 || __atomic_load_n(&pqawait__flying, __ATOMIC_RELAXED))
        return 0;
    if (__builtin_expect(pqawait__owned != 0, 0) ||
        __atomic_load_n(&pqawait__owner_threads, __ATOMIC_RELAXED) > pqawait__thread_owns)
        return pqawait__copy_probe_owned(conn);
    return 1;
}

/* The probe returned r (a row, or -1/-2: the COPY is over): end the
 * statement's record if there is one; returns r. */
int pqawait__copy_probed(PGconn *conn, int r);

/* SCOPED, before the real call: if the shim's cancel request for the
 * connection's previous statement is still on its way, wait for it (at
 * most the grace) so that PostgreSQL cannot apply it to this call's
 * statement.  Suspends (awaitlet_sleep) while the scope owns conn; a
 * no-op costing one relaxed load when no request is flying.  Preserves
 * errno. */
void pqawait__before_call(pqawait__scope *sc);

/* SCOPED, after the real call returned: the fairness yield, if one is due.
 * Suspends (awaitlet_yield, which never reports an interruption) while the
 * scope still owns conn; decides nothing about conn.  Preserves errno. */
void pqawait__leave_yield(pqawait__scope *sc);

/* Close a SCOPED call.  Never suspends.  Preserves errno. */
void pqawait__leave(pqawait__scope *sc);

/* After a PASS call: notice sockets libpq closed or opened.  Preserves errno. */
void pqawait__passed(pqawait__scope *sc);

/* BUSY: the caller's failure value must be computed already; sets errno
 * EBUSY and, for a task (not in a signal handler), yields once so that a
 * caller looping on the failure lets the owner progress.  Touches nothing
 * of conn. */
void pqawait__busy(pqawait__scope *sc);

/* BUSY PQfinish: shut the owner's session down now (the owner's call ends
 * with libpq's connection-lost error); the owner's own PQfinish frees it. */
void pqawait__busy_finish(pqawait__scope *sc);

/* PQfinish(conn), before anything else: 1 if it must do nothing (errno
 * EBUSY) because conn was shut down by a foreign PQfinish and the caller
 * is not its owner. */
int pqawait__finish_refused(PGconn *conn);

/* The running task's innermost frame, or NULL (outside tasks, or a task
 * not inside libpq).  pqawait_in_scope reports it. */
pqawait__scope *pqawait__current(void);

/* A frame pointer from a task's key slot; NULL for the wait state (odd)
 * or nothing. */
static inline pqawait__scope *pqawait__as_scope(void *v)
{
    return v && !((uintptr_t)v & 1u) ? (pqawait__scope *)v : NULL;
}

/* The innermost frame if libpq itself is running in it: a scope, not a
 * callback frame, and not inside a signal handler.  What decides whether
 * poll and getaddrinfo may cooperate.  Inline: the poll hook asks at every
 * wait. */
static inline pqawait__scope *pqawait__wait_scope(void)
{
    void **slot = pqawait__slot(); /* NULL outside tasks and in marked handlers */
    pqawait__scope *sc = slot ? pqawait__as_scope(*slot) : NULL;
    if (!sc || (sc->flags & PQAWAIT__F_CALLBACK))
        return NULL;
    return sc;
}

/* Whether a poll on fd is libpq's own wait of scope sc: the connection's
 * socket, or any descriptor while a connect has no connection yet (and for
 * PQsocketPoll). */
static inline int pqawait__owns_fd(const pqawait__scope *sc, int fd)
{
    PGconn *c = sc->conn ? sc->conn : sc->learned;
    if (!c) /* a connect that has no connection yet; PQsocketPoll */
        return (sc->flags & (PQAWAIT__F_CONNECT | PQAWAIT__F_ANYFD)) != 0;
    if (sc->flags & PQAWAIT__F_CONNECT)
        return fd == PQsocket(c); /* changes between addresses and hosts */
    return fd == sc->sock; /* a query never opens a socket */
}

/* Callback frames (callbacks.c): enter returns 1 if a frame was pushed
 * (then leave must be called), 0 if there is no scope to mark. */
int pqawait__callback_enter(pqawait__scope *frame);
void pqawait__callback_leave(pqawait__scope *frame);

/* Socket generations (scope.c, Fresh waits): per descriptor number, and
 * one for sockets of unknown number; all values of one counter. */
#define PQAWAIT__FD_GENS 65536
extern uintptr_t pqawait__gen_all;
extern uintptr_t pqawait__fd_gen[PQAWAIT__FD_GENS];

/* For the poll hook: the flags its next awaitlet_io on fd needs
 * (AWAITLET_FRESH or 0) -- fresh when fd's or the all-descriptors
 * generation changed since the task's last wait, or for a connect. */
static inline int pqawait__wait_flags(pqawait__scope *sc, int fd)
{
    uintptr_t a = __atomic_load_n(&pqawait__gen_all, __ATOMIC_RELAXED);
    uintptr_t f = __atomic_load_n(&pqawait__fd_gen[(unsigned)fd % PQAWAIT__FD_GENS], __ATOMIC_RELAXED);
    uintptr_t now = ((a > f ? a : f) << 1) | 1u;
    int fresh = (sc->flags & PQAWAIT__F_FRESH) || sc->state != now;
    sc->pending = now;
    return fresh ? AWAITLET_FRESH : 0;
}

/* The bookkeeping after a wait, with its result.  A failed wait may have
 * ended before arming the task's watcher, so the generation it was armed
 * under is unknown: be fresh next time.  So after a connect's wait: libpq
 * may close that socket without the shim seeing it (trying the next
 * address). */
static inline void pqawait__waited(pqawait__scope *sc, int r)
{
    if (r >= 0 && !(sc->flags & PQAWAIT__F_FRESH))
        sc->state = sc->pending;
    else
        sc->state = 0;
}

/* For the hooks: a wait of sc came back with EINTR because the task is
 * cancelled or past its deadline (awaitlet_interruption): the timeline
 * starts, unless it runs already.  Never waits. */
void pqawait__interrupted(pqawait__scope *sc);

/* For the hooks, before each wait of a scope whose timeline runs (sc->tl):
 * act on the points reached (start the statement's cancel requests; abandon
 * the call) and cut *left (seconds, -1: none) to the next point.  Returns
 * 1 if the call is abandoned: the wait must not happen -- a statement's
 * socket is dead already (the hook reports it ready), for other calls the
 * hook fails the wait with errno sc->cause.  Never waits. */
int pqawait__timeline(pqawait__scope *sc, double *left);

/* Socket fd may have been closed or replaced under its number: a task's
 * next wait on that number is fresh (one epoll_ctl); waits on other
 * descriptors are not affected.  fd < 0: a socket of unknown number
 * (a connection dropped where the shim did not see it) -- every task's
 * next wait is fresh. */
void pqawait__newsock(int fd);

#endif
