/*
 * test_interrupt.c -- tasks interrupted inside libpq.
 *
 * The shim shields a task while it is inside libpq: cancellation or a
 * deadline arriving mid-statement makes it ask the server to cancel (resent
 * while it runs) and keep waiting, so the statement ends through libpq's
 * normal path with SQLSTATE 57014, the connection stays in step, and the
 * task's own next wait reports ECANCELED / ETIMEDOUT.  Checked here for a
 * plain statement (awaitlet_cancel, a deadline, pqawait_cancel from another
 * task), for a COPY OUT in progress, and for a connect (abandoned after the
 * grace, well before its connect_timeout); the interrupted task can still
 * clean up through libpq, and the loop never stalls meanwhile.  (Every
 * bound of the interruption rule: test_bound.c.)
 *
 * Cancel requests that are never answered (a proxy that accepts new
 * connections and never replies, as a hung postmaster does) must not block
 * the interrupted tasks, the loop, or the shared offload workers that host
 * name lookups need, and each one gives up within its bound
 * (pqawait_set_cancel_timeout).
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "common.h"
#include "pqawait.h"
#include "proxy.h"
#include "server2.h"
#include "stall.h"

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

struct victim {
    PGconn *conn;
    int how;           /* 0: awaitlet_cancel, 1: deadline, 2: pqawait_cancel from a task,
                          3: awaitlet_cancel of a task that shields itself */
    char sqlstate[8];
    ExecStatusType status;
    double elapsed;
    int next_wait_rc, next_wait_errno;
    int cancel_rc;
    char cancel_err[256];
    int cleanup_ok;
};

static void *victim_task(void *arg)
{
    struct victim *v = arg;
    if (v->how == 3)
        awaitlet_shield(1); /* the application winds down cleanly itself */
    double t0 = pqa_now();
    PGresult *r = PQexec(v->conn, "select pg_sleep(20)");
    v->elapsed = pqa_now() - t0;
    v->status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    const char *ss = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    snprintf(v->sqlstate, sizeof v->sqlstate, "%s", ss ? ss : "-");
    PQclear(r);
    errno = 0;
    v->next_wait_rc = awaitlet_sleep(0);
    v->next_wait_errno = errno;
    /* a cancelled task can still clean up through libpq */
    r = PQexec(v->conn, "select 'cleanup'");
    v->cleanup_ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    if (v->how == 3)
        awaitlet_shield(0);
    return NULL;
}

static void *canceller_task(void *arg)
{
    struct victim *v = arg;
    PGcancel *c = PQgetCancel(v->conn);
    v->cancel_rc = pqawait_cancel(c, v->cancel_err, sizeof v->cancel_err);
    PQfreeCancel(c);
    return NULL;
}

struct interrupter {
    ev_timer timer;
    awaitlet_task *victim;
    struct victim *v;
};

static void interrupt_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct interrupter *in = w->data;
    if (in->v->how == 0 || in->v->how == 3)
        ck_assert_int_eq(awaitlet_cancel(in->victim), 0);
    else
        ck_assert_ptr_nonnull(awaitlet_async_def_opts(loop, canceller_task, in->v,
                                                      &(awaitlet_options){.detached = 1}));
}

