/*
 * test_ownership.c -- one connection, one task at a time: what the shim
 * guarantees when several parties touch the same PGconn.
 *
 * - A call owns its connection from its first instruction: the shim never
 *   suspends a task between entering a libpq call and taking ownership, so
 *   a task that calls first is never refused because of one that ran
 *   during a suspension of the shim's own making.
 * - A refused call computes its failure value before it yields, so a
 *   connection freed by its owner meanwhile is never touched (ASan and
 *   valgrind watch this one).
 * - A refused call changes nothing on the connection: the owner's
 *   PQerrorMessage is byte for byte what it is without the refused caller.
 * - PQfinish of a connection another task is using shuts the session down
 *   at once (the owner's call ends with libpq's own connection-lost error)
 *   but leaves the PGconn to the owner: its PQerrorMessage stays valid and
 *   its own PQfinish frees it -- also when a task PQfinishes random other
 *   tasks' connections over and over.
 */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "pqawait.h"

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

static void spin(double seconds)
{
    double t0 = pqa_now();
    while (pqa_now() - t0 < seconds)
        ;
}

/* ---- ownership starts at entry ---- */

/* B calls PQexec after holding the loop for a while (so the shim's
 * fairness wants a yield); a libev callback probes the connection on every
 * loop iteration while B is inside that call.  Whenever the probe runs, B
 * must own the connection already: the probe is refused.  If the shim
 * suspended B before taking ownership, the probe's PQexec would run on B's
 * connection in the middle of B's call. */
struct entry {
    PGconn *conn;
    int inside;        /* B is between calling PQexec and its return */
    int probed;
    PGresult *b, *c;
    int b_errno, c_errno;
};

static void *entry_b(void *arg)
{
    struct entry *e = arg;
    PQclear(PQexec(e->conn, "select 1"));
    spin(0.004);
    e->inside = 1;
    errno = 0;
    e->b = PQexec(e->conn, "select 'b'");
    e->b_errno = errno;
    e->inside = 0;
    return NULL;
}

static void probe_cb(struct ev_loop *loop, ev_check *w, int revents)
{
    (void)loop;
    (void)revents;
    struct entry *e = w->data;
    if (!e->inside || e->probed)
        return;
    e->probed = 1;
    errno = 0;
    e->c = PQexec(e->conn, "select 'c'"); /* outside any task */
    e->c_errno = errno;
}

START_TEST(test_entry_never_suspends)
{
    struct entry e = {0};
    e.conn = pqa_connect(PQA_UNIX, NULL);
    struct ev_loop *loop = pqa_loop_new();
    ev_check probe;
    ev_check_init(&probe, probe_cb);
    probe.data = &e;
    ev_check_start(loop, &probe);
    awaitlet_task *b = awaitlet_async_def(loop, entry_b, &e);
    ck_assert_ptr_nonnull(b);
    awaitlet_join(b);
    ev_check_stop(loop, &probe);
    ev_loop_destroy(loop);
    ck_assert_msg(e.probed, "the loop never turned during B's call");
    ck_assert_msg(e.c == NULL && e.c_errno == EBUSY,
                  "a libev callback used B's connection in the middle of B's PQexec (%s, errno %s): "
                  "the shim suspended B before taking ownership",
                  e.c ? PQresStatus(PQresultStatus(e.c)) : "NULL", strerror(e.c_errno));
    ck_assert_msg(e.b && PQresultStatus(e.b) == PGRES_TUPLES_OK && strcmp(PQgetvalue(e.b, 0, 0), "b") == 0,
                  "B's own call failed (%s, errno %s)", e.b ? PQresStatus(PQresultStatus(e.b)) : "NULL",
                  strerror(e.b_errno));
    PQclear(e.b);
    PQclear(e.c);
    PQfinish(e.conn);
}
END_TEST

/* ---- a refused call's failure value, and the owner freeing conn meanwhile ---- */

struct refused {
    PGconn *conn;
    int sock;
    PGresult *res;
    int res_errno;
    int owner_done;
};

static void *refused_owner(void *arg)
{
    struct refused *rf = arg;
    PGresult *r = PQexec(rf->conn, "select pg_sleep(0.1), 1");
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    PQfinish(rf->conn); /* the owner's own: the struct is gone now */
    rf->owner_done = 1;
    return NULL;
}

