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
#include <stdlib.h>

#include "owners.h"
#include "scope.h"

#define INLINE_BUCKETS 32

struct owners {
    pqawait__scope **b;     /* buckets; inline_b until it grows */
    size_t mask;
    pqawait__scope *inline_b[INLINE_BUCKETS];
};

PQAWAIT__TLS size_t pqawait__owned;
static PQAWAIT__TLS struct owners owners;

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