static void run_victim(int how)
{
    struct victim v = {.how = how};
    v.conn = pqa_connect(PQA_TCP, NULL);
    struct ev_loop *loop = pqa_loop_new();
    pqa_stall st;
    pqa_stall_start(&st, loop);
    struct interrupter in = {.v = &v};
    ev_timer_init(&in.timer, interrupt_cb, 0.2, 0);
    in.timer.data = &in;
    in.victim = awaitlet_async_def(loop, victim_task, &v);
    ck_assert_ptr_nonnull(in.victim);
    if (how == 1)
        ck_assert_int_eq(awaitlet_set_deadline(in.victim, 0.2), 0);
    else
        ev_timer_start(loop, &in.timer);
    awaitlet_join(in.victim);
    pqa_stall_stop(&st);
    while (awaitlet_loop_tasks(loop) > 0) /* the detached canceller */
        ev_run(loop, EVRUN_ONCE);
    ev_loop_destroy(loop);
    printf("interrupt mode %d: PQexec returned after %.3f s, %s %s, next wait %d/%s, stall %.1f ms\n",
           how, v.elapsed, PQresStatus(v.status), v.sqlstate, v.next_wait_rc,
           strerror(v.next_wait_errno), st.max_gap * 1e3);
    ck_assert_msg(v.elapsed < 5.0, "the statement ran %.1f s: the server was not asked to cancel",
                  v.elapsed);
    ck_assert_msg(v.status == PGRES_FATAL_ERROR && strcmp(v.sqlstate, "57014") == 0,
                  "expected FATAL_ERROR 57014, got %s %s", PQresStatus(v.status), v.sqlstate);
    if (how == 2) {
        ck_assert_msg(v.cancel_rc == 1, "pqawait_cancel failed: %s", v.cancel_err);
        ck_assert_int_eq(v.next_wait_rc, 0);
    } else if (how == 3) {
        /* the shim's own shield took one EINTR inside PQexec; the
         * application's shield is owed its own at its next wait */
        ck_assert_int_eq(v.next_wait_rc, -1);
        ck_assert_int_eq(v.next_wait_errno, EINTR);
    } else {
        ck_assert_int_eq(v.next_wait_rc, -1);
        ck_assert_int_eq(v.next_wait_errno, how == 0 ? ECANCELED : ETIMEDOUT);
    }
    ck_assert_msg(v.cleanup_ok, "a libpq call after the interruption failed: %s", PQerrorMessage(v.conn));
    pqa_stall_assert(&st, "cancel mode %d", how);
    /* the connection is usable and in sync */
    PGresult *r = pqa_exec_ok(v.conn, "select 'still in sync'", PGRES_TUPLES_OK);
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "still in sync");
    PQclear(r);
    ck_assert_int_eq(PQtransactionStatus(v.conn), PQTRANS_IDLE);
    PQfinish(v.conn);
}

START_TEST(test_cancel_task)
{
    run_victim(0);
}
END_TEST

START_TEST(test_deadline_task)
{
    run_victim(1);
}
END_TEST

START_TEST(test_pqawait_cancel)
{
    run_victim(2);
}
END_TEST

START_TEST(test_cancel_shielded_app)
{
    run_victim(3);
}
END_TEST

START_TEST(test_pqawait_cancel_outside)
{
    /* outside a task pqawait_cancel is PQcancel: nothing running, still 1 */
    PGconn *conn = pqa_connect(PQA_UNIX, NULL);
    PGcancel *c = PQgetCancel(conn);
    char err[256] = "";
    ck_assert_msg(pqawait_cancel(c, err, sizeof err) == 1, "pqawait_cancel: %s", err);
    PQfreeCancel(c);
    PQfinish(conn);
}
END_TEST

/* Cancelled in the middle of a COPY OUT: the server cancels the COPY, the
 * remaining PQgetCopyData calls end it through libpq's normal path. */
struct copy_victim {
    PGconn *conn;
    unsigned long rows;
    int end, next_errno;
    char sqlstate[8];
};

static void *copy_victim_task(void *arg)
{
    struct copy_victim *v = arg;
    PGresult *r = PQexec(v->conn, "copy (select i, pg_sleep(0.001) from generate_series(1, 1000000) i) to stdout");
    PQclear(r);
    char *buf;
    while ((v->end = PQgetCopyData(v->conn, &buf, 0)) > 0) {
        v->rows++;
        PQfreemem(buf);
    }
    r = PQgetResult(v->conn);
    const char *ss = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    snprintf(v->sqlstate, sizeof v->sqlstate, "%s", ss ? ss : "-");
    PQclear(r);
    while ((r = PQgetResult(v->conn)) != NULL)
        PQclear(r);
    errno = 0;
    awaitlet_sleep(0);
    v->next_errno = errno;
    return NULL;
}

START_TEST(test_cancel_during_copy)
{
    struct copy_victim v = {0};
    v.conn = pqa_connect(PQA_UNIX, NULL);
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *t = awaitlet_async_def(loop, copy_victim_task, &v);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(awaitlet_set_deadline(t, 0.3), 0);
    double t0 = pqa_now();
    awaitlet_join(t);
    double el = pqa_now() - t0;
    ev_loop_destroy(loop);
    printf("copy cancelled after %lu rows, %.3f s, sqlstate %s\n", v.rows, el, v.sqlstate);
    ck_assert_msg(el < 5, "the COPY ran %.1f s: not cancelled", el);
    ck_assert_int_eq(v.end, -1);
    ck_assert_str_eq(v.sqlstate, "57014");
    ck_assert_int_eq(v.next_errno, ETIMEDOUT);
    PGresult *r = pqa_exec_ok(v.conn, "select 'in sync'", PGRES_TUPLES_OK);
    PQclear(r);
    PQfinish(v.conn);
}
END_TEST

