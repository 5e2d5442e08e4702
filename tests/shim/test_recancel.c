/*
 * test_recancel.c -- an interrupted statement whose cancel request does
 * nothing gets another one (issue 9, item 1: the interruption rule).
 *
 * PostgreSQL applies a cancel request only to a statement that is
 * executing: one that reaches the backend while it is still waiting for
 * the statement's bytes (a loaded machine, a slow network) is dropped.  A
 * single request, 0.1 s after the interruption, would then leave the
 * statement running to the give-up point and cost the user the
 * connection.  The shim resends while the statement has not ended -- 20 ms
 * after the first, then 40, 80 ... -- one request at a time, until the
 * give-up point.
 *
 * The first request is made useless for certain, not by luck: the loopback
 * proxy (proxy.c, pqa_proxy_gate_sends) holds the statement's bytes until
 * that request has been answered -- its backend was signalled while idle,
 * which PostgreSQL ignores -- and only then lets them through.  Beside it:
 * a statement every cancel misses (the proxy stalls it on its way, so each
 * request finds the backend idle) shows the requests back off and the call
 * still gives up on time, and cancel requests nobody answers show there is
 * never more than one in flight per statement.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "pqawait.h"
#include "proxy.h"

#define GRACE 0.1
#define GIVE_UP 1.0
#define DEADLINE 0.2

static double slack(void)
{
    return pqa_slow_build() ? 1.0 : 0.15;
}

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

/* A proxy to the test server and a session through it. */
static pqa_proxy *proxy_to_server(PGconn **conn)
{
    pqa_proxy *p = pqa_proxy_start(atoi(pqa_env_port()), 0);
    ck_assert_ptr_nonnull(p);
    char *ci = pqa_conninfo_port(pqa_proxy_port(p), NULL);
    *conn = PQconnectdb(ci);
    free(ci);
    ck_assert_msg(PQstatus(*conn) == CONNECTION_OK, "connect through the proxy: %s", PQerrorMessage(*conn));
    return p;
}

/* End a backend the test left running (a statement given up on the
 * client's side keeps running on the server). */
static void terminate(int pid)
{
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    char sql[96];
    snprintf(sql, sizeof sql, "select pg_terminate_backend(%d)", pid);
    PGresult *r = pqa_exec_ok(c, sql, PGRES_TUPLES_OK);
    PQclear(r);
    PQfinish(c);
}

struct stmt {
    PGconn *conn;
    const char *sql;
    double elapsed;
    ExecStatusType status;
    char state[8];
    char msg[1024];
};

static void *stmt_task(void *arg)
{
    struct stmt *s = arg;
    double t0 = pqa_now();
    PGresult *r = PQexec(s->conn, s->sql);
    s->elapsed = pqa_now() - t0;
    s->status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    snprintf(s->state, sizeof s->state, "%s", st ? st : "-");
    PQclear(r);
    snprintf(s->msg, sizeof s->msg, "%s", PQerrorMessage(s->conn));
    return NULL;
}

/* Run the statement in a task whose deadline passes DEADLINE s in. */
static void run_past_deadline(struct stmt *s)
{
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *t = awaitlet_async_def(loop, stmt_task, s);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(awaitlet_set_deadline(t, DEADLINE), 0);
    errno = 0;
    awaitlet_join(t);
    ev_loop_destroy(loop);
}

/* The first cancel request reaches the backend before the statement does,
 * and is dropped: the second one cancels it -- libpq's 57014, the
 * connection in step -- long before the give-up point. */
START_TEST(test_first_cancel_ignored)
{
    PGconn *conn;
    pqa_proxy *p = proxy_to_server(&conn);
    int pid = PQbackendPID(conn);
    unsigned long before = pqa_proxy_accepted(p);
    pqa_proxy_gate_sends(p); /* the statement waits in the proxy for the first cancel's answer */
    struct stmt s = {.conn = conn, .sql = "select pg_sleep(30)"};
    run_past_deadline(&s);
    unsigned long requests = pqa_proxy_accepted(p) - before;
    printf("first cancel ignored: %s %s after %.3f s, %s; %lu cancel request(s), gate opened %lu time(s)%s%s",
           PQresStatus(s.status), s.state, s.elapsed, PQstatus(conn) == CONNECTION_OK ? "connection OK" : "BAD",
           requests, pqa_proxy_gate_opened(p), PQstatus(conn) == CONNECTION_OK ? "\n" : ": ",
           PQstatus(conn) == CONNECTION_OK ? "" : s.msg);
    fflush(stdout);
    if (PQstatus(conn) != CONNECTION_OK)
        terminate(pid); /* given up: its pg_sleep(30) still runs */
    ck_assert_msg(pqa_proxy_gate_opened(p) == 1, "the first cancel request never got through the proxy");
    ck_assert_msg(PQstatus(conn) == CONNECTION_OK, "the connection was given up: %s", s.msg);
    ck_assert_msg(s.status == PGRES_FATAL_ERROR && strcmp(s.state, "57014") == 0,
                  "expected libpq's 57014, got %s %s", PQresStatus(s.status), s.state);
    ck_assert_uint_ge(requests, 2);
    /* the second request goes 20 ms after the first; on a loaded machine
     * the backend may not run the statement yet when it arrives, and the
     * third or fourth (60, 140 ms after the first) cancels it */
    double bound = DEADLINE + GRACE + 0.14 + slack();
    ck_assert_msg(s.elapsed < bound, "the statement ran %.3f s, bound %.3f s", s.elapsed, bound);
    pqa_run_in_task(pqa_usable_task, conn);
    PQfinish(conn);
    pqa_proxy_stop(p);
}
END_TEST

