/*
 * scope.c -- opening and closing cooperative scopes; who owns which
 * connection; when a wait must be fresh; fairness; cancel on interrupt.
 *
 * Per-task state lives in one awaitlet key.  While a task is inside libpq,
 * the key holds its scope (a struct on the wrapper's C stack, so nothing is
 * allocated).  Otherwise it holds the task's "wait state": the close
 * generation (below) seen at its last wait, encoded as (gen << 1) | 1 so it
 * can never be mistaken for a scope pointer and needs no cleanup when the
 * task ends.  NULL means the task never waited through the shim.
 *
 * Fresh waits.  A task's ev_io stays armed between two equal waits, so a
 * socket closed and reopened under the same number in between would never
 * report (see AWAITLET_FRESH).  libpq closes and opens sockets in its
 * connect and reset paths, in PQfinish, and when it drops a broken
 * connection.  Every such event, anywhere in the process, bumps a global
 * generation; a task whose recorded generation differs passes
 * AWAITLET_FRESH on its next wait (one epoll_ctl), and so does any wait of
 * a connect-type call.  Steady-state query waits stay syscall-free.
 *
 * Ownership.  A per-thread hash table (the scopes themselves are its
 * nodes) maps each connection inside an outer scope to that scope.  Tasks
 * of one loop share a thread, so a thread-local table sees every conflict
 * that can happen without a data race.  It grows by doubling and never
 * shrinks; a heap-allocated array is freed at thread exit.
 *
 * Shield.  An outer scope shields the task: if cancellation or a deadline
 * made libpq's poll fail, libpq would mark the command finished while the
 * server keeps sending, and the connection would be out of step for good.
 * Instead the interrupted wait comes back once with EINTR; we then ask the
 * server to cancel the statement (PQcancel on a worker thread) and keep
 * waiting, so the statement ends through libpq's normal path with SQLSTATE
 * 57014 and the task's own next wait reports ECANCELED or ETIMEDOUT.
 *
 * Fairness.  A task parsing a large buffered result never reaches poll.
 * Each entry checks whether the loop has polled since this thread last
 * looked (ev_iteration) and, if not, for how long; past 2 ms the task
 * lets the loop poll once before calling libpq.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include <awaitlet.h>
#include <ev.h>
#include <pqawait.h>

#include "scope.h"

#define FAIRNESS_US 2000
#define INLINE_BUCKETS 32

static awaitlet_key key;
static int key_ok;

static uintptr_t generation = 1;

struct owners {
    pqawait__scope **b;     /* buckets; inline_b until it grows */
    size_t mask;
    size_t n;
    pqawait__scope *inline_b[INLINE_BUCKETS];
};

/* initial-exec: a plain %fs-relative access, no __tls_get_addr call per
 * libpq call (the shim is loaded at start-up, or preloaded) */
#define PQAWAIT__TLS __thread __attribute__((tls_model("initial-exec")))
static PQAWAIT__TLS struct owners owners;
static PQAWAIT__TLS struct ev_loop *fair_loop;
static PQAWAIT__TLS unsigned fair_iter;
static PQAWAIT__TLS uint64_t fair_since;

static pthread_key_t owners_key;
static pthread_once_t owners_once = PTHREAD_ONCE_INIT;
static int owners_key_ok;

void pqawait__scope_init(void)
{
    key_ok = awaitlet_key_create(&key) == 0;
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void pqawait__newsock(void)
{
    __atomic_add_fetch(&generation, 1, __ATOMIC_RELAXED);
}

static uintptr_t gen_state(void)
{
    return (__atomic_load_n(&generation, __ATOMIC_RELAXED) << 1) | 1u;
}

/* ---- ownership table ---- */

/* Thread exit: later destructors of this thread may still call libpq. */
static void owners_free(void *b)
{
    if (owners.b == b) {
        owners.b = NULL;
        owners.n = 0;
    }
    free(b);
}

static void owners_key_init(void)
{
    owners_key_ok = pthread_key_create(&owners_key, owners_free) == 0;
}

static size_t slot(const struct owners *o, const PGconn *conn)
{
    uintptr_t h = (uintptr_t)conn;
    h ^= h >> 17;
    h *= (uintptr_t)0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 7) & o->mask;
}

