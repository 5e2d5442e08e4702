/*
 * test_kill.c -- a server killed under tasks (issue 9, item 2, first
 * point).
 *
 * A private server (tests/pg/pgserver through server2.c; the shared test
 * server is never killed) is crashed the way `pg_ctl stop -m immediate`
 * does it (SIGQUIT to the postmaster) while five tasks use it: one waits in
 * a long query, one reads a COPY OUT, one is held inside PQputCopyData by a
 * COPY IN the server consumes slowly, one waits for a pipeline's results,
 * one is idle.  Beside them, bystander tasks on the shared server keep
 * running queries, and the stall meter watches the loop.  Checked:
 *   - every busy task gets its error within 0.5 s of the crash, the idle
 *     one at its next query, each a libpq error that names what happened;
 *   - PQreset while the server is down fails at once ("Connection
 *     refused"), PQreset once it is back (restarted by another task on an
 *     offload worker) reconnects, and the connection works;
 *   - the COPY IN left no row behind (no silent partial success);
 *   - the bystanders got every answer right and on time, and the loop never
 *     stalled -- through the crash, the failed resets and the reconnects.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "fault.h"
#include "pqawait.h"
#include "server2.h"
#include "stall.h"

static pqa_server2 *victim_srv;

enum { V_QUERY, V_COPY_OUT, V_COPY_IN, V_PIPELINE, V_IDLE, N_VICTIMS };
static const char *const vname[N_VICTIMS] = {"query", "copy-out", "copy-in", "pipeline", "idle"};

struct kill_test;

struct victim {
    struct kill_test *kt;
    int kind;
    PGconn *conn;
    int busy;               /* in the middle of its operation */
    double t_start, t_err;  /* t_start: when the idle one asked */
    int got_error;          /* the operation failed (as it must) */
    char err[512];
    unsigned long progress; /* rows read / written before the crash */
    /* PQreset while the server is down, and once it is back */
    int down_bad;
    double down_s;
    char down_err[512];
    int up_ok, after_ok;
    double up_s;
    char up_err[512];
    long rows_left;         /* copy-in: rows of its COPY in the table */
};

struct kill_test {
    struct victim v[N_VICTIMS];
    ev_timer killer;
    struct ev_loop *loop;
    double t_all_busy, t_kill;
    int killed, down, back, resets_down, restart_rc;
};

static void note_error(struct victim *v, const char *how)
{
    if (v->got_error)
        return;
    v->got_error = 1;
    v->t_err = pqa_now();
    snprintf(v->err, sizeof v->err, "%s: %s", how, PQerrorMessage(v->conn));
}

static void run_query(struct victim *v)
{
    v->busy = 1;
    PGresult *r = PQexec(v->conn, "select pg_sleep(60)");
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        note_error(v, PQresStatus(PQresultStatus(r)));
    PQclear(r);
}

static void run_copy_out(struct victim *v)
{
    PGresult *r = PQexec(v->conn, "copy (select i, pg_sleep(0.0005) from generate_series(1, 1000000) i) to stdout");
    int st = PQresultStatus(r);
    PQclear(r);
    if (st != PGRES_COPY_OUT) {
        note_error(v, "copy out did not start");
        return;
    }
    char *buf;
    int n;
    while ((n = PQgetCopyData(v->conn, &buf, 0)) > 0) {
        v->progress++;
        v->busy = 1;
        PQfreemem(buf);
    }
    if (n == -2)
        note_error(v, "PQgetCopyData -2");
    while ((r = PQgetResult(v->conn)) != NULL) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            note_error(v, PQresStatus(PQresultStatus(r)));
        PQclear(r);
        if (PQstatus(v->conn) == CONNECTION_BAD)
            break;
    }
}

/* The server takes 1 ms per row (a trigger), so the socket buffers fill
 * and the task waits inside PQputCopyData for the socket to drain. */