/* A real server with its postmaster frozen: TCP handshakes complete, no
 * answer ever comes (started in main). */
static pqa_server2 *hole;

/* A deadline ends a connect after the grace, even with a connect_timeout
 * that would end it later (test_bound.c has the full set of bounds). */
static void *deadline_connect_task(void *arg)
{
    double *out = arg;
    pqa_server2_check(hole);
    char *ci = pqa_conninfo_port(pqa_server2_port(hole), "connect_timeout=2");
    double t0 = pqa_now();
    PGconn *c = PQconnectdb(ci);
    out[0] = pqa_now() - t0;
    out[1] = PQstatus(c) == CONNECTION_BAD && strstr(PQerrorMessage(c), "deadline");
    PQfinish(c);
    free(ci);
    errno = 0;
    out[2] = awaitlet_sleep(0) == -1 && errno == ETIMEDOUT;
    return NULL;
}

START_TEST(test_deadline_during_connect)
{
    double res[3] = {0};
    struct ev_loop *loop = pqa_loop_new();
    pqa_stall st;
    pqa_stall_start(&st, loop);
    awaitlet_task *t = awaitlet_async_def(loop, deadline_connect_task, res);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(awaitlet_set_deadline(t, 0.2), 0);
    awaitlet_join(t);
    pqa_stall_stop(&st);
    ev_loop_destroy(loop);
    printf("deadline during connect: connect gave up after %.3f s, stall %.2f ms\n", res[0], st.max_gap * 1e3);
    ck_assert_msg(res[1] == 1, "the connect did not end CONNECTION_BAD naming the deadline");
    /* 0.2 s deadline + 0.1 s grace, long before connect_timeout=2 */
    ck_assert_msg(res[0] >= 0.28 && res[0] < (pqa_slow_build() ? 1.5 : 0.6),
                  "the connect ended after %.3f s", res[0]);
    ck_assert_msg(res[2] == 1, "the task's next wait did not report ETIMEDOUT");
    pqa_stall_assert(&st, "deadline during connect");
}
END_TEST

/* ---- cancel requests nobody answers ---- */

#define N_HUNG 8
#define N_NAMED 4

struct hung {
    pqa_proxy *proxy;
    PGconn *conn[N_HUNG];
    double elapsed[N_HUNG];
    ExecStatusType status[N_HUNG];
    int next_errno[N_HUNG];
    double named_s[N_NAMED];     /* host-name connects made meanwhile */
    int named_ok[N_NAMED];
    int watchdog_fired;
};

struct hung_arg {
    struct hung *h;
    int i;
};

static void *hung_victim(void *arg)
{
    struct hung_arg *a = arg;
    struct hung *h = a->h;
    double t0 = pqa_now();
    PGresult *r = PQexec(h->conn[a->i], "select pg_sleep(1), 1");
    h->elapsed[a->i] = pqa_now() - t0;
    h->status[a->i] = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    PQclear(r);
    errno = 0;
    awaitlet_sleep(0);
    h->next_errno[a->i] = errno;
    return NULL;
}

static void *named_connect(void *arg)
{
    struct hung_arg *a = arg;
    double t0 = pqa_now();
    PGconn *c = pqa_connect(PQA_TCP_NAME, "connect_timeout=10");
    a->h->named_s[a->i] = pqa_now() - t0;
    a->h->named_ok[a->i] = PQstatus(c) == CONNECTION_OK;
    PQfinish(c);
    return NULL;
}

struct hung_timers {
    ev_timer named, watchdog;
    struct hung *h;
    struct hung_arg args[N_NAMED];
};

static void start_named(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct hung_timers *ht = w->data;
    for (int i = 0; i < N_NAMED; i++) {
        ht->args[i] = (struct hung_arg){ht->h, i};
        ck_assert_ptr_nonnull(awaitlet_async_def_opts(loop, named_connect, &ht->args[i],
                                                      &(awaitlet_options){.detached = 1}));
    }
}

