/*
 * test_bound.c -- deadlines and cancellation bound unmodified libpq code
 * (issue 9, item 1), against real servers.
 *
 * The rule (pqawait.h, "Interruptions"): for a task cancelled or past its
 * deadline, every libpq call ends within about GRACE (0.1 s) plus a round
 * trip of the moment the interruption is first seen; a statement through a
 * server-side cancel (libpq's own 57014), a connect (host-name lookup
 * included) with CONNECTION_BAD and a message naming the cause; when the
 * cancel is not answered (a frozen postmaster, a network that stopped) the
 * call gives up GIVE_UP (1 s) after it, with CONNECTION_BAD and the
 * message.  Clean-up (ROLLBACK, PQfinish) still works; clearing the deadline
 * restores normal behaviour.
 *
 * Each bound is asserted with a margin (SLACK; larger under valgrind and
 * sanitizers), each beside a case that would run much longer or for ever
 * without it -- a pg_sleep(5) statement, a frozen postmaster, a stalled
 * proxy, a lookup that takes seconds -- and the loop must never stall
 * meanwhile (stall.h).  The misbehaving peers are real: a private server
 * whose postmaster is SIGSTOPped (server2.c), the loopback proxy in hold or
 * stall mode (proxy.c), and a resolver library linked behind the shim that
 * answers one name slowly (slowgai.c).
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq/libpq-fs.h>

#include "common.h"
#include "pqawait.h"
#include "proxy.h"
#include "server2.h"
#include "slowgai.h"
#include "stall.h"

#define GRACE 0.1
#define GIVE_UP 1.0

static double slack(void)
{
    return pqa_slow_build() ? 1.0 : 0.15;
}

/* The frozen private server (main), and a session opened to it before it
 * froze: its backend runs, but no cancel request can reach it. */
static pqa_server2 *frozen;
static PGconn *frozen_session;

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

/* ---- running a task with a stall meter ---- */

struct ctl {
    awaitlet_task *task;
    ev_timer check, watchdog;
    double check_at;          /* control: when to look whether it is done */
    int done_at_check;        /* control: the task had ended by then */
    double deadline_then;     /* control: deadline set at check time; 0: cancel */
    pqa_proxy *unstall;       /* watchdog: let the proxy flow again */
    int watchdog_fired;
};

static void check_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ctl *c = w->data;
    c->done_at_check = awaitlet_done(c->task);
    if (c->done_at_check)
        return;
    if (c->deadline_then > 0)
        ck_assert_int_eq(awaitlet_set_deadline(c->task, c->deadline_then), 0);
    else
        ck_assert_int_eq(awaitlet_cancel(c->task), 0);
}

/* Only for a broken shim: make a run end with numbers, not a Check timeout. */
static void watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ctl *c = w->data;
    c->watchdog_fired = 1;
    if (c->unstall)
        pqa_proxy_stall(c->unstall, 0);
}

/* Run fn(arg) as a task: deadline > 0 sets one at the start; ctl (may be
 * NULL) adds the control check and the watchdog.  Asserts the loop never
 * stalled. */
static void run(awaitlet_fn fn, void *arg, double deadline, struct ctl *ctl)
{
    struct ev_loop *loop = pqa_loop_new();
    pqa_stall st;
    struct ctl none = {0};
    if (!ctl)
        ctl = &none;
    pqa_stall_start(&st, loop);
    ctl->task = awaitlet_async_def(loop, fn, arg);
    ck_assert_ptr_nonnull(ctl->task);
    if (deadline > 0)
        ck_assert_int_eq(awaitlet_set_deadline(ctl->task, deadline), 0);
    ev_timer_init(&ctl->check, check_cb, ctl->check_at, 0);
    ev_timer_init(&ctl->watchdog, watchdog_cb, pqa_slow_build() ? 20 : 8, 0);
    ctl->check.data = ctl->watchdog.data = ctl;
    if (ctl->check_at > 0)
        ev_timer_start(loop, &ctl->check);
    ev_timer_start(loop, &ctl->watchdog);
    errno = 0;
    void *res = awaitlet_join(ctl->task);
    ck_assert_msg(res != NULL || errno == 0, "join: %s", strerror(errno));
    ev_timer_stop(loop, &ctl->check);
    ev_timer_stop(loop, &ctl->watchdog);
    pqa_stall_stop(&st);
    ev_loop_destroy(loop);
    ck_assert_msg(!ctl->watchdog_fired, "the watchdog had to end the run");
    pqa_stall_assert(&st, "bound");
}

/* Make the running task interrupted before its next libpq call: a short
 * deadline, passed in a sleep of its own. */
