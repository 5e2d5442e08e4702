/*
 * pool_acquire.c -- checking connections out and in.
 *
 * Acquire is FIFO: a task that finds nothing idle -- or finds others
 * already waiting, which it must not overtake -- queues a waiter record on
 * its own stack and waits on the record's private semaphore.  Whoever frees
 * a connection (a release, a resetter, a connector) hands it straight to
 * the first waiter (pqawait__pool_give: waiter->given, then a post), so a
 * connection is never up for grabs between being freed and its new owner
 * running.  If the waiter was cancelled (or passed its deadline, or its
 * timeout) before it ran again, its own wait fails; it then finds the
 * connection in `given` and hands it on to the next waiter -- a failed
 * acquire never keeps a connection, and no connection is lost.
 *
 * Where acquire suspends: in awaitlet_sem_wait (waiting its turn), and in
 * the checkout check (a PQexec of an empty query, when check_idle says so).
 * Both are followed by a fresh look at the pool (closed? forked?) and at the
 * task's own interruption.  Release never suspends, except inside the
 * PQfinish of a connection it closes (pool.h).
 *
 * Telling the pool's timeout from the task's deadline: both fail with
 * ETIMEDOUT (the deadline as every awaitlet wait reports it);
 * awaitlet_interrupted() is 1 only for the deadline.
 */
#include <errno.h>
#include <math.h>

#include "pool.h"

pqawait__waiter *pqawait__waiter_pop(pqawait_pool *p)
{
    pqawait__waiter *w = p->wait_head;
    if (!w)
        return NULL;
    p->wait_head = w->next;
    if (w->next)
        w->next->prev = NULL;
    else
        p->wait_tail = NULL;
    w->next = w->prev = NULL;
    w->linked = 0;
    PQAWAIT__CNT(p, n_waiting, -1);
    return w;
}

static void waiter_unlink(pqawait_pool *p, pqawait__waiter *w)
{
    if (!w->linked)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        p->wait_head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        p->wait_tail = w->prev;
    w->next = w->prev = NULL;
    w->linked = 0;
    PQAWAIT__CNT(p, n_waiting, -1);
}

void pqawait__pool_used_link(pqawait_pool *p, pqawait__pconn *e)
{
    e->state = PC_IN_USE;
    e->prev = NULL;
    e->next = p->used;
    if (p->used)
        p->used->prev = e;
    p->used = e;
    PQAWAIT__CNT(p, n_used, 1);
}

static void used_unlink(pqawait_pool *p, pqawait__pconn *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        p->used = e->next;
    if (e->next)
        e->next->prev = e->prev;
    e->prev = e->next = NULL;
    PQAWAIT__CNT(p, n_used, -1);
}

/* The running task's pending interruption, as its next wait would report
 * it (ECANCELED, ETIMEDOUT, or EINTR once when shielded), else 0. */
static int interruption(awaitlet_sem *scratch)
{
    if (!awaitlet_interrupted())
        return 0; /* the common case costs nothing */
    return awaitlet_sem_wait(scratch, 0) < 0 ? errno : 0;
}

/* Checkout check of a connection that sat idle long enough: one round trip
 * (an empty query), waited for at most `left` seconds -- a frozen backend
 * or a black-holed network must not hold acquire up.  Suspends (in
 * awaitlet_io).  1 when fit to hand out; 0 when dead or silent (then it
 * may be mid-query: it is discarded). */
static int healthy(pqawait_pool *p, PGconn *c, double left)
{
    if (!PQsendQuery(c, ""))
        return 0;
    int fd = PQsocket(c);
    double until = pqawait__pool_now(p) + left;
    for (;;) {
        int f = PQflush(c);
        if (f < 0 || !PQconsumeInput(c))
            return 0;
        if (f == 0 && !PQisBusy(c))
            break;
        double rest = until - pqawait__pool_now(p);
        if (rest <= 0)
            return 0; /* silent for `left` */
        /* shielded at a level of its own: an interruption says EINTR here
         * once and the check goes on to its end, leaving the caller's own
         * report to acquire's next look */
        awaitlet_shield(1);
        int r = awaitlet_io(fd, f ? AWAITLET_READ | AWAITLET_WRITE : AWAITLET_READ, rest);
        int e = errno;
        awaitlet_shield(0);
        if (r < 0 && e != EINTR)
            return 0; /* a bad fd */
    }
    int ok = 1;
    PGresult *r;
    while ((r = PQgetResult(c))) { /* not busy: no wait */
        if (PQresultStatus(r) != PGRES_EMPTY_QUERY)
            ok = 0;
        PQclear(r);
    }
    return ok && PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) == PQTRANS_IDLE;
}