/* Only for a broken shim: let everything unwind so the test fails with
 * numbers instead of hanging until Check kills it. */
static void hung_watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct hung_timers *ht = w->data;
    ht->h->watchdog_fired = 1;
    pqa_proxy_hold_new(ht->h->proxy, 0);
}

START_TEST(test_unanswered_cancels)
{
    const double bound = 0.6; /* each cancel request gives up after this */
    const double slack = pqa_slow_build() ? 2.0 : 0.4;
    ck_assert_int_eq(pqawait_set_cancel_timeout(bound), 0);
    struct hung h = {0};
    char port[16];
    snprintf(port, sizeof port, "%s", pqa_env_port());
    h.proxy = pqa_proxy_start(atoi(port), 0);
    ck_assert_ptr_nonnull(h.proxy);
    for (int i = 0; i < N_HUNG; i++) {
        char *ci = pqa_conninfo_port(pqa_proxy_port(h.proxy), NULL);
        h.conn[i] = PQconnectdb(ci);
        free(ci);
        ck_assert_msg(PQstatus(h.conn[i]) == CONNECTION_OK, "connect through the proxy: %s",
                      PQerrorMessage(h.conn[i]));
    }
    /* the sessions keep flowing; every cancel request meets a dead end */
    pqa_proxy_hold_new(h.proxy, 1);

    struct ev_loop *loop = pqa_loop_new();
    pqa_stall st;
    pqa_stall_start(&st, loop);
    struct hung_timers ht = {.h = &h};
    ev_timer_init(&ht.named, start_named, 0.35, 0); /* all 8 cancels are out by then */
    ev_timer_init(&ht.watchdog, hung_watchdog, 4.0, 0);
    ht.named.data = ht.watchdog.data = &ht;
    ev_timer_start(loop, &ht.named);
    ev_timer_start(loop, &ht.watchdog);
    awaitlet_task *t[N_HUNG];
    struct hung_arg args[N_HUNG];
    double t0 = pqa_now();
    for (int i = 0; i < N_HUNG; i++) {
        args[i] = (struct hung_arg){&h, i};
        ck_assert_ptr_nonnull(t[i] = awaitlet_async_def(loop, hung_victim, &args[i]));
        ck_assert_int_eq(awaitlet_set_deadline(t[i], 0.2), 0);
    }
    for (int i = 0; i < N_HUNG; i++)
        awaitlet_join(t[i]);
    while (awaitlet_loop_tasks(loop) > 0) /* the host-name connects */
        ev_run(loop, EVRUN_ONCE);
    double all = pqa_now() - t0;
    ev_timer_stop(loop, &ht.watchdog);
    pqa_stall_stop(&st);
    /* the cancel threads give up on their own */
    pqa_proxy_held stats;
    for (int k = 0; k < 300; k++) {
        pqa_proxy_held_stats(h.proxy, &stats);
        if (stats.closed >= N_HUNG)
            break;
        usleep(10000);
    }
    printf("unanswered cancels: %d statements done in %.3f s; host-name connects %.3f %.3f %.3f "
           "%.3f s; %lu cancel connections held, %lu given up, longest %.3f s; stall %.1f ms\n",
           N_HUNG, all, h.named_s[0], h.named_s[1], h.named_s[2], h.named_s[3], stats.accepted,
           stats.closed, stats.longest, st.max_gap * 1e3);
    fflush(stdout);
    ck_assert_msg(!h.watchdog_fired, "the watchdog had to release the held cancel requests");
    for (int i = 0; i < N_HUNG; i++) {
        /* the cancel never reached the server: the statement runs to its end */
        ck_assert_msg(h.status[i] == PGRES_TUPLES_OK, "statement %d: %s", i, PQresStatus(h.status[i]));
        ck_assert_msg(h.elapsed[i] < 1.0 + slack, "statement %d returned after %.3f s: its task "
                      "waited for the cancel request", i, h.elapsed[i]);
        ck_assert_int_eq(h.next_errno[i], ETIMEDOUT);
    }
    for (int i = 0; i < N_NAMED; i++) {
        ck_assert_msg(h.named_ok[i], "host-name connect %d failed", i);
        ck_assert_msg(h.named_s[i] < 0.3 + slack, "host-name connect %d took %.3f s: its lookup "
                      "queued behind the cancel requests", i, h.named_s[i]);
    }
    ck_assert_msg(stats.accepted >= N_HUNG, "only %lu cancel requests reached the proxy", stats.accepted);
    ck_assert_msg(stats.closed >= N_HUNG, "only %lu of %lu cancel requests gave up", stats.closed,
                  stats.accepted);
    ck_assert_msg(stats.longest < bound + slack, "a cancel request stayed %.3f s (bound %.1f s)",
                  stats.longest, bound);
    char why[256];
    printf("unanswered cancels: stall: %s\n", pqa_stall_describe(&st, why, sizeof why));
    /* Not under ThreadSanitizer: the lane starts its 8 threads here, from
     * the loop's thread, and TSan's pthread_create sleeps until the new
     * thread runs (17-200 ms each on a loaded 2-core machine; 0.02 ms
     * without TSan): its windows hold "2 sleeps" of that.  Every other
     * build asserts the bound. */
    if (!pqa_tsan_build())
        pqa_stall_assert(&st, "unanswered cancels");
    for (int i = 0; i < N_HUNG; i++) {
        PGresult *r = pqa_exec_ok(h.conn[i], "select 'in sync'", PGRES_TUPLES_OK);
        PQclear(r);
        PQfinish(h.conn[i]);
    }
    ev_loop_destroy(loop);
    pqa_proxy_stop(h.proxy);
}
END_TEST

