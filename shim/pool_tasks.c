/*
 * pool_tasks.c -- the pool's own work: the maintainer, the connectors, the
 * resetters, and the watchers of idle connections.
 *
 * Why tasks of its own: an acquire that finds nothing idle must not open a
 * connection itself -- a burst of a thousand acquires would open a thousand
 * -- so waiters only queue and kick the maintainer, which opens what is
 * missing (never beyond max_size), a few at a time (connect_parallel), and
 * backs off exponentially while connects fail, so a server that is down
 * costs one attempt per back-off period and never a busy loop.  A released
 * connection that needs cleaning gets a resetter task, so release itself
 * never waits.  All of them are shielded: a stray cancel (for instance
 * awaitlet_loop_cancel_all at an application's shutdown) only makes their
 * wait return EINTR once, and they go on until the pool is closed --
 * closing the pool is what ends them.
 *
 * Idle connections are watched (one ev_io each, outside any task): a backend
 * that dies meanwhile (pg_terminate_backend, a server restart) makes its
 * socket readable, the callback reads the goodbye, sees CONNECTION_BAD and
 * drops the connection, so acquire does not hand it out.  The watcher
 * shares the fd's epoll registration with the tasks that use the
 * connection (same fd, same events), so checking a connection out and in
 * costs no system call.
 *
 * Where these tasks suspend: in awaitlet_cond_wait (maintainer), in
 * awaitlet_io during a connect, inside PQconnectStart's and
 * PQconnectPoll's host name lookups (connector, once per attempt of its
 * walk) and in the walk's own lookup of a name whose address stayed
 * silent (pqawait__walk_lookup: awaitlet_offload_wait), inside libpq's
 * blocking calls, pqawait_cancel and awaitlet_io waiting for a cancelled
 * statement's answer (resetter, stop_running), the
 * user's configure and reset callbacks, and inside PQfinish when
 * closing a connection (pqawait__pconn_close).  Each decides from the pool's
 * state after every such point, never across one.
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "pool.h"

/* fmin/fmax without libm */
static double dmin(double a, double b)
{
    return a < b ? a : b;
}

static double dmax(double a, double b)
{
    return a > b ? a : b;
}

static double rand01(pqawait_pool *p)
{
    p->seed = p->seed * 1103515245u + 12345u;
    return (double)((p->seed >> 8) & 0xffff) / 65536.0;
}

/* A detached, shielded task of the pool; it counts in p->tasks until it
 * ends, so the pool outlives it.  Each task records its own handle where
 * one is needed (it may have ended before this returns). */
static int start_task(pqawait_pool *p, awaitlet_fn fn, void *arg)
{
    awaitlet_options o = { .detached = 1, .name = p->name };
    p->tasks++; /* before: the task runs (and may end) before this returns */
    if (!awaitlet_async_def_opts(p->loop, fn, arg, &o)) {
        p->tasks--;
        return -1;
    }
    return 0;
}

/* ---- idle connections ---------------------------------------------------------- */

static void idle_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop, (void)revents;
    pqawait__pconn *e = w->data;
    pqawait_pool *p = e->pool;
    assert(e->state == PC_IDLE);
    if (!pqawait__pconn_stale(e)) {
        if (PQconsumeInput(e->conn) && PQstatus(e->conn) == CONNECTION_OK) {
            PGnotify *n;
            while ((n = PQnotifies(e->conn)))
                PQfreemem(n);
            return;
        }
    }
    pqawait__idle_remove(e);
    pqawait__pool_kick(p);
    pqawait__pconn_close(e, pqawait__pconn_stale(e) ? NULL : &p->st.lost);
}

void pqawait__idle_push(pqawait__pconn *e)
{
    pqawait_pool *p = e->pool;
    e->state = PC_IDLE;
    e->idle_since = ev_now(p->loop);
    e->prev = NULL;
    e->next = p->idle;
    if (p->idle)
        p->idle->prev = e;
    p->idle = e;
    PQAWAIT__CNT(p, n_idle, 1);
    int fd = PQsocket(e->conn);
    if (fd >= 0) {
        if (e->watch.fd != fd) {
            ev_io_init(&e->watch, idle_cb, fd, EV_READ);
            e->watch.data = e;
        }
        ev_io_start(p->loop, &e->watch);
    }
}