static void count_wait(pqawait_pool *p, double since)
{
    if (since < 0)
        return;
    double ns = (pqawait__pool_now(p) - since) * 1e9;
    PQAWAIT__ST_ADD(p, waits, 1);
    PQAWAIT__ST_ADD(p, wait_ns, ns > 0 ? (unsigned long long)ns : 0);
}

/* The work of acquire; the caller holds p->inside. */
static PGconn *acquire(pqawait_pool *p, double timeout, int *err)
{
    pqawait__waiter w = { 0 };
    double since = -1, until = INFINITY;
    awaitlet_sem_init(&w.sem, 0);
    for (;;) {
        int e = p->closed ? ESHUTDOWN : interruption(&w.sem);
        if (e) {
            count_wait(p, since);
            if (e != ESHUTDOWN)
                PQAWAIT__ST_ADD(p, interrupted, 1);
            *err = e;
            return NULL;
        }
        pqawait__pconn *c = NULL;
        if (!p->wait_head && p->idle) {
            c = p->idle;
            pqawait__idle_remove(c);
            pqawait__pool_used_link(p, c);
            if (p->o.check_idle >= 0 && ev_now(p->loop) - c->idle_since >= p->o.check_idle) {
                double left = p->o.check_timeout;
                if (timeout >= 0) {
                    double rest = (since < 0 ? timeout : until - pqawait__pool_now(p));
                    if (rest < left)
                        left = rest > 0.001 ? rest : 0.001;
                }
                if (!healthy(p, c->conn, left)) { /* suspended: look again afterwards */
                    used_unlink(p, c);
                    pqawait__pool_kick(p);
                    pqawait__pconn_close(c, &p->st.lost);
                    continue;
                }
                if (p->closed || pqawait__pconn_stale(c) || interruption(&w.sem)) {
                    used_unlink(p, c);
                    pqawait__pool_give(c);
                    continue; /* the top of the loop reports why */
                }
            }
        } else {
            if (p->o.max_waiting > 0 && p->n_waiting >= (unsigned)p->o.max_waiting) {
                PQAWAIT__ST_ADD(p, rejected, 1);
                *err = EAGAIN;
                return NULL;
            }
            double now = pqawait__pool_now(p);
            if (since < 0) {
                since = now;
                until = timeout < 0 ? INFINITY : now + timeout;
            }
            double left = until - now;
            if (timeout == 0 || left <= 0) {
                count_wait(p, timeout == 0 ? -1 : since);
                PQAWAIT__ST_ADD(p, timeouts, 1);
                *err = ETIMEDOUT;
                return NULL;
            }
            awaitlet_sem_init(&w.sem, 0);
            w.given = NULL;
            w.prev = p->wait_tail;
            if (p->wait_tail)
                p->wait_tail->next = &w;
            else
                p->wait_head = &w;
            p->wait_tail = &w;
            w.linked = 1;
            PQAWAIT__CNT(p, n_waiting, 1);
            pqawait__pool_kick(p); /* the maintainer opens one if it can */
            int r = awaitlet_sem_wait(&w.sem, isinf(left) ? -1.0 : left);
            int why = r < 0 ? errno : 0;
            waiter_unlink(p, &w);
            c = w.given;
            w.given = NULL;
            if (c && r != 1) {
                /* handed one, then interrupted before running: pass it on */
                used_unlink(p, c);
                pqawait__pool_give(c);
                c = NULL;
            }
            if (!c) {
                if (r == 0 && !p->closed) {
                    count_wait(p, since);
                    PQAWAIT__ST_ADD(p, timeouts, 1);
                    *err = ETIMEDOUT;
                    return NULL;
                }
                if (r < 0 && !p->closed) {
                    count_wait(p, since);
                    PQAWAIT__ST_ADD(p, interrupted, 1);
                    *err = why;
                    return NULL;
                }
                continue; /* closed (or woken with nothing): the top says */
            }
        }
        count_wait(p, since);
        PQAWAIT__ST_ADD(p, acquires, 1);
        return c->conn;
    }
}

/* What acquire and wait refuse: a bad or closed pool, a call outside a
 * task, a NaN timeout.  0 or the errno. */
static int call_check(pqawait_pool *p, double timeout)
{
    int e = pqawait__pool_check(p);
    if (!e && !awaitlet_in_context())
        e = EPERM;
    if (!e && isnan(timeout))
        e = EINVAL;
    return e;
}

