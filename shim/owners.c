/*
 * owners.c -- who owns which connection, per thread.
 *
 * Ownership.  A per-thread hash table maps each connection a task is
 * inside libpq with to that call's scope; the scopes themselves are the
 * nodes (chained through hnext), so registering costs no allocation.  A
 * scope registered while the thread owns nothing else is kept apart, in
 * one field (pqawait__thr.single), not hashed: a task or a thread using
 * one connection at a time -- the common case -- pays a store to register
 * and a compare to unregister, inline in the scope's entry and exit
 * (scope.h, pqawait__owner_add/remove); the rest is here.
 * Tasks of one loop share a thread, so a thread-local table sees every
 * conflict that can happen, without a data race: libpq connections are
 * used by one thread at a time anyway.  The table starts inline, grows by
 * doubling when chains get long and never shrinks; a grown array is freed
 * at thread exit.
 *
 * Other threads.  libpq allows a connection on one thread at a time, and
 * a program that breaks the rule -- a task on thread 2 using a connection
 * that a task on thread 1 is suspended inside -- would steal its results
 * or corrupt the PGconn.  The per-thread table cannot see that, so owning
 * scopes are also in a process-wide registry: SHARDS chains by connection
 * hash, each behind its own spin lock (held for a few list operations,
 * never across a call; uncontended one atomic exchange and one store).
 * It is consulted only when more than one thread has ever owned a
 * connection (or the caller is not the one that has: an inline check in
 * the wrappers, pqawait__plain).
 *
 * The registry is lazy.  While one thread alone has ever owned a
 * connection, nobody can ask it anything, so that thread's scopes go into
 * its table only (no hash, lock or list of the registry per call: the
 * common single-loop program).  The first time another thread needs it --
 * it becomes an owner too, or a call of it reaches pqawait__owner_elsewhere
 * -- publish() copies every live scope of every owning thread into the
 * shards, under the registry's lock, before that thread's lookup, and the
 * registry stays on for good.  A scope opened before the second thread
 * appeared and still suspended (its task inside libpq) is therefore found.
 * The owning thread changes its table under a lock of its own (one
 * uncontended exchange and one store: no cache line is shared with
 * another thread until the registry is needed), which the publisher takes
 * while it copies that table (see publish).
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
    pqawait__scope **b;     /* buckets; inline_b until it grows; NULL until needed */
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

/* The registry's state (atomic): REG_OFF, only the per-thread tables know
 * who owns what; REG_FILLING, a publisher is copying them in; REG_ON, every
 * owning scope of every thread is in the shards, for good. */
enum { REG_OFF, REG_FILLING, REG_ON };
int pqawait__registry;
#define registry pqawait__registry

/* A thread that ever owned a connection, so that a publisher can find its
 * table.  state->lock: held by the thread around every change of its table
 * (one uncontended exchange and one store), and by the publisher while it
 * copies the table in. */
struct thread_rec {
    pthread_t id;
    struct owners *table;       /* the thread's own (a thread-local) */
    struct pqawait__thread_state *state; /* its lock and single scope (a thread-local) */
    struct thread_rec *next, *prev;
};
static PQAWAIT__TLS struct thread_rec me;
static struct thread_rec *threads;          /* under pub_lock */
static pthread_mutex_t pub_lock = PTHREAD_MUTEX_INITIALIZER;

static __attribute__((noinline, cold)) void spin_wait(int *l)
{
    do
        while (__atomic_load_n(l, __ATOMIC_RELAXED))
            sched_yield(); /* the holder was preempted: let it finish */
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE));
}

static inline void spin_lock(int *l)
{
    if (__builtin_expect(__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE), 0))
        spin_wait(l);
}

static void spin_unlock(int *l)
{
    __atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

#define shard_lock(sh) spin_lock(&(sh)->lock)
#define shard_unlock(sh) spin_unlock(&(sh)->lock)

/* fork(): no lock may stay held in the child, and only the forking
 * thread's scopes and record exist there. */
static void shards_prepare(void)
{
    pthread_mutex_lock(&pub_lock);
    for (int i = 0; i < SHARDS; i++)
        shard_lock(&shards[i]);
}

static void shards_parent(void)
{
    for (int i = 0; i < SHARDS; i++)
        shard_unlock(&shards[i]);
    pthread_mutex_unlock(&pub_lock);
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
    threads = thread_counted ? &me : NULL;
    me.next = me.prev = NULL;
    pqawait__thr.lock = 0;
    __atomic_store_n(&owner_threads, mine || thread_counted ? 1 : 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&pub_lock);
}

static void shards_init(void)
{
    (void)pthread_atfork(shards_prepare, shards_parent, shards_child);
}

static pthread_key_t owners_key;
static pthread_once_t owners_once = PTHREAD_ONCE_INIT;
static int owners_key_ok;

/* Thread exit: later destructors of this thread may still call libpq (a
 * scope they open is then in the registry only once it is on). */
static void owners_free(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&pub_lock);
    if (me.prev)
        me.prev->next = me.next;
    else if (threads == &me)
        threads = me.next;
    if (me.next)
        me.next->prev = me.prev;
    me.next = me.prev = NULL;
    pthread_mutex_unlock(&pub_lock);
    if (owners.b && owners.b != owners.inline_b) {
        free(owners.b);
        owners.b = NULL;
        pqawait__thr.single = NULL;
        pqawait__owned = 0;
    }
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

static __attribute__((noinline)) void shard_add(pqawait__scope *sc, pthread_t id)
{
    struct shard *sh = shard_of(sc->conn);
    sc->thread = id;
    shard_lock(sh);
    sc->gnext = sh->head;
    sh->head = sc;
    __atomic_add_fetch(&sh->n, 1, __ATOMIC_RELAXED);
    shard_unlock(sh);
    sc->global = 1;
}

static __attribute__((noinline)) void shard_remove(pqawait__scope *sc)
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
    sc->global = 0;
}

