/*
 * test_copy_cut.c -- a COPY IN cut off half-way (issue 9, item 2: "a COPY
 * IN cut off by the server or by a cancel: the error surfaces, never a
 * silent partial success").
 *
 * A task streams 20,000 rows of 1 KiB into a table whose trigger takes
 * 0.2 ms per row, so the socket buffers fill and the task spends its time
 * inside PQputCopyData, waiting for the server.  Once its progress has
 * stopped for 20 ms (it is certainly inside libpq's wait, not between two
 * calls), the COPY is cut off:
 *   - terminate: another task runs pg_terminate_backend on its backend;
 *   - cancel / deadline: awaitlet_cancel, awaitlet_set_deadline on the
 *     task (the shim cancels the statement on the server);
 *   - pqawait_cancel: another task sends the cancel request itself;
 *   - network: the fault proxy cuts the client's stream and closes both
 *     ends.
 * Each time the task must see the error -- libpq's own, naming the cause --
 * from PQputCopyData or at the latest from the COPY's result, never
 * PGRES_COMMAND_OK; once the backend is gone or idle, the table holds no
 * row of the COPY.  The loop never stalls meanwhile.
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

#define N_ROWS 20000

enum { CUT_TERMINATE, CUT_CANCEL, CUT_DEADLINE, CUT_PQAWAIT_CANCEL, CUT_NETWORK };
static const char *const cut_name[] = {"terminate", "cancel", "deadline", "pqawait_cancel", "network"};

struct copy_cut {
    int how;
    char table[64];
    PGconn *conn;
    int backend;
    awaitlet_task *task;
    pqa_proxy *proxy;
    ev_timer cutter;
    struct ev_loop *loop;
    /* the COPY task */
    unsigned long rows, rows_seen;
    double last_progress;
    int put_failed;
    int result;             /* final status of the COPY: -1 none */
    char sqlstate[8];
    char err[512];
    double t_cut, t_err;
    int next_wait_errno;
    /* the cutter */
    int cut;
    int terminate_ok, cancel_rc;
};

static void note_err(struct copy_cut *cc)
{
    if (cc->t_err == 0)
        cc->t_err = pqa_now();
    if (!cc->err[0])
        snprintf(cc->err, sizeof cc->err, "%s", PQerrorMessage(cc->conn));
}

static void *copy_task(void *arg)
{
    struct copy_cut *cc = arg;
    char sql[128];
    snprintf(sql, sizeof sql, "copy %s from stdin", cc->table);
    PGresult *r = PQexec(cc->conn, sql);
    int st = PQresultStatus(r);
    PQclear(r);
    if (st != PGRES_COPY_IN) {
        note_err(cc);
        return NULL;
    }
    char row[1024];
    memset(row, 'c', sizeof row - 1);
    row[sizeof row - 1] = '\n';
    while (cc->rows < N_ROWS) {
        if (PQputCopyData(cc->conn, row, (int)sizeof row) != 1) {
            cc->put_failed = 1;
            note_err(cc);
            break;
        }
        cc->rows++;
    }
    if (PQputCopyEnd(cc->conn, NULL) != 1)
        note_err(cc);
    while ((r = PQgetResult(cc->conn)) != NULL) {
        if (cc->result < 0) {
            cc->result = PQresultStatus(r);
            const char *ss = PQresultErrorField(r, PG_DIAG_SQLSTATE);
            snprintf(cc->sqlstate, sizeof cc->sqlstate, "%s", ss ? ss : "-");
            if (cc->result != PGRES_COMMAND_OK)
                note_err(cc);
        }
        PQclear(r);
        if (PQstatus(cc->conn) == CONNECTION_BAD)
            break;
    }
    /* errno only when the wait failed: a successful call may leave
     * anything in it (libev's epoll_ctl retries leave EEXIST) */
    cc->next_wait_errno = awaitlet_sleep(0) == 0 ? 0 : errno;
    return NULL;
}

static void *terminate_task(void *arg)
{
    struct copy_cut *cc = arg;
    char *ci = pqa_conninfo(PQA_TCP, NULL);
    PGconn *c = PQconnectdb(ci);
    free(ci);
    char sql[64];
    snprintf(sql, sizeof sql, "select pg_terminate_backend(%d)", cc->backend);
    PGresult *r = PQexec(c, sql);
    cc->terminate_ok = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    PQfinish(c);
    return NULL;
}

static void *pqawait_cancel_task(void *arg)
{
    struct copy_cut *cc = arg;
    PGcancel *c = PQgetCancel(cc->conn);
    char err[256];
    cc->cancel_rc = pqawait_cancel(c, err, sizeof err);
    PQfreeCancel(c);
    return NULL;
}

/* Every 5 ms: once the COPY task has made no progress for 20 ms, it waits
 * inside libpq; cut the COPY off then. */
