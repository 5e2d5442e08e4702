/*
 * test_fork.c -- the pre-fork server shape against a real PostgreSQL:
 * connect by host name in a task, fork, connect by host name again in the
 * child.
 *
 * A host name ("localhost") makes libpq call getaddrinfo, which the shim
 * offloads to awaitlet's worker pool -- the pool a child inherits without
 * its threads.  Each test forks; the child does its part in tasks on the
 * inherited loop -- without calling ev_loop_fork itself: the runtime does
 * that in the child for every loop it knows -- and reports one line
 * through a pipe; a child that does not answer in time is killed and the
 * test fails saying it hung.  The child never touches the parent's
 * connections (it ends by SIGKILL, without the PQfinish that would send
 * Terminate on the parent's socket); the parent checks afterwards that they
 * still work.
 */
#include "common.h"
#include "../runtime/fork_child.h" /* the runtime fork tests' child helper */

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PTR(i) ((void *)(intptr_t)(i))

#if defined(__SANITIZE_ADDRESS__)
#define T_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define T_ASAN 1
#endif
#endif

/* ---- a task that connects by name and runs one query ---------------------- */

struct cq {
    const char *conninfo;
    const char *sql;
    int keep;          /* leave the connection open in `conn` */
    PGconn *conn;
    char value[64];    /* first value of the result, on success */
    char err[300];     /* empty on success */
};

static void *connect_query(void *arg)
{
    struct cq *q = arg;
    q->value[0] = q->err[0] = 0;
    PGconn *c = PQconnectdb(q->conninfo);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        snprintf(q->err, sizeof q->err, "connect: %s", c ? PQerrorMessage(c) : "no memory");
        PQfinish(c);
        return PTR(1);
    }
    PGresult *r = PQexec(c, q->sql);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        snprintf(q->value, sizeof q->value, "%s", PQgetvalue(r, 0, 0));
    else
        snprintf(q->err, sizeof q->err, "%s: %s", q->sql, PQerrorMessage(c));
    PQclear(r);
    if (q->keep)
        q->conn = c;
    else
        PQfinish(c);
    return PTR(1);
}

/* A query on an open connection, in a task. */
static void *query_only(void *arg)
{
    struct cq *q = arg;
    q->value[0] = q->err[0] = 0;
    PGresult *r = PQexec(q->conn, q->sql);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        snprintf(q->value, sizeof q->value, "%s", PQgetvalue(r, 0, 0));
    else
        snprintf(q->err, sizeof q->err, "%s: %s", q->sql, PQerrorMessage(q->conn));
    PQclear(r);
    return PTR(1);
}

static void *finish_conn(void *arg)
{
    PQfinish(((struct cq *)arg)->conn);
    return PTR(1);
}

/* Every task here returns PTR(1): a join that gives anything else failed
 * (errno says why).  errno itself is no signal after a successful join --
 * the tasks' own calls set it on the same thread. */
static void run_task(struct ev_loop *loop, awaitlet_fn fn, void *arg)
{
    awaitlet_task *t = awaitlet_async_def(loop, fn, arg);
    ck_assert_msg(t != NULL, "awaitlet_async_def: %s", strerror(errno));
    void *r = awaitlet_join(t);
    ck_assert_msg(r == PTR(1), "awaitlet_join: %s", strerror(errno));
}

#define CQ_OK(q, want)                                                              \
    ck_assert_msg((q).err[0] == 0 && strcmp((q).value, (want)) == 0,                \
                  "%s: got '%s' (%s)", (q).sql, (q).value, (q).err)

/* How long a child may take to answer (see fork_child.h). */
#define CHILD_LIMIT (pqa_slow_build() ? 120.0 : 20.0)

/* In a child: a task connecting by name and querying, joined; "" in msg or
 * what went wrong. */
