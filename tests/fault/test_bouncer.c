/*
 * test_bouncer.c -- tasks through a real pgbouncer in transaction mode
 * (issue 9, item 2: "2,000 tasks through 20 server connections, nothing
 * misrouted, cancels reach the right backend").
 *
 * The harness starts a private server and pgbouncer in front of it
 * (tests/pg/pgbouncer: transaction pooling, at most 20 server
 * connections).  pgbouncer 1.18 knows no named prepared statements, so
 * everything is PQexec or unnamed PQexecParams, as its users must.
 *   - 2,000 tasks on one loop each open their own client connection, wait
 *     until all 2,000 are open, then run single statements and explicit
 *     transactions whose results carry a value unique to the task and the
 *     round; every answer is checked.  A monitor on a direct connection
 *     samples the server's client backends (never more than 20), and the
 *     backend pids the tasks saw are at most 20 distinct ones.
 *   - 5 tasks each run a 20 s statement while 45 others run short ones;
 *     the 5 are cancelled one after the other, each differently
 *     (awaitlet_cancel, a deadline, pqawait_cancel from another task):
 *     pgbouncer forwards each cancel request to the server connection the
 *     client is linked to, so exactly those 5 statements end with 57014,
 *     quickly, and no other task sees an error; each cancelled client's
 *     session then works again.
 * The loop never blocks (stall meter: for the 2,000, the part of each gap
 * spent neither running nor runnable -- a herd of 2,000 ready tasks is CPU
 * work -- for the cancels the whole gap).
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "common.h"
#include "fault.h"
#include "pqawait.h"
#include "server2.h"
#include "stall.h"

#define POOL 20

static pqa_server2 *srv;
static int bouncer_port;

static char *bouncer_conninfo(void)
{
    return pqa_conninfo_port(bouncer_port, "gssencmode=disable");
}

/* ---- 2,000 tasks ---- */

#define N_CLIENTS 2000
#define ROUNDS 3

struct crowd {
    int connected, failed_connects, started;
    unsigned long right, wrong;
    char first_wrong[512];
    int pids[64];
    int npids, too_many_pids;
    int max_backends;
    int done;
};

struct client {
    struct crowd *cr;
    int id;
};

static void saw_pid(struct crowd *cr, int pid)
{
    for (int i = 0; i < cr->npids; i++)
        if (cr->pids[i] == pid)
            return;
    if (cr->npids < (int)(sizeof cr->pids / sizeof cr->pids[0]))
        cr->pids[cr->npids++] = pid;
    else
        cr->too_many_pids = 1;
}

static void wrong(struct crowd *cr, const char *what, PGconn *c, const char *got)
{
    if (!cr->wrong++)
        snprintf(cr->first_wrong, sizeof cr->first_wrong, "%s: %s%s", what, got ? got : "",
                 got ? "" : PQerrorMessage(c));
}

/* One statement returning token and the backend's pid; checks the token. */
static int ask(struct crowd *cr, PGconn *c, const char *sql, const char *token, const char *want)
{
    const char *params[1] = {token};
    PGresult *r = PQexecParams(c, sql, 1, NULL, params, NULL, NULL, 0);
    int ok = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        wrong(cr, sql, c, NULL);
    else if (strcmp(PQgetvalue(r, 0, 0), want) != 0)
        wrong(cr, "misrouted", c, PQgetvalue(r, 0, 0));
    else {
        saw_pid(cr, atoi(PQgetvalue(r, 0, 1)));
        ok = 1;
    }
    PQclear(r);
    return ok;
}

static int command(struct crowd *cr, PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        wrong(cr, sql, c, NULL);
    PQclear(r);
    return ok;
}