/* Copy every owning scope of every thread into the shards and turn the
 * registry on, for good; once per process, when a second thread first
 * needs to know what the others own (a thread other than the only owning
 * one entering the scoped path, or becoming an owner itself).  Each owning
 * thread changes its table under its own lock and reads the registry's
 * state inside it: a change made before we took that lock (state off:
 * the table alone) is in the table we copy; one made after it saw the
 * state (our unlock orders our store before its read) and registers
 * itself.  A scope opened before the second thread appeared is therefore
 * registered before that thread's first lookup. */
static void publish(void)
{
    pthread_mutex_lock(&pub_lock);
    if (__atomic_load_n(&registry, __ATOMIC_ACQUIRE) != REG_ON) {
        __atomic_store_n(&registry, REG_FILLING, __ATOMIC_RELAXED);
        for (struct thread_rec *r = threads; r; r = r->next) {
            spin_lock(&r->state->lock);
            /* r's table stays still until we unlock: another thread's
             * thread-local, read through the scopes it chains */
            pqawait__scope **b = r->table->b;
            size_t n = b ? r->table->mask + 1 : 0;
            if (r->state->single && !r->state->single->global)
                shard_add(r->state->single, r->id);
            for (size_t i = 0; i < n; i++)
                for (pqawait__scope *sc = b[i]; sc; sc = sc->hnext)
                    if (!sc->global)
                        shard_add(sc, r->id);
            spin_unlock(&r->state->lock);
        }
        __atomic_store_n(&registry, REG_ON, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&pub_lock);
}

int pqawait__owner_elsewhere(const PGconn *conn)
{
    int n = __atomic_load_n(&owner_threads, __ATOMIC_RELAXED);
    if (n == 0 || (n == 1 && thread_counted))
        return 0; /* no other thread has ever owned a connection */
    if (__builtin_expect(__atomic_load_n(&registry, __ATOMIC_ACQUIRE) != REG_ON, 0))
        publish();
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
    if (pqawait__thr.single && pqawait__thr.single->conn == conn)
        return pqawait__thr.single;
    if (!o->b)
        return NULL; /* the single one is all there is */
    for (pqawait__scope *s = o->b[slot(o, conn)]; s; s = s->hnext)
        if (s->conn == conn)
            return s;
    return NULL;
}

/* Grow when chains get long.  Failing to grow only costs lookup time. */
static __attribute__((noinline, cold)) void owners_grow(struct owners *o)
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
}

/* This thread's first ownership: counted, findable by a publisher, and
 * the registry turned on if it is the second such thread. */
static __attribute__((noinline, cold)) void first_owner(void)
{
    pthread_once(&shards_once, shards_init); /* before any lock is held */
    pthread_once(&owners_once, owners_key_init);
    self_id = pthread_self();
    me.id = self_id;
    me.table = &owners;
    me.state = &pqawait__thr;
    pthread_mutex_lock(&pub_lock);
    me.prev = NULL;
    me.next = threads;
    if (threads)
        threads->prev = &me;
    threads = &me;
    pthread_mutex_unlock(&pub_lock);
    thread_counted = 1;
    if (!owners_key_ok || pthread_setspecific(owners_key, &me) != 0) {
        /* nothing would unlink this record at thread exit: no publisher
         * may ever walk the records, so the registry goes on now */
        publish();
    }
    if (__atomic_add_fetch(&owner_threads, 1, __ATOMIC_RELAXED) > 1 &&
        __atomic_load_n(&registry, __ATOMIC_ACQUIRE) != REG_ON)
        publish();
}

/* Another scope than the single one (out of line: the rare case). */
static __attribute__((noinline)) void table_add(struct owners *o, pqawait__scope *sc)
{
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
}

static __attribute__((noinline)) void table_remove(struct owners *o, pqawait__scope *sc)
{
    int found = 0;
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
}

/* pqawait__owner_add's other cases (scope.h has the common one): the
 * thread's first ownership, another scope already owned, the registry on,
 * or the lock held by a publisher. */
void pqawait__owner_add_slow(pqawait__scope *sc)
{
    assert(sc->conn && !sc->owning);
    /* One owner per connection: pqawait__enter_at, the only caller, looked
     * conn up an instant ago (whenever the table is not empty) and opens
     * a scope only if nobody owns it; a second lookup here, for the
     * assertion, cost a chain walk per call. */
    assert(!sc->owner);
    if (__builtin_expect(!thread_counted, 0))
        first_owner();
    sc->owning = 1;
    sc->global = 0;
    spin_lock(&pqawait__thr.lock); /* a publisher may be copying the table */
    if (!pqawait__owned) {
        pqawait__thr.single = sc; /* the only one: nothing to hash */
        pqawait__owned = 1;
    } else {
        table_add(&owners, sc);
    }
    if (__atomic_load_n(&registry, __ATOMIC_RELAXED) != REG_OFF)
        shard_add(sc, self_id); /* more than one owning thread */
    spin_unlock(&pqawait__thr.lock);
}

void pqawait__owner_remove_slow(pqawait__scope *sc)
{
    assert(sc->owning && pqawait__owned > 0);
    spin_lock(&pqawait__thr.lock);
    if (pqawait__thr.single == sc) {
        pqawait__thr.single = NULL;
        pqawait__owned--;
    } else {
        table_remove(&owners, sc);
    }
    if (sc->global)
        shard_remove(sc);
    spin_unlock(&pqawait__thr.lock);
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