static void cutter_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct copy_cut *cc = w->data;
    double now = pqa_now();
    if (cc->rows != cc->rows_seen || cc->rows < 200) {
        cc->rows_seen = cc->rows;
        cc->last_progress = now;
        return;
    }
    if (now - cc->last_progress < 0.02)
        return;
    ev_timer_stop(loop, w);
    cc->cut = 1;
    cc->t_cut = pqa_now();
    static const awaitlet_options detached = {.detached = 1};
    switch (cc->how) {
    case CUT_TERMINATE:
        ck_assert_ptr_nonnull(awaitlet_async_def_opts(loop, terminate_task, cc, &detached));
        break;
    case CUT_CANCEL:
        ck_assert_int_eq(awaitlet_cancel(cc->task), 0);
        break;
    case CUT_DEADLINE:
        ck_assert_int_eq(awaitlet_set_deadline(cc->task, 0.001), 0);
        break;
    case CUT_PQAWAIT_CANCEL:
        ck_assert_ptr_nonnull(awaitlet_async_def_opts(loop, pqawait_cancel_task, cc, &detached));
        break;
    default:
        ck_assert_int_eq(pqa_proxy_cut(cc->proxy, PQA_CUT_TO_SERVER, 1000, PQA_CUT_CLOSE), 1);
        break;
    }
}

/* On a connection of its own: waits (<= 20 s) until the COPY's backend is
 * gone or idle -- after a network cut it first works through the rows
 * already in its socket buffer, then meets the end of the stream and
 * aborts -- then counts the rows the COPY left. */
static long rows_left(struct copy_cut *cc)
{
    PGconn *c = pqa_connect(PQA_TCP, NULL);
    char sql[256];
    snprintf(sql, sizeof sql, "select count(*) from pg_stat_activity where pid = %d and state <> 'idle'",
             cc->backend);
    for (int i = 0;; i++) {
        PGresult *r = pqa_exec_ok(c, sql, PGRES_TUPLES_OK);
        int busy = atoi(PQgetvalue(r, 0, 0));
        PQclear(r);
        if (!busy)
            break;
        ck_assert_msg(i < 2000, "backend %d still busy 20 s after the cut", cc->backend);
        usleep(10000);
    }
    snprintf(sql, sizeof sql, "select count(*) from %s", cc->table);
    PGresult *r = pqa_exec_ok(c, sql, PGRES_TUPLES_OK);
    long n = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    snprintf(sql, sizeof sql, "drop table %s; drop function %s_slow()", cc->table, cc->table);
    PQclear(pqa_exec_ok(c, sql, PGRES_COMMAND_OK));
    PQfinish(c);
    return n;
}

