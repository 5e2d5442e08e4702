/*
 * test_concurrency.c -- many tasks, shared connections, several threads.
 * (Interrupted tasks: test_interrupt.c.)
 *
 * - fifty tasks each sleep 0.5 s on the server at once: the wall time must
 *   be about one sleep, not fifty;
 * - a second task (or a plain libev callback) using a connection another
 *   task is waiting on gets libpq's failure values with errno EBUSY,
 *   without touching the wire or the connection, and the owner's result is
 *   intact (PQfinish of a connection in use: test_ownership.c);
 * - the public extras (pqawait_in_scope, _version, _interposed) behave;
 * - two threads, each with its own loop and tasks, use the shim at once;
 *   statistics switched on and read from a third meanwhile.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "pqawait.h"

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

/* ---- fifty tasks ---- */

#define N_TASKS 50

struct sleeper {
    pqa_kind kind;
    PGconn *conn;
    int ok;
    double connect_s;
    char err[200];
};

static double query_start;

static void *connect_task(void *arg)
{
    struct sleeper *s = arg;
    double t0 = pqa_now();
    char *ci = pqa_conninfo(s->kind, NULL);
    s->conn = PQconnectdb(ci);
    free(ci);
    s->connect_s = pqa_now() - t0;
    if (PQstatus(s->conn) != CONNECTION_OK)
        snprintf(s->err, sizeof s->err, "connect: %s", PQerrorMessage(s->conn));
    return NULL;
}

static void *sleep_task(void *arg)
{
    struct sleeper *s = arg;
    PGresult *r = PQexec(s->conn, "select pg_sleep(0.5), pg_backend_pid() = pg_backend_pid()");
    s->ok = r && PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 1), "t") == 0;
    if (!s->ok)
        snprintf(s->err, sizeof s->err, "query: %s", PQerrorMessage(s->conn));
    PQclear(r);
    return NULL;
}

START_TEST(test_fifty_sleepers)
{
    struct sleeper s[N_TASKS] = {{0}};
    awaitlet_task *t[N_TASKS];
    struct ev_loop *loop = pqa_loop_new();

    /* unix sockets, host names (lookups on the worker threads) and TLS */
    static const pqa_kind kinds[] = {PQA_UNIX, PQA_TCP_NAME, PQA_SSL, PQA_SCRAM};
    for (int i = 0; i < N_TASKS; i++)
        s[i].kind = kinds[i % 4];
    double t0 = pqa_now();
    for (int i = 0; i < N_TASKS; i++)
        ck_assert_ptr_nonnull(t[i] = awaitlet_async_def(loop, connect_task, &s[i]));
    for (int i = 0; i < N_TASKS; i++)
        awaitlet_join(t[i]);
    double connected = pqa_now();
    for (int i = 0; i < N_TASKS; i++)
        ck_assert_msg(PQstatus(s[i].conn) == CONNECTION_OK, "task %d: %s", i, s[i].err);

    query_start = pqa_now();
    for (int i = 0; i < N_TASKS; i++)
        ck_assert_ptr_nonnull(t[i] = awaitlet_async_def(loop, sleep_task, &s[i]));
    for (int i = 0; i < N_TASKS; i++)
        awaitlet_join(t[i]);
    double done = pqa_now();

    for (int i = 0; i < N_TASKS; i++) {
        ck_assert_msg(s[i].ok, "task %d: %s", i, s[i].err);
        PQfinish(s[i].conn);
    }
    ev_loop_destroy(loop);
    printf("%d connects in %.3f s, %d x pg_sleep(0.5) in %.3f s\n", N_TASKS, connected - t0,
           N_TASKS, done - query_start);
    double bound = pqa_slow_build() ? 5.0 : 1.5;
    ck_assert_msg(done - query_start < bound, "%d concurrent 0.5 s sleeps took %.3f s (bound %.1f)",
                  N_TASKS, done - query_start, bound);
    ck_assert_msg(done - query_start >= 0.5, "sleeps ended after %.3f s: too early", done - query_start);
}
END_TEST