static pqawait__scope *owner_find(const PGconn *conn)
{
    struct owners *o = &owners;
    if (!o->n)
        return NULL;
    for (pqawait__scope *s = o->b[slot(o, conn)]; s; s = s->hnext)
        if (s->conn == conn)
            return s;
    return NULL;
}

/* Grow when chains get long.  Failing to grow only costs lookup time. */
static void owners_grow(struct owners *o)
{
    size_t nb = (o->mask + 1) * 4;
    pthread_once(&owners_once, owners_key_init);
    if (!owners_key_ok)
        return;
    pqawait__scope **b = calloc(nb, sizeof *b);
    if (!b)
        return;
    pqawait__scope **old = o->b;
    size_t oldn = o->mask + 1;
    o->b = b;
    o->mask = nb - 1;
    for (size_t i = 0; i < oldn; i++) {
        pqawait__scope *s = old[i], *next;
        for (; s; s = next) {
            next = s->hnext;
            size_t k = slot(o, s->conn);
            s->hnext = b[k];
            b[k] = s;
        }
    }
    if (old != o->inline_b)
        free(old);
    pthread_setspecific(owners_key, b);
}

static void owner_add(pqawait__scope *sc)
{
    struct owners *o = &owners;
    if (!o->b) {
        o->b = o->inline_b;
        o->mask = INLINE_BUCKETS - 1;
    }
    if (o->n >= 2 * (o->mask + 1))
        owners_grow(o);
    size_t k = slot(o, sc->conn);
    sc->hnext = o->b[k];
    o->b[k] = sc;
    o->n++;
    sc->owning = 1;
}

static void owner_remove(pqawait__scope *sc)
{
    struct owners *o = &owners;
    for (pqawait__scope **p = &o->b[slot(o, sc->conn)]; *p; p = &(*p)->hnext) {
        if (*p == sc) {
            *p = sc->hnext;
            o->n--;
            break;
        }
    }
    sc->owning = 0;
}

/* ---- scopes ---- */

static pqawait__scope *as_scope(void *v)
{
    return v && !((uintptr_t)v & 1u) ? v : NULL;
}

pqawait__scope *pqawait__current(void)
{
    pqawait__init(); /* orders the reads of key below after its creation */
    if (!key_ok || !awaitlet_in_context())
        return NULL;
    return as_scope(awaitlet_getspecific(key));
}

/* The loop iteration this thread last saw, and since when. */
static void fair_note(struct ev_loop *loop)
{
    fair_loop = loop;
    fair_iter = ev_iteration(loop);
    fair_since = now_us();
}

static void fairness(void)
{
    struct ev_loop *loop = awaitlet_current_loop();
    if (loop != fair_loop || ev_iteration(loop) != fair_iter) {
        fair_note(loop); /* the loop polled since we last looked */
        return;
    }
    if (now_us() - fair_since <= FAIRNESS_US)
        return;
    /* A yield resumes us only after the loop has polled and run every
     * other ready watcher, expired timers included. */
    int saved = errno;
    (void)awaitlet_sleep(0); /* best effort: a cancelled task just goes on */
    errno = saved;
    fair_note(loop);
}

int pqawait__enter(pqawait__scope *sc, PGconn *conn, int flags)
{
    sc->owner = NULL;
    sc->owning = sc->quiet = sc->cancel_sent = sc->finish_deferred = 0;
    if (owners.n == 0 && !awaitlet_in_context()) {
        /* The plain-libpq fast path: no task here and no connection of
         * this thread inside libpq, so nothing to own or track -- except
         * that connect/finish still bump the close generation. */
        sc->conn = NULL;
        sc->flags = flags & PQAWAIT__F_NEWSOCK;
        sc->sock = -1;
        return PQAWAIT__PASS;
    }
    sc->conn = conn;
    sc->flags = flags;
    sc->sock = conn && !(flags & PQAWAIT__F_FREES) ? PQsocket(conn) : -1;
    pqawait__init();
    if (!key_ok)
        return PQAWAIT__PASS;
    if (!awaitlet_in_context()) {
        /* A libev callback touching a connection a suspended task is using
         * would steal its results and leave the task waiting forever. */
        if (conn && (sc->owner = owner_find(conn)) != NULL)
            return PQAWAIT__BUSY;
        return PQAWAIT__PASS;
    }
    void *v = awaitlet_getspecific(key);
    pqawait__scope *outer = as_scope(v);
    if (outer) {
        /* libpq calling itself, or a callback (notice processor) calling
         * into libpq: pass, unless it is another task's connection. */
        if (conn && conn != outer->conn && (sc->owner = owner_find(conn)) != NULL)
            return PQAWAIT__BUSY;
        return PQAWAIT__PASS;
    }
    if (!(flags & PQAWAIT__F_UNSHIELDED))
        fairness(); /* before the ownership check: we may be suspended here */
    if (conn && (sc->owner = owner_find(conn)) != NULL)
        return PQAWAIT__BUSY;
    sc->state = sc->pending = (uintptr_t)v;
    if (awaitlet_setspecific(key, sc) < 0)
        return PQAWAIT__PASS;
    if (!(flags & PQAWAIT__F_UNSHIELDED)) {
        sc->quiet = (unsigned char)awaitlet_interrupted();
        (void)awaitlet_shield(1);
    }
    if (conn)
        owner_add(sc);
    return PQAWAIT__SCOPED;
}