static void child_connect_query(struct ev_loop *loop, const char *conninfo, const char *what,
                                char *msg, size_t cap)
{
    struct cq q = { .conninfo = conninfo, .sql = "select 40 + 2" };
    awaitlet_task *t = awaitlet_async_def(loop, connect_query, &q);
    if (!t) {
        snprintf(msg, cap, "%s: awaitlet_async_def: %s", what, strerror(errno));
        return;
    }
    if (awaitlet_join(t) != PTR(1))
        snprintf(msg, cap, "%s: awaitlet_join: %s", what, strerror(errno));
    else if (q.err[0] || strcmp(q.value, "42") != 0)
        snprintf(msg, cap, "%s: '%s' %s", what, q.value, q.err);
}

/* ---- connect, fork, connect again in the child ------------------------------- */

struct shape {
    struct ev_loop *loop;
    char *conninfo;
};

static void child_shape(void *arg, char *msg, size_t cap)
{
    struct shape *s = arg;
    child_connect_query(s->loop, s->conninfo, "child's connect by host name", msg, cap);
}

START_TEST(test_fork_after_connect_by_name)
{
    struct shape s = { pqa_loop_new(), pqa_conninfo(PQA_TCP_NAME, NULL) };
    struct cq parent = { .conninfo = s.conninfo, .sql = "select pg_backend_pid()", .keep = 1 };
    run_task(s.loop, connect_query, &parent);
    ck_assert_msg(parent.err[0] == 0, "parent: %s", parent.err);
    char pid_before[64];
    snprintf(pid_before, sizeof pid_before, "%s", parent.value);

    T_CHILD_OK(t_fork_child(child_shape, &s), CHILD_LIMIT);

    /* The parent's connection is intact: same backend, still answering. */
    parent.sql = "select pg_backend_pid()";
    run_task(s.loop, query_only, &parent);
    CQ_OK(parent, pid_before);
    /* And the parent can connect by name again (its pool is untouched). */
    struct cq again = { .conninfo = s.conninfo, .sql = "select 40 + 2" };
    run_task(s.loop, connect_query, &again);
    CQ_OK(again, "42");
    run_task(s.loop, finish_conn, &parent);
    ck_assert_uint_eq(awaitlet_loop_tasks(s.loop), 0);
    ev_loop_destroy(s.loop);
    free(s.conninfo);
}
END_TEST

/* ---- fork while another task's getaddrinfo is in flight ---------------------- */

static pid_t test_pid;
static atomic_int hold_running, hold_release;

/* Occupies the only worker in the test's process until released; returns
 * at once anywhere else (when the child re-runs it). */
static void *hold_worker(void *arg)
{
    (void)arg;
    atomic_store(&hold_running, 1);
    while (getpid() == test_pid && !atomic_load(&hold_release))
        usleep(1000);
    return NULL;
}

static void *hold_task(void *arg)
{
    (void)arg;
    return PTR(awaitlet_offload(hold_worker, NULL, NULL) == 0);
}

struct inflight {
    struct ev_loop *loop;
    char *conninfo;
    struct cq q;            /* the task whose getaddrinfo is queued at the fork */
    awaitlet_task *hold, *conn;
};

static void child_inflight(void *arg, char *msg, size_t cap)
{
    struct inflight *f = arg;
    void *hr = awaitlet_join(f->hold);
    if (hr != PTR(1)) {
        snprintf(msg, cap, "the offload holding the worker at the fork: %p (%s)", hr,
                 strerror(errno));
        return;
    }
    void *cr = awaitlet_join(f->conn);
    if (cr != PTR(1) || f->q.err[0] || strcmp(f->q.value, "42") != 0) {
        snprintf(msg, cap, "the connect whose getaddrinfo was in flight: %p '%s' %s", cr,
                 f->q.value, f->q.err);
        return;
    }
    child_connect_query(f->loop, f->conninfo, "a new connect by host name in the child", msg, cap);
}