/* ---- busy connection ---- */

struct busy {
    PGconn *conn;
    struct ev_loop *loop;
    ev_timer start_b;
    /* A */
    int a_ok;
    char a_err[256];
    double a_end;
    /* B */
    int b_ran;
    PGresult *b_exec, *b_getresult, *b_params;
    int b_send, b_flush;
    char b_err[512];
    double b_time;
    int b_errno;
    int mode; /* 0: task B calls; 2: a libev callback calls */
};

static void *busy_a(void *arg)
{
    struct busy *b = arg;
    PGresult *r = PQexec(b->conn, "select pg_sleep(0.3), 42");
    b->a_ok = r && PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 1), "42") == 0;
    if (!b->a_ok)
        snprintf(b->a_err, sizeof b->a_err, "%s / %s", r ? PQresStatus(PQresultStatus(r)) : "NULL",
                 r ? PQresultErrorMessage(r) : "");
    PQclear(r);
    b->a_end = pqa_now();
    return NULL;
}

static void *busy_b(void *arg)
{
    struct busy *b = arg;
    double t0 = pqa_now();
    b->b_ran = 1;
    errno = 0;
    b->b_exec = PQexec(b->conn, "select 'stolen'");
    b->b_errno = errno;
    snprintf(b->b_err, sizeof b->b_err, "%s", PQerrorMessage(b->conn));
    PQreset(b->conn); /* refused: A's command must survive it */
    b->b_getresult = PQgetResult(b->conn);
    b->b_params = PQexecParams(b->conn, "select 1", 0, NULL, NULL, NULL, NULL, 0);
    b->b_send = PQsendQuery(b->conn, "select 2");
    b->b_flush = PQflush(b->conn);
    b->b_time = pqa_now() - t0;
    return NULL;
}

static void start_b(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct busy *b = w->data;
    if (b->mode >= 2) { /* a plain libev callback, outside any task */
        ck_assert(!awaitlet_in_context());
        busy_b(b);
        return;
    }
    ck_assert_ptr_nonnull(awaitlet_async_def_opts(loop, busy_b, b, &(awaitlet_options){.detached = 1}));
}

static void run_busy(struct busy *b)
{
    b->loop = pqa_loop_new();
    ev_timer_init(&b->start_b, start_b, 0.1, 0); /* A is inside pg_sleep by then */
    b->start_b.data = b;
    ev_timer_start(b->loop, &b->start_b);
    awaitlet_task *a = awaitlet_async_def(b->loop, busy_a, b);
    ck_assert_ptr_nonnull(a);
    awaitlet_join(a);
    while (awaitlet_loop_tasks(b->loop) > 0) /* let B finish if it still runs */
        ev_run(b->loop, EVRUN_ONCE);
    ev_loop_destroy(b->loop);
    ck_assert_msg(b->b_ran, "task B never ran");
}

static void check_busy(int mode)
{
    struct busy b = {.mode = mode};
    b.conn = pqa_connect(PQA_UNIX, NULL);
    run_busy(&b);
    ck_assert_msg(b.a_ok, "task A's result is wrong: %s", b.a_err);
    ck_assert_msg(b.b_exec == NULL, "PQexec on a busy conn returned a result (%s)",
                  PQresStatus(PQresultStatus(b.b_exec)));
    /* the refusal writes nothing into the owner's connection */
    ck_assert_msg(strstr(b.b_err, "another command is already in progress") == NULL,
                  "PQerrorMessage after the refused PQexec: '%s'", b.b_err);
    ck_assert_msg(b.b_errno == EBUSY, "errno after the refused PQexec: %s", strerror(b.b_errno));
    ck_assert_msg(b.b_getresult && PQresultStatus(b.b_getresult) == PGRES_FATAL_ERROR,
                  "foreign PQgetResult: %s", b.b_getresult ? PQresStatus(PQresultStatus(b.b_getresult)) : "NULL");
    ck_assert_ptr_null(b.b_params);
    ck_assert_int_eq(b.b_send, 0);
    ck_assert_int_eq(b.b_flush, -1);
    ck_assert_msg(b.b_time < 0.05, "the refused calls took %.3f s: they must not wait", b.b_time);
    PQclear(b.b_getresult);
    /* the connection is still in sync */
    PGresult *r = pqa_exec_ok(b.conn, "select 'after', 7", PGRES_TUPLES_OK);
    ck_assert_str_eq(PQgetvalue(r, 0, 1), "7");
    PQclear(r);
    PQfinish(b.conn);
}