static void *client_task(void *arg)
{
    struct client *cl = arg;
    struct crowd *cr = cl->cr;
    char *ci = bouncer_conninfo();
    PGconn *c = PQconnectdb(ci);
    free(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        if (!cr->failed_connects++)
            snprintf(cr->first_wrong, sizeof cr->first_wrong, "connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    cr->connected++;
    /* all 2,000 client connections open at once before anyone queries */
    pqa_wait_flag(&cr->started, 60);
    for (int round = 0; round < ROUNDS; round++) {
        char token[48], want[56];
        snprintf(token, sizeof token, "client-%d-round-%d", cl->id, round);
        /* a single statement: any server connection */
        if (ask(cr, c, "select $1::text, pg_backend_pid(), pg_sleep(0.001)", token, token))
            cr->right++;
        /* a transaction: one server connection from begin to commit */
        snprintf(want, sizeof want, "%s/tx", token);
        if (command(cr, c, "begin") &&
            ask(cr, c, "select $1::text || '/tx', pg_backend_pid()", token, want) &&
            ask(cr, c, "select $1::text || '/tx', pg_backend_pid()", token, want) && command(cr, c, "commit"))
            cr->right++;
    }
    PQfinish(c);
    return NULL;
}

/* Samples the server's client backends over a direct connection. */
static void *monitor_task(void *arg)
{
    struct crowd *cr = arg;
    char *ci = pqa_conninfo_port(pqa_server2_port(srv), NULL);
    PGconn *c = PQconnectdb(ci);
    free(ci);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "monitor: %s", PQerrorMessage(c));
    while (!cr->done) {
        PGresult *r = PQexec(c, "select count(*) from pg_stat_activity"
                                " where backend_type = 'client backend' and pid <> pg_backend_pid()");
        if (PQresultStatus(r) == PGRES_TUPLES_OK) {
            int n = atoi(PQgetvalue(r, 0, 0));
            if (n > cr->max_backends)
                cr->max_backends = n;
        }
        PQclear(r);
        awaitlet_sleep(0.02);
    }
    PQfinish(c);
    return NULL;
}

static void *starter_task(void *arg)
{
    struct crowd *cr = arg;
    while (cr->connected + cr->failed_connects < N_CLIENTS)
        if (awaitlet_sleep(0.01) < 0)
            break;
    cr->started = 1;
    return NULL;
}

static struct client cl[N_CLIENTS];
static awaitlet_task *cl_task[N_CLIENTS];

/* Starts the clients 20 at a time, letting the loop turn in between: each
 * start runs the new task up to its first wait (socket, connect), and
 * 2,000 of those in a row would hold the loop for a while themselves. */
static void *spawner_task(void *arg)
{
    struct crowd *cr = arg;
    for (int i = 0; i < N_CLIENTS; i++) {
        cl[i] = (struct client){cr, i};
        cl_task[i] = awaitlet_async_def(awaitlet_current_loop(), client_task, &cl[i]);
        ck_assert_msg(cl_task[i] != NULL, "task %d: %s", i, strerror(errno));
        if (i % 20 == 19)
            awaitlet_yield();
    }
    return NULL;
}

START_TEST(test_two_thousand_tasks)
{
    static struct crowd cr;
    awaitlet_task **t = cl_task;
    memset(&cr, 0, sizeof cr);
    pqa_grow_fd_table(N_CLIENTS + 200);
    struct ev_loop *loop = pqa_loop_new();
    pqa_stall st;
    pqa_stall_start(&st, loop);
    awaitlet_task *mon = awaitlet_async_def(loop, monitor_task, &cr);
    awaitlet_task *go = awaitlet_async_def(loop, starter_task, &cr);
    ck_assert_ptr_nonnull(mon);
    ck_assert_ptr_nonnull(go);
    double t0 = pqa_now();
    awaitlet_task *sp = awaitlet_async_def(loop, spawner_task, &cr);
    ck_assert_ptr_nonnull(sp);
    ck_assert_int_eq(awaitlet_join_ex(sp, NULL), 0);
    ck_assert_int_eq(awaitlet_join_ex(go, NULL), 0);
    double t_open = pqa_now() - t0;
    for (int i = 0; i < N_CLIENTS; i++)
        ck_assert_int_eq(awaitlet_join_ex(t[i], NULL), 0);
    double all = pqa_now() - t0;
    cr.done = 1;
    ck_assert_int_eq(awaitlet_join_ex(mon, NULL), 0);
    pqa_stall_stop(&st);
    ck_assert_int_eq(awaitlet_loop_close(loop), 0);
    ev_loop_destroy(loop);
    printf("%d clients through pgbouncer: all open after %.2f s, done after %.2f s; %lu right, %lu wrong; "
           "%d distinct backends; at most %d server backends; longest loop gap %.1f ms, blocked %.1f ms\n",
           cr.connected, t_open, all, cr.right, cr.wrong, cr.npids, cr.max_backends, st.max_gap * 1e3,
           st.max_blocked * 1e3);
    fflush(stdout);
    ck_assert_msg(cr.failed_connects == 0, "%d connects failed: %s", cr.failed_connects, cr.first_wrong);
    ck_assert_msg(cr.wrong == 0, "%lu answers wrong; first: %s", cr.wrong, cr.first_wrong);
    ck_assert_uint_eq(cr.right, (unsigned long)N_CLIENTS * ROUNDS * 2);
    ck_assert_msg(!cr.too_many_pids && cr.npids <= POOL, "%d distinct backends (pool %d)", cr.npids, POOL);
    ck_assert_msg(cr.npids > 1, "one backend served everyone: no pooling seen");
    ck_assert_msg(cr.max_backends <= POOL, "%d server backends at once (pool %d)", cr.max_backends, POOL);
    /* 2,000 tasks made ready in the same loop iteration (the start flag,
     * a burst of answers) run one after another, ~10 us of CPU each: a
     * gap of that size is work, not waiting.  What must never happen is
     * the loop's thread sleeping in a blocking wait: the gap minus CPU and
     * run-queue time. */
    char why[256];
    ck_assert_msg(st.max_blocked < pqa_stall_bound(), "the loop was blocked %.1f ms (held %.1f ms; %s)",
                  st.max_blocked * 1e3, st.max_gap * 1e3, pqa_stall_describe(&st, why, sizeof why));
}
END_TEST

/* ---- cancels ---- */

#define N_LONG 5
#define N_SHORT 45

struct cancels {
    PGconn *conn[N_LONG + N_SHORT];
    awaitlet_task *task[N_LONG + N_SHORT];
    int stop;
    /* the long ones */
    double t_cancel[N_LONG], t_end[N_LONG];
    char sqlstate[N_LONG][8];
    int again_ok[N_LONG], cancel_rc[N_LONG];
    /* the short ones */
    unsigned long short_ok, short_bad;
    char first_bad[512];
};

struct cancel_arg {
    struct cancels *cx;
    int i;
};

static void *long_task(void *arg)
{
    struct cancel_arg *a = arg;
    struct cancels *cx = a->cx;
    PGconn *c = cx->conn[a->i];
    char token[32];
    snprintf(token, sizeof token, "long-%d", a->i);
    const char *params[1] = {token};
    PGresult *r = PQexecParams(c, "select pg_sleep(20), $1::text", 1, NULL, params, NULL, NULL, 0);
    cx->t_end[a->i] = pqa_now();
    const char *ss = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    snprintf(cx->sqlstate[a->i], sizeof cx->sqlstate[a->i], "%s", ss ? ss : PQresStatus(PQresultStatus(r)));
    PQclear(r);
    awaitlet_set_deadline(awaitlet_current(), 0);
    /* the session works again, and answers for this client */
    r = PQexecParams(c, "select $1::text", 1, NULL, params, NULL, NULL, 0);
    cx->again_ok[a->i] = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), token) == 0;
    PQclear(r);
    return NULL;
}

