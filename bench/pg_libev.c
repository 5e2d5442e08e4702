/*
 * pg_libev.c -- variant d: what an expert writes by hand.  One libev loop,
 * one state machine per session driving libpq's async API from an ev_io
 * callback chain: PQsend*, PQflush, and on readiness PQconsumeInput, then
 * PQgetResult while !PQisBusy (PQgetCopyData(async) for COPY), then the
 * next operation.  For the storm workload the connect is asynchronous too
 * (PQconnectStart + PQconnectPoll, watching what each step asks for and
 * re-reading PQsocket after every step).
 *
 * The watcher stays started between operations and is re-armed only when
 * the descriptor or the events change, so steady-state queries cost no
 * epoll_ctl -- the same standard the tasks are held to.  Sessions other
 * than storm connect with blocking calls before the run (not timed).
 * Results are checked with pg_work.c's checks, as the other variants'.
 */
#include "pg.h"

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum sm_state { SM_IDLE, SM_CONNECTING, SM_RESULTS, SM_COPY };

struct sm {
    ev_io w; /* first: the callback casts back */
    struct pgb_session *s;
    enum sm_state state;
    int events;     /* what w is started for; 0: stopped */
    int copy_ended; /* COPY: PQgetCopyData said -1 */
    long bytes;     /* COPY: bytes received */
};

static struct ev_loop *loop;
static struct sm *machines;
static int running;
static pthread_t thread;
static ev_io go_watcher;

static void sm_next(struct sm *m);

static void sm_watch(struct sm *m, int fd, int events)
{
    if (m->events == events && m->w.fd == fd)
        return;
    if (m->events)
        ev_io_stop(loop, &m->w);
    ev_io_set(&m->w, fd, events);
    ev_io_start(loop, &m->w);
    m->events = events;
}

static void sm_unwatch(struct sm *m)
{
    if (m->events)
        ev_io_stop(loop, &m->w);
    m->events = 0;
}

static void sm_done(struct sm *m)
{
    sm_unwatch(m);
    m->state = SM_IDLE;
    atomic_fetch_add_explicit(&pgb.finished, 1, memory_order_release);
    if (--running == 0)
        ev_break(loop, EVBREAK_ALL);
}

static void sm_failed(struct sm *m, const char *what)
{
    pgb_fail(m->s->conn, what);
    sm_done(m);
}

static void sm_send(struct sm *m)
{
    PGconn *c = m->s->conn;
    char aid[16];
    const char *v[1];
    int ok, f;
    switch (pgb.workload) {
    case PGB_POINT:
        v[0] = pgb_next_aid(m->s, aid);
        ok = PQsendQueryPrepared(c, "point", 1, v, NULL, NULL, 0);
        break;
    case PGB_EXTENDED:
        v[0] = pgb_next_aid(m->s, aid);
        ok = PQsendQueryParams(c, pgb_point_sql, 1, NULL, v, NULL, NULL, 0);
        break;
    case PGB_COPY:
        m->bytes = 0;
        m->copy_ended = 0;
        ok = PQsendQuery(c, pgb_copy_sql);
        break;
    default:
        ok = PQsendQuery(c, "SELECT 1");
    }
    if (!ok) {
        sm_failed(m, "PQsend");
        return;
    }
    if ((f = PQflush(c)) < 0) {
        sm_failed(m, "PQflush");
        return;
    }
    m->state = SM_RESULTS;
    sm_watch(m, PQsocket(c), f ? EV_READ | EV_WRITE : EV_READ);
}

static void sm_connect_start(struct sm *m)
{
    PGconn *c = m->s->conn = PQconnectStart(pgb.conninfo);
    if (!c || PQstatus(c) == CONNECTION_BAD) {
        sm_failed(m, "PQconnectStart");
        return;
    }
    m->state = SM_CONNECTING;
    sm_watch(m, PQsocket(c), EV_WRITE); /* the socket is connecting: writable first */
}

static void sm_connect_step(struct sm *m)
{
    PGconn *c = m->s->conn;
    switch (PQconnectPoll(c)) {
    case PGRES_POLLING_READING:
        sm_watch(m, PQsocket(c), EV_READ);
        return;
    case PGRES_POLLING_WRITING:
        sm_watch(m, PQsocket(c), EV_WRITE);
        return;
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(c, 1) != 0) {
            sm_failed(m, "PQsetnonblocking");
            return;
        }
        sm_send(m);
        return;
    default:
        sm_failed(m, "PQconnectPoll");
    }
}

/* One operation complete: count it, then the next one (or stop). */
static void sm_complete(struct sm *m)
{
    pgb_count(m->s);
    if (pgb.workload == PGB_STORM) {
        sm_unwatch(m); /* before PQfinish closes the descriptor */
        PQfinish(m->s->conn);
        m->s->conn = NULL;
    }
    sm_next(m);
}