/* pqawait_cancel itself: bounded, cooperative, on the cancel lane. */
struct public_cancel {
    PGconn *conn;
    int rc;
    double elapsed;
    char err[256];
};

static void *public_cancel_task(void *arg)
{
    struct public_cancel *pc = arg;
    PGcancel *c = PQgetCancel(pc->conn);
    double t0 = pqa_now();
    pc->rc = pqawait_cancel(c, pc->err, sizeof pc->err);
    pc->elapsed = pqa_now() - t0;
    PQfreeCancel(c);
    return NULL;
}

START_TEST(test_pqawait_cancel_unanswered)
{
    const double bound = 0.6, slack = pqa_slow_build() ? 2.0 : 0.4;
    ck_assert_int_eq(pqawait_set_cancel_timeout(bound), 0);
    char port[16];
    snprintf(port, sizeof port, "%s", pqa_env_port());
    pqa_proxy *proxy = pqa_proxy_start(atoi(port), 0);
    ck_assert_ptr_nonnull(proxy);
    char *ci = pqa_conninfo_port(pqa_proxy_port(proxy), NULL);
    struct public_cancel pc = {.conn = PQconnectdb(ci)};
    free(ci);
    ck_assert_int_eq(PQstatus(pc.conn), CONNECTION_OK);
    pqa_proxy_hold_new(proxy, 1);
    struct ev_loop *loop = pqa_loop_new();
    pqa_stall st;
    pqa_stall_start(&st, loop);
    awaitlet_task *t = awaitlet_async_def(loop, public_cancel_task, &pc);
    ck_assert_ptr_nonnull(t);
    awaitlet_join(t);
    pqa_stall_stop(&st);
    ev_loop_destroy(loop);
    printf("pqawait_cancel without an answer: %d after %.3f s (%s), stall %.1f ms\n", pc.rc,
           pc.elapsed, pc.err, st.max_gap * 1e3);
    fflush(stdout);
    /* sent, like PQcancel says for a request whose answer never came */
    ck_assert_msg(pc.rc == 1, "pqawait_cancel: %s", pc.err);
    ck_assert_msg(pc.elapsed < bound + slack, "pqawait_cancel took %.3f s (bound %.1f s)", pc.elapsed,
                  bound);
    pqa_stall_assert(&st, "pqawait_cancel unanswered");
    PQfinish(pc.conn);
    pqa_proxy_stop(proxy);
}
END_TEST

/* A listener on PORT whose accept queue is full, so every new connection's
 * SYN is dropped: a postmaster too loaded to accept, seen from the client.
 * Returns the listener; *fill gets the connections that fill the queue. */
