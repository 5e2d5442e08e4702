/*
 * test_network.c -- the network between a task and its server fails
 * (issue 9, item 2: network stall, a server that accepts and never
 * answers, TLS sessions cut mid-record; plus resets and plain messages cut
 * in half).
 *
 * Every case runs its task through the fault proxy (tests/shim/proxy.c) to
 * the shared server, with a saboteur task breaking the path at the right
 * moment, two bystander tasks on direct connections and the stall meter on
 * the loop:
 *   - stall mid-query: the query completes, in step, once the network
 *     resumes; a deadline passing during the stall sends its cancel into
 *     the stall, the task never waits for it, and the statement is given
 *     up 1 s after the deadline (CONNECTION_BAD, the cause named), PQreset
 *     reconnects (more bounds: test_deadline_faults.c);
 *   - accepts and never answers, and a stall, during a connect:
 *     connect_timeout fires ("timeout expired");
 *   - connections reset (RST) mid-query: the error at once, PQreset
 *     reconnects;
 *   - the server's stream cut in the middle of a DataRow, of a COPY OUT,
 *     and -- over TLS -- in the middle of a TLS record, during a query and
 *     during the handshake: libpq reports the lost connection (over TLS an
 *     SSL error), never a partial result as a success;
 *   - a TLS handshake cut mid-record and then silent: connect_timeout
 *     fires.
 * The loop never stalls and the bystanders' answers stay right and quick.
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
#include "stall.h"

/* One case: the victim task's result, the saboteur's timing. */
struct net {
    pqa_proxy *proxy;
    PGconn *conn;
    const char *extra;      /* conninfo extras for the victim */
    int cut_what;           /* for cut cases: 0 query, 1 COPY OUT */
    /* victim */
    int status;             /* ExecStatusType, or ConnStatusType for connects */
    char value[64];
    char sqlstate[8];
    char err[512];
    double t_start, t_end;
    unsigned long rows;
    int next_errno;
    int reset_ok, after_ok;
    /* saboteur */
    double t_fault;
    int step;
};

typedef void *(*task_fn)(void *);

/* Keeps the bystanders busy for a while even when the victim is quick. */
static void *pause_task(void *arg)
{
    awaitlet_sleep(*(double *)arg);
    return NULL;
}

/* Runs victim and saboteur on one loop beside bystanders and the stall
 * meter; asserts the bystanders and the loop. */
static void run_watched(task_fn victim, task_fn saboteur, struct net *n)
{
    struct ev_loop *loop = pqa_loop_new();
    pqa_stall st;
    pqa_stall_start(&st, loop);
    pqa_bystanders by;
    pqa_bystanders_start(&by, loop, 2);
    double pause = 0.2;
    awaitlet_task *p = awaitlet_async_def(loop, pause_task, &pause);
    awaitlet_task *v = awaitlet_async_def(loop, victim, n);
    ck_assert_ptr_nonnull(v);
    ck_assert_ptr_nonnull(p);
    awaitlet_task *s = saboteur ? awaitlet_async_def(loop, saboteur, n) : NULL;
    ck_assert_int_eq(awaitlet_join_ex(v, NULL), 0);
    if (s)
        ck_assert_int_eq(awaitlet_join_ex(s, NULL), 0);
    ck_assert_int_eq(awaitlet_join_ex(p, NULL), 0);
    pqa_bystanders_stop(&by);
    pqa_drain_loop(loop, 10);
    pqa_stall_stop(&st);
    ck_assert_int_eq(awaitlet_loop_close(loop), 0);
    ev_loop_destroy(loop);
    printf("  loop stall %.1f ms; ", st.max_gap * 1e3);
    pqa_bystanders_check(&by, 5, pqa_bound(0.25));
    pqa_stall_assert(&st, "network fault");
}

static pqa_proxy *start_proxy(void)
{
    pqa_proxy *p = pqa_proxy_start(atoi(pqa_env_port()), 0);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* The TLS form of the victim's connection (the certificate names
 * 127.0.0.1 too, so verify-full works through the proxy). */
static char *tls_extra(void)
{
    static char buf[1024];
    snprintf(buf, sizeof buf, "sslmode=verify-full sslrootcert='%s' gssencmode=disable", pqa_env_sslroot());
    return buf;
}

