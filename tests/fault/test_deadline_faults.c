/*
 * test_deadline_faults.c -- deadlines and cancellation against servers and
 * networks that never answer (issue 9, item 2 "network stall and a server
 * that accepts and never answers: deadlines fire, no hang, no loop stall",
 * as item 1 defines the bound).
 *
 * The contract (include/pqawait.h, "Interruptions"): "for a task that is
 * cancelled or past its deadline, every libpq call ends within about
 * 100 ms plus a round trip ... a connect attempt with CONNECTION_BAD and an
 * error message that names the cause ... When the cancel cannot be
 * delivered or is not answered (a frozen postmaster, a network that
 * stopped forwarding), the call gives up after a bound (about 1 s past the
 * deadline): it closes the connection and returns libpq's failure with
 * CONNECTION_BAD and a message naming the deadline or the cancellation."
 * Against the code before issue 9's item 1, every connect case hung (the
 * watchdog below ends it after 6 s) and every stalled statement ran until
 * the network came back.
 *
 * Cases, each a task with a 0.3 s deadline (or cancelled at 0.3 s) and no
 * connect_timeout, beside the stall meter:
 *   - connect to a proxy that accepts and never answers, to a frozen
 *     postmaster, through a stalled network, to a multi-host string whose
 *     first host is frozen: CONNECTION_BAD within 0.3 + 0.1 s (+ slack),
 *     the message names the deadline;
 *   - a statement whose network stalls, deadline or cancellation: gives up
 *     ~1 s past the interruption with CONNECTION_BAD, the message naming
 *     it; PQfinish returns at once;
 *   - a TLS session cut mid-record and then silent, likewise.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "fault.h"
#include "pqawait.h"
#include "proxy.h"
#include "server2.h"
#include "stall.h"

static pqa_server2 *frozen;

enum { BY_DEADLINE, BY_CANCEL };

struct dl {
    int by;
    pqa_proxy *proxy;
    char conninfo[1024];
    int query;              /* 1: connect first (outside), then a statement */
    const char *sql;
    /* outcome */
    PGconn *conn;
    int conn_status;
    int result;
    char err[1024];
    double t_interrupt, t_end, finish_s;
    double stall_at;        /* > 0: stall the proxy then */
    /* watchdog */
    ev_timer watchdog, interrupter, staller;
    awaitlet_task *task;
    int watchdog_fired;
};

static void *dl_task(void *arg)
{
    struct dl *d = arg;
    if (!d->query) {
        d->conn = PQconnectdb(d->conninfo);
        d->t_end = pqa_now();
        d->conn_status = PQstatus(d->conn);
        snprintf(d->err, sizeof d->err, "%s", PQerrorMessage(d->conn));
    } else {
        PGresult *r = PQexec(d->conn, d->sql);
        d->t_end = pqa_now();
        d->result = PQresultStatus(r);
        PQclear(r);
        d->conn_status = PQstatus(d->conn);
        snprintf(d->err, sizeof d->err, "%s", PQerrorMessage(d->conn));
    }
    double t0 = pqa_now();
    PQfinish(d->conn);
    d->finish_s = pqa_now() - t0;
    return NULL;
}

static void interrupt_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct dl *d = w->data;
    d->t_interrupt = pqa_now();
    if (d->by == BY_CANCEL)
        awaitlet_cancel(d->task);
}

static void stall_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct dl *d = w->data;
    pqa_proxy_stall(d->proxy, 1);
}

/* Only for the code before item 1: let a stalled network come back so the
 * test fails with numbers instead of hanging. */
static void watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct dl *d = w->data;
    d->watchdog_fired = 1;
    if (d->proxy) {
        pqa_proxy_stall(d->proxy, 0);
        pqa_proxy_hold_new(d->proxy, 0);
    }
}