START_TEST(test_busy_conn)
{
    check_busy(0);
}
END_TEST

START_TEST(test_busy_conn_from_callback)
{
    check_busy(2);
}
END_TEST

/* ---- owners on one thread come and go ----
 * A thread's first owning scope is kept apart from its hash table
 * (shim/owners.c, single); later ones are hashed, and the next scope
 * opened while the thread owns nothing is the single one again.  Each
 * owner is refused to another task while it is inside libpq, in every
 * such state: owner 0 single; 1 and 2 hashed beside it; 3 hashed after 0
 * left (no single one); 4 single again after all left. */
enum { OWNERS = 5 };

struct owners_run {
    PGconn *conn[OWNERS];
    int inside[OWNERS];
    int refused[OWNERS], taken[OWNERS];
    int ok[OWNERS];
    int done;
};

struct owner_arg {
    struct owners_run *o;
    int i;
    double start, sleep;
};

static void *owner_task(void *arg)
{
    struct owner_arg *a = arg;
    struct owners_run *o = a->o;
    char sql[64];
    snprintf(sql, sizeof sql, "select pg_sleep(%g)", a->sleep);
    awaitlet_sleep(a->start);
    o->inside[a->i] = 1; /* the scope opens before the task can be switched away */
    PGresult *r = PQexec(o->conn[a->i], sql);
    o->inside[a->i] = 0;
    o->ok[a->i] = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    return NULL;
}

static void *owners_prober(void *arg)
{
    struct owners_run *o = arg;
    while (!o->done) {
        awaitlet_sleep(0.005);
        for (int i = 0; i < OWNERS; i++) {
            if (!o->inside[i])
                continue;
            errno = 0;
            int r = PQsendQuery(o->conn[i], "select 1");
            if (r == 0 && errno == EBUSY)
                o->refused[i]++;
            else
                o->taken[i]++;
        }
    }
    return NULL;
}

START_TEST(test_owners_come_and_go)
{
    static const double start[OWNERS] = {0, 0.02, 0.04, 0.15, 0.40};
    static const double sleep_s[OWNERS] = {0.10, 0.25, 0.15, 0.15, 0.10};
    struct owners_run o = {0};
    struct owner_arg args[OWNERS];
    awaitlet_task *t[OWNERS];
    for (int i = 0; i < OWNERS; i++)
        o.conn[i] = pqa_connect(PQA_UNIX, NULL);
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *p = awaitlet_async_def(loop, owners_prober, &o);
    ck_assert_ptr_nonnull(p);
    for (int i = 0; i < OWNERS; i++) {
        args[i] = (struct owner_arg){&o, i, start[i], sleep_s[i]};
        ck_assert_ptr_nonnull(t[i] = awaitlet_async_def(loop, owner_task, &args[i]));
    }
    for (int i = 0; i < OWNERS; i++)
        awaitlet_join(t[i]);
    o.done = 1;
    awaitlet_join(p);
    ev_loop_destroy(loop);
    for (int i = 0; i < OWNERS; i++) {
        ck_assert_msg(o.ok[i], "owner %d's query failed", i);
        ck_assert_msg(o.taken[i] == 0, "owner %d's connection was not refused to another task "
                      "(%d of %d probes)", i, o.taken[i], o.taken[i] + o.refused[i]);
        ck_assert_msg(o.refused[i] > 0, "owner %d was never probed", i);
        PQclear(pqa_exec_ok(o.conn[i], "select 1", PGRES_TUPLES_OK)); /* still in sync */
        PQfinish(o.conn[i]);
    }
}
END_TEST