static PGconn *connect_through(pqa_proxy *p, const char *extra)
{
    char *ci = pqa_conninfo_port(pqa_proxy_port(p), extra);
    PGconn *c = PQconnectdb(ci);
    free(ci);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "connect through the proxy: %s", PQerrorMessage(c));
    return c;
}

static void note_result(struct net *n, PGresult *r)
{
    n->t_end = pqa_now();
    n->status = PQresultStatus(r);
    const char *ss = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    snprintf(n->sqlstate, sizeof n->sqlstate, "%s", ss ? ss : "-");
    if (n->status == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(n->value, sizeof n->value, "%s", PQgetvalue(r, 0, PQnfields(r) - 1));
    snprintf(n->err, sizeof n->err, "%s", PQerrorMessage(n->conn));
}

/* ---- stall mid-query ---- */

static void *stall_victim(void *arg)
{
    struct net *n = arg;
    n->t_start = pqa_now();
    PGresult *r = PQexec(n->conn, "select pg_sleep(0.1), 'after the stall'");
    note_result(n, r);
    PQclear(r);
    /* errno only when the wait failed: a successful call may leave
     * anything in it (libev's epoll_ctl retries leave EEXIST) */
    n->next_errno = awaitlet_sleep(0) == 0 ? 0 : errno;
    r = PQexec(n->conn, "select 'in step'");
    n->after_ok = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "in step") == 0;
    PQclear(r);
    return NULL;
}

static void *stall_saboteur(void *arg)
{
    struct net *n = arg;
    awaitlet_sleep(0.02); /* the query is on its way */
    pqa_proxy_stall(n->proxy, 1);
    n->t_fault = pqa_now();
    awaitlet_sleep(1.0);
    pqa_proxy_stall(n->proxy, 0);
    return NULL;
}

START_TEST(test_stall_mid_query)
{
    struct net n = {.proxy = start_proxy()};
    n.conn = connect_through(n.proxy, NULL);
    run_watched(stall_victim, stall_saboteur, &n);
    double el = n.t_end - n.t_start;
    printf("stall mid-query: %s '%s' after %.3f s\n", PQresStatus(n.status), n.value, el);
    ck_assert_msg(n.status == PGRES_TUPLES_OK && strcmp(n.value, "after the stall") == 0,
                  "after the stall: %s %s", PQresStatus(n.status), n.err);
    ck_assert_msg(el >= 1.0 && el < 1.0 + pqa_bound(0.5), "the stalled query took %.3f s", el);
    ck_assert_int_eq(n.next_errno, 0);
    ck_assert(n.after_ok);
    PQfinish(n.conn);
    pqa_proxy_stop(n.proxy);
}
END_TEST

/* The deadline passes while the network is stalled (include/pqawait.h,
 * Interruptions): after the grace the shim's cancel request goes into the
 * stall (the proxy holds it, then closes it when the stall ends at 1.02 s),
 * the task never waits for it, and the statement -- still running on the
 * server, its pg_sleep(1.5) ends at 1.5 s -- is given up 1 s after the
 * deadline: CONNECTION_BAD, a "pqawait:" line naming the deadline.  Or,
 * the held request being over once the stall ends, the shim sends another
 * (bound.c: again while the statement runs) that gets through: 57014 in
 * step, after the stall's end and before the give-up point.  Clearing the
 * deadline and PQreset bring the session back. */
static void *deadline_victim(void *arg)
{
    struct net *n = arg;
    ck_assert_int_eq(awaitlet_set_deadline(awaitlet_current(), 0.3), 0);
    n->t_start = pqa_now();
    PGresult *r = PQexec(n->conn, "select pg_sleep(1.5), 'slept'");
    note_result(n, r);
    PQclear(r);
    n->reset_ok = PQstatus(n->conn); /* the status it was left in */
    /* errno only when the wait failed: a successful call may leave
     * anything in it (libev's epoll_ctl retries leave EEXIST) */
    n->next_errno = awaitlet_sleep(0) == 0 ? 0 : errno;
    ck_assert_int_eq(awaitlet_set_deadline(awaitlet_current(), 0), 0);
    if (PQstatus(n->conn) != CONNECTION_OK)
        PQreset(n->conn);
    r = PQexec(n->conn, "select 'in step'");
    n->after_ok = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "in step") == 0;
    PQclear(r);
    return NULL;
}