static void run_dl(struct dl *d, double bound, const char *what)
{
    struct ev_loop *loop = pqa_loop_new();
    pqa_stall st;
    pqa_stall_start(&st, loop);
    ev_timer_init(&d->interrupter, interrupt_cb, 0.3, 0);
    ev_timer_init(&d->watchdog, watchdog_cb, 6.0, 0);
    d->interrupter.data = d->watchdog.data = d;
    ev_timer_init(&d->staller, stall_cb, d->stall_at, 0);
    d->staller.data = d;
    ev_timer_start(loop, &d->interrupter);
    ev_timer_start(loop, &d->watchdog);
    if (d->stall_at > 0)
        ev_timer_start(loop, &d->staller);
    double t0 = pqa_now();
    d->task = awaitlet_async_def(loop, dl_task, d);
    ck_assert_ptr_nonnull(d->task);
    if (d->by == BY_DEADLINE)
        ck_assert_int_eq(awaitlet_set_deadline(d->task, 0.3 - (pqa_now() - t0)), 0);
    ck_assert_int_eq(awaitlet_join_ex(d->task, NULL), 0);
    ev_timer_stop(loop, &d->watchdog);
    ev_timer_stop(loop, &d->interrupter);
    ev_timer_stop(loop, &d->staller);
    pqa_stall_stop(&st);
    ck_assert_int_eq(awaitlet_loop_close(loop), 0);
    ev_loop_destroy(loop);
    double after = d->t_end - (d->t_interrupt ? d->t_interrupt : t0 + 0.3);
    printf("%s (%s): %s %.3f s after the interruption, PQfinish %.1f ms, stall %.1f ms: %s\n", what,
           d->by == BY_DEADLINE ? "deadline" : "cancel", d->conn_status == CONNECTION_BAD ? "CONNECTION_BAD" : "OK?",
           after, d->finish_s * 1e3, st.max_gap * 1e3, pqa_line(d->err));
    fflush(stdout);
    ck_assert_msg(!d->watchdog_fired, "%s: nothing ended it until the watchdog restored the network", what);
    ck_assert_msg(after < bound, "%s: ended %.3f s after the interruption (bound %.2f s)", what, after, bound);
    ck_assert_int_eq(d->conn_status, CONNECTION_BAD);
    if (d->query)
        ck_assert_msg(d->result != PGRES_TUPLES_OK, "%s: the statement succeeded", what);
    /* the shim's own line names the cause: "pqawait: connection attempt
     * abandoned: the task's deadline passed ..." or "pqawait: connection
     * closed: the task was cancelled ... not answered" */
    const char *cause = strstr(d->err, "pqawait: ");
    ck_assert_msg(cause != NULL, "%s: no \"pqawait:\" line names the cause: %s", what, d->err);
    static const char *const by_deadline[] = {"deadline", NULL};
    static const char *const by_cancel[] = {"cancel", NULL};
    pqa_assert_names(what, cause, d->by == BY_DEADLINE ? by_deadline : by_cancel);
    printf("  %s\n", pqa_line(cause));
    ck_assert_msg(d->finish_s < pqa_bound(0.2), "%s: PQfinish took %.3f s", what, d->finish_s);
    pqa_stall_assert(&st, "%s", what);
}

/* ---- connects ---- */

static double connect_bound(void)
{
    return 0.1 + pqa_bound(0.2); /* ~100 ms, plus slack */
}

START_TEST(test_connect_never_answers)
{
    struct dl d = {.by = BY_DEADLINE, .proxy = pqa_proxy_start(atoi(pqa_env_port()), 0)};
    ck_assert_ptr_nonnull(d.proxy);
    pqa_proxy_hold_new(d.proxy, 1);
    char *ci = pqa_conninfo_port(pqa_proxy_port(d.proxy), NULL);
    snprintf(d.conninfo, sizeof d.conninfo, "%s", ci);
    free(ci);
    run_dl(&d, connect_bound(), "connect, accepts and never answers");
    pqa_proxy_stop(d.proxy);
}
END_TEST

START_TEST(test_connect_frozen_postmaster)
{
    pqa_server2_check(frozen);
    struct dl d = {.by = BY_DEADLINE};
    char *ci = pqa_conninfo_port(pqa_server2_port(frozen), NULL);
    snprintf(d.conninfo, sizeof d.conninfo, "%s", ci);
    free(ci);
    run_dl(&d, connect_bound(), "connect, frozen postmaster");
}
END_TEST