static void become_interrupted(void)
{
    ck_assert_int_eq(awaitlet_set_deadline(awaitlet_current(), 0.01), 0);
    errno = 0;
    ck_assert_int_eq(awaitlet_sleep(5), -1);
    ck_assert_int_eq(errno, ETIMEDOUT);
}

static const char *sqlstate(const PGresult *r)
{
    const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "-";
}

/* One timed statement. */
struct stmt {
    double elapsed;
    ExecStatusType status;
    char state[8];
};

static void timed_exec(PGconn *c, const char *sql, struct stmt *s)
{
    double t0 = pqa_now();
    PGresult *r = PQexec(c, sql);
    s->elapsed = pqa_now() - t0;
    s->status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    snprintf(s->state, sizeof s->state, "%s", sqlstate(r));
    PQclear(r);
}

static void expect_57014(const struct stmt *s, double bound, const char *what)
{
    printf("%s: %s %s after %.3f s (bound %.3f s)\n", what, PQresStatus(s->status), s->state,
           s->elapsed, bound);
    fflush(stdout);
    ck_assert_msg(s->elapsed < bound, "%s ran %.3f s, bound %.3f s", what, s->elapsed, bound);
    ck_assert_msg(s->status == PGRES_FATAL_ERROR && strcmp(s->state, "57014") == 0,
                  "%s: expected libpq's 57014, got %s %s", what, PQresStatus(s->status), s->state);
}

/* ---- statements: the cancel, the next statements, ROLLBACK ---- */

struct statements {
    PGconn *conn;
    struct stmt first, next, in_tx, rollback;
    ExecStatusType begin;
    PGTransactionStatusType after_rollback;
    int next_wait_errno;
};

static void *statements_task(void *arg)
{
    struct statements *s = arg;
    timed_exec(s->conn, "select pg_sleep(5)", &s->first);  /* the deadline passes in it */
    timed_exec(s->conn, "select pg_sleep(5)", &s->next);   /* called past the deadline */
    PGresult *r = PQexec(s->conn, "begin");
    s->begin = PQresultStatus(r);
    PQclear(r);
    timed_exec(s->conn, "select pg_sleep(5)", &s->in_tx);
    timed_exec(s->conn, "rollback", &s->rollback);         /* clean-up still works */
    s->after_rollback = PQtransactionStatus(s->conn);
    errno = 0;
    awaitlet_sleep(0);
    s->next_wait_errno = errno;
    return NULL;
}

START_TEST(test_statements_after_deadline)
{
    struct statements s = {.conn = pqa_connect(PQA_TCP, NULL)};
    run(statements_task, &s, 0.3, NULL);
    expect_57014(&s.first, 0.3 + GRACE + slack(), "the statement the deadline passed in");
    ck_assert_msg(s.first.elapsed >= 0.3 + GRACE - 0.02, "cancelled before the grace was over: %.3f s",
                  s.first.elapsed);
    expect_57014(&s.next, GRACE + slack(), "the next statement of the task");
    ck_assert_int_eq(s.begin, PGRES_COMMAND_OK);
    expect_57014(&s.in_tx, GRACE + slack(), "a statement in a transaction");
    /* each ran its grace: not ended early by the previous statement's
     * cancel (PostgreSQL signals the backend twice; scope.c waits for a
     * request still on its way before the next statement) */
    ck_assert_msg(s.next.elapsed >= GRACE - 0.02 && s.in_tx.elapsed >= GRACE - 0.02,
                  "a statement was hit by an earlier cancel: %.3f s, %.3f s", s.next.elapsed,
                  s.in_tx.elapsed);
    printf("rollback: %s after %.3f s\n", PQresStatus(s.rollback.status), s.rollback.elapsed);
    ck_assert_msg(s.rollback.status == PGRES_COMMAND_OK, "ROLLBACK failed: %s %s",
                  PQresStatus(s.rollback.status), s.rollback.state);
    ck_assert_int_eq(s.after_rollback, PQTRANS_IDLE);
    ck_assert_int_eq(s.next_wait_errno, ETIMEDOUT);
    ck_assert_int_eq(PQstatus(s.conn), CONNECTION_OK);
    run(pqa_usable_task, s.conn, 0, NULL); /* in a new task: in step, usable */
    PQfinish(s.conn);
}
END_TEST

/* A cancelled task (awaitlet_cancel): PQexecParams, prepared statements. */
struct cancelled {
    PGconn *conn;
    struct stmt params, prepared;
    int next_wait_errno;
};