/* A statement every cancel misses: the proxy stalls the client's bytes
 * (a cut with nothing forwarded), so the backend sits reading a command
 * when each request lands, and PostgreSQL ignores a cancel then.  The
 * requests back off (not one every few milliseconds), and the call still
 * gives up at its bound, the message telling how many were sent.
 *
 * Not a statement that swallows cancels in PL/pgSQL (a loop of
 * BEGIN pg_sleep EXCEPTION WHEN query_canceled): a request landing while
 * the backend is between the handler and the next block -- a loaded
 * machine descheduling it there -- cancels the whole statement (it did,
 * once in four runs of the gcc suites three at a time). */
START_TEST(test_requests_back_off)
{
    PGconn *conn;
    pqa_proxy *p = proxy_to_server(&conn);
    int pid = PQbackendPID(conn);
    unsigned long before = pqa_proxy_accepted(p);
    ck_assert_int_eq(pqa_proxy_cut(p, PQA_CUT_TO_SERVER, 0, PQA_CUT_STALL), 1);
    ck_assert_int_eq(pqawait_stats_enable(1), 0);
    pqawait_stats st0, st1;
    pqawait_stats_get(&st0);
    struct stmt s = {.conn = conn, .sql = "select pg_sleep(30)"};
    run_past_deadline(&s);
    pqawait_stats_get(&st1);
    unsigned long requests = pqa_proxy_accepted(p) - before;
    printf("a statement every cancel misses: %s after %.3f s, %lu cancel requests: %s", PQresStatus(s.status),
           s.elapsed, requests, s.msg);
    fflush(stdout);
    terminate(pid);
    ck_assert_msg(PQstatus(conn) == CONNECTION_BAD, "the connection is not BAD");
    double bound = DEADLINE + GIVE_UP + slack();
    ck_assert_msg(s.elapsed < bound && s.elapsed >= DEADLINE + GIVE_UP - 0.05, "gave up after %.3f s, bound %.3f s",
                  s.elapsed, bound);
    /* 20 ms, doubling: at 0.1, 0.12, 0.16, 0.24, 0.4 and 0.72 s */
    ck_assert_msg(requests >= 2 && requests <= 8, "%lu cancel requests in the second before giving up", requests);
    /* each request counts in the statistics (offloads) */
    ck_assert_uint_eq(st1.offloads - st0.offloads, requests);
    char want[64];
    snprintf(want, sizeof want, "cancel requests: %lu sent, the last answered", requests);
    ck_assert_msg(strstr(s.msg, "pqawait:") && strstr(s.msg, want), "the message does not say '%s': %s", want,
                  s.msg);
    PQfinish(conn);
    pqa_proxy_stop(p);
}
END_TEST

/* Cancel requests nobody answers (a proxy that accepts them and says
 * nothing), each giving up after 0.1 s: the next one goes only after the
 * last gave up, never two at once. */
START_TEST(test_unanswered_one_at_a_time)
{
    ck_assert_int_eq(pqawait_set_cancel_timeout(0.2), 0);
    PGconn *conn;
    pqa_proxy *p = proxy_to_server(&conn);
    int pid = PQbackendPID(conn);
    pqa_proxy_hold_new(p, 1);
    struct stmt s = {.conn = conn, .sql = "select pg_sleep(30)"};
    run_past_deadline(&s);
    pqa_proxy_held held;
    pqa_proxy_held_stats(p, &held);
    printf("unanswered cancels: %s after %.3f s; %lu requests, at most %lu at once: %s", PQresStatus(s.status),
           s.elapsed, held.accepted, held.max_open, s.msg);
    fflush(stdout);
    terminate(pid);
    ck_assert_msg(PQstatus(conn) == CONNECTION_BAD, "the connection is not BAD");
    ck_assert_msg(s.elapsed < DEADLINE + GIVE_UP + slack(), "gave up after %.3f s", s.elapsed);
    ck_assert_msg(held.accepted >= 2, "only %lu cancel request(s) in the second before giving up", held.accepted);
    ck_assert_uint_eq(held.max_open, 1);
    PQfinish(conn);
    pqa_proxy_stop(p);
    ck_assert_int_eq(pqawait_set_cancel_timeout(5), 0);
}
END_TEST

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    pqa_env_init();
    Suite *s = suite_create("shim-recancel");
    TCase *tc = tcase_create("recancel");
    tcase_set_timeout(tc, 45);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_first_cancel_ignored);
    tcase_add_test(tc, test_requests_back_off);
    tcase_add_test(tc, test_unanswered_one_at_a_time);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