static void *refused_caller(void *arg)
{
    struct refused *rf = arg;
    /* wait (without the loop: a blocking ppoll -- with a signal mask, which
     * the shim never makes cooperative, while a task's plain poll now is)
     * until the owner's answer is there, so the owner runs during this
     * task's refusal */
    struct pollfd p = {.fd = rf->sock, .events = POLLIN};
    struct timespec five = {5, 0};
    sigset_t mask;
    ck_assert_int_eq(pthread_sigmask(SIG_SETMASK, NULL, &mask), 0);
    ck_assert_int_eq(ppoll(&p, 1, &five, &mask), 1);
    errno = 0;
    rf->res = PQgetResult(rf->conn);
    rf->res_errno = errno;
    return NULL;
}

START_TEST(test_refused_value_first)
{
    struct refused rf = {0};
    rf.conn = pqa_connect(PQA_UNIX, NULL);
    rf.sock = PQsocket(rf.conn);
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *a = awaitlet_async_def(loop, refused_owner, &rf);
    awaitlet_task *b = awaitlet_async_def(loop, refused_caller, &rf);
    ck_assert(a && b);
    awaitlet_join(b);
    awaitlet_join(a);
    ev_loop_destroy(loop);
    ck_assert_msg(rf.owner_done, "the owner did not finish during the refusal: the test proves nothing");
    ck_assert_msg(rf.res && PQresultStatus(rf.res) == PGRES_FATAL_ERROR,
                  "refused PQgetResult: %s", rf.res ? PQresStatus(PQresultStatus(rf.res)) : "NULL");
    ck_assert_int_eq(rf.res_errno, EBUSY);
    PQclear(rf.res);
}
END_TEST

/* ---- a refused call leaves the owner's connection alone ---- */

struct quiet {
    PGconn *conn;
    int with_intruder;
    char owner_msg[512];
    char intruder_msg[512];
    int intruder_errnos[6];
    ExecStatusType intruder_result;
    int intruder_ran;
};

static void *quiet_owner(void *arg)
{
    struct quiet *q = arg;
    PGresult *r = PQexec(q->conn, "do $$ begin perform pg_sleep(0.3); "
                                  "raise exception 'the owner''s own error'; end $$");
    ck_assert_int_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
    PQclear(r);
    snprintf(q->owner_msg, sizeof q->owner_msg, "%s", PQerrorMessage(q->conn));
    return NULL;
}

static void *quiet_intruder(void *arg)
{
    struct quiet *q = arg;
    awaitlet_sleep(0.1);
    q->intruder_ran = 1;
    errno = 0;
    PQclear(PQexec(q->conn, "select 'intruder'"));
    q->intruder_errnos[0] = errno;
    errno = 0;
    (void)PQsendQuery(q->conn, "select 2");
    q->intruder_errnos[1] = errno;
    errno = 0;
    PGresult *r = PQgetResult(q->conn);
    q->intruder_errnos[2] = errno;
    q->intruder_result = r ? PQresultStatus(r) : PGRES_EMPTY_QUERY;
    PQclear(r);
    errno = 0;
    (void)PQflush(q->conn);
    q->intruder_errnos[3] = errno;
    errno = 0;
    (void)PQconsumeInput(q->conn);
    q->intruder_errnos[4] = errno;
    errno = 0;
    PQreset(q->conn);
    q->intruder_errnos[5] = errno;
    snprintf(q->intruder_msg, sizeof q->intruder_msg, "%s", PQerrorMessage(q->conn));
    return NULL;
}

static void run_quiet(struct quiet *q)
{
    q->conn = pqa_connect(PQA_UNIX, NULL);
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *a = awaitlet_async_def(loop, quiet_owner, q);
    awaitlet_task *b = q->with_intruder ? awaitlet_async_def(loop, quiet_intruder, q) : NULL;
    ck_assert_ptr_nonnull(a);
    awaitlet_join(a);
    if (b)
        awaitlet_join(b);
    ev_loop_destroy(loop);
    PQclear(pqa_exec_ok(q->conn, "select 'in sync'", PGRES_TUPLES_OK));
    PQfinish(q->conn);
}

