/*
 * test_pool_release.c -- what a connection comes back in, and what the next
 * user gets.
 *
 * Each test leaves a connection in one dirty state -- an open transaction,
 * a failed one, COPY IN or OUT half done, a statement still running, results
 * unread, pipeline mode, a dead backend, session settings -- releases it, and
 * acquires again from a pool of one: the next user must get a clean
 * connection (idle, no trace of the previous work in the database), and the
 * statistics and backend pid say whether it was cleaned and reused or
 * discarded and replaced.  Also: DISCARD ALL, the reset and configure
 * callbacks, client-side settings, and a reset that overruns reset_timeout
 * (a frozen backend) being cut off.
 */
#include "pool_common.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PTR(i) ((void *)(intptr_t)(i))

static char table[40];

static pqawait_pool *pool_of_one(pqawait_pool_options *o)
{
    char *ci = pt_conninfo(pt_app(), NULL);
    pqawait_pool *p = pqawait_pool_new(awaitlet_current_loop(), ci, o);
    ck_assert_msg(p != NULL, "pqawait_pool_new: %s", strerror(errno));
    free(ci);
    return p;
}

static pqawait_pool *default_pool(void)
{
    pqawait_pool_options o = pt_options(0, 1);
    o.reset_timeout = 5;
    return pool_of_one(&o);
}

static struct pqawait_pool_stats stats(pqawait_pool *p)
{
    struct pqawait_pool_stats s;
    ck_assert_int_eq(pqawait_pool_stats(p, &s), 0);
    return s;
}

static void make_table(void)
{
    snprintf(table, sizeof table, "pool_rt_%ld", (long)getpid());
    char sql[256];
    snprintf(sql, sizeof sql,
             "set client_min_messages = warning; drop table if exists %s; create table %s(v int)",
             table, table);
    pt_sql(sql);
}

static long rows(PGconn *c)
{
    char sql[256];
    snprintf(sql, sizeof sql, "select count(*) from %s", table);
    return pt_int(c, sql);
}

static void exec_ok(PGconn *c, const char *sql, ExecStatusType want)
{
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == want, "%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
}