START_TEST(test_deadline_in_stall)
{
    struct net n = {.proxy = start_proxy()};
    n.conn = connect_through(n.proxy, NULL);
    pqa_proxy_held held0, held1;
    pqa_proxy_held_stats(n.proxy, &held0);
    run_watched(deadline_victim, stall_saboteur, &n);
    pqa_proxy_held_stats(n.proxy, &held1);
    double el = n.t_end - n.t_start;
    printf("deadline in a stall: %s %s %s after %.3f s; %lu cancel connection(s) held: %s\n", PQresStatus(n.status),
           n.sqlstate, n.reset_ok == CONNECTION_BAD ? "CONNECTION_BAD" : "CONNECTION_OK", el,
           held1.accepted - held0.accepted, pqa_line(n.err));
    ck_assert_msg(held1.accepted > held0.accepted, "no cancel request was sent");
    if (n.status == PGRES_FATAL_ERROR && strcmp(n.sqlstate, "57014") == 0) {
        ck_assert_int_eq(n.reset_ok, CONNECTION_OK);
    } else {
        ck_assert_msg(n.status != PGRES_TUPLES_OK, "the statement ran to its end past the give-up bound");
        ck_assert_int_eq(n.reset_ok, CONNECTION_BAD);
        const char *cause = strstr(n.err, "pqawait: ");
        ck_assert_msg(cause && strstr(cause, "deadline"), "the message does not name the deadline: %s", n.err);
    }
    /* given up 1 s after the deadline, long before the statement's end; or
     * cancelled once the network was back */
    double from = n.status == PGRES_FATAL_ERROR && strcmp(n.sqlstate, "57014") == 0 ? 1.0 : 1.2;
    ck_assert_msg(el >= from && el < 1.3 + pqa_bound(0.15), "the statement took %.3f s", el);
    ck_assert_int_eq(n.next_errno, ETIMEDOUT);
    ck_assert(n.after_ok);
    PQfinish(n.conn);
    pqa_proxy_stop(n.proxy);
}
END_TEST

/* ---- connects that never get an answer ---- */

static void *connect_victim(void *arg)
{
    struct net *n = arg;
    char *ci = pqa_conninfo_port(pqa_proxy_port(n->proxy), n->extra);
    n->t_start = pqa_now();
    n->conn = PQconnectdb(ci);
    n->t_end = pqa_now();
    free(ci);
    n->status = PQstatus(n->conn);
    snprintf(n->err, sizeof n->err, "%s", PQerrorMessage(n->conn));
    return NULL;
}

static void check_timed_out(const char *what, struct net *n)
{
    double el = n->t_end - n->t_start;
    printf("%s: %s after %.3f s: %s\n", what, n->status == CONNECTION_BAD ? "BAD" : "OK?", el,
           pqa_line(n->err));
    ck_assert_int_eq(n->status, CONNECTION_BAD);
    static const char *const m[] = {"timeout expired", NULL};
    pqa_assert_names(what, n->err, m);
    /* libpq raises connect_timeout=1 to 2 s and counts whole seconds of
     * time(): it ends 1 to 2 s after the start */
    ck_assert_msg(el > 0.9 && el < 2.0 + pqa_bound(0.5), "connect_timeout=1 ended after %.3f s", el);
}

START_TEST(test_never_answers_connect)
{
    struct net n = {.proxy = start_proxy(), .extra = "connect_timeout=1"};
    pqa_proxy_hold_new(n.proxy, 1);
    run_watched(connect_victim, NULL, &n);
    check_timed_out("accepts, never answers", &n);
    pqa_proxy_held held;
    pqa_proxy_held_stats(n.proxy, &held);
    ck_assert_uint_eq(held.accepted, 1);
    PQfinish(n.conn);
    pqa_proxy_stop(n.proxy);
}
END_TEST

START_TEST(test_stalled_connect)
{
    struct net n = {.proxy = start_proxy(), .extra = "connect_timeout=1"};
    pqa_proxy_stall(n.proxy, 1);
    run_watched(connect_victim, NULL, &n);
    check_timed_out("stalled network", &n);
    PQfinish(n.conn);
    pqa_proxy_stop(n.proxy);
}
END_TEST

/* ---- reset ---- */

static void *drop_victim(void *arg)
{
    struct net *n = arg;
    n->t_start = pqa_now();
    PGresult *r = PQexec(n->conn, "select pg_sleep(5)");
    note_result(n, r);
    PQclear(r);
    PQreset(n->conn);
    n->reset_ok = PQstatus(n->conn) == CONNECTION_OK;
    r = PQexec(n->conn, "select 'again'");
    n->after_ok = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "again") == 0;
    PQclear(r);
    return NULL;
}