static void run_copy_in(struct victim *v)
{
    PGresult *r = PQexec(v->conn, "copy fault_in from stdin");
    int st = PQresultStatus(r);
    PQclear(r);
    if (st != PGRES_COPY_IN) {
        note_error(v, "copy in did not start");
        return;
    }
    char row[1024];
    memset(row, 'r', sizeof row - 1);
    row[sizeof row - 1] = '\n';
    double end = pqa_now() + 60;
    while (pqa_now() < end) {
        if (PQputCopyData(v->conn, row, (int)sizeof row) != 1) {
            note_error(v, "PQputCopyData -1");
            break;
        }
        if (++v->progress == 200)
            v->busy = 1;
        if (PQstatus(v->conn) == CONNECTION_BAD) {
            note_error(v, "PQputCopyData: connection bad");
            break;
        }
    }
    /* however the COPY ended, finishing it must report failure */
    if (PQputCopyEnd(v->conn, NULL) != 1)
        note_error(v, "PQputCopyEnd -1");
    while ((r = PQgetResult(v->conn)) != NULL) {
        if (PQresultStatus(r) == PGRES_COMMAND_OK) {
            snprintf(v->err, sizeof v->err, "the cut COPY IN reported success");
            v->got_error = 0;
            PQclear(r);
            break;
        }
        note_error(v, PQresStatus(PQresultStatus(r)));
        PQclear(r);
        if (PQstatus(v->conn) == CONNECTION_BAD)
            break;
    }
}

static void run_pipeline(struct victim *v)
{
    static const char *const sql[] = {"select 1", "select pg_sleep(60)", "select 3"};
    if (PQenterPipelineMode(v->conn) != 1) {
        note_error(v, "PQenterPipelineMode");
        return;
    }
    /* a flush request after the first: the server sends its result
     * before it starts the long second one */
    for (int i = 0; i < 3; i++)
        if (PQsendQueryParams(v->conn, sql[i], 0, NULL, NULL, NULL, NULL, 0) != 1 ||
            (i == 0 && PQsendFlushRequest(v->conn) != 1)) {
            note_error(v, "PQsendQueryParams");
            return;
        }
    if (PQpipelineSync(v->conn) != 1) {
        note_error(v, "PQpipelineSync");
        return;
    }
    PGresult *r = PQgetResult(v->conn);
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "1") == 0;
    PQclear(r);
    if (!ok || PQgetResult(v->conn) != NULL) {
        note_error(v, "the first pipeline result");
        return;
    }
    v->busy = 1;
    /* the second statement's result: the crash comes first; a pipeline
     * broken by a lost connection may give a few more results, then stops */
    for (int i = 0; i < 8 && !v->got_error; i++) {
        r = PQgetResult(v->conn);
        if (r && PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_PIPELINE_SYNC)
            note_error(v, PQresStatus(PQresultStatus(r)));
        PQclear(r);
    }
}

static void run_idle(struct victim *v)
{
    v->busy = 1;
    if (pqa_wait_flag(&v->kt->down, 30) < 0) {
        note_error(v, "the server never went down");
        return;
    }
    v->t_start = pqa_now();
    PGresult *r = PQexec(v->conn, "select 1");
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        note_error(v, PQresStatus(PQresultStatus(r)));
    PQclear(r);
}

