/*
 * pool.h -- what the connection pool's files share (internal).
 *
 *   pool.c          create, close, free, stats; handing a connection on
 *                   (pqawait__pool_give); the process-wide registry and
 *                   its fork handlers
 *   pool_acquire.c  acquire (the FIFO of waiters) and release (what a
 *                   returned connection needs: nothing, a reset, or the bin)
 *   pool_tasks.c    the pool's own tasks: the maintainer, connectors and
 *                   resetters, and the watchers of idle connections
 *   pool_hosts.c    multi-host conninfo: a connect walks the host list as
 *                   libpq's blocking connect does (timeouts, a name's
 *                   addresses, prefer-standby)
 *   pool_addrs.c    a host name's addresses, looked up for the walk on a
 *                   worker thread
 *
 * The model: a pool belongs to one loop and that loop's thread.  Every
 * connection it owns is a `pqawait__pconn` in exactly one state:
 *
 *   CONNECTING --(connector task: ok)--> given on (pqawait__pool_give):
 *                                        to the first waiter (IN_USE) or
 *                                        to the idle stack (IDLE)
 *   IDLE --acquire--> IN_USE --release--> given on, or RESETTING (a reset
 *                                        task cleans it, then gives it on),
 *                                        or closed
 *   any --(broken, expired, surplus, pool closed, fork)--> closed (freed)
 *
 * Counting: size = connecting + idle + in_use + resetting <= max_size, so
 * a burst of acquires never opens more than max_size connections: waiters
 * only ask the maintainer, and the maintainer opens what is missing.
 *
 * Nothing here is thread-safe except the statistics (written by the owner
 * only, read with relaxed atomics by anyone) and the `all` lists, which the
 * registry lock guards so that the fork handler can reach every socket.
 */
#ifndef PQAWAIT_POOL_H
#define PQAWAIT_POOL_H

#include <ev.h>
#include <pthread.h>
#include <stdint.h>

#include "awaitlet.h"
#include "pqawait.h"

#define PQAWAIT__POOL_MAGIC 0x706f6f6cu /* "pool" */

enum pqawait__pconn_state { PC_CONNECTING, PC_IDLE, PC_IN_USE, PC_RESETTING };

typedef struct pqawait__pconn pqawait__pconn;
typedef struct pqawait__waiter pqawait__waiter;
typedef struct pqawait__hosts pqawait__hosts;
typedef struct pqawait__walk pqawait__walk;

struct pqawait__pconn {
    PGconn *conn;
    pqawait_pool *pool;
    int state;
    unsigned gen;                 /* fork generation it was made in */
    int cut;                      /* fork child: its socket was replaced */
    int cut_off;                  /* its reset overran: socket shut down */
    awaitlet_task *task;          /* CONNECTING: its connector task */
    double created, expires;      /* loop time; expires: lifetime with jitter */
    double idle_since;            /* IDLE: since when; RESETTING: reset start */
    ev_io watch;                  /* armed while IDLE: sees a dying backend */
    pqawait__pconn *prev, *next;  /* in the idle stack or the in-use list */
    pqawait__pconn *all_prev, *all_next; /* every connection (registry lock) */
    PQnoticeProcessor proc0;      /* the defaults, restored on release */
    void *proc0_arg;
    PQnoticeReceiver recv0;
};

/* An acquiring task, on its own stack while it waits. */
struct pqawait__waiter {
    awaitlet_sem sem;             /* posted when given a connection or closed */
    pqawait__pconn *given;
    pqawait__waiter *prev, *next;
    int linked;
};

struct pqawait_pool {
    uint32_t magic;
    struct ev_loop *loop;
    pthread_t owner;
    pqawait__hosts *hosts;        /* the conninfo, parsed (pool_hosts.c) */
    pqawait_pool_options o;
    char *name;
    int closed;
    unsigned gen;                 /* the registry's generation when made */

    pqawait__pconn *idle;         /* stack: most recently released first */
    pqawait__pconn *used;         /* checked out */
    pqawait__pconn *all;          /* every connection, for fork (registry lock) */
    unsigned n_idle, n_used, n_connecting, n_resetting;
    pqawait__waiter *wait_head, *wait_tail;
    unsigned n_waiting;

    awaitlet_cond kick;           /* wakes the maintainer */
    awaitlet_cond ready;          /* broadcast when a connection opens or fails */
    awaitlet_task *maintainer;
    unsigned tasks;               /* the pool's own tasks still running */
    unsigned inside;              /* tasks inside acquire or wait */
    double backoff, backoff_until;
    char error[2048];             /* the last connect error, "" if none */
    unsigned seed;                /* jitter */

    struct pqawait_pool_stats st; /* owner writes, anyone reads (atomics) */
    pqawait_pool *reg_prev, *reg_next;
};

/* Statistics and counts: one writer (the owner thread), relaxed atomics
 * for readers on other threads (pqawait_pool_stats). */
#define PQAWAIT__ST_ADD(p, field, n) \
    __atomic_store_n(&(p)->st.field, (p)->st.field + (n), __ATOMIC_RELAXED)
#define PQAWAIT__CNT(p, field, n) \
    __atomic_store_n(&(p)->field, (p)->field + (n), __ATOMIC_RELAXED)

/* pool.c */
/* 0 when the calling context may use p, else an errno (EINVAL, EXDEV,
 * EPERM in a marked signal handler). */