static void *drop_saboteur(void *arg)
{
    struct net *n = arg;
    awaitlet_sleep(0.2);
    n->t_fault = pqa_now();
    pqa_proxy_drop(n->proxy);
    return NULL;
}

START_TEST(test_reset_mid_query)
{
    struct net n = {.proxy = start_proxy()};
    n.conn = connect_through(n.proxy, NULL);
    run_watched(drop_victim, drop_saboteur, &n);
    double after = n.t_end - n.t_fault;
    printf("reset mid-query: %s after %.1f ms: %s\n", PQresStatus(n.status), after * 1e3, pqa_line(n.err));
    ck_assert_int_eq(n.status, PGRES_FATAL_ERROR);
    static const char *const m[] = {"server closed the connection unexpectedly", "Connection reset by peer",
                                    NULL};
    pqa_assert_names("reset", n.err, m);
    ck_assert_msg(after >= 0 && after < pqa_bound(0.5), "the error came %.3f s after the reset", after);
    ck_assert_msg(n.reset_ok, "PQreset through the proxy failed");
    ck_assert(n.after_ok);
    PQfinish(n.conn);
    pqa_proxy_stop(n.proxy);
}
END_TEST

/* ---- cuts in the middle of a frame ---- */

static void *cut_victim(void *arg)
{
    struct net *n = arg;
    n->t_start = pqa_now();
    if (n->cut_what == 0) {
        PGresult *r = PQexec(n->conn, "select i, repeat('x', 1000) from generate_series(1, 20000) i");
        note_result(n, r);
        PQclear(r);
        return NULL;
    }
    PGresult *r = PQexec(n->conn, "copy (select i, repeat('x', 1000) from generate_series(1, 20000) i) to stdout");
    if (PQresultStatus(r) != PGRES_COPY_OUT) {
        note_result(n, r);
        PQclear(r);
        return NULL;
    }
    PQclear(r);
    char *buf;
    int k;
    while ((k = PQgetCopyData(n->conn, &buf, 0)) > 0) {
        n->rows++;
        PQfreemem(buf);
    }
    n->t_end = pqa_now();
    n->status = k == -2 ? PGRES_FATAL_ERROR : PGRES_COPY_OUT;
    while ((r = PQgetResult(n->conn)) != NULL) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            n->status = PGRES_FATAL_ERROR;
        else if (n->status != PGRES_FATAL_ERROR)
            n->status = PGRES_COMMAND_OK;
        PQclear(r);
        if (PQstatus(n->conn) == CONNECTION_BAD)
            break;
    }
    snprintf(n->err, sizeof n->err, "%s", PQerrorMessage(n->conn));
    return NULL;
}

/* tls: 0 plain, 1 TLS; what: 0 query, 1 COPY OUT */
static void run_cut(int tls, int what)
{
    struct net n = {.proxy = start_proxy(), .cut_what = what};
    n.conn = connect_through(n.proxy, tls ? tls_extra() : NULL);
    ck_assert_int_eq(PQsslInUse(n.conn), tls);
    ck_assert_int_eq(pqa_proxy_cut(n.proxy, PQA_CUT_TO_CLIENT, 100000, PQA_CUT_CLOSE), 1);
    run_watched(cut_victim, NULL, &n);
    pqa_proxy_cut_info ci;
    pqa_proxy_cut_stats(n.proxy, &ci);
    double after = n.t_end - ci.at;
    printf("%s %s cut in frame type %u ('%c') after %lu of its %lu bytes: %s after %.1f ms (%lu rows): %s\n",
           tls ? "TLS" : "plain", what ? "COPY OUT" : "query", ci.frame_type,
           ci.frame_type >= 32 && ci.frame_type < 127 ? ci.frame_type : '?', ci.frame_sent, ci.frame_len,
           PQresStatus(n.status), after * 1e3, n.rows, pqa_line(n.err));
    ck_assert_uint_eq(ci.cuts, 1);
    ck_assert_int_eq(ci.stream, tls ? 'T' : 'P');
    /* a TLS application-data record; a DataRow (query) or CopyData */
    ck_assert_uint_eq(ci.frame_type, tls ? 23 : what ? 'd' : 'D');
    ck_assert_msg(ci.frame_sent > 5 && ci.frame_sent < ci.frame_len, "not cut inside the frame");
    ck_assert_msg(n.status == PGRES_FATAL_ERROR, "a cut stream gave %s", PQresStatus(n.status));
    ck_assert_int_eq(PQstatus(n.conn), CONNECTION_BAD);
    if (tls) {
        static const char *const m[] = {"SSL SYSCALL error: EOF detected", "SSL error", "SSL", NULL};
        pqa_assert_names("TLS cut", n.err, m);
    } else {
        static const char *const m[] = {"server closed the connection unexpectedly", NULL};
        pqa_assert_names("cut", n.err, m);
    }
    ck_assert_msg(after >= 0 && after < pqa_bound(0.5), "the error came %.3f s after the cut", after);
    if (what)
        ck_assert_msg(n.rows > 0 && n.rows < 20000, "%lu rows before the cut", n.rows);
    PQfinish(n.conn);
    pqa_proxy_stop(n.proxy);
}