/* pqawait_in_scope / pqawait_version / pqawait_interposed */
static void scope_notice(void *arg, const char *msg)
{
    (void)msg;
    *(int *)arg = pqawait_in_scope();
}

static void *in_scope_task(void *arg)
{
    int *seen = arg;
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    PQsetNoticeProcessor(c, scope_notice, &seen[0]);
    seen[0] = -1;
    PQclear(PQexec(c, "do $$ begin raise notice 'n'; end $$"));
    seen[1] = pqawait_in_scope(); /* between calls: not in scope */
    PQfinish(c);
    return NULL;
}

START_TEST(test_api_extras)
{
    ck_assert_int_eq(pqawait_interposed(), 1);
    ck_assert_ptr_nonnull(pqawait_version());
    char want[32];
    snprintf(want, sizeof want, "%d.%d.", PQAWAIT_VERSION_MAJOR, PQAWAIT_VERSION_MINOR);
    ck_assert_msg(strncmp(pqawait_version(), want, strlen(want)) == 0, "pqawait_version() = %s",
                  pqawait_version());
    ck_assert_int_eq(pqawait_in_scope(), 0);
    int seen[2] = {-2, -2};
    pqa_run_in_task(in_scope_task, seen);
    ck_assert_msg(seen[0] == 1, "pqawait_in_scope() in a notice processor inside a task: %d", seen[0]);
    ck_assert_int_eq(seen[1], 0);
    /* outside a task, the same notice processor runs out of scope */
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    PQsetNoticeProcessor(c, scope_notice, &seen[0]);
    seen[0] = -1;
    PQclear(PQexec(c, "do $$ begin raise notice 'n'; end $$"));
    ck_assert_int_eq(seen[0], 0);
    PQfinish(c);
}
END_TEST

/* ---- two threads, two loops ---- */

#define PER_THREAD 5

static void *thread_main(void *arg)
{
    double *elapsed = arg;
    struct sleeper s[PER_THREAD] = {{0}};
    awaitlet_task *t[PER_THREAD];
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    for (int i = 0; i < PER_THREAD; i++) {
        s[i].kind = i % 2 ? PQA_TCP_NAME : PQA_SSL;
        t[i] = awaitlet_async_def(loop, connect_task, &s[i]);
    }
    for (int i = 0; i < PER_THREAD; i++)
        awaitlet_join(t[i]);
    double t0 = pqa_now();
    for (int i = 0; i < PER_THREAD; i++)
        t[i] = awaitlet_async_def(loop, sleep_task, &s[i]);
    for (int i = 0; i < PER_THREAD; i++)
        awaitlet_join(t[i]);
    *elapsed = pqa_now() - t0;
    for (int i = 0; i < PER_THREAD; i++) {
        if (!s[i].ok)
            *elapsed = -1;
        PQfinish(s[i].conn);
    }
    ev_loop_destroy(loop);
    return NULL;
}

START_TEST(test_two_threads)
{
    pthread_t th[2];
    double el[2];
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, thread_main, &el[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(el[i] > 0, "thread %d: a query failed", i);
        ck_assert_msg(el[i] < (pqa_slow_build() ? 4.0 : 1.5), "thread %d: %d sleeps took %.3f s", i,
                      PER_THREAD, el[i]);
    }
}
END_TEST

/* ---- statistics switched on while two threads count ---- */

#define STATS_TASKS 3
#define STATS_QUERIES 10

struct stats_thread {
    pthread_barrier_t *b;
    int *phase_a_done; /* relaxed: no ordering with the switch */
    int ok;
};

static void *stats_query_task(void *arg)
{
    PGconn *c = arg;
    for (int i = 0; i < STATS_QUERIES; i++) {
        PGresult *r = PQexec(c, "select 1");
        int good = PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
        if (!good)
            return NULL;
    }
    return arg;
}

