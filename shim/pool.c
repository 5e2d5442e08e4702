/*
 * pool.c -- the connection pool's life: options, creation, closing,
 * freeing, statistics; handing a connection on; the registry and fork.
 *
 * Why a registry: after fork() the child holds copies of every PGconn, and
 * each one's descriptor is the very socket the parent still talks to its
 * backend on.  Whatever the child does with them -- PQfinish's Terminate
 * message, an SSL close_notify, a query, even a pool task that happened to
 * be mid-connect resuming -- would land in the parent's session.  So every
 * pool is on a process-wide list, and a pthread_atfork child handler puts
 * an unconnected socket in place of every pooled connection's descriptor
 * (dup2: async-signal-safe, and the parent's socket is untouched).  From
 * then on the child's copies can only fail, PQfinish frees them without a
 * byte reaching the parent, and the child's pools open connections of
 * their own.  The generation number tells inherited entries from new ones.
 *
 * A pool is freed only when nothing can touch it any more: closed, no
 * connection in any state, none of its tasks alive, no task inside acquire
 * (pqawait__pool_maybe_free).  Until then a closed pool still accepts the
 * releases of connections checked out before.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pool.h"

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static pqawait_pool *reg;
static unsigned reg_gen = 1;     /* bumped in every fork child */
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;

/* ---- fork ------------------------------------------------------------------- */

static void fork_prepare(void)
{
    pthread_mutex_lock(&reg_lock);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&reg_lock);
}

/* Only async-signal-safe calls here (socket, dup3, close): the child of a
 * multi-threaded parent may do nothing else before it execs. */
static void fork_child(void)
{
    int dead = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    pthread_t self = pthread_self();
    for (pqawait_pool *p = reg; p; p = p->reg_next) {
        p->owner = self; /* as the runtime gives the child's thread every loop */
        for (pqawait__pconn *e = p->all; e; e = e->all_next) {
            int fd = e->conn ? PQsocket(e->conn) : -1;
            /* without a spare socket the entry stays uncut: it is then
             * leaked rather than finished (pqawait__pconn_close) */
            if (fd >= 0 && dead >= 0 && dup3(dead, fd, O_CLOEXEC) == fd)
                e->cut = 1;
        }
    }
    if (dead >= 0)
        close(dead);
    reg_gen++;
    pthread_mutex_unlock(&reg_lock);
}

static void reg_init(void)
{
    (void)pthread_atfork(fork_prepare, fork_parent, fork_child);
}

int pqawait__pconn_stale(const pqawait__pconn *e)
{
    return e->gen != __atomic_load_n(&reg_gen, __ATOMIC_RELAXED);
}

/* ---- options ------------------------------------------------------------------ */

void pqawait_pool_options_init(pqawait_pool_options *o)
{
    if (!o)
        return;
    *o = (pqawait_pool_options){
        .max_size = 10,
        .min_size = 4,
        .timeout = 30.0,
        .max_waiting = 0,
        .max_lifetime = 3600.0,
        .max_idle = 600.0,
        .check_idle = -1.0,
        .check_timeout = 2.0,
        .connect_timeout = 10.0,
        .backoff_max = 10.0,
        .reset_timeout = 5.0,
        .reset = 0,
        .connect_parallel = 2,
    };
}

static int options_valid(const pqawait_pool_options *o)
{
    if (o->max_size < 1 || o->min_size < 0 || o->min_size > o->max_size || o->max_waiting < 0 ||
        o->connect_parallel < 1)
        return 0;
    if (isnan(o->timeout) || isnan(o->max_lifetime) || isnan(o->max_idle) ||
        isnan(o->check_idle))
        return 0;
    if (!(o->connect_timeout > 0) || !(o->backoff_max > 0) || !(o->reset_timeout > 0) ||
        !(o->check_timeout > 0))
        return 0; /* NaN fails these too */
    if (o->reset & ~PQAWAIT_POOL_DISCARD_ALL)
        return 0;
    return 1;
}

/* ---- checks and helpers ----------------------------------------------------- */