static void *cancelled_task(void *arg)
{
    struct cancelled *c = arg;
    /* wait to be cancelled (the control check does it at 0.2 s) */
    errno = 0;
    ck_assert_int_eq(awaitlet_sleep(5), -1);
    ck_assert_int_eq(errno, ECANCELED);
    const char *v[1] = {"5"};
    double t0 = pqa_now();
    PGresult *r = PQexecParams(c->conn, "select pg_sleep($1::float8)", 1, NULL, v, NULL, NULL, 0);
    c->params.elapsed = pqa_now() - t0;
    c->params.status = PQresultStatus(r);
    snprintf(c->params.state, sizeof c->params.state, "%s", sqlstate(r));
    PQclear(r);
    r = PQprepare(c->conn, "sleeper", "select pg_sleep($1::float8)", 1, NULL);
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK); /* quick: within the grace */
    PQclear(r);
    t0 = pqa_now();
    r = PQexecPrepared(c->conn, "sleeper", 1, v, NULL, NULL, 0);
    c->prepared.elapsed = pqa_now() - t0;
    c->prepared.status = PQresultStatus(r);
    snprintf(c->prepared.state, sizeof c->prepared.state, "%s", sqlstate(r));
    PQclear(r);
    errno = 0;
    awaitlet_sleep(0);
    c->next_wait_errno = errno;
    return NULL;
}

START_TEST(test_statements_after_cancel)
{
    struct cancelled c = {.conn = pqa_connect(PQA_UNIX, NULL)};
    struct ctl ctl = {.check_at = 0.2};
    run(cancelled_task, &c, 0, &ctl);
    expect_57014(&c.params, GRACE + slack(), "PQexecParams of a cancelled task");
    expect_57014(&c.prepared, GRACE + slack(), "PQexecPrepared of a cancelled task");
    ck_assert_int_eq(c.next_wait_errno, ECANCELED);
    run(pqa_usable_task, c.conn, 0, NULL);
    PQfinish(c.conn);
}
END_TEST

/* Clearing the deadline (or moving it to the future) restores normal
 * behaviour: a 2 s statement completes.  (The control of the rule.) */
struct cleared {
    PGconn *conn;
    struct stmt cut, full, later;
};

static void *cleared_task(void *arg)
{
    struct cleared *c = arg;
    timed_exec(c->conn, "select pg_sleep(5)", &c->cut);
    ck_assert_int_eq(awaitlet_set_deadline(awaitlet_current(), 0), 0);
    timed_exec(c->conn, "select pg_sleep(2)", &c->full);
    ck_assert_int_eq(awaitlet_set_deadline(awaitlet_current(), 30), 0);
    timed_exec(c->conn, "select pg_sleep(0.3)", &c->later);
    return NULL;
}

START_TEST(test_cleared_deadline)
{
    struct cleared c = {.conn = pqa_connect(PQA_TCP, NULL)};
    run(cleared_task, &c, 0.2, NULL);
    expect_57014(&c.cut, 0.2 + GRACE + slack(), "the statement past the deadline");
    printf("after clearing the deadline: %s after %.3f s; with one in the future: %s after %.3f s\n",
           PQresStatus(c.full.status), c.full.elapsed, PQresStatus(c.later.status), c.later.elapsed);
    ck_assert_int_eq(c.full.status, PGRES_TUPLES_OK);
    ck_assert_msg(c.full.elapsed >= 1.95, "the 2 s statement ended after %.3f s", c.full.elapsed);
    ck_assert_int_eq(c.later.status, PGRES_TUPLES_OK);
    PQfinish(c.conn);
}
END_TEST

/* ---- the waits inside COPY, PQgetResult loops, pipelines ---- */

struct copy_out {
    PGconn *conn;
    double elapsed;
    unsigned long rows;
    int end;
    char state[8];
};

static void *copy_out_task(void *arg)
{
    struct copy_out *c = arg;
    become_interrupted();
    double t0 = pqa_now();
    PGresult *r = PQexec(c->conn, "copy (select i, pg_sleep(0.001) from generate_series(1, 100000) i) to stdout");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COPY_OUT);
    PQclear(r);
    char *buf;
    while ((c->end = PQgetCopyData(c->conn, &buf, 0)) > 0) {
        c->rows++;
        PQfreemem(buf);
        if (pqa_now() - t0 > 10)
            break; /* unbounded: let the test fail with numbers */
    }
    r = PQgetResult(c->conn);
    snprintf(c->state, sizeof c->state, "%s", sqlstate(r));
    PQclear(r);
    while ((r = PQgetResult(c->conn)) != NULL)
        PQclear(r);
    c->elapsed = pqa_now() - t0;
    return NULL;
}