/* The next user's view: acquired at once, idle, working. */
static PGconn *next_user(pqawait_pool *p)
{
    double t0 = pqa_now();
    PGconn *c = pqawait_pool_acquire_timeout(p, 5);
    ck_assert_msg(c != NULL, "next acquire failed: %s", strerror(errno));
    ck_assert_msg(pqa_now() - t0 < 3, "next acquire took %.2f s", pqa_now() - t0);
    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    ck_assert_int_eq(PQtransactionStatus(c), PQTRANS_IDLE);
    ck_assert_int_eq(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    ck_assert_int_eq(pt_int(c, "select 5"), 5);
    return c;
}

/* ---- states that are cleaned, the connection reused ---------------------------- */

enum dirt { IN_TX, FAILED_TX, COPY_IN, COPY_OUT, RUNNING, UNREAD, PIPELINE_EMPTY };

static void *dirty_task(void *arg)
{
    enum dirt d = (enum dirt)(intptr_t)arg;
    make_table();
    pqawait_pool *p = default_pool();
    PGconn *c = pqawait_pool_acquire(p);
    ck_assert_ptr_nonnull(c);
    int pid = pt_pid(c);
    char sql[256];
    switch (d) {
    case IN_TX:
        exec_ok(c, "begin", PGRES_COMMAND_OK);
        snprintf(sql, sizeof sql, "insert into %s values (1), (2)", table);
        exec_ok(c, sql, PGRES_COMMAND_OK);
        ck_assert_int_eq(PQtransactionStatus(c), PQTRANS_INTRANS);
        break;
    case FAILED_TX:
        exec_ok(c, "begin", PGRES_COMMAND_OK);
        snprintf(sql, sizeof sql, "insert into %s values (1)", table);
        exec_ok(c, sql, PGRES_COMMAND_OK);
        exec_ok(c, "select 1/0", PGRES_FATAL_ERROR);
        ck_assert_int_eq(PQtransactionStatus(c), PQTRANS_INERROR);
        break;
    case COPY_IN:
        snprintf(sql, sizeof sql, "copy %s from stdin", table);
        exec_ok(c, sql, PGRES_COPY_IN);
        ck_assert_int_eq(PQputCopyData(c, "1\n2\n3\n", 6), 1);
        break;
    case COPY_OUT: {
        exec_ok(c, "copy (select generate_series(1, 3000000)) to stdout", PGRES_COPY_OUT);
        char *buf;
        ck_assert_int_gt(PQgetCopyData(c, &buf, 0), 0);
        PQfreemem(buf);
        break;
    }
    case RUNNING:
        ck_assert_int_eq(PQsendQuery(c, "select pg_sleep(30)"), 1);
        break;
    case UNREAD: {
        snprintf(sql, sizeof sql, "insert into %s values (7); select 1; select 2", table);
        ck_assert_int_eq(PQsendQuery(c, sql), 1);
        PGresult *r = PQgetResult(c); /* the first of three */
        PQclear(r);
        break;
    }
    case PIPELINE_EMPTY:
        ck_assert_int_eq(PQenterPipelineMode(c), 1);
        break;
    }
    double t0 = pqa_now();
    ck_assert_int_eq(pqawait_pool_release(p, c), 0);
    ck_assert_msg(pqa_now() - t0 < 0.05, "release waited %.3f s", pqa_now() - t0);
    PGconn *n = next_user(p);
    ck_assert_int_eq(pt_pid(n), pid); /* cleaned and reused, not replaced */
    ck_assert_int_eq(rows(n), d == UNREAD ? 1 : 0); /* UNREAD's insert committed */
    struct pqawait_pool_stats s = stats(p);
    ck_assert_uint_eq(s.opened, 1);
    ck_assert_uint_eq(s.discarded + s.lost, 0);
    ck_assert_uint_eq(s.resets, d == PIPELINE_EMPTY ? 0 : 1);
    pqawait_pool_release(p, n);
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(cleaned)
{
    ck_assert_ptr_eq(pt_run(dirty_task, PTR(_i), 5), PTR(1));
}
END_TEST

/* A statement released the moment it was sent: the reset's cancel request
 * often reaches the backend before the backend has read the statement, and
 * PostgreSQL ignores a cancel that finds it reading a command -- the
 * statement then runs for its full 30 s.  The reset must not rely on its
 * first cancel.  Many rounds, because the race is timing's: before the
 * reset sent its cancel again, some rounds took the whole reset_timeout and
 * lost the connection (how often depends on the machine's load). */
static void *just_sent_task(void *arg)
{
    (void)arg;
    pqawait_pool *p = default_pool();
    PGconn *c = pqawait_pool_acquire(p);
    ck_assert_ptr_nonnull(c);
    int pid = pt_pid(c);
    enum { ROUNDS = 40 };
    double worst = 0;
    for (int i = 0; i < ROUNDS; i++) {
        ck_assert_int_eq(PQsendQuery(c, "select pg_sleep(30)"), 1);
        ck_assert_int_eq(pqawait_pool_release(p, c), 0);
        double t0 = pqa_now();
        c = next_user(p); /* acquired within 3 s, idle, working */
        if (pqa_now() - t0 > worst)
            worst = pqa_now() - t0;
        ck_assert_msg(pt_pid(c) == pid, "round %d: the connection was replaced (reset gave up)", i);
    }
    struct pqawait_pool_stats s = stats(p);
    printf("%d statements released as soon as sent: %llu resets, %llu discarded, longest reset %.3f s\n", ROUNDS,
           (unsigned long long)s.resets, (unsigned long long)(s.discarded + s.lost), worst);
    ck_assert_uint_eq(s.opened, 1);
    ck_assert_uint_eq(s.discarded + s.lost, 0);
    pqawait_pool_release(p, c);
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(running_just_sent_is_cancelled)
{
    ck_assert_ptr_eq(pt_run(just_sent_task, NULL, 5), PTR(1));
}
END_TEST

/* ---- states that are discarded ------------------------------------------------------ */

static void *pipeline_pending_task(void *arg)
{
    (void)arg;
    pqawait_pool *p = default_pool();
    PGconn *c = pqawait_pool_acquire(p);
    int pid = pt_pid(c);
    ck_assert_int_eq(PQenterPipelineMode(c), 1);
    ck_assert_int_eq(PQsendQueryParams(c, "select 1", 0, NULL, NULL, NULL, NULL, 0), 1);
    ck_assert_int_eq(PQpipelineSync(c), 1);
    pqawait_pool_release(p, c);
    PGconn *n = next_user(p);
    ck_assert_int_ne(pt_pid(n), pid);
    struct pqawait_pool_stats s = stats(p);
    ck_assert_uint_eq(s.discarded, 1);
    ck_assert_uint_eq(s.opened, 2);
    pqawait_pool_release(p, n);
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(pipeline_with_results_discarded)
{
    ck_assert_ptr_eq(pt_run(pipeline_pending_task, NULL, 5), PTR(1));
}
END_TEST

static void *bad_task(void *arg)
{
    (void)arg;
    pqawait_pool *p = default_pool();
    PGconn *c = pqawait_pool_acquire(p);
    int pid = pt_pid(c);
    char sql[64];
    snprintf(sql, sizeof sql, "select pg_terminate_backend(%d)", pid);
    pt_sql(sql);
    PGresult *r = PQexec(c, "select 1"); /* the user's own failed call */
    ck_assert_int_ne(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    ck_assert_int_eq(PQstatus(c), CONNECTION_BAD);
    pqawait_pool_release(p, c);
    PGconn *n = next_user(p);
    ck_assert_int_ne(pt_pid(n), pid);
    ck_assert_uint_eq(stats(p).lost, 1);
    pqawait_pool_release(p, n);
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(connection_bad_replaced)
{
    ck_assert_ptr_eq(pt_run(bad_task, NULL, 5), PTR(1));
}
END_TEST

/* ---- session state ------------------------------------------------------------------ */

static void *session_task(void *arg)
{
    int discard = (int)(intptr_t)arg;
    pqawait_pool_options o = pt_options(0, 1);
    o.reset = discard ? PQAWAIT_POOL_DISCARD_ALL : 0;
    pqawait_pool *p = pool_of_one(&o);
    PGconn *c = pqawait_pool_acquire(p);
    int pid = pt_pid(c);
    exec_ok(c, "set work_mem = '7MB'", PGRES_COMMAND_OK);
    exec_ok(c, "prepare pool_s as select 1", PGRES_COMMAND_OK);
    exec_ok(c, "create temp table pool_tt(x int)", PGRES_COMMAND_OK);
    pqawait_pool_release(p, c);
    PGconn *n = next_user(p);
    ck_assert_int_eq(pt_pid(n), pid);
    PGresult *r = PQexec(n, "show work_mem");
    ck_assert_str_eq(PQgetvalue(r, 0, 0), discard ? "4MB" : "7MB");
    PQclear(r);
    ck_assert_int_eq(pt_int(n, "select count(*) from pg_prepared_statements"), discard ? 0 : 1);
    ck_assert_int_eq(pt_int(n, "select count(*) from pg_class where relname = 'pool_tt' "
                               "and relpersistence = 't' and pg_table_is_visible(oid)"),
                     discard ? 0 : 1);
    ck_assert_uint_eq(stats(p).resets, discard ? 1 : 0);
    pqawait_pool_release(p, n);
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(session_state)
{
    ck_assert_ptr_eq(pt_run(session_task, PTR(_i), 5), PTR(1));
}
END_TEST

/* ---- client-side settings ------------------------------------------------------------ */

static int notices_seen;

static void counting_processor(void *arg, const char *msg)
{
    (void)msg;
    ++*(int *)arg;
}

static void *client_task(void *arg)
{
    (void)arg;
    pqawait_pool *p = default_pool();
    PGconn *c = pqawait_pool_acquire(p);
    int stack_counter = 0;
    PQsetNoticeProcessor(c, counting_processor, &stack_counter);
    exec_ok(c, "do $$ begin raise notice 'mine'; end $$", PGRES_COMMAND_OK);
    ck_assert_int_eq(stack_counter, 1);
    ck_assert_int_eq(PQsetnonblocking(c, 1), 0);
    PQsetErrorVerbosity(c, PQERRORS_VERBOSE);
    PQsetErrorContextVisibility(c, PQSHOW_CONTEXT_ALWAYS);
    exec_ok(c, "listen pool_chan", PGRES_COMMAND_OK);
    exec_ok(c, "notify pool_chan", PGRES_COMMAND_OK); /* sits unread in libpq */
    pqawait_pool_release(p, c);
    PGconn *n = next_user(p);
    ck_assert_ptr_eq(n, c);
    ck_assert_int_eq(PQisnonblocking(n), 0);
    ck_assert_int_eq(PQsetErrorVerbosity(n, PQERRORS_DEFAULT), PQERRORS_DEFAULT);
    ck_assert_int_eq(PQsetErrorContextVisibility(n, PQSHOW_CONTEXT_ERRORS), PQSHOW_CONTEXT_ERRORS);
    ck_assert_ptr_null(PQnotifies(n));
    /* the previous user's processor (and its dangling argument) is gone */
    ck_assert_ptr_ne(PQsetNoticeProcessor(n, NULL, NULL), counting_processor);
    notices_seen = 0;
    PQsetNoticeProcessor(n, counting_processor, &notices_seen);
    exec_ok(n, "do $$ begin raise notice 'theirs'; end $$", PGRES_COMMAND_OK);
    ck_assert_int_eq(notices_seen, 1);
    ck_assert_int_eq(stack_counter, 1);
    pqawait_pool_release(p, n);
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(client_settings_restored)
{
    ck_assert_ptr_eq(pt_run(client_task, NULL, 5), PTR(1));
}
END_TEST

/* ---- callbacks ------------------------------------------------------------------------ */

static int resets_called, reset_answer;

static int reset_cb(PGconn *c, void *arg)
{
    ck_assert_ptr_eq(arg, &resets_called);
    ck_assert_int_eq(PQtransactionStatus(c), PQTRANS_IDLE); /* after the rollback */
    resets_called++;
    return reset_answer;
}

static int configure_cb(PGconn *c, void *arg)
{
    PGresult *r = PQexec(c, (const char *)arg);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok ? 0 : -1;
}

static void *callbacks_task(void *arg)
{
    (void)arg;
    pqawait_pool_options o = pt_options(0, 1);
    o.reset_cb = reset_cb;
    o.reset_arg = &resets_called;
    o.configure = configure_cb;
    o.configure_arg = (void *)"set statement_timeout = '1234ms'";
    pqawait_pool *p = pool_of_one(&o);
    PGconn *c = pqawait_pool_acquire(p);
    PGresult *r = PQexec(c, "show statement_timeout");
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "1234ms");
    PQclear(r);
    int pid = pt_pid(c);
    exec_ok(c, "begin", PGRES_COMMAND_OK);
    reset_answer = 0;
    pqawait_pool_release(p, c);
    PGconn *n = next_user(p);
    ck_assert_int_eq(resets_called, 1);
    ck_assert_int_eq(pt_pid(n), pid);
    reset_answer = -1; /* refused: discarded, a new one is opened */
    pqawait_pool_release(p, n);
    n = next_user(p);
    ck_assert_int_ne(pt_pid(n), pid);
    ck_assert_uint_eq(stats(p).discarded, 1);
    reset_answer = 0;
    pqawait_pool_release(p, n);
    pqawait_pool_close(p);

    /* a configure that fails: connects count as failures, with the reason */
    o = pt_options(1, 1);
    o.configure = configure_cb;
    o.configure_arg = (void *)"set no_such_setting_at_all = 1";
    o.backoff_max = 0.05;
    p = pool_of_one(&o);
    errno = 0;
    ck_assert_int_eq(pqawait_pool_wait(p, 0.3), -1);
    ck_assert_int_eq(errno, ETIMEDOUT);
    ck_assert_uint_ge(stats(p).connect_failures, 1);
    ck_assert_uint_eq(stats(p).opened, 0);
    const char *why = pqawait_pool_error(p);
    ck_assert_msg(why && strstr(why, "configure"), "error: %s", why ? why : "(none)");
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(callbacks)
{
    ck_assert_ptr_eq(pt_run(callbacks_task, NULL, 5), PTR(1));
}
END_TEST

/* ---- a reset that overruns ------------------------------------------------------------ */

static void *overrun_task(void *arg)
{
    (void)arg;
    pqawait_pool_options o = pt_options(0, 1);
    o.reset_timeout = 0.3;
    pqawait_pool *p = pool_of_one(&o);
    PGconn *c = pqawait_pool_acquire(p);
    int pid = pt_pid(c);
    ck_assert_int_eq(PQsendQuery(c, "select pg_sleep(30)"), 1);
    awaitlet_sleep(0.05);
    pt_stop_backend(pid); /* the backend will not hear the cancel */
    double t0 = pqa_now();
    pqawait_pool_release(p, c);
    PGconn *n = pqawait_pool_acquire_timeout(p, 5);
    double took = pqa_now() - t0;
    pt_cont_backend(pid);
    ck_assert_msg(n != NULL, "acquire after an overrunning reset: %s", strerror(errno));
    ck_assert_msg(took >= 0.25 && took < 3, "took %.2f s", took);
    ck_assert_int_ne(pt_pid(n), pid);
    ck_assert_uint_eq(stats(p).lost + stats(p).discarded, 1);
    pqawait_pool_release(p, n);
    pqawait_pool_close(p);
    return PTR(1);
}

START_TEST(reset_overrun_cut_off)
{
    ck_assert_ptr_eq(pt_run(overrun_task, NULL, 5), PTR(1));
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("pool-release");
    TCase *tc = tcase_create("release");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, cleaned, IN_TX, PIPELINE_EMPTY + 1);
    tcase_add_test(tc, running_just_sent_is_cancelled);
    tcase_add_test(tc, pipeline_with_results_discarded);
    tcase_add_test(tc, connection_bad_replaced);
    tcase_add_loop_test(tc, session_state, 0, 2);
    tcase_add_test(tc, client_settings_restored);
    tcase_add_test(tc, callbacks);
    tcase_add_test(tc, reset_overrun_cut_off);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