PGconn *pqawait_pool_acquire_timeout(pqawait_pool *p, double timeout)
{
    int saved = errno;
    int e = call_check(p, timeout);
    if (e) {
        errno = e;
        return NULL;
    }
    p->inside++;
    PGconn *c = acquire(p, timeout, &e);
    p->inside--;
    pqawait__pool_maybe_free(p); /* a pool closed meanwhile may go now */
    errno = c ? saved : e;
    return c;
}

PGconn *pqawait_pool_acquire(pqawait_pool *p)
{
    if (pqawait__pool_check(p)) /* before reading the options */
        return pqawait_pool_acquire_timeout(p, 0);
    return pqawait_pool_acquire_timeout(p, p->o.timeout);
}

int pqawait_pool_wait(pqawait_pool *p, double timeout)
{
    int e = call_check(p, timeout);
    if (e) {
        errno = e;
        return -1;
    }
    p->inside++;
    double until = timeout < 0 ? INFINITY : pqawait__pool_now(p) + timeout;
    for (;;) {
        if (p->closed) {
            e = ESHUTDOWN;
            break;
        }
        if (p->n_idle + p->n_used + p->n_resetting >= (unsigned)p->o.min_size)
            break;
        double left = until - pqawait__pool_now(p);
        if (left <= 0) {
            e = ETIMEDOUT;
            break;
        }
        int r = awaitlet_cond_wait(&p->ready, isinf(left) ? -1.0 : left);
        if (r < 0) {
            e = errno;
            break;
        }
    }
    p->inside--;
    pqawait__pool_maybe_free(p);
    if (e) {
        errno = e;
        return -1;
    }
    return 0;
}

/* ---- release ---------------------------------------------------------------- */

/* What the previous user may have changed on the client side. */
static void restore_client_state(pqawait__pconn *e)
{
    PGconn *c = e->conn;
    PGnotify *n;
    while ((n = PQnotifies(c)))
        PQfreemem(n);
    if (PQisnonblocking(c))
        (void)PQsetnonblocking(c, 0);
    PQuntrace(c);
    (void)PQsetErrorVerbosity(c, PQERRORS_DEFAULT);
    (void)PQsetErrorContextVisibility(c, PQSHOW_CONTEXT_ERRORS);
    /* libpq's default processor and receiver ignore their argument, so the
     * function tells; a processor of the options is set again each time */
    if (e->pool->o.notice_processor || PQsetNoticeProcessor(c, NULL, NULL) != e->proc0)
        (void)PQsetNoticeProcessor(c, e->proc0, e->proc0_arg);
    if (PQsetNoticeReceiver(c, NULL, NULL) != e->recv0)
        (void)PQsetNoticeReceiver(c, e->recv0, NULL);
}

int pqawait_pool_release(pqawait_pool *p, PGconn *conn)
{
    int err = pqawait__pool_check(p);
    if (err) {
        errno = err;
        return -1;
    }
    pqawait__pconn *e = p->used;
    while (e && e->conn != conn)
        e = e->next;
    if (!conn || !e) {
        errno = EINVAL;
        return -1;
    }
    used_unlink(p, e);
    /* from here on p may be freed by pqawait__pconn_close: each branch ends
     * with the call that may do it */
    if (pqawait__pconn_stale(e)) {
        pqawait__pool_kick(p);
        pqawait__pconn_close(e, NULL); /* inherited across fork: silently */
        return 0;
    }
    restore_client_state(e);
    if (PQstatus(conn) != CONNECTION_OK) {
        pqawait__pool_kick(p);
        pqawait__pconn_close(e, &p->st.lost);
        return 0;
    }
    if (p->closed) {
        pqawait__pconn_close(e, &p->st.closed);
        return 0;
    }
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF && !PQexitPipelineMode(conn)) {
        pqawait__pool_kick(p);
        pqawait__pconn_close(e, &p->st.discarded); /* results pending in a pipeline */
        return 0;
    }
    PGTransactionStatusType ts = PQtransactionStatus(conn);
    if (ts == PQTRANS_IDLE && !(p->o.reset & PQAWAIT_POOL_DISCARD_ALL) && !p->o.reset_cb) {
        pqawait__pool_give(e);
        return 0;
    }
    if (ts == PQTRANS_UNKNOWN) {
        pqawait__pool_kick(p);
        pqawait__pconn_close(e, &p->st.lost);
        return 0;
    }
    e->state = PC_RESETTING;
    e->idle_since = pqawait__pool_now(p); /* the reset's start */
    PQAWAIT__CNT(p, n_resetting, 1);
    if (pqawait__pool_start_reset(e) < 0) {
        PQAWAIT__CNT(p, n_resetting, -1);
        pqawait__pool_kick(p);
        pqawait__pconn_close(e, &p->st.discarded);
    }
    return 0;
}