void pqawait__idle_remove(pqawait__pconn *e)
{
    pqawait_pool *p = e->pool;
    assert(e->state == PC_IDLE);
    if (e->prev)
        e->prev->next = e->next;
    else
        p->idle = e->next;
    if (e->next)
        e->next->prev = e->prev;
    e->prev = e->next = NULL;
    PQAWAIT__CNT(p, n_idle, -1);
    if (ev_is_active(&e->watch))
        ev_io_stop(p->loop, &e->watch);
}

/* ---- connecting ------------------------------------------------------------------ */

/* Record a failed connect: why (or "") then the message m. */
static void connect_failed(pqawait_pool *p, const char *why, const char *m)
{
    if (!m || !*m)
        m = *why ? "" : "connection failed";
    snprintf(p->error, sizeof p->error, "%s%s", why, m);
    size_t n = strlen(p->error);
    while (n && (p->error[n - 1] == '\n' || p->error[n - 1] == ' '))
        p->error[--n] = 0;
    PQAWAIT__ST_ADD(p, connect_failures, 1);
    double now = pqawait__pool_now(p);
    p->backoff = p->backoff > 0 ? dmin(p->backoff * 2, p->o.backoff_max) : dmin(0.1, p->o.backoff_max);
    p->backoff_until = now + p->backoff * (0.9 + 0.2 * rand01(p));
}

/* Start the walk's next attempt as e->conn, with the client-side defaults
 * release restores.  Suspends inside PQconnectStart's host name lookup. */
static PGconn *start_attempt(pqawait__pconn *e, pqawait__walk *w)
{
    pqawait_pool *p = e->pool;
    PGconn *c = pqawait__walk_start(w);
    e->conn = c; /* before any later wait: the fork handler must see it */
    if (c) {
        if (p->o.notice_processor)
            (void)PQsetNoticeProcessor(c, p->o.notice_processor, p->o.notice_arg);
        e->proc0 = PQsetNoticeProcessor(c, NULL, NULL);
        e->proc0_arg = p->o.notice_arg;
        e->recv0 = PQsetNoticeReceiver(c, NULL, NULL);
    }
    return c;
}

/* Run the walk w (pool_hosts.c) as e->conn: 1 connected, 0 failed (the
 * walk's message says why), -1 abandoned (pool closed, or a fork made the
 * attempt the parent's).  Each host and each address -- each new socket --
 * gets the per-host timeout, libpq's connect_timeout (else the pool's); an
 * attempt whose address runs out of it, or that fails, is handed to the
 * walk, which says whether another attempt follows (for a host name, after
 * looking up its other addresses).  e->conn changes with each attempt. */
static int connect_poll(pqawait__pconn *e, pqawait__walk *w)
{
    pqawait_pool *p = e->pool;
    double per_host = pqawait__walk_timeout(w);
    if (per_host <= 0)
        per_host = p->o.connect_timeout;
    PGconn *c = start_attempt(e, w); /* suspends in a host name lookup */
    int fd = c ? PQsocket(c) : -1;
    double deadline = pqawait__pool_now(p) + per_host;
    /* a started connection's first wait is for writing */
    PostgresPollingStatusType st = c && PQstatus(c) != CONNECTION_BAD ? PGRES_POLLING_WRITING
                                                                       : PGRES_POLLING_FAILED;
    for (;;) {
        if (p->closed || pqawait__pconn_stale(e))
            return -1;
        if (st == PGRES_POLLING_OK)
            return 1;
        double left = deadline - pqawait__pool_now(p);
        if (st == PGRES_POLLING_FAILED || left <= 0) {
            int timed_out = st != PGRES_POLLING_FAILED;
            /* a silent address of a host name: the name's other addresses
             * (suspends in the lookup; then a look at the pool first) */
            if (timed_out && pqawait__walk_lookup(w, c) != 0)
                continue;
            /* the attempt is over: the walk decides what follows */
            if (!pqawait__walk_next(w, c, timed_out))
                return 0;
            e->conn = NULL;
            PQfinish(c); /* not connected: sends nothing */
            c = start_attempt(e, w); /* suspends in a host name lookup */
            fd = c ? PQsocket(c) : -1;
            deadline = pqawait__pool_now(p) + per_host;
            st = c && PQstatus(c) != CONNECTION_BAD ? PGRES_POLLING_WRITING : PGRES_POLLING_FAILED;
            continue; /* first a look at the pool */
        }
        /* libpq may open a new socket under the same number: always fresh */
        int ev = (st == PGRES_POLLING_READING ? AWAITLET_READ : AWAITLET_WRITE) | AWAITLET_FRESH;
        int r = awaitlet_io(PQsocket(c), ev, left);
        if (r < 0 && errno == EINTR)
            continue; /* a stray cancel of a shielded task: look at the pool */
        if (r < 0)
            return 0;
        if (r == 0)
            continue; /* the top decides: timed out, or not yet */
        st = PQconnectPoll(c);
        if (pqawait__walk_track(w, c) || PQsocket(c) != fd) {
            /* libpq went on to another host or address: its own timer */
            fd = PQsocket(c);
            deadline = pqawait__pool_now(p) + per_host;
        }
    }
}