int pqawait__pool_check(const pqawait_pool *p)
{
    if (awaitlet_in_signal_handler())
        return EPERM;
    if (!p || p->magic != PQAWAIT__POOL_MAGIC)
        return EINVAL;
    if (!pthread_equal(p->owner, pthread_self()))
        return EXDEV;
    return 0;
}

double pqawait__pool_now(pqawait_pool *p)
{
    ev_now_update(p->loop); /* vDSO clock read, no syscall */
    return ev_now(p->loop);
}

void pqawait__pool_kick(pqawait_pool *p)
{
    (void)awaitlet_cond_signal(&p->kick);
}

/* ---- connection entries ------------------------------------------------------- */

pqawait__pconn *pqawait__pconn_new(pqawait_pool *p)
{
    pqawait__pconn *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->pool = p;
    e->state = PC_CONNECTING;
    e->watch.fd = -1;
    pthread_mutex_lock(&reg_lock);
    e->gen = reg_gen;
    e->all_next = p->all;
    if (p->all)
        p->all->all_prev = e;
    p->all = e;
    pthread_mutex_unlock(&reg_lock);
    PQAWAIT__CNT(p, n_connecting, 1);
    return e;
}

void pqawait__pconn_close(pqawait__pconn *e, unsigned long long *counter)
{
    pqawait_pool *p = e->pool;
    pthread_mutex_lock(&reg_lock);
    if (e->all_prev)
        e->all_prev->all_next = e->all_next;
    else
        p->all = e->all_next;
    if (e->all_next)
        e->all_next->all_prev = e->all_prev;
    pthread_mutex_unlock(&reg_lock);
    if (ev_is_active(&e->watch))
        ev_io_stop(p->loop, &e->watch);
    if (counter)
        __atomic_store_n(counter, *counter + 1, __ATOMIC_RELAXED);
    PGconn *c = e->conn;
    int silent_leak = pqawait__pconn_stale(e) && !e->cut;
    free(e);
    if (c && !silent_leak) {
        /* PQfinish may suspend for its Terminate message: hold the pool */
        p->inside++;
        PQfinish(c);
        p->inside--;
    }
    pqawait__pool_maybe_free(p);
}

void pqawait__pool_give(pqawait__pconn *e)
{
    pqawait_pool *p = e->pool;
    /* pqawait__pconn_close may free a closed pool: it comes last */
    if (pqawait__pconn_stale(e)) {
        pqawait__pool_kick(p);
        pqawait__pconn_close(e, NULL); /* the parent's: dropped without a word */
        return;
    }
    if (p->closed) {
        pqawait__pconn_close(e, &p->st.closed);
        return;
    }
    if (p->o.max_lifetime > 0 && ev_now(p->loop) >= e->expires) {
        pqawait__pool_kick(p); /* the maintainer replaces it if needed */
        pqawait__pconn_close(e, &p->st.closed);
        return;
    }
    pqawait__waiter *w = pqawait__waiter_pop(p);
    if (w) {
        pqawait__pool_used_link(p, e);
        w->given = e;
        (void)awaitlet_sem_post(&w->sem); /* the waiter runs next iteration */
        return;
    }
    pqawait__idle_push(e);
}

/* ---- create, close, free --------------------------------------------------- */

pqawait_pool *pqawait_pool_new(struct ev_loop *loop, const char *conninfo,
                               const pqawait_pool_options *opts)
{
    if (awaitlet_in_signal_handler()) {
        errno = EPERM;
        return NULL;
    }
    pqawait_pool_options o;
    if (opts)
        o = *opts;
    else
        pqawait_pool_options_init(&o);
    if (!loop || !conninfo || !options_valid(&o)) {
        errno = EINVAL;
        return NULL;
    }
    char *err = NULL;
    PQconninfoOption *parsed = PQconninfoParse(conninfo, &err);
    if (!parsed) {
        PQfreemem(err);
        errno = err ? EINVAL : ENOMEM;
        return NULL;
    }
    pqawait__hosts *hosts = pqawait__hosts_parse(parsed);
    PQconninfoFree(parsed);

    pqawait_pool *p = calloc(1, sizeof *p);
    if (!hosts || !p || !(p->name = strdup(o.name ? o.name : "pqawait-pool"))) {
        free(p);
        pqawait__hosts_free(hosts);
        errno = ENOMEM;
        return NULL;
    }
    p->magic = PQAWAIT__POOL_MAGIC;
    p->hosts = hosts;
    p->loop = loop;
    p->owner = pthread_self();
    p->o = o;
    p->o.name = p->name;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    p->seed = (unsigned)ts.tv_nsec ^ (unsigned)getpid() ^ (unsigned)(uintptr_t)p;
    awaitlet_cond_init(&p->kick);
    awaitlet_cond_init(&p->ready);

    pthread_once(&reg_once, reg_init);
    pthread_mutex_lock(&reg_lock);
    p->gen = reg_gen;
    p->reg_next = reg;
    if (reg)
        reg->reg_prev = p;
    reg = p;
    pthread_mutex_unlock(&reg_lock);

    if (pqawait__pool_start_maintainer(p) < 0) {
        int e = errno;
        p->closed = 1;
        pqawait__pool_maybe_free(p);
        errno = e;
        return NULL;
    }
    return p;
}