static int full_listener(int port, int fill[3])
{
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    ck_assert_int_ge(l, 0);
    (void)setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_msg(bind(l, (struct sockaddr *)&sa, sizeof sa) == 0, "bind %d: %s", port, strerror(errno));
    ck_assert_int_eq(listen(l, 0), 0);
    for (int i = 0; i < 3; i++) { /* never accepted: the first fills the queue */
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        ck_assert_int_ge(fill[i], 0);
        (void)connect(fill[i], (struct sockaddr *)&sa, sizeof sa);
    }
    return l;
}

/* pqawait_cancel whose request cannot even connect within the bound: it
 * fails (0, as PQcancel), and the message names the cause and the address,
 * not only libpq's "connect() failed: error 115". */
START_TEST(test_pqawait_cancel_not_accepted)
{
    const double bound = 0.6, slack = pqa_slow_build() ? 2.0 : 0.4;
    ck_assert_int_eq(pqawait_set_cancel_timeout(bound), 0);
    char port[16];
    snprintf(port, sizeof port, "%s", pqa_env_port());
    pqa_proxy *proxy = pqa_proxy_start(atoi(port), 0);
    ck_assert_ptr_nonnull(proxy);
    int pport = pqa_proxy_port(proxy);
    char *ci = pqa_conninfo_port(pport, NULL);
    struct public_cancel pc = {.conn = PQconnectdb(ci)};
    free(ci);
    ck_assert_int_eq(PQstatus(pc.conn), CONNECTION_OK);
    /* the session's address now belongs to a listener that accepts nothing */
    pqa_proxy_stop(proxy);
    int fill[3], l = full_listener(pport, fill);
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *t = awaitlet_async_def(loop, public_cancel_task, &pc);
    ck_assert_ptr_nonnull(t);
    awaitlet_join(t);
    ev_loop_destroy(loop);
    printf("pqawait_cancel not accepted: %d after %.3f s: %s", pc.rc, pc.elapsed, pc.err);
    fflush(stdout);
    ck_assert_msg(pc.rc == 0, "pqawait_cancel to a full listener said sent: '%s'", pc.err);
    ck_assert_msg(pc.elapsed < bound + slack, "pqawait_cancel took %.3f s (bound %.1f s)", pc.elapsed, bound);
    char where[64];
    snprintf(where, sizeof where, "127.0.0.1:%d", pport);
    ck_assert_msg(strncmp(pc.err, "pqawait: ", 9) == 0 && strstr(pc.err, where) && strstr(pc.err, "within 0.3 s") &&
                      strstr(pc.err, "pqawait_set_cancel_timeout"),
                  "the message does not name the cause (%s, within 0.3 s, pqawait_set_cancel_timeout): '%s'", where,
                  pc.err);
    ck_assert_msg(strstr(pc.err, "connect() failed"), "libpq's own text is gone: '%s'", pc.err);
    for (int i = 0; i < 3; i++)
        close(fill[i]);
    close(l);
    PQfinish(pc.conn);
}
END_TEST

START_TEST(test_cancel_timeout_args)
{
    errno = 0;
    ck_assert_int_eq(pqawait_set_cancel_timeout(0), -1);
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_int_eq(pqawait_set_cancel_timeout(-1), -1);
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_int_eq(pqawait_set_cancel_timeout(0.0 / 0.0), -1);
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_int_eq(pqawait_set_cancel_timeout(1e9), -1);
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_int_eq(pqawait_set_cancel_timeout(5), 0);
}
END_TEST

int main(void)
{
    pqa_env_init();
    pqa_server2_start(&hole, 1);
    pqa_server2_freeze(hole);
    Suite *s = suite_create("shim-interrupt");
    TCase *tc = tcase_create("interrupt");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_cancel_task);
    tcase_add_test(tc, test_deadline_task);
    tcase_add_test(tc, test_pqawait_cancel);
    tcase_add_test(tc, test_cancel_shielded_app);
    tcase_add_test(tc, test_pqawait_cancel_outside);
    tcase_add_test(tc, test_cancel_during_copy);
    tcase_add_test(tc, test_deadline_during_connect);
    tcase_add_test(tc, test_unanswered_cancels);
    tcase_add_test(tc, test_pqawait_cancel_unanswered);
    tcase_add_test(tc, test_pqawait_cancel_not_accepted);
    tcase_add_test(tc, test_cancel_timeout_args);
    suite_add_tcase(s, tc);
    int rc = pqa_run_suite(s);
    pqa_server2_stop_all();
    return rc;
}