START_TEST(test_copy_out_bound)
{
    struct copy_out c = {.conn = pqa_connect(PQA_UNIX, NULL)};
    run(copy_out_task, &c, 0, NULL);
    printf("COPY OUT of an interrupted task: %lu rows, ended %d, %s after %.3f s\n", c.rows, c.end,
           c.state, c.elapsed);
    ck_assert_msg(c.elapsed < GRACE + slack(), "the COPY ran %.3f s (%lu rows)", c.elapsed, c.rows);
    ck_assert_int_eq(c.end, -1);
    ck_assert_str_eq(c.state, "57014");
    run(pqa_usable_task, c.conn, 0, NULL);
    PQfinish(c.conn);
}
END_TEST

#define COPY_IN_CHUNKS 100 /* of 64 KiB: 3.3 million rows, an hour at 1 ms each */

struct copy_in {
    PGconn *conn;
    double elapsed, longest;
    int put_rc, end_rc;
    unsigned long chunks;
    char state[8];
};

static void *copy_in_task(void *arg)
{
    struct copy_in *c = arg;
    PGresult *r = pqa_exec_ok(c->conn,
                              "create temp table slow_in (a int check (pg_temp.slow_ok(a)))", PGRES_COMMAND_OK);
    PQclear(r);
    become_interrupted();
    double t0 = pqa_now();
    r = PQexec(c->conn, "copy slow_in from stdin");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COPY_IN);
    PQclear(r);
    static char chunk[65536];
    for (size_t i = 0; i + 2 <= sizeof chunk; i += 2)
        memcpy(chunk + i, "1\n", 2);
    while (c->chunks < COPY_IN_CHUNKS) {
        double t1 = pqa_now();
        c->put_rc = PQputCopyData(c->conn, chunk, (int)sizeof chunk);
        if (pqa_now() - t1 > c->longest)
            c->longest = pqa_now() - t1;
        if (c->put_rc != 1)
            break;
        c->chunks++;
        if (pqa_now() - t0 > 10)
            break; /* unbounded */
    }
    c->end_rc = PQputCopyEnd(c->conn, NULL);
    r = PQgetResult(c->conn);
    snprintf(c->state, sizeof c->state, "%s", sqlstate(r));
    PQclear(r);
    while ((r = PQgetResult(c->conn)) != NULL)
        PQclear(r);
    c->elapsed = pqa_now() - t0;
    return NULL;
}

START_TEST(test_copy_in_bound)
{
    struct copy_in c = {.conn = pqa_connect(PQA_TCP, NULL)};
    PGresult *r = pqa_exec_ok(c.conn,
                              "create or replace function pg_temp.slow_ok(int) returns boolean "
                              "language sql as 'select true from pg_sleep(0.001)'",
                              PGRES_COMMAND_OK);
    PQclear(r);
    run(copy_in_task, &c, 0, NULL);
    printf("COPY IN of an interrupted task: %lu chunks of 64 KiB, put %d, end %d, %s after %.3f s "
           "(longest PQputCopyData %.3f s)\n",
           c.chunks, c.put_rc, c.end_rc, c.state, c.elapsed, c.longest);
    fflush(stdout);
    ck_assert_msg(c.longest < GRACE + slack(), "a PQputCopyData call took %.3f s", c.longest);
    ck_assert_msg(c.elapsed < GRACE + 0.2 + slack(), "the COPY IN ran %.3f s", c.elapsed);
    ck_assert_str_eq(c.state, "57014");
    run(pqa_usable_task, c.conn, 0, NULL);
    PQfinish(c.conn);
}
END_TEST

struct results {
    PGconn *conn;
    int pipeline;
    double elapsed;
    int n, n57014;
};

static void *results_task(void *arg)
{
    struct results *s = arg;
    become_interrupted();
    double t0 = pqa_now();
    if (!s->pipeline) {
        ck_assert_int_eq(PQsendQuery(s->conn, "select 1; select pg_sleep(5); select 2"), 1);
    } else {
#ifdef LIBPQ_HAS_PIPELINING
        ck_assert_int_eq(PQenterPipelineMode(s->conn), 1);
        for (int i = 0; i < 3; i++)
            ck_assert_int_eq(PQsendQueryParams(s->conn, "select pg_sleep(5)", 0, NULL, NULL, NULL, NULL, 0), 1);
        ck_assert_int_eq(PQpipelineSync(s->conn), 1);
#endif
    }
    int nulls = 0;
    for (;;) {
        PGresult *r = PQgetResult(s->conn);
        if (!r) {
            if (!s->pipeline || ++nulls > 3)
                break;
            continue;
        }
        s->n++;
        if (strcmp(sqlstate(r), "57014") == 0)
            s->n57014++;
        ExecStatusType st = PQresultStatus(r);
        PQclear(r);
#ifdef LIBPQ_HAS_PIPELINING
        if (s->pipeline && st == PGRES_PIPELINE_SYNC)
            break;
#else
        (void)st;
#endif
        if (pqa_now() - t0 > 20)
            break;
    }
#ifdef LIBPQ_HAS_PIPELINING
    if (s->pipeline)
        ck_assert_int_eq(PQexitPipelineMode(s->conn), 1);
#endif
    s->elapsed = pqa_now() - t0;
    return NULL;
}