/* Take everything the input buffer holds; return when it needs more. */
static void sm_drain(struct sm *m)
{
    PGconn *c = m->s->conn;
    for (;;) {
        PGresult *r;
        if (m->state == SM_COPY) {
            char *buf;
            int n;
            while ((n = PQgetCopyData(c, &buf, 1)) > 0) {
                m->bytes += n;
                PQfreemem(buf);
            }
            if (n == 0)
                return;
            if (n == -2) {
                sm_failed(m, "PQgetCopyData");
                return;
            }
            m->copy_ended = 1; /* -1: the COPY's own result follows */
            m->state = SM_RESULTS;
        }
        if (PQisBusy(c))
            return;
        if (!(r = PQgetResult(c))) {
            sm_complete(m);
            return;
        }
        if (pgb.workload == PGB_COPY && !m->copy_ended && PQresultStatus(r) == PGRES_COPY_OUT) {
            PQclear(r);
            m->state = SM_COPY;
            continue;
        }
        if ((pgb.workload == PGB_COPY ? pgb_check_copy_end(c, r, m->bytes)
                                      : pgb_check_tuples(c, r)) != 0) {
            PQclear(r);
            sm_done(m);
            return;
        }
        PQclear(r);
    }
}

static void sm_cb(struct ev_loop *l, ev_io *w, int revents)
{
    struct sm *m = (struct sm *)w;
    PGconn *c = m->s->conn;
    (void)l;
    if (m->state == SM_CONNECTING) {
        sm_connect_step(m);
        return;
    }
    if (revents & EV_WRITE) {
        int f = PQflush(c);
        if (f < 0) {
            sm_failed(m, "PQflush");
            return;
        }
        if (f == 0)
            sm_watch(m, PQsocket(c), EV_READ);
    }
    if (!(revents & EV_READ))
        return;
    if (!PQconsumeInput(c)) {
        sm_failed(m, "PQconsumeInput");
        return;
    }
    sm_drain(m);
}

static void sm_next(struct sm *m)
{
    if (!pgb_keep_going(m->s)) {
        sm_done(m);
        return;
    }
    if (pgb.workload == PGB_STORM)
        sm_connect_start(m);
    else
        sm_send(m);
}

static void go_cb(struct ev_loop *l, ev_io *w, int revents)
{
    (void)revents;
    ev_io_stop(l, w);
    for (int i = 0; i < pgb.sessions; i++)
        if (machines[i].state == SM_IDLE && machines[i].s)
            sm_next(&machines[i]);
}

/* Setup with blocking calls (not timed), as an expert's server would do
 * its start-up: connect, prepare, then switch to nonblocking mode. */
static int setup_session(struct sm *m)
{
    struct pgb_session *s = m->s;
    if (pgb_connect(s) < 0 || (pgb.hold && pgb_op(s) < 0))
        return -1;
    if (s->conn && PQsetnonblocking(s->conn, 1) != 0) {
        pgb_fail(s->conn, "PQsetnonblocking");
        return -1;
    }
    return 0;
}

static void *loop_main(void *arg)
{
    (void)arg;
    if (pgb.hold) {
        if (pgb_churn_once() != 0) {
            fprintf(stderr, "bench-pg: the warm-up session failed\n");
            exit(1);
        }
        pgb.rss_base = pgb_rss_bytes();
    }
    for (int i = 0; i < pgb.sessions; i++) {
        struct sm *m = &machines[i];
        ev_init(&m->w, sm_cb);
        if (setup_session(m) < 0) {
            if (m->s->conn)
                pgb_disconnect(m->s);
            m->s = NULL;
            pgb_mark_failed();
            continue;
        }
        running++;
        pgb_mark_connected(m->s);
    }
    ev_io_init(&go_watcher, go_cb, pgb.go_fd, EV_READ);
    ev_io_start(loop, &go_watcher);
    if (running)
        ev_run(loop, 0);
    for (int i = 0; i < pgb.sessions; i++)
        if (machines[i].s && machines[i].s->conn)
            pgb_disconnect(machines[i].s);
    return NULL;
}

void pgb_libev_start(void)
{
    int e;
    if (!(loop = ev_loop_new(EVFLAG_AUTO)) ||
        !(machines = calloc((size_t)pgb.sessions, sizeof *machines))) {
        perror("bench-pg: ev_loop_new/calloc");
        exit(1);
    }
    for (int i = 0; i < pgb.sessions; i++)
        machines[i].s = &pgb.s[i];
    if ((e = pthread_create(&thread, NULL, loop_main, NULL))) {
        fprintf(stderr, "bench-pg: pthread_create: %s\n", strerror(e));
        exit(1);
    }
}

void pgb_libev_join(void)
{
    pthread_join(thread, NULL);
    free(machines);
    ev_loop_destroy(loop);
}
