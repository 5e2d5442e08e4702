/*
 * owners.c -- who owns which connection, per thread.
 *
 * Ownership.  A per-thread hash table maps each connection a task is
 * inside libpq with to that call's scope; the scopes themselves are the
 * nodes (chained through hnext), so registering costs no allocation.
 * Tasks of one loop share a thread, so a thread-local table sees every
 * conflict that can happen, without a data race: libpq connections are
 * used by one thread at a time anyway.  The table starts inline, grows by
 * doubling when chains get long and never shrinks; a grown array is freed
 * at thread exit.
 *
 * Other threads.  libpq allows a connection on one thread at a time, and
 * a program that breaks the rule -- a task on thread 2 using a connection
 * that a task on thread 1 is suspended inside -- would steal its results
 * or corrupt the PGconn.  The per-thread table cannot see that, so every
 * owning scope is also in a process-wide registry: SHARDS chains by
 * connection hash, each behind its own spin lock (held for a few list
 * operations, never across a call; uncontended it costs one atomic
 * exchange and one store, where a mutex pair cost ~50 instructions and two
 * calls; nothing shared between threads using different connections but a
 * shard now and then).  It is consulted only when more than one thread has
 * ever owned a connection (or the caller is not the one that has: an
 * inline check in the wrappers, pqawait__plain), so a single-loop program
 * pays the registration alone.
 *
 * Doomed connections.  PQfinish by a party other than the owner, while the
 * owner is suspended in libpq on that connection, shuts the session down
 * (scope.c) but cannot free the PGconn: the owner's call is still running
 * on it, and the owner will call PQfinish itself, as unmodified code
 * always does.  This list remembers such connections with their owner
 * task, so that the owner's PQfinish frees the struct and a repeated
 * foreign PQfinish does not.  It is short (one node per such event until
 * the owner finishes) and allocated, since nodes outlive the calls.
 */
#include <assert.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include "owners.h"
#include "scope.h"

#define INLINE_BUCKETS 32

struct owners {
    pqawait__scope **b;     /* buckets; inline_b until it grows */
    size_t mask;
    pqawait__scope *inline_b[INLINE_BUCKETS];
};

PQAWAIT__TLS struct pqawait__thread_state pqawait__thr;
static PQAWAIT__TLS struct owners owners;

#define SHARDS 256

struct shard {
    int lock;                   /* 0 free, 1 held; atomic */
    int n;                      /* scopes in the chain, atomic */
    pqawait__scope *head;
} __attribute__((aligned(64)));

static struct shard shards[SHARDS];
static pthread_once_t shards_once = PTHREAD_ONCE_INIT;
int pqawait__owner_threads;     /* threads that ever owned a connection, atomic */
/* pqawait__thread_owns (owners.h): this thread is counted in it */
#define owner_threads pqawait__owner_threads
#define thread_counted pqawait__thread_owns

static void shard_lock(struct shard *sh)
{
    while (__atomic_exchange_n(&sh->lock, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&sh->lock, __ATOMIC_RELAXED))
            sched_yield(); /* the holder was preempted: let it finish */
}

static void shard_unlock(struct shard *sh)
{
    __atomic_store_n(&sh->lock, 0, __ATOMIC_RELEASE);
}

/* fork(): no shard may stay locked in the child, and only the forking
 * thread's scopes exist there. */
static void shards_prepare(void)
{
    for (int i = 0; i < SHARDS; i++)
        shard_lock(&shards[i]);
}

static void shards_parent(void)
{
    for (int i = 0; i < SHARDS; i++)
        shard_unlock(&shards[i]);
}

static void shards_child(void)
{
    pthread_t self = pthread_self();
    int mine = 0;
    for (int i = 0; i < SHARDS; i++) {
        struct shard *sh = &shards[i];
        for (pqawait__scope **p = &sh->head; *p;) {
            if (!pthread_equal((*p)->thread, self)) {
                *p = (*p)->gnext;
                sh->n--;
            } else {
                mine = 1;
                p = &(*p)->gnext;
            }
        }
        shard_unlock(sh);
    }
    __atomic_store_n(&owner_threads, mine || thread_counted ? 1 : 0, __ATOMIC_RELAXED);
}

static void shards_init(void)
{
    (void)pthread_atfork(shards_prepare, shards_parent, shards_child);
}

static pthread_key_t owners_key;
static pthread_once_t owners_once = PTHREAD_ONCE_INIT;
static int owners_key_ok;