START_TEST(test_getresult_loop_bound)
{
    struct results s = {.conn = pqa_connect(PQA_UNIX, NULL)};
    run(results_task, &s, 0, NULL);
    printf("PQgetResult loop of an interrupted task: %d results (%d 57014) in %.3f s\n", s.n, s.n57014,
           s.elapsed);
    ck_assert_msg(s.elapsed < GRACE + slack(), "the results took %.3f s", s.elapsed);
    ck_assert_int_eq(s.n57014, 1);
    run(pqa_usable_task, s.conn, 0, NULL);
    PQfinish(s.conn);
}
END_TEST

START_TEST(test_pipeline_bound)
{
#ifdef LIBPQ_HAS_PIPELINING
    struct results s = {.conn = pqa_connect(PQA_TCP, NULL), .pipeline = 1};
    run(results_task, &s, 0, NULL);
    printf("pipeline of an interrupted task: %d results (%d 57014) in %.3f s\n", s.n, s.n57014, s.elapsed);
    ck_assert_msg(s.elapsed < GRACE + slack(), "the pipeline took %.3f s", s.elapsed);
    ck_assert_int_ge(s.n57014, 1);
    run(pqa_usable_task, s.conn, 0, NULL);
    PQfinish(s.conn);
#endif
}
END_TEST

/* ---- connects ---- */

struct connect {
    char *conninfo;
    int ping;
    double elapsed;
    ConnStatusType status;
    PGPing ping_rc;
    char msg[1024];
};

static void *connect_task(void *arg)
{
    struct connect *c = arg;
    double t0 = pqa_now();
    if (c->ping) {
        c->ping_rc = PQping(c->conninfo);
    } else {
        PGconn *conn = PQconnectdb(c->conninfo);
        c->status = PQstatus(conn);
        snprintf(c->msg, sizeof c->msg, "%s", PQerrorMessage(conn));
        PQfinish(conn);
    }
    c->elapsed = pqa_now() - t0;
    return NULL;
}

static void expect_connect_bad(const struct connect *c, double bound, const char *cause, const char *what)
{
    printf("%s: %s after %.3f s (bound %.3f s): %s", what,
           c->status == CONNECTION_BAD ? "CONNECTION_BAD" : "not BAD", c->elapsed, bound, c->msg);
    ck_assert_msg(c->elapsed < bound, "%s took %.3f s, bound %.3f s", what, c->elapsed, bound);
    ck_assert_msg(c->status == CONNECTION_BAD, "%s: status %d", what, (int)c->status);
    ck_assert_msg(strstr(c->msg, cause) != NULL, "%s: the message does not name the %s: %s", what,
                  cause, c->msg);
}

START_TEST(test_connect_frozen_postmaster)
{
    pqa_server2_check(frozen);
    struct connect c = {.conninfo = pqa_conninfo_port(pqa_server2_port(frozen), NULL)};
    run(connect_task, &c, 0.3, NULL);
    expect_connect_bad(&c, 0.3 + GRACE + slack(), "deadline", "connect to a frozen postmaster");
    pqa_server2_check(frozen);
    free(c.conninfo);
}
END_TEST

/* The control: without a deadline that connect is still running after 1 s
 * (no connect_timeout: it would hang for ever); cancelling it ends it. */
START_TEST(test_connect_frozen_control)
{
    struct connect c = {.conninfo = pqa_conninfo_port(pqa_server2_port(frozen), NULL)};
    struct ctl ctl = {.check_at = 1.0};
    run(connect_task, &c, 0, &ctl);
    ck_assert_msg(!ctl.done_at_check, "the connect to a frozen postmaster ended by itself");
    expect_connect_bad(&c, 1.0 + GRACE + slack(), "cancel", "connect cancelled after 1 s");
    free(c.conninfo);
}
END_TEST