START_TEST(test_fork_during_getaddrinfo)
{
    test_pid = getpid();
    ck_assert_int_eq(awaitlet_set_offload_threads(1), 0);
    struct inflight f;
    memset(&f, 0, sizeof f);
    f.loop = pqa_loop_new();
    f.conninfo = pqa_conninfo(PQA_TCP_NAME, NULL);
    f.q.conninfo = f.conninfo;
    f.q.sql = "select 40 + 2";
    f.hold = awaitlet_async_def(f.loop, hold_task, NULL);
    ck_assert_ptr_nonnull(f.hold);
    double t0 = pqa_now();
    while (!atomic_load(&hold_running) && pqa_now() - t0 < 10)
        usleep(1000);
    ck_assert_msg(atomic_load(&hold_running), "the holding job never started");
    f.conn = awaitlet_async_def(f.loop, connect_query, &f.q);
    ck_assert_ptr_nonnull(f.conn);
    /* Let the connecting task get past any fairness yield: after a few loop
     * iterations the only thing it can wait for is its getaddrinfo, queued
     * behind the holding job on the only worker. */
    for (int i = 0; i < 5; i++)
        ev_run(f.loop, EVRUN_NOWAIT);
    ck_assert_msg(!awaitlet_done(f.conn) && f.q.value[0] == 0 && f.q.err[0] == 0,
                  "the connect finished without its getaddrinfo: '%s' %s", f.q.value, f.q.err);

    /* fork() waits for the holding job (a running offload); release it from
     * a thread of its own a little later */
    t_release_after(&hold_release, pqa_slow_build() ? 1.0 : 0.3);
    struct t_child c = t_fork_child(child_inflight, &f);

    ck_assert_ptr_eq(awaitlet_join(f.hold), PTR(1));
    ck_assert_ptr_eq(awaitlet_join(f.conn), PTR(1));
    CQ_OK(f.q, "42");
    T_CHILD_OK(c, CHILD_LIMIT);
    ck_assert_uint_eq(awaitlet_loop_tasks(f.loop), 0);
    ev_loop_destroy(f.loop);
    free(f.conninfo);
}
END_TEST

/* ---- fork at random points of several lookups -------------------------------- */

/* Before fork() waited for running offloads, this hung: a worker caught
 * inside getaddrinfo at the fork left a lock held in the child -- glibc's
 * own (the gai.conf table, the resolver configuration: seen under
 * valgrind) or, under ASan, the sanitizer allocator's. */

enum { RACERS = 3 };

struct race {
    struct ev_loop *loop;
    struct cq q[RACERS];
    awaitlet_task *t[RACERS];
};

static void child_race(void *arg, char *msg, size_t cap)
{
    struct race *r = arg;
    for (int i = 0; i < RACERS; i++) {
        void *res = awaitlet_join(r->t[i]);
        if (res != PTR(1) || r->q[i].err[0] || strcmp(r->q[i].value, "42") != 0) {
            snprintf(msg, cap, "connect %d in flight at the fork: %p '%s' %s", i, res,
                     r->q[i].value, r->q[i].err);
            return;
        }
    }
}

START_TEST(test_fork_amid_lookups)
{
    /* The lookups are queued, running or finished at the fork -- which,
     * depends on timing; every one must complete in both processes. */
    char *ci = pqa_conninfo(PQA_TCP_NAME, NULL);
    int rounds = pqa_slow_build() ? 2 : 5;
    for (int round = 0; round < rounds; round++) {
        struct race r;
        memset(&r, 0, sizeof r);
        r.loop = pqa_loop_new();
        for (int i = 0; i < RACERS; i++) {
            r.q[i].conninfo = ci;
            r.q[i].sql = "select 40 + 2";
            r.t[i] = awaitlet_async_def(r.loop, connect_query, &r.q[i]);
            ck_assert_ptr_nonnull(r.t[i]);
        }
        usleep((useconds_t)(round * 150));
        struct t_child c = t_fork_child(child_race, &r);
        for (int i = 0; i < RACERS; i++) {
            ck_assert_ptr_eq(awaitlet_join(r.t[i]), PTR(1));
            CQ_OK(r.q[i], "42");
        }
        T_CHILD_OK(c, CHILD_LIMIT);
        ev_loop_destroy(r.loop);
    }
    free(ci);
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
    Suite *s = suite_create("shim-fork");
    TCase *tc = tcase_create("fork");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_fork_after_connect_by_name);
    tcase_add_test(tc, test_fork_during_getaddrinfo);
    tcase_add_test(tc, test_fork_amid_lookups);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