/* STATS_TASKS tasks, each on its own connection, STATS_QUERIES queries
 * each; 1 if every query succeeded. */
static int stats_round(struct ev_loop *loop, PGconn **conns)
{
    awaitlet_task *t[STATS_TASKS];
    int ok = 1;
    for (int i = 0; i < STATS_TASKS; i++)
        t[i] = awaitlet_async_def(loop, stats_query_task, conns[i]);
    for (int i = 0; i < STATS_TASKS; i++)
        if (!t[i] || awaitlet_join(t[i]) != conns[i])
            ok = 0;
    return ok;
}

static void *stats_thread_main(void *arg)
{
    struct stats_thread *st = arg;
    PGconn *conns[STATS_TASKS];
    for (int i = 0; i < STATS_TASKS; i++)
        conns[i] = pqa_connect(i % 2 ? PQA_TCP : PQA_UNIX, NULL);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    st->ok = loop != NULL;
    /* phase A: counting is switched on meanwhile, from another thread */
    while (st->ok && !__atomic_load_n(st->phase_a_done, __ATOMIC_RELAXED))
        st->ok = stats_round(loop, conns);
    pthread_barrier_wait(st->b);
    pthread_barrier_wait(st->b);
    /* phase B: counted, while the main thread reads the counts */
    if (st->ok)
        st->ok = stats_round(loop, conns);
    for (int i = 0; i < STATS_TASKS; i++)
        PQfinish(conns[i]);
    if (loop)
        ev_loop_destroy(loop);
    return NULL;
}

/* pqawait_stats_enable and _get from one thread while two others run
 * libpq calls in tasks: the switch is read by every counting site, the
 * per-thread counters are summed under the list's lock, and a thread's
 * first count may come from inside the shim's poll.  The counts of the
 * second phase (switched on throughout) are exact, threads' exits
 * included. */
START_TEST(test_stats_threads)
{
    pthread_barrier_t b;
    ck_assert_int_eq(pthread_barrier_init(&b, NULL, 3), 0);
    int phase_a_done = 0;
    struct stats_thread st[2] = {{&b, &phase_a_done, 0}, {&b, &phase_a_done, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, stats_thread_main, &st[i]), 0);
    usleep(200000); /* both run queries by now */
    ck_assert_int_eq(pqawait_stats_enable(1), 0);
    usleep(100000);
    __atomic_store_n(&phase_a_done, 1, __ATOMIC_RELAXED);
    pthread_barrier_wait(&b);
    pqawait_stats s0, s1, mid;
    pqawait_stats_get(&s0);
    pthread_barrier_wait(&b);
    for (int i = 0; i < 20; i++) { /* reads while the threads count */
        pqawait_stats_get(&mid);
        ck_assert(mid.calls >= s0.calls);
        usleep(1000);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&b);
    pqawait_stats_get(&s1);
    ck_assert_msg(st[0].ok && st[1].ok, "a query failed");
    ck_assert_int_eq(s1.tasks - s0.tasks, 2 * STATS_TASKS);
    ck_assert_int_eq(s1.calls - s0.calls, 2 * STATS_TASKS * STATS_QUERIES);
    ck_assert_msg(s1.waits - s0.waits >= 2 * STATS_TASKS * STATS_QUERIES, "%llu waits for %d queries",
                  s1.waits - s0.waits, 2 * STATS_TASKS * STATS_QUERIES);
    ck_assert_int_eq(pqawait_stats_enable(0), 0);
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("shim-concurrency");
    TCase *tc = tcase_create("concurrency");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_fifty_sleepers);
    tcase_add_test(tc, test_busy_conn);
    tcase_add_test(tc, test_busy_conn_from_callback);
    tcase_add_test(tc, test_owners_come_and_go);
    tcase_add_test(tc, test_api_extras);
    tcase_add_test(tc, test_two_threads);
    tcase_add_test(tc, test_stats_threads);
    suite_add_tcase(s, tc);
    int rc = pqa_run_suite(s);
    return rc;
}