static void *connector(void *arg)
{
    pqawait__pconn *e = arg;
    pqawait_pool *p = e->pool;
    awaitlet_shield(1);
    e->task = awaitlet_current(); /* pool close cancels it */
    pqawait__walk *w = pqawait__walk_new(p->hosts);
    int r = w ? connect_poll(e, w) : 0;
    PGconn *c = e->conn;
    const char *why = "", *msg = w ? pqawait__walk_error(w) : "out of memory";
    if (r == 1 && p->o.configure && !p->closed && !pqawait__pconn_stale(e)) {
        /* user code, in this task: may use c with blocking libpq calls */
        if (p->o.configure(c, p->o.configure_arg) != 0 || PQstatus(c) != CONNECTION_OK ||
            PQtransactionStatus(c) != PQTRANS_IDLE) {
            why = "the pool's configure callback refused the connection: ";
            msg = PQerrorMessage(c);
            r = 0;
        }
    }
    if (r == 1 && (p->closed || pqawait__pconn_stale(e)))
        r = -1;
    e->task = NULL;
    PQAWAIT__CNT(p, n_connecting, -1);
    if (r == 1) {
        double now = pqawait__pool_now(p);
        e->created = now;
        e->expires = now + p->o.max_lifetime * (1.0 - 0.05 * rand01(p));
        p->backoff = 0;
        p->error[0] = 0;
        PQAWAIT__ST_ADD(p, opened, 1);
        (void)awaitlet_cond_broadcast(&p->ready);
        pqawait__pool_kick(p); /* more may be needed: the next connects */
        pqawait__pool_give(e);
    } else {
        if (r == 0)
            connect_failed(p, why, msg);
        pqawait__pool_kick(p);
        pqawait__pconn_close(e, NULL);
    }
    pqawait__walk_free(w);
    p->tasks--;
    pqawait__pool_maybe_free(p);
    return NULL;
}

/* ---- resetting a released connection ----------------------------------------- */

static int command_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql); /* suspends: cooperative inside the task */
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok;
}

/* Ask the server to stop what runs on c (bounded, see pqawait_cancel). */
static void cancel_running(PGconn *c)
{
    PGcancel *k = PQgetCancel(c);
    if (k) {
        char buf[256];
        (void)pqawait_cancel(k, buf, (int)sizeof buf);
        PQfreeCancel(k);
    }
}

/* Stop the statement running on c and wait for its answer.  A cancel
 * request that reaches the backend before the backend has read the
 * statement (released a moment after it was sent, on a loaded machine) is
 * ignored by PostgreSQL -- it only cancels what executes -- and the
 * statement then runs to its end.  So while no answer comes the request
 * goes again, 20 ms, 40 ms ... at most 1 s apart; one that arrives after
 * the answer finds the backend reading the next command and does nothing.
 * Bounded by the resetter's deadline (reset_timeout): the wait then fails,
 * and so does the reset. */