START_TEST(test_connect_proxy_never_answers)
{
    char port[16];
    snprintf(port, sizeof port, "%s", pqa_env_port());
    pqa_proxy *p = pqa_proxy_start(atoi(port), 0);
    ck_assert_ptr_nonnull(p);
    pqa_proxy_hold_new(p, 1);
    struct connect c = {.conninfo = pqa_conninfo_port(pqa_proxy_port(p), NULL)};
    run(connect_task, &c, 0.3, NULL);
    expect_connect_bad(&c, 0.3 + GRACE + slack(), "deadline", "connect to a proxy that never answers");
    pqa_proxy_held held;
    pqa_proxy_held_stats(p, &held);
    ck_assert_uint_ge(held.accepted, 1);
    /* and PQping the same way */
    struct connect pg = {.conninfo = c.conninfo, .ping = 1};
    run(connect_task, &pg, 0.3, NULL);
    printf("PQping of it: %d after %.3f s\n", (int)pg.ping_rc, pg.elapsed);
    ck_assert_int_eq(pg.ping_rc, PQPING_NO_RESPONSE);
    ck_assert_msg(pg.elapsed < 0.3 + GRACE + slack(), "PQping took %.3f s", pg.elapsed);
    free(c.conninfo);
    pqa_proxy_stop(p);
}
END_TEST

static char *slow_conninfo(void)
{
    char extra[128];
    snprintf(extra, sizeof extra, "host=%s port=%s sslmode=disable", PQA_SLOW_HOST, pqa_env_port());
    return pqa_conninfo(PQA_TCP, extra);
}

START_TEST(test_connect_slow_lookup)
{
    /* first the control: without a deadline the lookup takes its 1 s, then
     * the connect succeeds (the slow resolver really is behind the shim) */
    pqa_slowgai_seconds = 1.0;
    struct connect ok = {.conninfo = slow_conninfo()};
    run(connect_task, &ok, 0, NULL);
    printf("connect by a slow name without a deadline: status %d after %.3f s\n", (int)ok.status,
           ok.elapsed);
    ck_assert_int_eq(ok.status, CONNECTION_OK);
    ck_assert_msg(ok.elapsed >= 0.95, "the slow lookup took only %.3f s", ok.elapsed);
    ck_assert_int_eq(atomic_load(&pqa_slowgai_finished), 1);

    pqa_slowgai_seconds = 2.0;
    struct connect c = {.conninfo = ok.conninfo};
    run(connect_task, &c, 0.3, NULL);
    expect_connect_bad(&c, 0.3 + GRACE + slack(), "deadline", "connect whose lookup is slow");
    ck_assert_int_eq(atomic_load(&pqa_slowgai_started), 2);
    /* the abandoned lookup still runs to its end on its worker, whose
     * clean-up frees the late answer (ASan and valgrind check that) */
    double t0 = pqa_now();
    while (atomic_load(&pqa_slowgai_finished) < 2 && pqa_now() - t0 < 10)
        usleep(10000);
    ck_assert_int_eq(atomic_load(&pqa_slowgai_finished), 2);
    usleep(50000); /* its clean-up, right after */
    free(ok.conninfo);
}
END_TEST

/* ---- calls that give up: the cancel cannot be delivered or answered ---- */

struct gives_up {
    PGconn *conn;
    const char *what;    /* "exec", "lo_write", "lo_read" */
    int lofd;
    double elapsed, finish_s;
    ConnStatusType status;
    int rc;
    char msg[1024], res_msg[1024];
    char verbose_msg[4][1024]; /* PQresultVerboseErrorMessage at each verbosity */
};

static void *gives_up_task(void *arg)
{
    struct gives_up *g = arg;
    double t0 = pqa_now();
    if (strcmp(g->what, "exec") == 0) {
        PGresult *r = PQexec(g->conn, "select pg_sleep(30)");
        g->rc = r ? (int)PQresultStatus(r) : -1;
        snprintf(g->res_msg, sizeof g->res_msg, "%s", r ? PQresultErrorMessage(r) : "(no result)");
        static const PGVerbosity verbosities[4] = {PQERRORS_TERSE, PQERRORS_DEFAULT, PQERRORS_VERBOSE,
                                                   PQERRORS_SQLSTATE};
        for (int i = 0; i < 4 && r; i++) {
            char *v = PQresultVerboseErrorMessage(r, verbosities[i], PQSHOW_CONTEXT_ALWAYS);
            snprintf(g->verbose_msg[i], sizeof g->verbose_msg[i], "%s", v ? v : "(NULL)");
            PQfreemem(v);
        }
        PQclear(r);
    } else if (strcmp(g->what, "lo_write") == 0) {
        static char big[1 << 20];
        g->rc = lo_write(g->conn, g->lofd, big, sizeof big);
    } else {
        static char buf[1 << 16];
        g->rc = lo_read(g->conn, g->lofd, buf, sizeof buf);
    }
    g->elapsed = pqa_now() - t0;
    g->status = PQstatus(g->conn);
    snprintf(g->msg, sizeof g->msg, "%s", PQerrorMessage(g->conn));
    t0 = pqa_now();
    PQfinish(g->conn); /* returns at once */
    g->finish_s = pqa_now() - t0;
    return NULL;
}