/* Thread exit: later destructors of this thread may still call libpq. */
static void owners_free(void *b)
{
    if (owners.b == b) {
        owners.b = NULL;
        pqawait__owned = 0;
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

static struct shard *shard_of(const PGconn *conn)
{
    uintptr_t h = (uintptr_t)conn;
    h ^= h >> 17;
    h *= (uintptr_t)0x9e3779b97f4a7c15ull;
    return &shards[(h >> 40) & (SHARDS - 1)];
}

static PQAWAIT__TLS pthread_t self_id; /* pthread_self(), once thread_counted */

static void global_add(pqawait__scope *sc)
{
    if (!thread_counted) {
        pthread_once(&shards_once, shards_init); /* before any lock is held */
        self_id = pthread_self();
        thread_counted = 1;
        __atomic_add_fetch(&owner_threads, 1, __ATOMIC_RELAXED);
    }
    struct shard *sh = shard_of(sc->conn);
    sc->thread = self_id;
    shard_lock(sh);
    sc->gnext = sh->head;
    sh->head = sc;
    __atomic_add_fetch(&sh->n, 1, __ATOMIC_RELAXED);
    shard_unlock(sh);
}

static void global_remove(pqawait__scope *sc)
{
    struct shard *sh = shard_of(sc->conn);
    shard_lock(sh);
    for (pqawait__scope **p = &sh->head; *p; p = &(*p)->gnext)
        if (*p == sc) {
            *p = sc->gnext;
            __atomic_sub_fetch(&sh->n, 1, __ATOMIC_RELAXED);
            break;
        }
    shard_unlock(sh);
}

int pqawait__owner_elsewhere(const PGconn *conn)
{
    int n = __atomic_load_n(&owner_threads, __ATOMIC_RELAXED);
    if (n == 0 || (n == 1 && thread_counted))
        return 0; /* no other thread has ever owned a connection */
    struct shard *sh = shard_of(conn);
    if (!__atomic_load_n(&sh->n, __ATOMIC_RELAXED))
        return 0;
    int found = 0;
    pthread_t self = pthread_self();
    shard_lock(sh);
    for (pqawait__scope *s = sh->head; s; s = s->gnext)
        if (s->conn == conn && !pthread_equal(s->thread, self)) {
            found = 1;
            break;
        }
    shard_unlock(sh);
    return found;
}

pqawait__scope *pqawait__owner_find(const PGconn *conn)
{
    struct owners *o = &owners;
    if (!pqawait__owned)
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

void pqawait__owner_add(pqawait__scope *sc)
{
    struct owners *o = &owners;
    assert(sc->conn && !sc->owning);
    assert(pqawait__owner_find(sc->conn) == NULL); /* one owner per connection */
    if (!o->b) {
        o->b = o->inline_b;
        o->mask = INLINE_BUCKETS - 1;
    }
    if (pqawait__owned >= 2 * (o->mask + 1))
        owners_grow(o);
    size_t k = slot(o, sc->conn);
    sc->hnext = o->b[k];
    o->b[k] = sc;
    pqawait__owned++;
    sc->owning = 1;
    global_add(sc);
}

void pqawait__owner_remove(pqawait__scope *sc)
{
    struct owners *o = &owners;
    int found = 0;
    assert(sc->owning && pqawait__owned > 0);
    for (pqawait__scope **p = &o->b[slot(o, sc->conn)]; *p; p = &(*p)->hnext) {
        if (*p == sc) {
            *p = sc->hnext;
            pqawait__owned--;
            found = 1;
            break;
        }
    }
    assert(found); /* the table lost a registered scope */
    (void)found;
    global_remove(sc);
    sc->owning = 0;
}

/* ---- doomed connections ---- */

struct doomed {
    PGconn *conn;
    awaitlet_task *owner;
    struct doomed *next;
};

static PQAWAIT__TLS struct doomed *doomed;

void pqawait__doomed_add(PGconn *conn, awaitlet_task *owner)
{
    for (struct doomed *d = doomed; d; d = d->next)
        if (d->conn == conn)
            return;
    struct doomed *d = malloc(sizeof *d);
    if (!d)
        return; /* then the owner's PQfinish frees it like any other: still right */
    d->conn = conn;
    d->owner = owner;
    d->next = doomed;
    doomed = d;
}

int pqawait__doomed_refuse(PGconn *conn, awaitlet_task *caller)
{
    for (struct doomed **p = &doomed; *p; p = &(*p)->next) {
        struct doomed *d = *p;
        if (d->conn != conn)
            continue;
        if (d->owner != caller)
            return 1;
        *p = d->next;
        free(d);
        return 0;
    }
    return 0;
}