START_TEST(test_cut_mid_datarow) { run_cut(0, 0); }
END_TEST
START_TEST(test_cut_mid_copydata) { run_cut(0, 1); }
END_TEST
START_TEST(test_tls_cut_mid_record) { run_cut(1, 0); }
END_TEST
START_TEST(test_tls_copy_cut_mid_record) { run_cut(1, 1); }
END_TEST

/* The handshake's first server record (ServerHello) cut after 20 bytes:
 * closed, libpq reports an SSL error; silent, connect_timeout fires. */
static void run_handshake_cut(pqa_cut_then then)
{
    char extra[1100];
    snprintf(extra, sizeof extra, "%s connect_timeout=1", tls_extra());
    struct net n = {.proxy = start_proxy(), .extra = extra};
    pqa_proxy_cut_new(n.proxy, PQA_CUT_TO_CLIENT, 20, then);
    run_watched(connect_victim, NULL, &n);
    pqa_proxy_cut_info ci;
    pqa_proxy_cut_stats(n.proxy, &ci);
    printf("TLS handshake cut (%s) in record type %u after %lu of %lu bytes: ",
           then == PQA_CUT_CLOSE ? "closed" : "silent",
           ci.frame_type, ci.frame_sent, ci.frame_len);
    ck_assert_uint_eq(ci.cuts, 1);
    ck_assert_int_eq(ci.stream, 'T');
    ck_assert_uint_eq(ci.frame_type, 22); /* handshake */
    ck_assert_msg(ci.frame_sent > 5 && ci.frame_sent < ci.frame_len, "not cut inside the record");
    if (then == PQA_CUT_STALL) {
        check_timed_out("TLS handshake cut, then silent", &n);
    } else {
        double el = n.t_end - n.t_start;
        printf("%s after %.1f ms: %s\n", n.status == CONNECTION_BAD ? "BAD" : "OK?", el * 1e3, pqa_line(n.err));
        ck_assert_int_eq(n.status, CONNECTION_BAD);
        static const char *const m[] = {"SSL SYSCALL error: EOF detected", "SSL error", "SSL", NULL};
        pqa_assert_names("TLS handshake cut", n.err, m);
        ck_assert_msg(el < pqa_bound(0.5), "the connect failed after %.3f s", el);
    }
    PQfinish(n.conn);
    pqa_proxy_stop(n.proxy);
}

START_TEST(test_tls_handshake_cut) { run_handshake_cut(PQA_CUT_CLOSE); }
END_TEST
START_TEST(test_tls_handshake_cut_silent) { run_handshake_cut(PQA_CUT_STALL); }
END_TEST

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("fault-net");
    TCase *tc = tcase_create("net");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_stall_mid_query);
    tcase_add_test(tc, test_deadline_in_stall);
    tcase_add_test(tc, test_never_answers_connect);
    tcase_add_test(tc, test_stalled_connect);
    tcase_add_test(tc, test_reset_mid_query);
    tcase_add_test(tc, test_cut_mid_datarow);
    tcase_add_test(tc, test_cut_mid_copydata);
    tcase_add_test(tc, test_tls_cut_mid_record);
    tcase_add_test(tc, test_tls_copy_cut_mid_record);
    tcase_add_test(tc, test_tls_handshake_cut);
    tcase_add_test(tc, test_tls_handshake_cut_silent);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