static void after_call(pqawait__scope *sc)
{
    if ((sc->flags & PQAWAIT__F_NEWSOCK) ||
        (sc->conn && !(sc->flags & PQAWAIT__F_FREES) && PQsocket(sc->conn) != sc->sock))
        pqawait__newsock();
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
    if (sc->finish_deferred) {
        /* Still inside the scope, so its waits stay cooperative; but there
         * is no statement left to cancel. */
        sc->flags &= ~PQAWAIT__F_CANCEL;
        pqawait__real.PQfinish(sc->conn);
        sc->flags |= PQAWAIT__F_FREES | PQAWAIT__F_NEWSOCK;
    }
    if (sc->owning)
        owner_remove(sc); /* by pointer: conn may be freed already */
    after_call(sc);
    if (!(sc->flags & PQAWAIT__F_UNSHIELDED))
        (void)awaitlet_shield(0);
    (void)awaitlet_setspecific(key, (const void *)sc->state);
    errno = saved;
}

void pqawait__busy(pqawait__scope *sc)
{
    PGconn *conn = sc->conn;
    /* Only a command in progress makes PQsendQuery fail before any I/O;
     * in pipeline mode it would queue a real query instead. */
    if (PQtransactionStatus(conn) == PQTRANS_ACTIVE && pqawait__real.PQsendQuery
#ifdef LIBPQ_HAS_PIPELINING
        && (!pqawait__real.PQpipelineStatus ||
            pqawait__real.PQpipelineStatus(conn) == PQ_PIPELINE_OFF)
#endif
    )
        (void)pqawait__real.PQsendQuery(conn, "");
    /* A caller that ignores the failure and loops (PQgetResult until NULL)
     * would otherwise spin without ever letting the owner finish. */
    if (awaitlet_in_context())
        (void)awaitlet_sleep(0);
    errno = EBUSY;
}

void pqawait__busy_finish(pqawait__scope *sc)
{
    pqawait__scope *o = sc->owner;
    if (o && !(o->flags & PQAWAIT__F_FREES))
        o->finish_deferred = 1; /* a second request, or the owner's own PQfinish: nothing */
}

/* ---- waits ---- */

int pqawait__wait_flags(pqawait__scope *sc)
{
    uintptr_t now = gen_state();
    int fresh = (sc->flags & PQAWAIT__F_FRESH) || sc->state != now;
    sc->pending = now;
    return fresh ? AWAITLET_FRESH : 0;
}

void pqawait__waited(pqawait__scope *sc, int r)
{
    /* A failed wait may have ended before arming the task's watcher, so
     * the generation it was armed under is unknown: be fresh next time. */
    if (r >= 0)
        sc->state = sc->pending;
    else
        sc->state = 0;
    fair_note(awaitlet_current_loop());
}

void pqawait__interrupted(pqawait__scope *sc)
{
    if (sc->quiet || sc->cancel_sent || !(sc->flags & PQAWAIT__F_CANCEL) || !sc->conn)
        return;
    sc->cancel_sent = 1;
    if (PQstatus(sc->conn) != CONNECTION_OK || PQtransactionStatus(sc->conn) != PQTRANS_ACTIVE)
        return;
    PGcancel *c = PQgetCancel(sc->conn);
    if (!c)
        return;
    char errbuf[256];
    int saved = errno;
    (void)pqawait_cancel(c, errbuf, (int)sizeof errbuf);
    errno = saved;
    PQfreeCancel(c);
}