void pqawait__pool_maybe_free(pqawait_pool *p)
{
    if (!p->closed || p->n_idle || p->n_used || p->n_connecting || p->n_resetting || p->tasks ||
        p->inside || p->n_waiting)
        return;
    pthread_mutex_lock(&reg_lock);
    if (p->reg_prev)
        p->reg_prev->reg_next = p->reg_next;
    else
        reg = p->reg_next;
    if (p->reg_next)
        p->reg_next->reg_prev = p->reg_prev;
    pthread_mutex_unlock(&reg_lock);
    assert(!p->all);
    (void)awaitlet_cond_destroy(&p->kick);
    (void)awaitlet_cond_destroy(&p->ready);
    p->magic = 0;
    pqawait__hosts_free(p->hosts);
    free(p->name);
    free(p);
}

int pqawait_pool_close(pqawait_pool *p)
{
    int e = pqawait__pool_check(p);
    if (!e && p->closed)
        e = EINVAL;
    if (e) {
        errno = e;
        return -1;
    }
    p->closed = 1;
    p->inside++; /* closing idle connections below may suspend in PQfinish */
    /* waiters: woken with nothing given; they see `closed` */
    pqawait__waiter *w;
    while ((w = pqawait__waiter_pop(p)))
        (void)awaitlet_sem_post(&w->sem);
    (void)awaitlet_cond_broadcast(&p->ready);
    /* the maintainer ends, and abandons the connects it started */
    pqawait__pool_kick(p);
    while (p->idle) {
        pqawait__pconn *i = p->idle;
        pqawait__idle_remove(i);
        pqawait__pconn_close(i, &p->st.closed);
    }
    p->inside--;
    pqawait__pool_maybe_free(p);
    return 0;
}

const char *pqawait_pool_error(pqawait_pool *p)
{
    if (pqawait__pool_check(p))
        return NULL;
    return p->error[0] ? p->error : NULL;
}

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

int pqawait_pool_stats(pqawait_pool *p, struct pqawait_pool_stats *out)
{
    if (!p || !out || LOAD(p->magic) != PQAWAIT__POOL_MAGIC) {
        errno = EINVAL;
        return -1;
    }
    struct pqawait_pool_stats s;
    s.idle = LOAD(p->n_idle);
    s.in_use = LOAD(p->n_used);
    s.connecting = LOAD(p->n_connecting);
    s.resetting = LOAD(p->n_resetting);
    s.waiting = LOAD(p->n_waiting);
    s.size = s.idle + s.in_use + s.connecting + s.resetting;
    s.acquires = LOAD(p->st.acquires);
    s.waits = LOAD(p->st.waits);
    s.wait_ns = LOAD(p->st.wait_ns);
    s.timeouts = LOAD(p->st.timeouts);
    s.rejected = LOAD(p->st.rejected);
    s.interrupted = LOAD(p->st.interrupted);
    s.opened = LOAD(p->st.opened);
    s.connect_failures = LOAD(p->st.connect_failures);
    s.closed = LOAD(p->st.closed);
    s.lost = LOAD(p->st.lost);
    s.discarded = LOAD(p->st.discarded);
    s.resets = LOAD(p->st.resets);
    *out = s;
    return 0;
}