static void *victim_task(void *arg)
{
    struct victim *v = arg;
    struct kill_test *kt = v->kt;
    switch (v->kind) {
    case V_QUERY: run_query(v); break;
    case V_COPY_OUT: run_copy_out(v); break;
    case V_COPY_IN: run_copy_in(v); break;
    case V_PIPELINE: run_pipeline(v); break;
    default: run_idle(v); break;
    }
    /* the server is down: PQreset must fail at once, cooperatively */
    if (pqa_wait_flag(&kt->down, 30) == 0) {
        double t0 = pqa_now();
        PQreset(v->conn);
        v->down_s = pqa_now() - t0;
        v->down_bad = PQstatus(v->conn) == CONNECTION_BAD;
        snprintf(v->down_err, sizeof v->down_err, "%s", PQerrorMessage(v->conn));
    }
    kt->resets_down++;
    /* once it is back, PQreset reconnects */
    if (pqa_wait_flag(&kt->back, 60) == 0) {
        double t0 = pqa_now();
        PQreset(v->conn);
        v->up_s = pqa_now() - t0;
        v->up_ok = PQstatus(v->conn) == CONNECTION_OK;
        snprintf(v->up_err, sizeof v->up_err, "%s", PQerrorMessage(v->conn));
        PGresult *r = PQexec(v->conn, v->kind == V_COPY_IN ? "select count(*) from fault_in" : "select 'back'");
        v->after_ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        if (v->after_ok && v->kind == V_COPY_IN)
            v->rows_left = atol(PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    return NULL;
}

/* On an offload worker: the waits for the postmaster and its restart
 * block a thread for up to a second, never the loop. */
static void *wait_down_fn(void *arg)
{
    return (void *)(long)pqa_server2_wait_down(arg, 20);
}

static void *restart_fn(void *arg)
{
    return (void *)(long)pqa_server2_restart(arg);
}

/* Sees the crash through, then brings the server back once every victim
 * has tried its PQreset against the dead one. */
static void *keeper_task(void *arg)
{
    struct kill_test *kt = arg;
    void *res = NULL;
    if (pqa_wait_flag(&kt->killed, 30) < 0)
        return NULL;
    awaitlet_offload(wait_down_fn, victim_srv, &res);
    kt->down = res == NULL; /* wait_down returned 0 */
    while (kt->resets_down < N_VICTIMS)
        if (awaitlet_sleep(0.01) < 0)
            return NULL;
    res = (void *)-1L;
    awaitlet_offload(restart_fn, victim_srv, &res);
    kt->restart_rc = (int)(long)res;
    kt->back = 1;
    return NULL;
}

/* Crashes the server 0.2 s after every victim is in the middle of its
 * operation (checked every 10 ms). */
static void killer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct kill_test *kt = w->data;
    int busy = 0;
    for (int i = 0; i < N_VICTIMS; i++)
        busy += kt->v[i].busy;
    if (busy < N_VICTIMS)
        return;
    double now = pqa_now();
    if (!kt->t_all_busy)
        kt->t_all_busy = now;
    if (now - kt->t_all_busy < 0.2)
        return;
    kt->t_kill = pqa_now();
    ck_assert_msg(pqa_server2_crash(victim_srv) == 0, "crash: %s", strerror(errno));
    kt->killed = 1;
    ev_timer_stop(kt->loop, w);
}

static void setup_victim_server(void)
{
    char *ci = pqa_conninfo_port(pqa_server2_port(victim_srv), NULL);
    PGconn *c = PQconnectdb(ci);
    free(ci);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "setup: %s", PQerrorMessage(c));
    PGresult *r = PQexec(c, "create table if not exists fault_in (a text);"
                            "create or replace function fault_slow() returns trigger language plpgsql as"
                            " $$ begin perform pg_sleep(0.001); return new; end $$;"
                            "drop trigger if exists fault_slow on fault_in;"
                            "create trigger fault_slow before insert on fault_in"
                            " for each row execute function fault_slow();"
                            "truncate fault_in");
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "setup: %s", PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
}

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