START_TEST(test_refused_call_changes_nothing)
{
    struct quiet alone = {0}, disturbed = {.with_intruder = 1};
    run_quiet(&alone);
    run_quiet(&disturbed);
    ck_assert(disturbed.intruder_ran);
    ck_assert_msg(strcmp(alone.owner_msg, disturbed.owner_msg) == 0,
                  "the owner's PQerrorMessage changed:\nalone:     '%s'\ndisturbed: '%s'", alone.owner_msg,
                  disturbed.owner_msg);
    for (int i = 0; i < 6; i++)
        ck_assert_msg(disturbed.intruder_errnos[i] == EBUSY, "refused call %d: errno %s", i,
                      strerror(disturbed.intruder_errnos[i]));
    ck_assert_int_eq(disturbed.intruder_result, PGRES_FATAL_ERROR);
    /* the refused caller reads the owner's message as it was: nothing added */
    ck_assert_msg(strstr(disturbed.intruder_msg, "another command") == NULL,
                  "the refusal wrote into the owner's connection: '%s'", disturbed.intruder_msg);
}
END_TEST

/* ---- PQfinish of a connection in use ---- */

struct finish {
    PGconn *conn;
    struct ev_loop *loop;
    ev_timer kill;
    int from_callback;
    ExecStatusType status;
    ConnStatusType conn_status;
    double elapsed;
    char msg[512];
    int killed;
};

static void *finish_owner(void *arg)
{
    struct finish *f = arg;
    double t0 = pqa_now();
    PGresult *r = PQexec(f->conn, "select pg_sleep(3)");
    f->elapsed = pqa_now() - t0;
    f->status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    PQclear(r);
    /* still the owner's: everything libpq offers on a dead connection */
    f->conn_status = PQstatus(f->conn);
    snprintf(f->msg, sizeof f->msg, "%s", PQerrorMessage(f->conn));
    PQfinish(f->conn); /* as unmodified code does; must not be a double free */
    return NULL;
}

static void *finish_killer(void *arg)
{
    struct finish *f = arg;
    PQfinish(f->conn);
    f->killed = 1;
    return NULL;
}

static void kill_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct finish *f = w->data;
    if (f->from_callback)
        finish_killer(f);
    else
        ck_assert_ptr_nonnull(awaitlet_async_def_opts(loop, finish_killer, f,
                                                      &(awaitlet_options){.detached = 1}));
}

static void check_foreign_finish(int from_callback)
{
    char app[64], sql[200];
    snprintf(app, sizeof app, "application_name=kill_%s_%d", pqa_unique(), from_callback);
    snprintf(sql, sizeof sql,
             "select count(*) from pg_stat_activity where application_name = 'kill_%s_%d'",
             pqa_unique(), from_callback);
    struct finish f = {.from_callback = from_callback};
    f.conn = pqa_connect(PQA_UNIX, app);
    f.loop = pqa_loop_new();
    ev_timer_init(&f.kill, kill_cb, 0.1, 0);
    f.kill.data = &f;
    ev_timer_start(f.loop, &f.kill);
    awaitlet_task *a = awaitlet_async_def(f.loop, finish_owner, &f);
    ck_assert_ptr_nonnull(a);
    awaitlet_join(a);
    while (awaitlet_loop_tasks(f.loop) > 0)
        ev_run(f.loop, EVRUN_ONCE);
    ev_loop_destroy(f.loop);
    printf("PQfinish from a %s: the owner's call ended after %.3f s: %s / %s", from_callback ? "callback" : "task",
           f.elapsed, PQresStatus(f.status), f.msg);
    fflush(stdout);
    ck_assert(f.killed);
    ck_assert_msg(f.elapsed < 1.0, "the owner's statement ran on for %.3f s after PQfinish", f.elapsed);
    ck_assert_int_eq(f.status, PGRES_FATAL_ERROR);
    ck_assert_int_eq(f.conn_status, CONNECTION_BAD);
    ck_assert_msg(f.msg[0] != '\0', "no error message for the lost connection");
    /* the session is gone on the server too */
    PGconn *watcher = pqa_connect(PQA_UNIX, NULL);
    int left = -1;
    for (int i = 0; i < 400 && left != 0; i++) {
        PGresult *r = pqa_exec_ok(watcher, sql, PGRES_TUPLES_OK);
        left = atoi(PQgetvalue(r, 0, 0));
        PQclear(r);
        if (left)
            usleep(10000);
    }
    PQfinish(watcher);
    ck_assert_msg(left == 0, "the session outlived the PQfinish");
}

START_TEST(test_foreign_finish_from_task)
{
    check_foreign_finish(0);
}
END_TEST