static void *short_task(void *arg)
{
    struct cancel_arg *a = arg;
    struct cancels *cx = a->cx;
    PGconn *c = cx->conn[a->i];
    for (int k = 0; !cx->stop; k++) {
        char token[48];
        snprintf(token, sizeof token, "short-%d-%d", a->i, k);
        const char *params[1] = {token};
        PGresult *r = PQexecParams(c, "select $1::text, pg_sleep(0.002)", 1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), token) == 0) {
            cx->short_ok++;
        } else if (!cx->short_bad++) {
            const char *ss = PQresultErrorField(r, PG_DIAG_SQLSTATE);
            snprintf(cx->first_bad, sizeof cx->first_bad, "%s %s: %s", ss ? ss : "-",
                     PQresStatus(PQresultStatus(r)), PQerrorMessage(c));
        }
        PQclear(r);
        awaitlet_sleep(0.001);
    }
    return NULL;
}

static void *pqawait_cancel_task(void *arg)
{
    struct cancel_arg *a = arg;
    PGcancel *cn = PQgetCancel(a->cx->conn[a->i]);
    char err[256];
    a->cx->cancel_rc[a->i] = pqawait_cancel(cn, err, sizeof err);
    PQfreeCancel(cn);
    return NULL;
}

/* Cancels the long statements one by one, 0.2 s apart, three ways. */
static void *canceller_task(void *arg)
{
    struct cancels *cx = arg;
    static struct cancel_arg ca[N_LONG];
    awaitlet_sleep(0.3);
    for (int i = 0; i < N_LONG; i++) {
        cx->t_cancel[i] = pqa_now();
        cx->cancel_rc[i] = 1;
        switch (i % 3) {
        case 0:
            ck_assert_int_eq(awaitlet_cancel(cx->task[i]), 0);
            break;
        case 1:
            ck_assert_int_eq(awaitlet_set_deadline(cx->task[i], 0.001), 0);
            break;
        default:
            ca[i] = (struct cancel_arg){cx, i};
            ck_assert_int_eq(awaitlet_run_ex(awaitlet_current_loop(), pqawait_cancel_task, &ca[i], NULL), 0);
            break;
        }
        awaitlet_sleep(0.2);
    }
    for (int i = 0; i < N_LONG; i++)
        ck_assert_int_eq(awaitlet_join_ex(cx->task[i], NULL), 0);
    cx->stop = 1;
    return NULL;
}