START_TEST(test_connect_cancelled_stalled_network)
{
    struct dl d = {.by = BY_CANCEL, .proxy = pqa_proxy_start(atoi(pqa_env_port()), 0)};
    ck_assert_ptr_nonnull(d.proxy);
    pqa_proxy_stall(d.proxy, 1);
    char *ci = pqa_conninfo_port(pqa_proxy_port(d.proxy), NULL);
    snprintf(d.conninfo, sizeof d.conninfo, "%s", ci);
    free(ci);
    run_dl(&d, connect_bound(), "connect, stalled network");
    pqa_proxy_stop(d.proxy);
}
END_TEST

START_TEST(test_connect_multihost_frozen_first)
{
    pqa_server2_check(frozen);
    struct dl d = {.by = BY_DEADLINE};
    snprintf(d.conninfo, sizeof d.conninfo,
             "host=127.0.0.1,127.0.0.1 port=%d,%s dbname=pqawait user=pqa_trust sslmode=disable connect_timeout=10",
             pqa_server2_port(frozen), pqa_env_port());
    run_dl(&d, connect_bound(), "multi-host connect, first host frozen");
}
END_TEST

/* ---- statements whose network stops ---- */

static void run_stalled_statement(int by, int tls)
{
    struct dl d = {.by = by, .query = 1};
    d.proxy = pqa_proxy_start(atoi(pqa_env_port()), 0);
    ck_assert_ptr_nonnull(d.proxy);
    char extra[1024] = "";
    if (tls)
        snprintf(extra, sizeof extra, "sslmode=verify-full sslrootcert='%s'", pqa_env_sslroot());
    char *ci = pqa_conninfo_port(pqa_proxy_port(d.proxy), tls ? extra : NULL);
    d.conn = PQconnectdb(ci);
    free(ci);
    ck_assert_msg(PQstatus(d.conn) == CONNECTION_OK, "%s", PQerrorMessage(d.conn));
    if (tls) {
        /* the answer stops in the middle of a TLS record, then silence */
        d.sql = "select i, repeat('x', 1000) from generate_series(1, 20000) i";
        ck_assert_int_eq(pqa_proxy_cut(d.proxy, PQA_CUT_TO_CLIENT, 100000, PQA_CUT_STALL), 1);
    } else {
        /* the network stops 0.1 s into a 1 s statement */
        d.sql = "select pg_sleep(1), 'late'";
        d.stall_at = 0.1;
    }
    run_dl(&d, 1.0 + pqa_bound(0.5), tls ? "TLS statement cut mid-record, then silent" : "statement, stalled network");
    pqa_proxy_stop(d.proxy);
}

START_TEST(test_statement_stalled_deadline) { run_stalled_statement(BY_DEADLINE, 0); }
END_TEST
START_TEST(test_statement_stalled_cancel) { run_stalled_statement(BY_CANCEL, 0); }
END_TEST
START_TEST(test_tls_statement_cut_silent_deadline) { run_stalled_statement(BY_DEADLINE, 1); }
END_TEST

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

int main(void)
{
    pqa_env_init();
    pqa_server2_start(&frozen, 1);
    pqa_server2_freeze(frozen);
    Suite *s = suite_create("fault-deadline");
    TCase *tc = tcase_create("deadline");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_connect_never_answers);
    tcase_add_test(tc, test_connect_frozen_postmaster);
    tcase_add_test(tc, test_connect_cancelled_stalled_network);
    tcase_add_test(tc, test_connect_multihost_frozen_first);
    tcase_add_test(tc, test_statement_stalled_deadline);
    tcase_add_test(tc, test_statement_stalled_cancel);
    tcase_add_test(tc, test_tls_statement_cut_silent_deadline);
    suite_add_tcase(s, tc);
    int rc = pqa_run_suite(s);
    pqa_server2_stop_all();
    return rc;
}