START_TEST(test_foreign_finish_from_callback)
{
    check_foreign_finish(1);
}
END_TEST

/* ---- stress: PQfinish random other tasks' connections ---- */

#define WORKERS 8

struct worker {
    PGconn *conn;
    int busy;
    unsigned gen, killed_gen; /* connections made / the last one killed (1-based) */
    unsigned long queries, lost, reconnects;
    int bad_msg;
};

struct stress {
    struct worker w[WORKERS];
    double until;
    unsigned long kills;
    unsigned seed;
};

static struct stress *g_stress;

static void *stress_worker(void *arg)
{
    struct worker *w = arg;
    w->conn = pqa_connect(PQA_UNIX, NULL);
    w->gen = 1;
    unsigned n = 0;
    while (pqa_now() < g_stress->until) {
        char sql[64];
        snprintf(sql, sizeof sql, "select pg_sleep(0.00%u), %u", n % 10, n);
        w->busy = 1;
        PGresult *r = PQexec(w->conn, sql);
        w->busy = 0;
        if (r && PQresultStatus(r) == PGRES_TUPLES_OK) {
            w->queries++;
        } else {
            /* killed: libpq's own connection-lost error, conn still ours */
            w->lost++;
            if (PQstatus(w->conn) != CONNECTION_BAD || PQerrorMessage(w->conn)[0] == '\0')
                w->bad_msg++;
            PQfinish(w->conn);
            w->conn = pqa_connect(PQA_UNIX, NULL);
            w->gen++;
            w->reconnects++;
        }
        PQclear(r);
        n++;
    }
    PQfinish(w->conn);
    return NULL;
}

static void *stress_killer(void *arg)
{
    struct stress *s = arg;
    while (pqa_now() < s->until) {
        awaitlet_sleep(0.003);
        int i = (int)(rand_r(&s->seed) % WORKERS);
        struct worker *w = &s->w[i];
        /* inside PQexec right now, on a connection not killed yet (a kill
         * whose answer was already queued lets that PQexec succeed, and
         * the connection's loss shows only at the next one: killing it
         * again then would count two kills for one loss) */
        if (w->busy && w->killed_gen != w->gen) {
            w->killed_gen = w->gen;
            PQfinish(w->conn);
            s->kills++;
        }
    }
    return NULL;
}

START_TEST(test_finish_stress)
{
    static struct stress s;
    memset(&s, 0, sizeof s);
    g_stress = &s;
    s.seed = 12345;
    s.until = pqa_now() + (pqa_slow_build() ? 3.0 : 1.5);
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *t[WORKERS + 1];
    for (int i = 0; i < WORKERS; i++)
        ck_assert_ptr_nonnull(t[i] = awaitlet_async_def(loop, stress_worker, &s.w[i]));
    ck_assert_ptr_nonnull(t[WORKERS] = awaitlet_async_def(loop, stress_killer, &s));
    for (int i = 0; i <= WORKERS; i++)
        awaitlet_join(t[i]);
    ev_loop_destroy(loop);
    unsigned long q = 0, lost = 0, bad = 0;
    for (int i = 0; i < WORKERS; i++) {
        q += s.w[i].queries;
        lost += s.w[i].lost;
        bad += (unsigned long)s.w[i].bad_msg;
    }
    printf("finish stress: %lu queries, %lu foreign PQfinish, %lu connections lost and finished by "
           "their owners\n", q, s.kills, lost);
    fflush(stdout);
    ck_assert_msg(s.kills >= 10, "only %lu kills: the stress did not happen", s.kills);
    /* every connection killed is lost once, at its next query at the
     * latest; the kill of a worker's last connection may never be seen */
    ck_assert_msg(lost <= s.kills && lost + WORKERS >= s.kills, "%lu kills but %lu lost connections",
                  s.kills, lost);
    ck_assert_msg(bad == 0, "%lu owners found no error on their killed connection", bad);
    ck_assert_msg(q > 0, "no query ever succeeded");
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("shim-ownership");
    TCase *tc = tcase_create("ownership");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_entry_never_suspends);
    tcase_add_test(tc, test_refused_value_first);
    tcase_add_test(tc, test_refused_call_changes_nothing);
    tcase_add_test(tc, test_foreign_finish_from_task);
    tcase_add_test(tc, test_foreign_finish_from_callback);
    tcase_add_test(tc, test_finish_stress);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