static void run_cut(int how)
{
    struct copy_cut cc = {.how = how, .result = -1};
    snprintf(cc.table, sizeof cc.table, "fault_copy_%s_%d", pqa_unique(), how);
    PGconn *setup = pqa_connect(PQA_TCP, NULL);
    char sql[512];
    snprintf(sql, sizeof sql,
             "create table %s (a text);"
             "create function %s_slow() returns trigger language plpgsql as"
             " $$ begin perform pg_sleep(0.0002); return new; end $$;"
             "create trigger slow before insert on %s for each row execute function %s_slow()",
             cc.table, cc.table, cc.table, cc.table);
    PQclear(pqa_exec_ok(setup, sql, PGRES_COMMAND_OK));
    PQfinish(setup);

    if (how == CUT_NETWORK) {
        cc.proxy = pqa_proxy_start(atoi(pqa_env_port()), 0);
        ck_assert_ptr_nonnull(cc.proxy);
        char *ci = pqa_conninfo_port(pqa_proxy_port(cc.proxy), NULL);
        cc.conn = PQconnectdb(ci);
        free(ci);
    } else {
        char *ci = pqa_conninfo(PQA_TCP, NULL);
        cc.conn = PQconnectdb(ci);
        free(ci);
    }
    ck_assert_msg(PQstatus(cc.conn) == CONNECTION_OK, "connect: %s", PQerrorMessage(cc.conn));
    cc.backend = PQbackendPID(cc.conn);

    struct ev_loop *loop = cc.loop = pqa_loop_new();
    pqa_stall st;
    pqa_stall_start(&st, loop);
    ev_timer_init(&cc.cutter, cutter_cb, 0.005, 0.005);
    cc.cutter.data = &cc;
    ev_timer_start(loop, &cc.cutter);
    double t0 = pqa_now();
    cc.task = awaitlet_async_def(loop, copy_task, &cc);
    ck_assert_ptr_nonnull(cc.task);
    ck_assert_int_eq(awaitlet_join_ex(cc.task, NULL), 0);
    pqa_drain_loop(loop, 10);
    pqa_stall_stop(&st);
    ev_timer_stop(loop, &cc.cutter);
    double total = pqa_now() - t0;
    ck_assert_int_eq(awaitlet_loop_close(loop), 0);
    ev_loop_destroy(loop);

    int status_ok = PQstatus(cc.conn) == CONNECTION_OK;
    if (how == CUT_NETWORK) {
        /* the cut itself waits for the server to take 1000 more bytes,
         * which TCP's window updates may hold back for a while */
        pqa_proxy_cut_info ci;
        pqa_proxy_cut_stats(cc.proxy, &ci);
        ck_assert_msg(ci.cuts == 1, "the proxy made %lu cuts", ci.cuts);
        cc.t_cut = ci.at;
    }
    long left = rows_left(&cc);
    printf("copy in cut by %s after %lu rows sent: %s%s %s after %.1f ms; %s; %ld rows left; "
           "stall %.1f ms; %.2f s in all\n",
           cut_name[how], cc.rows, cc.put_failed ? "PQputCopyData -1, " : "",
           cc.result >= 0 ? PQresStatus(cc.result) : "no result", cc.sqlstate, (cc.t_err - cc.t_cut) * 1e3,
           pqa_line(cc.err), left, st.max_gap * 1e3, total);
    fflush(stdout);
    ck_assert_msg(cc.cut, "the COPY was never cut (it never waited inside libpq?)");
    ck_assert_msg(cc.result != PGRES_COMMAND_OK, "the cut COPY IN reported success");
    ck_assert_msg(cc.t_err > 0, "no error surfaced");
    ck_assert_msg(cc.rows < N_ROWS || how != CUT_TERMINATE, "all rows were sent after a terminate");
    ck_assert_msg(left == 0, "the cut COPY left %ld rows in the table", left);
    /* libpq's own messages, naming the cause */
    if (how == CUT_TERMINATE) {
        static const char *const m[] = {"terminating connection due to administrator command",
                                        "server closed the connection unexpectedly", NULL};
        pqa_assert_names("terminate", cc.err, m);
        ck_assert_msg(cc.terminate_ok, "pg_terminate_backend failed");
        ck_assert_msg(cc.t_err - cc.t_cut < pqa_bound(0.5), "the error came %.3f s after the cut",
                      cc.t_err - cc.t_cut);
        ck_assert(!status_ok);
    } else if (how == CUT_NETWORK) {
        static const char *const m[] = {"server closed the connection unexpectedly",
                                        "Connection reset by peer", "connection to server was lost", NULL};
        pqa_assert_names("network", cc.err, m);
        ck_assert_msg(cc.t_err - cc.t_cut < pqa_bound(0.5), "the error came %.3f s after the cut",
                      cc.t_err - cc.t_cut);
        ck_assert(!status_ok);
    } else {
        /* a cancelled statement: 57014, the connection still in step */
        ck_assert_msg(strcmp(cc.sqlstate, "57014") == 0, "expected 57014, got %s: %s", cc.sqlstate, cc.err);
        static const char *const m[] = {"canceling statement due to user request", NULL};
        pqa_assert_names(cut_name[how], cc.err, m);
        ck_assert_msg(cc.t_err - cc.t_cut < pqa_bound(2.0), "the error came %.3f s after the cut",
                      cc.t_err - cc.t_cut);
        ck_assert_msg(status_ok, "the connection broke: %s", PQerrorMessage(cc.conn));
        PGresult *r = pqa_exec_ok(cc.conn, "select 'in step'", PGRES_TUPLES_OK);
        ck_assert_str_eq(PQgetvalue(r, 0, 0), "in step");
        PQclear(r);
        if (how == CUT_CANCEL)
            ck_assert_int_eq(cc.next_wait_errno, ECANCELED);
        else if (how == CUT_DEADLINE)
            ck_assert_int_eq(cc.next_wait_errno, ETIMEDOUT);
        else
            ck_assert_int_eq(cc.cancel_rc, 1);
    }
    pqa_stall_assert(&st, "COPY cut");
    PQfinish(cc.conn);
    if (cc.proxy)
        pqa_proxy_stop(cc.proxy);
}

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

START_TEST(test_copy_in_terminated) { run_cut(CUT_TERMINATE); }
END_TEST
START_TEST(test_copy_in_cancelled) { run_cut(CUT_CANCEL); }
END_TEST
START_TEST(test_copy_in_deadline) { run_cut(CUT_DEADLINE); }
END_TEST
START_TEST(test_copy_in_pqawait_cancel) { run_cut(CUT_PQAWAIT_CANCEL); }
END_TEST
START_TEST(test_copy_in_network_cut) { run_cut(CUT_NETWORK); }
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("fault-copy");
    TCase *tc = tcase_create("copy");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_copy_in_terminated);
    tcase_add_test(tc, test_copy_in_cancelled);
    tcase_add_test(tc, test_copy_in_deadline);
    tcase_add_test(tc, test_copy_in_pqawait_cancel);
    tcase_add_test(tc, test_copy_in_network_cut);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