static void expect_gave_up(const struct gives_up *g, double from, const char *cause, const char *what)
{
    double bound = from + GIVE_UP + slack();
    printf("%s: rc %d, %s after %.3f s (bound %.3f s), PQfinish %.4f s: %s", what, g->rc,
           g->status == CONNECTION_BAD ? "CONNECTION_BAD" : "still OK", g->elapsed, bound,
           g->finish_s, g->msg);
    ck_assert_msg(g->elapsed < bound, "%s took %.3f s, bound %.3f s", what, g->elapsed, bound);
    ck_assert_msg(g->elapsed >= from + GIVE_UP - 0.05, "%s gave up early: %.3f s", what, g->elapsed);
    ck_assert_msg(g->status == CONNECTION_BAD, "%s: connection not BAD", what);
    ck_assert_msg(strstr(g->msg, cause) && strstr(g->msg, "pqawait:"), "%s: the message does not name the %s: %s",
                  what, cause, g->msg);
    ck_assert_msg(g->finish_s < 0.05 + (pqa_slow_build() ? 0.5 : 0), "PQfinish took %.3f s", g->finish_s);
}

/* A statement on a server whose postmaster froze after the session began:
 * the cancel request reaches nobody; the call gives up 1 s past the
 * deadline. */
START_TEST(test_frozen_postmaster_gives_up)
{
    pqa_server2_check(frozen);
    struct gives_up g = {.conn = frozen_session, .what = "exec"};
    ck_assert_int_eq(PQstatus(g.conn), CONNECTION_OK);
    run(gives_up_task, &g, 0.3, NULL);
    expect_gave_up(&g, 0.3, "deadline", "pg_sleep(30) while the postmaster is frozen");
    ck_assert_int_eq(g.rc, PGRES_FATAL_ERROR);
    printf("its result: %s", g.res_msg);
    ck_assert_msg(strstr(g.res_msg, "pqawait:") && strstr(g.res_msg, "deadline"),
                  "the result's message does not name the deadline: %s", g.res_msg);
    /* PQresultVerboseErrorMessage names it too, at every verbosity: libpq's
     * text for that verbosity, then the same line as PQresultErrorMessage's */
    const char *line = strstr(g.res_msg, "pqawait:");
    for (int i = 0; i < 4; i++) {
        printf("its verbose message (verbosity %d): %s", i, g.verbose_msg[i]);
        const char *at = strstr(g.verbose_msg[i], "pqawait:");
        ck_assert_msg(at && strcmp(at, line) == 0,
                      "PQresultVerboseErrorMessage (verbosity %d) does not end with the cause line '%s': '%s'", i,
                      line, g.verbose_msg[i]);
    }
    pqa_server2_check(frozen);
}
END_TEST

/* A network that stopped forwarding: the control (still running after
 * 0.5 s), then a deadline; PQexec and the large-object calls. */
START_TEST(test_stopped_network_gives_up)
{
    char port[16];
    snprintf(port, sizeof port, "%s", pqa_env_port());
    pqa_proxy *p = pqa_proxy_start(atoi(port), 0);
    ck_assert_ptr_nonnull(p);
    char *ci = pqa_conninfo_port(pqa_proxy_port(p), NULL);
    struct gives_up g = {.conn = PQconnectdb(ci), .what = "exec"};
    ck_assert_int_eq(PQstatus(g.conn), CONNECTION_OK);
    pqa_proxy_stall(p, 1);
    struct ctl ctl = {.check_at = 0.5, .deadline_then = 0.1, .unstall = p};
    run(gives_up_task, &g, 0, &ctl);
    ck_assert_msg(!ctl.done_at_check, "the statement ended by itself on a stalled network");
    expect_gave_up(&g, 0.6, "deadline", "pg_sleep(30) on a stalled network");
    pqa_proxy_stall(p, 0);
    free(ci);
    pqa_proxy_stop(p);
}
END_TEST