START_TEST(test_crash_under_tasks)
{
    setup_victim_server();
    static struct kill_test kt;
    memset(&kt, 0, sizeof kt);
    struct ev_loop *loop = kt.loop = pqa_loop_new();
    char *ci = pqa_conninfo_port(pqa_server2_port(victim_srv), NULL);
    for (int i = 0; i < N_VICTIMS; i++) {
        kt.v[i].kt = &kt;
        kt.v[i].kind = i;
        kt.v[i].conn = PQconnectdb(ci);
        ck_assert_msg(PQstatus(kt.v[i].conn) == CONNECTION_OK, "connect: %s", PQerrorMessage(kt.v[i].conn));
    }
    free(ci);

    pqa_stall st;
    pqa_stall_start(&st, loop);
    pqa_bystanders by;
    pqa_bystanders_start(&by, loop, 4);
    awaitlet_task *vt[N_VICTIMS];
    for (int i = 0; i < N_VICTIMS; i++)
        ck_assert_ptr_nonnull(vt[i] = awaitlet_async_def(loop, victim_task, &kt.v[i]));
    awaitlet_task *keeper = awaitlet_async_def(loop, keeper_task, &kt);
    ck_assert_ptr_nonnull(keeper);
    ev_timer_init(&kt.killer, killer_cb, 0.01, 0.01);
    kt.killer.data = &kt;
    ev_timer_start(loop, &kt.killer);

    for (int i = 0; i < N_VICTIMS; i++)
        ck_assert_int_eq(awaitlet_join_ex(vt[i], NULL), 0);
    ck_assert_int_eq(awaitlet_join_ex(keeper, NULL), 0);
    pqa_bystanders_stop(&by);
    pqa_stall_stop(&st);
    ev_timer_stop(loop, &kt.killer);
    ck_assert_int_eq(awaitlet_loop_close(loop), 0);
    ev_loop_destroy(loop);

    ck_assert_msg(kt.killed, "the victims never all got busy");
    printf("crash: stall %.1f ms (raw %.1f ms)\n", st.max_gap * 1e3, st.max_raw_gap * 1e3);
    for (int i = 0; i < N_VICTIMS; i++) {
        struct victim *v = &kt.v[i];
        double after = v->t_err - (v->kind == V_IDLE ? v->t_start : kt.t_kill);
        printf("  %-8s error after %6.1f ms (progress %lu): %s\n", vname[i], after * 1e3, v->progress,
               pqa_line(v->err));
        printf("  %-8s reset while down: %s after %.1f ms: %s\n", "", v->down_bad ? "BAD" : "OK?",
               v->down_s * 1e3, pqa_line(v->down_err));
        printf("  %-8s reset when back: %s after %.1f ms\n", "", v->up_ok ? "OK" : "failed", v->up_s * 1e3);
    }
    fflush(stdout);
    ck_assert_msg(kt.down, "the crashed postmaster did not exit");
    ck_assert_msg(kt.restart_rc == 0, "the server did not restart");
    for (int i = 0; i < N_VICTIMS; i++) {
        struct victim *v = &kt.v[i];
        ck_assert_msg(v->got_error, "%s: no error after the crash (%s)", vname[i], v->err);
        double after = v->t_err - (v->kind == V_IDLE ? v->t_start : kt.t_kill);
        ck_assert_msg(after >= 0 && after < pqa_bound(0.5), "%s: the error came %.3f s after the crash",
                      vname[i], after);
        static const char *const crash_msgs[] = {"terminating connection due to immediate shutdown",
                                                 "server closed the connection unexpectedly",
                                                 "connection to server was lost", NULL};
        pqa_assert_names(vname[i], v->err, crash_msgs);
        ck_assert_msg(v->down_bad, "%s: PQreset succeeded while the server was down", vname[i]);
        static const char *const refused[] = {"Connection refused", NULL};
        pqa_assert_names(vname[i], v->down_err, refused);
        ck_assert_msg(v->down_s < pqa_bound(0.5), "%s: PQreset against the dead server took %.3f s",
                      vname[i], v->down_s);
        ck_assert_msg(v->up_ok, "%s: PQreset after the restart failed: %s", vname[i], v->up_err);
        ck_assert_msg(v->after_ok, "%s: the reset connection does not work", vname[i]);
        PQfinish(v->conn);
    }
    ck_assert_msg(kt.v[V_COPY_IN].progress >= 200, "the COPY IN was not under way");
    ck_assert_msg(kt.v[V_COPY_IN].rows_left == 0, "the crashed COPY IN left %ld rows",
                  kt.v[V_COPY_IN].rows_left);
    pqa_bystanders_check(&by, 20, pqa_bound(0.25));
    pqa_stall_assert(&st, "server killed");
}
END_TEST

int main(void)
{
    pqa_env_init();
    pqa_server2_start(&victim_srv, 1);
    Suite *s = suite_create("fault-kill");
    TCase *tc = tcase_create("kill");
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_crash_under_tasks);
    suite_add_tcase(s, tc);
    int rc = pqa_run_suite(s);
    pqa_server2_stop_all();
    return rc;
}