START_TEST(test_cancels_reach_the_right_backend)
{
    static struct cancels cx;
    static struct cancel_arg args[N_LONG + N_SHORT];
    memset(&cx, 0, sizeof cx);
    for (int i = 0; i < N_LONG + N_SHORT; i++) {
        char *ci = bouncer_conninfo();
        cx.conn[i] = PQconnectdb(ci);
        free(ci);
        ck_assert_msg(PQstatus(cx.conn[i]) == CONNECTION_OK, "connect: %s", PQerrorMessage(cx.conn[i]));
    }
    struct ev_loop *loop = pqa_loop_new();
    pqa_stall st;
    pqa_stall_start(&st, loop);
    for (int i = 0; i < N_LONG + N_SHORT; i++) {
        args[i] = (struct cancel_arg){&cx, i};
        cx.task[i] = awaitlet_async_def(loop, i < N_LONG ? long_task : short_task, &args[i]);
        ck_assert_ptr_nonnull(cx.task[i]);
    }
    awaitlet_task *c = awaitlet_async_def(loop, canceller_task, &cx);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(awaitlet_join_ex(c, NULL), 0);
    for (int i = N_LONG; i < N_LONG + N_SHORT; i++)
        ck_assert_int_eq(awaitlet_join_ex(cx.task[i], NULL), 0);
    pqa_stall_stop(&st);
    ck_assert_int_eq(awaitlet_loop_close(loop), 0);
    ev_loop_destroy(loop);

    printf("cancels through pgbouncer: %lu short statements right, %lu wrong; stall %.1f ms\n", cx.short_ok,
           cx.short_bad, st.max_gap * 1e3);
    for (int i = 0; i < N_LONG; i++)
        printf("  long %d (%s): %s after %.1f ms, session again %s\n", i,
               i % 3 == 0 ? "awaitlet_cancel" : i % 3 == 1 ? "deadline" : "pqawait_cancel", cx.sqlstate[i],
               (cx.t_end[i] - cx.t_cancel[i]) * 1e3, cx.again_ok[i] ? "ok" : "BROKEN");
    fflush(stdout);
    ck_assert_msg(cx.short_bad == 0, "%lu short statements went wrong; first: %s", cx.short_bad, cx.first_bad);
    ck_assert_msg(cx.short_ok > N_SHORT * 10, "only %lu short statements ran", cx.short_ok);
    for (int i = 0; i < N_LONG; i++) {
        ck_assert_msg(strcmp(cx.sqlstate[i], "57014") == 0, "long %d ended with %s", i, cx.sqlstate[i]);
        double after = cx.t_end[i] - cx.t_cancel[i];
        ck_assert_msg(after > 0 && after < pqa_bound(1.0), "long %d ended %.3f s after its cancel", i, after);
        ck_assert_int_eq(cx.cancel_rc[i], 1);
        ck_assert_msg(cx.again_ok[i], "long %d: the session does not work after the cancel", i);
    }
    /* nothing of ours still runs on the server */
    char *ci = pqa_conninfo_port(pqa_server2_port(srv), NULL);
    PGconn *d = PQconnectdb(ci);
    free(ci);
    PGresult *r = pqa_exec_ok(d, "select count(*) from pg_stat_activity where state = 'active'"
                                 " and query like 'select pg_sleep(20)%'", PGRES_TUPLES_OK);
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "0");
    PQclear(r);
    PQfinish(d);
    for (int i = 0; i < N_LONG + N_SHORT; i++)
        PQfinish(cx.conn[i]);
    pqa_stall_assert(&st, "through pgbouncer");
}
END_TEST

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

int main(void)
{
    pqa_env_init();
    /* 2,000 client sockets plus the rest */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 8192) {
        rl.rlim_cur = rl.rlim_max < 8192 ? rl.rlim_max : 8192;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    pqa_server2_start(&srv, 1);
    bouncer_port = pqa_server2_bouncer(srv, POOL);
    Suite *s = suite_create("fault-bouncer");
    TCase *tc = tcase_create("bouncer");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_two_thousand_tasks);
    tcase_add_test(tc, test_cancels_reach_the_right_backend);
    suite_add_tcase(s, tc);
    int rc = pqa_run_suite(s);
    pqa_server2_stop_all();
    return rc;
}