static void stop_running(PGconn *c)
{
    double pause = 0.02;
    for (;;) {
        cancel_running(c);
        /* suspends: the answer, or the pause */
        if (awaitlet_io(PQsocket(c), EV_READ, pause) < 0)
            return; /* the deadline: the caller's next libpq call reports it */
        if (!PQconsumeInput(c) || !PQisBusy(c))
            return;
        pause = pause * 2 < 1.0 ? pause * 2 : 1.0;
    }
}

/* Read what is left of the last statement(s): 1 when c is back in step. */
static int drain(PGconn *c)
{
    PQconsumeInput(c);
    if (PQisBusy(c))
        stop_running(c); /* a statement still running: results nobody reads */
    for (int i = 0; i < 1000; i++) {
        PGresult *r = PQgetResult(c);
        if (!r)
            return PQstatus(c) == CONNECTION_OK;
        ExecStatusType st = PQresultStatus(r);
        PQclear(r);
        if (st == PGRES_COPY_IN) {
            if (PQputCopyEnd(c, "pqawait pool: connection released in the middle of COPY") != 1)
                return 0;
        } else if (st == PGRES_COPY_OUT) {
            cancel_running(c);
            char *buf;
            int n;
            while ((n = PQgetCopyData(c, &buf, 0)) > 0)
                PQfreemem(buf);
            if (n == -2)
                return 0;
        } else if (st == PGRES_COPY_BOTH || PQstatus(c) != CONNECTION_OK) {
            return 0;
        }
    }
    return 0;
}

/* Clean c for its next user: 1 when it came out OK, idle, out of pipeline
 * mode (and reset as the policy says). */
static int reset_conn(pqawait_pool *p, PGconn *c)
{
    PGTransactionStatusType ts = PQTRANS_UNKNOWN;
    for (int round = 0; round < 4; round++) {
        if (PQstatus(c) != CONNECTION_OK)
            return 0;
        ts = PQtransactionStatus(c);
        if (ts == PQTRANS_ACTIVE) {
            if (!drain(c))
                return 0;
        } else if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR) {
            (void)command_ok(c, "ROLLBACK"); /* judged by the status it leaves */
        } else {
            break;
        }
    }
    if (ts != PQTRANS_IDLE || PQtransactionStatus(c) != PQTRANS_IDLE)
        return 0;
    if ((p->o.reset & PQAWAIT_POOL_DISCARD_ALL) && !command_ok(c, "DISCARD ALL"))
        return 0;
    if (p->o.reset_cb && p->o.reset_cb(c, p->o.reset_arg) != 0)
        return 0;
    return PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) == PQTRANS_IDLE &&
           PQpipelineStatus(c) == PQ_PIPELINE_OFF;
}

static void *resetter(void *arg)
{
    pqawait__pconn *e = arg;
    pqawait_pool *p = e->pool;
    awaitlet_shield(1); /* the ROLLBACK is not abandoned half-way */
    int ok = !pqawait__pconn_stale(e) && reset_conn(p, e->conn);
    PQAWAIT__CNT(p, n_resetting, -1);
    if (pqawait__pconn_stale(e)) {
        pqawait__pool_kick(p);
        pqawait__pconn_close(e, NULL);
    } else if (ok) {
        PQAWAIT__ST_ADD(p, resets, 1);
        pqawait__pool_give(e);
    } else {
        pqawait__pool_kick(p);
        pqawait__pconn_close(e, PQstatus(e->conn) == CONNECTION_OK && !e->cut_off
                                    ? &p->st.discarded : &p->st.lost);
    }
    p->tasks--;
    pqawait__pool_maybe_free(p);
    return NULL;
}

int pqawait__pool_start_reset(pqawait__pconn *e)
{
    return start_task(e->pool, resetter, e);
}

/* ---- the maintainer ------------------------------------------------------------ */

/* One idle connection that must go now (expired, idle too long beyond
 * min_size, or inherited across fork), or NULL. */