int pqawait__pool_check(const pqawait_pool *p);
double pqawait__pool_now(pqawait_pool *p);
/* A new CONNECTING entry (counted in size), linked in `all`; NULL when out
 * of memory. */
pqawait__pconn *pqawait__pconn_new(pqawait_pool *p);
/* Close e's connection (PQfinish, or silently for one inherited across
 * fork), unlink it from `all` and free it.  e must be on no other list.
 * counter: which statistic counts it (closed, lost, discarded), or NULL.
 * May suspend the calling task inside PQfinish (its Terminate message) if
 * the kernel's socket buffer is full. */
void pqawait__pconn_close(pqawait__pconn *e, unsigned long long *counter);
/* Hand e (not on any list, no longer counted in its old state) to the first
 * waiter, else to the idle stack; closes it instead when it expired, came
 * from before a fork, or the pool is closed.  Never suspends (except in
 * pqawait__pconn_close, above). */
void pqawait__pool_give(pqawait__pconn *e);
/* e goes on p's in-use list (PC_IN_USE, counted); pool_acquire.c. */
void pqawait__pool_used_link(pqawait_pool *p, pqawait__pconn *e);
/* 1 when e was inherited across fork (its socket is not ours). */
int pqawait__pconn_stale(const pqawait__pconn *e);
/* Free p when it is closed and nothing refers to it any more. */
void pqawait__pool_maybe_free(pqawait_pool *p);
void pqawait__pool_kick(pqawait_pool *p);

/* pool_tasks.c */
int pqawait__pool_start_maintainer(pqawait_pool *p);
/* Start a reset task for e (RESETTING); -1 when no task could start. */
int pqawait__pool_start_reset(pqawait__pconn *e);
void pqawait__idle_push(pqawait__pconn *e);
void pqawait__idle_remove(pqawait__pconn *e);

/* pool_acquire.c */
/* Take the first waiter off the queue; NULL if none. */
pqawait__waiter *pqawait__waiter_pop(pqawait_pool *p);

/* pool_hosts.c */
/* The pool's conninfo (the options set in it), kept for its connects;
 * NULL (ENOMEM). */
pqawait__hosts *pqawait__hosts_parse(const PQconninfoOption *opts);
void pqawait__hosts_free(pqawait__hosts *h);
/* pool_addrs.c */
/* The addresses of host name `name` as libpq asks getaddrinfo for them (any
 * family, stream sockets), in its order, written as PQhostaddr writes them:
 * 0 with *addrs (malloc'd strings in a malloc'd array, *n of them; NULL and
 * 0 when the name has none or memory or a worker thread ran out), or -1
 * with errno (EINTR, ECANCELED, ETIMEDOUT: the waiting task was
 * interrupted; the lookup is given up).  Suspends the calling task while a
 * worker thread runs getaddrinfo (awaitlet_offload_wait). */
int pqawait__addrs_lookup(const char *name, char ***addrs, int *n);

/* One connect's walk over the host list libpq sees (service file and PG*
 * environment applied): the attempts that together do what PQconnectdb's
 * blocking walk does -- a host silent for the per-host timeout skipped,
 * prefer-standby's second pass, libpq's failure message.  NULL (ENOMEM).
 * Never suspends (it asks libpq for the effective options without any
 * lookup or socket). */
pqawait__walk *pqawait__walk_new(const pqawait__hosts *h);
void pqawait__walk_free(pqawait__walk *w);
/* libpq's per-host connect_timeout (0 when none, else at least 2). */
double pqawait__walk_timeout(const pqawait__walk *w);
/* PQconnectStartParams for the walk's next attempt; NULL when out of
 * memory.  Never suspends by itself (PQconnectStart's host name lookup
 * does, inside a task). */
PGconn *pqawait__walk_start(pqawait__walk *w);
/* After each PQconnectPoll of attempt c: 1 when it went on to another host
 * or address (the per-host timer starts again), else 0.  On one address of
 * a name it notes whether libpq is past the TCP connect (what tells its
 * try_next_addr from its try_next_host when it leaves). */
int pqawait__walk_track(pqawait__walk *w, PGconn *c);
/* Attempt c timed out on the host it is on: when that host is a name (its
 * addresses are libpq's secret), look its addresses up, so that
 * pqawait__walk_next can go on to the one after the silent address, as
 * libpq's blocking connect does.  Decides nothing.  0: nothing to look up
 * (not a name, or done already for this host); 1: looked up (the caller
 * suspended: it looks at the pool again before going on); -1 interrupted
 * (errno EINTR...: look at the pool, then call again).  Suspends on a
 * worker thread's getaddrinfo (awaitlet_offload_wait). */
int pqawait__walk_lookup(pqawait__walk *w, PGconn *c);
/* Attempt c (NULL: could not start) ended without a connection -- failed,
 * or timed_out on the host (the address) it was on.  Records its message;
 * 1 when the walk goes on (pqawait__walk_start the next attempt: the
 * name's next address, the next host, or prefer-standby's second pass), 0
 * when it is over.  Never suspends. */
int pqawait__walk_next(pqawait__walk *w, PGconn *c, int timed_out);
/* The walk's failure message so far: libpq's, every attempt's in order. */
const char *pqawait__walk_error(const pqawait__walk *w);

#endif
