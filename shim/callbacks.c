/*
 * callbacks.c -- user code that libpq calls back runs marked as such.
 *
 * A notice processor or receiver runs inside libpq, usually while a task
 * is in a cooperative scope.  It is the application's code, not libpq's:
 * its poll() or getaddrinfo() must be the real ones, and a libpq call it
 * makes on another connection must get a scope of its own (scope.c).  So
 * PQsetNoticeProcessor and PQsetNoticeReceiver register a trampoline with
 * libpq instead of the user's function; the trampoline pushes a callback
 * frame (pqawait__callback_enter) around the user's call.  libpq sees the
 * trampoline, the user sees nothing: each setter returns the user's
 * previous function, never a trampoline, and the user's function gets the
 * user's argument.
 *
 * The trampoline's argument is a record {function, argument}.  libpq copies
 * a connection's hooks into every PGresult it makes (PQgetvalue out of
 * range reports through them, possibly after PQfinish), so a record must
 * outlive every result it could have been copied into -- which nobody can
 * know.  Records are therefore interned per (function, argument) pair and
 * never freed: the memory is bounded by the distinct pairs a program
 * registers.  A per-connection map (freed at PQfinish) remembers the
 * current record of each kind so the setters can report the previous
 * function.  Both are guarded by one mutex; the setters are rare.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "real.h"
#include "scope.h"

#define BUCKETS 256

typedef void (*anyfn)(void);              /* any function, cast back before a call */
typedef anyfn setter(PGconn *conn, anyfn fn, void *arg);

struct hook {
    anyfn fn;
    void *arg;
    int kind;                 /* 0: processor, 1: receiver */
    struct hook *next;
};

struct binding {
    PGconn *conn;
    struct hook *cur[2];      /* by kind; NULL: not ours */
    struct binding *next;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct hook *hooks[BUCKETS];
static struct binding *bindings[BUCKETS];
static size_t nbindings; /* atomic reads outside mu: the PQfinish fast path */

static size_t hash(const void *a, const void *b)
{
    uintptr_t h = (uintptr_t)a ^ ((uintptr_t)b * (uintptr_t)0x9e3779b97f4a7c15ull);
    h ^= h >> 29;
    return (size_t)(h * (uintptr_t)0xbf58476d1ce4e5b9ull >> 40) % BUCKETS;
}

/* With mu held. */
static struct hook *intern(int kind, anyfn fn, void *arg)
{
    size_t k = hash((const void *)fn, arg);
    for (struct hook *h = hooks[k]; h; h = h->next)
        if (h->fn == fn && h->arg == arg && h->kind == kind)
            return h;
    struct hook *h = malloc(sizeof *h);
    if (!h)
        return NULL;
    h->fn = fn;
    h->arg = arg;
    h->kind = kind;
    h->next = hooks[k];
    hooks[k] = h;
    return h;
}

/* With mu held: conn's binding, created if `create`. */
static struct binding *binding_of(PGconn *conn, int create)
{
    size_t k = hash(conn, NULL);
    for (struct binding *b = bindings[k]; b; b = b->next)
        if (b->conn == conn)
            return b;
    if (!create)
        return NULL;
    struct binding *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->conn = conn;
    b->next = bindings[k];
    bindings[k] = b;
    __atomic_add_fetch(&nbindings, 1, __ATOMIC_RELAXED);
    return b;
}

/* PQfinish(conn) frees it: forget its binding (not the records). */
void pqawait__callbacks_forget(PGconn *conn)
{
    if (!__atomic_load_n(&nbindings, __ATOMIC_RELAXED))
        return;
    pthread_mutex_lock(&mu);
    for (struct binding **p = &bindings[hash(conn, NULL)]; *p; p = &(*p)->next) {
        if ((*p)->conn == conn) {
            struct binding *b = *p;
            *p = b->next;
            free(b);
            __atomic_sub_fetch(&nbindings, 1, __ATOMIC_RELAXED);
            break;
        }
    }
    pthread_mutex_unlock(&mu);
}

static void tramp_processor(void *arg, const char *message)
{
    struct hook *h = arg;
    pqawait__scope frame;
    int pushed = pqawait__callback_enter(&frame);
    ((PQnoticeProcessor)h->fn)(h->arg, message);
    if (pushed)
        pqawait__callback_leave(&frame);
}

static void tramp_receiver(void *arg, const PGresult *res)
{
    struct hook *h = arg;
    pqawait__scope frame;
    int pushed = pqawait__callback_enter(&frame);
    ((PQnoticeReceiver)h->fn)(h->arg, res);
    if (pushed)
        pqawait__callback_leave(&frame);
}

/* Install fn/arg of `kind` on conn through `set` (the real setter, called
 * with mu held), wrapped when possible; the previous user function. */
static anyfn install(int kind, PGconn *conn, anyfn fn, void *arg, setter *set, anyfn tramp)
{
    pthread_mutex_lock(&mu);
    struct binding *b = binding_of(conn, fn != NULL);
    struct hook *prev = b ? b->cur[kind] : NULL;
    struct hook *h = fn ? intern(kind, fn, arg) : NULL;
    anyfn old;
    if (!fn) { /* a query: libpq changes nothing */
        old = set(conn, NULL, arg);
    } else if (h && b) {
        old = set(conn, tramp, h);
        b->cur[kind] = h;
    } else { /* out of memory: unwrapped, as plain libpq */
        old = set(conn, fn, arg);
        if (b)
            b->cur[kind] = NULL;
    }
    pthread_mutex_unlock(&mu);
    if (old == tramp && prev)
        old = prev->fn;
    return old;
}

/* The real setters, in the shape install() wants. */
static anyfn set_processor(PGconn *conn, anyfn fn, void *arg)
{
    return (anyfn)pqawait__real.PQsetNoticeProcessor(conn, (PQnoticeProcessor)fn, arg);
}

static anyfn set_receiver(PGconn *conn, anyfn fn, void *arg)
{
    return (anyfn)pqawait__real.PQsetNoticeReceiver(conn, (PQnoticeReceiver)fn, arg);
}

PQAWAIT_EXPORT PQnoticeProcessor PQsetNoticeProcessor(PGconn *conn, PQnoticeProcessor proc, void *arg)
{
    if (!PQAWAIT__REAL(PQsetNoticeProcessor)) {
        errno = ENOSYS;
        return NULL;
    }
    if (!conn)
        return pqawait__real.PQsetNoticeProcessor(conn, proc, arg);
    return (PQnoticeProcessor)install(0, conn, (anyfn)proc, arg, set_processor,
                                      (anyfn)tramp_processor);
}

PQAWAIT_EXPORT PQnoticeReceiver PQsetNoticeReceiver(PGconn *conn, PQnoticeReceiver proc, void *arg)
{
    if (!PQAWAIT__REAL(PQsetNoticeReceiver)) {
        errno = ENOSYS;
        return NULL;
    }
    if (!conn)
        return pqawait__real.PQsetNoticeReceiver(conn, proc, arg);
    return (PQnoticeReceiver)install(1, conn, (anyfn)proc, arg, set_receiver,
                                     (anyfn)tramp_receiver);
}