static pqawait__pconn *idle_to_close(pqawait_pool *p, double now, unsigned long long **counter)
{
    unsigned size = p->n_idle + p->n_used + p->n_connecting + p->n_resetting;
    /* oldest idle first: the bottom of the stack */
    pqawait__pconn *last = p->idle;
    while (last && last->next)
        last = last->next;
    for (pqawait__pconn *e = last; e; e = e->prev) {
        *counter = &p->st.closed;
        if (pqawait__pconn_stale(e)) {
            *counter = NULL;
            return e;
        }
        if (p->o.max_lifetime > 0 && now >= e->expires)
            return e;
        if (p->o.max_idle > 0 && size > (unsigned)p->o.min_size &&
            now - e->idle_since >= p->o.max_idle)
            return e;
    }
    return NULL;
}

/* Resets that overran reset_timeout: shut their socket down, so libpq's
 * wait ends with a lost connection and the resetter discards it. */
static double cut_overdue_resets(pqawait_pool *p, double now)
{
    double next = INFINITY;
    for (pqawait__pconn *e = p->all; e; e = e->all_next) {
        if (e->state != PC_RESETTING || e->cut_off)
            continue;
        double due = e->idle_since + p->o.reset_timeout;
        if (now >= due) {
            e->cut_off = 1;
            int fd = PQsocket(e->conn);
            if (fd >= 0)
                (void)shutdown(fd, SHUT_RDWR);
        } else if (due < next) {
            next = due;
        }
    }
    return next;
}

static int start_connects(pqawait_pool *p, double now, double *next)
{
    int size = (int)(p->n_idle + p->n_used + p->n_connecting + p->n_resetting);
    int need = p->o.min_size - size;
    int for_waiters = (int)p->n_waiting - (int)(p->n_connecting + p->n_resetting);
    if (for_waiters > need)
        need = for_waiters;
    if (need > p->o.max_size - size)
        need = p->o.max_size - size;
    if (need > p->o.connect_parallel - (int)p->n_connecting)
        need = p->o.connect_parallel - (int)p->n_connecting;
    if (need <= 0)
        return 0;
    if (now < p->backoff_until) {
        if (p->backoff_until < *next)
            *next = p->backoff_until;
        return 0;
    }
    for (int i = 0; i < need && !(p->backoff_until > now); i++) {
        /* a connector may fail before start_task returns: that sets the
         * back-off, which stops the rest of this round */
        pqawait__pconn *e = pqawait__pconn_new(p);
        if (!e)
            return -1;
        if (start_task(p, connector, e) < 0) {
            PQAWAIT__CNT(p, n_connecting, -1);
            pqawait__pconn_close(e, NULL);
            return -1;
        }
    }
    return 0;
}

static void *maintainer(void *arg)
{
    pqawait_pool *p = arg;
    awaitlet_shield(1); /* only closing the pool ends it */
    p->maintainer = awaitlet_current();
    double tick = dmin(p->o.max_idle > 0 ? p->o.max_idle : 1.0,
                       p->o.max_lifetime > 0 ? p->o.max_lifetime : 1.0) / 4;
    tick = dmax(0.01, dmin(1.0, tick));
    while (!p->closed) {
        double now = pqawait__pool_now(p);
        unsigned long long *counter;
        pqawait__pconn *e = idle_to_close(p, now, &counter);
        if (e) {
            pqawait__idle_remove(e);
            pqawait__pconn_close(e, counter); /* may suspend: decide again */
            continue;
        }
        double next = dmin(now + tick, cut_overdue_resets(p, now));
        if (start_connects(p, now, &next) < 0)
            next = dmin(next, now + 0.1); /* out of memory or tasks: retry soon */
        for (e = p->idle; e && p->o.max_lifetime > 0; e = e->next)
            next = dmin(next, e->expires);
        double left = next - pqawait__pool_now(p);
        (void)awaitlet_cond_wait(&p->kick, left > 0.001 ? left : 0.001);
    }
    /* closed: abandon the connects in progress (they see `closed`) */
    for (pqawait__pconn *c = p->all; c; c = c->all_next)
        if (c->state == PC_CONNECTING && c->task)
            (void)awaitlet_cancel(c->task);
    p->maintainer = NULL;
    p->tasks--;
    pqawait__pool_maybe_free(p);
    return NULL;
}

int pqawait__pool_start_maintainer(pqawait_pool *p)
{
    return start_task(p, maintainer, p);
}