START_TEST(test_large_objects_give_up)
{
    char port[16];
    snprintf(port, sizeof port, "%s", pqa_env_port());
    pqa_proxy *p = pqa_proxy_start(atoi(port), 0);
    ck_assert_ptr_nonnull(p);
    char *ci = pqa_conninfo_port(pqa_proxy_port(p), NULL);
    struct gives_up g[2] = {{.what = "lo_write"}, {.what = "lo_read"}};
    for (int i = 0; i < 2; i++) {
        g[i].conn = PQconnectdb(ci);
        ck_assert_int_eq(PQstatus(g[i].conn), CONNECTION_OK);
        PGresult *r = pqa_exec_ok(g[i].conn, "begin", PGRES_COMMAND_OK);
        PQclear(r);
        Oid o = lo_creat(g[i].conn, INV_READ | INV_WRITE);
        ck_assert_uint_ne(o, InvalidOid);
        g[i].lofd = lo_open(g[i].conn, o, INV_READ | INV_WRITE);
        ck_assert_int_ge(g[i].lofd, 0);
    }
    pqa_proxy_stall(p, 1);
    /* both at once, on one loop */
    struct ev_loop *loop = pqa_loop_new();
    pqa_stall st;
    pqa_stall_start(&st, loop);
    awaitlet_task *t[2];
    for (int i = 0; i < 2; i++) {
        ck_assert_ptr_nonnull(t[i] = awaitlet_async_def(loop, gives_up_task, &g[i]));
        ck_assert_int_eq(awaitlet_set_deadline(t[i], 0.3), 0);
    }
    struct ctl wd = {.unstall = p};
    ev_timer_init(&wd.watchdog, watchdog_cb, pqa_slow_build() ? 20 : 8, 0);
    wd.watchdog.data = &wd;
    ev_timer_start(loop, &wd.watchdog);
    for (int i = 0; i < 2; i++)
        awaitlet_join(t[i]);
    ev_timer_stop(loop, &wd.watchdog);
    pqa_stall_stop(&st);
    ev_loop_destroy(loop);
    ck_assert_msg(!wd.watchdog_fired, "the watchdog had to end the run");
    for (int i = 0; i < 2; i++) {
        expect_gave_up(&g[i], 0.3, "deadline", g[i].what);
        ck_assert_int_eq(g[i].rc, -1);
    }
    pqa_stall_assert(&st, "large objects give up");
    pqa_proxy_stall(p, 0);
    free(ci);
    pqa_proxy_stop(p);
}
END_TEST

START_TEST(test_bounds_args)
{
    errno = 0;
    ck_assert_int_eq(pqawait_set_interrupt_bounds(-1, 1), -1);
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_int_eq(pqawait_set_interrupt_bounds(0.5, 0.5), -1);
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_int_eq(pqawait_set_interrupt_bounds(0.0 / 0.0, 1), -1);
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_int_eq(pqawait_set_interrupt_bounds(0.1, 1e9), -1);
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_int_eq(pqawait_set_interrupt_bounds(GRACE, GIVE_UP), 0);
}
END_TEST

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* a failing test's child keeps its lines */
    pqa_env_init();
    pqa_server2_start(&frozen, 1);
    char ci[160];
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d dbname=pqawait user=pqa_trust sslmode=disable",
             pqa_server2_port(frozen));
    /* the session opened before the freeze, used by one test's child only */
    frozen_session = PQconnectdb(ci);
    if (PQstatus(frozen_session) != CONNECTION_OK) {
        fprintf(stderr, "session to the private server: %s", PQerrorMessage(frozen_session));
        pqa_server2_stop_all();
        return 1;
    }
    pqa_server2_freeze(frozen);
    Suite *s = suite_create("shim-bound");
    TCase *tc = tcase_create("bound");
    tcase_set_timeout(tc, 45);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_bounds_args);
    tcase_add_test(tc, test_statements_after_deadline);
    tcase_add_test(tc, test_statements_after_cancel);
    tcase_add_test(tc, test_cleared_deadline);
    tcase_add_test(tc, test_copy_out_bound);
    tcase_add_test(tc, test_copy_in_bound);
    tcase_add_test(tc, test_getresult_loop_bound);
    tcase_add_test(tc, test_pipeline_bound);
    tcase_add_test(tc, test_connect_frozen_postmaster);
    tcase_add_test(tc, test_connect_frozen_control);
    tcase_add_test(tc, test_connect_proxy_never_answers);
    tcase_add_test(tc, test_connect_slow_lookup);
    tcase_add_test(tc, test_frozen_postmaster_gives_up);
    tcase_add_test(tc, test_stopped_network_gives_up);
    tcase_add_test(tc, test_large_objects_give_up);
    suite_add_tcase(s, tc);
    int rc = pqa_run_suite(s);
    pqa_server2_stop_all();
    return rc;
}
