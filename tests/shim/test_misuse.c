/*
 * test_misuse.c -- misuse gets clear errors, never a crash or a hang
 * (issue 9, item 5), in one place:
 *   - waiting outside a task (EPERM; libpq itself stays plain libpq there);
 *   - joining twice, joining oneself, joining a task being joined;
 *   - a PGconn used by two tasks at once (the second call is refused with
 *     EBUSY and changes nothing);
 *   - a task touching another loop's connection: a task of loop B on the
 *     same thread, a task on another thread, and plain code on another
 *     thread, while a task of loop A is inside libpq with it;
 *   - awaitlet calls from a signal handler (the shim marks every handler:
 *     switching calls fail with EPERM) and an offload job of another loop.
 * Each refused call must leave the owner's results exact: the owner's
 * statement returns its own value and the connection stays in step.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
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

#define FAILS(expr, bad, err)                                                          \
    do {                                                                               \
        errno = 0;                                                                     \
        long v_ = (long)(intptr_t)(expr);                                              \
        int e_ = errno;                                                                \
        ck_assert_msg(v_ == (long)(intptr_t)(bad) && e_ == (err),                      \
                      "%s: got %ld errno %d (%s), expected %ld errno %d", #expr, v_, e_, \
                      strerror(e_), (long)(intptr_t)(bad), (err));                     \
    } while (0)

/* ---- waiting outside a task ---- */

static void *ident(void *arg)
{
    return arg;
}

START_TEST(test_wait_outside_task)
{
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    FAILS(awaitlet_io(p[0], AWAITLET_READ, 1), -1, EPERM);
    FAILS(awaitlet_sleep(0.01), -1, EPERM);
    FAILS(awaitlet_yield(), -1, EPERM);
    FAILS(awaitlet_shield(1), -1, EPERM);
    FAILS(awaitlet_offload_start(ident, NULL), NULL, EPERM);
    FAILS(awaitlet_offload_wait(NULL, 1, NULL), -1, EINVAL);
    close(p[0]);
    close(p[1]);
    /* libpq outside a task: plain libpq, blocking, no error */
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    PGresult *r = pqa_exec_ok(c, "select 1", PGRES_TUPLES_OK);
    PQclear(r);
    ck_assert_int_eq(pqawait_in_scope(), 0);
    PQfinish(c);
}
END_TEST

/* ---- joining twice ---- */

static void *quick(void *arg)
{
    awaitlet_sleep(0.01);
    return arg;
}

static void *joiner(void *arg)
{
    awaitlet_task *t = arg;
    FAILS(awaitlet_join(awaitlet_current()), NULL, EDEADLK); /* itself */
    return awaitlet_join(t);
}

START_TEST(test_join_twice)
{
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *t = awaitlet_async_def(loop, quick, (void *)1);
    ck_assert_ptr_nonnull(t);
    awaitlet_task *j = awaitlet_async_def(loop, joiner, t);
    ck_assert_ptr_nonnull(j);
    FAILS(awaitlet_join(t), NULL, EINVAL); /* being joined by j */
    ck_assert_ptr_eq(awaitlet_join(j), (void *)1);
    FAILS(awaitlet_join(t), NULL, EINVAL); /* released by j's join */
    FAILS(awaitlet_join(j), NULL, EINVAL); /* joined twice */
    FAILS(awaitlet_detach(j), -1, EINVAL);
    ev_loop_destroy(loop);
}
END_TEST

/* ---- one connection, an owner inside libpq, and intruders ---- */

struct owner {
    PGconn *conn;
    char value[64];
    ExecStatusType status;
};

static void owner_run(struct owner *o, const char *sql)
{
    PGresult *r = PQexec(o->conn, sql);
    o->status = PQresultStatus(r);
    snprintf(o->value, sizeof o->value, "%s", o->status == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 1) : "-");
    PQclear(r);
}

static void *owner_task(void *arg)
{
    owner_run(arg, "select pg_sleep(0.5), 'owner'");
    return NULL;
}

/* An owner that is cancelled inside its statement: long enough that it is
 * still running when the cancel comes however slow the machine (valgrind
 * under load took more than 0.5 s to run loop B's intruder). */
static void *owner_task_long(void *arg)
{
    owner_run(arg, "select pg_sleep(60), 'owner'");
    return NULL;
}

static void expect_owner_ok(struct owner *o)
{
    ck_assert_msg(o->status == PGRES_TUPLES_OK && strcmp(o->value, "owner") == 0,
                  "the owner's statement got %s '%s': %s", PQresStatus(o->status), o->value,
                  PQerrorMessage(o->conn));
    PGresult *r = pqa_exec_ok(o->conn, "select 'in step'", PGRES_TUPLES_OK);
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "in step");
    PQclear(r);
}

/* What an intruder saw: each call's value and errno. */
struct intruder {
    PGconn *conn;
    int exec_null, exec_errno, send_rc, send_errno, gr_status, gr_errno, done;
};

static void intrude(struct intruder *in)
{
    errno = 0;
    PGresult *r = PQexec(in->conn, "select 'intruder'");
    in->exec_null = r == NULL;
    in->exec_errno = errno;
    PQclear(r);
    errno = 0;
    in->send_rc = PQsendQuery(in->conn, "select 'intruder'");
    in->send_errno = errno;
    errno = 0;
    r = PQgetResult(in->conn);
    in->gr_status = r ? (int)PQresultStatus(r) : -1;
    in->gr_errno = errno;
    PQclear(r);
    atomic_store((atomic_int *)&in->done, 1);
}

static void expect_refused(const struct intruder *in, const char *who)
{
    ck_assert_msg(in->exec_null && in->exec_errno == EBUSY, "%s: PQexec gave %s errno %d", who,
                  in->exec_null ? "NULL" : "a result", in->exec_errno);
    ck_assert_msg(in->send_rc == 0 && in->send_errno == EBUSY, "%s: PQsendQuery gave %d errno %d", who,
                  in->send_rc, in->send_errno);
    ck_assert_msg(in->gr_status == PGRES_FATAL_ERROR && in->gr_errno == EBUSY,
                  "%s: PQgetResult gave %d errno %d", who, in->gr_status, in->gr_errno);
}

static void *intruder_task(void *arg)
{
    intrude(arg);
    return NULL;
}

START_TEST(test_two_tasks_one_conn)
{
    struct owner o = {.conn = pqa_connect(PQA_TCP, NULL)};
    struct intruder in = {.conn = o.conn};
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *a = awaitlet_async_def(loop, owner_task, &o);
    awaitlet_task *b = awaitlet_async_def(loop, intruder_task, &in);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    awaitlet_join(b);
    awaitlet_join(a);
    ev_loop_destroy(loop);
    expect_refused(&in, "a second task of the same loop");
    expect_owner_ok(&o);
    PQfinish(o.conn);
}
END_TEST

/* A task of loop B on the same thread, while loop A's task is inside. */
START_TEST(test_other_loop_same_thread)
{
    struct owner o = {.conn = pqa_connect(PQA_UNIX, NULL)};
    struct intruder in = {.conn = o.conn};
    struct ev_loop *la = pqa_loop_new(), *lb = pqa_loop_new();
    awaitlet_task *a = awaitlet_async_def(la, owner_task_long, &o); /* suspends inside PQexec */
    ck_assert_ptr_nonnull(a);
    awaitlet_task *b = awaitlet_async_def(lb, intruder_task, &in);
    ck_assert_ptr_nonnull(b);
    awaitlet_join(b); /* runs loop B only */
    expect_refused(&in, "a task of another loop on the same thread");
    ck_assert_int_eq(awaitlet_cancel(a), 0); /* a's loop is this thread's: allowed */
    awaitlet_join(a);
    ev_loop_destroy(la);
    ev_loop_destroy(lb);
    /* cancelled inside its statement: 57014, the connection in step */
    ck_assert_int_eq(o.status, PGRES_FATAL_ERROR);
    PGresult *r = pqa_exec_ok(o.conn, "select 'in step'", PGRES_TUPLES_OK);
    PQclear(r);
    PQfinish(o.conn);
}
END_TEST

/* Another thread: a task of its own loop, then plain code. */
struct thread_arg {
    struct intruder task, plain;
};

static void *thread_main(void *arg)
{
    struct thread_arg *ta = arg;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    awaitlet_task *t = awaitlet_async_def(loop, intruder_task, &ta->task);
    if (t)
        awaitlet_join(t);
    ev_loop_destroy(loop);
    intrude(&ta->plain);
    return NULL;
}

START_TEST(test_other_thread)
{
    struct owner o = {.conn = pqa_connect(PQA_TCP, NULL)};
    struct thread_arg ta = {{.conn = o.conn}, {.conn = o.conn}};
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *a = awaitlet_async_def(loop, owner_task, &o); /* inside PQexec now */
    ck_assert_ptr_nonnull(a);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, thread_main, &ta), 0);
    /* the other thread finishes long before the owner's 0.5 s statement */
    double t0 = pqa_now();
    while (!atomic_load((atomic_int *)&ta.plain.done) && pqa_now() - t0 < 5)
        usleep(1000);
    awaitlet_join(a);
    pthread_join(th, NULL);
    ev_loop_destroy(loop);
    expect_refused(&ta.task, "a task of another thread");
    expect_refused(&ta.plain, "plain code on another thread");
    expect_owner_ok(&o);
    PQfinish(o.conn);
}
END_TEST

/* The registry of owners is lazy (shim/owners.c): while one thread alone
 * owns connections its scopes are in its own table only.  Here the owner's
 * scope is opened and suspended before any other thread exists; the second
 * thread first becomes an owner itself (its own connection, which turns
 * the registry on) and only then touches the owner's connection: it must
 * be refused, and a scope the owner opens afterwards must be seen too. */
/* 2 s: the second thread's connect-free round trips fit under valgrind */
static void *owner_task_2s(void *arg)
{
    owner_run(arg, "select pg_sleep(2), 'owner'");
    return NULL;
}

struct late_arg {
    PGconn *own;
    struct intruder in;
    int own_ok;
};

static void *late_task(void *arg)
{
    struct late_arg *la = arg;
    PGresult *r = PQexec(la->own, "select 'mine'");
    la->own_ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    intrude(&la->in);
    return NULL;
}

static void *late_thread(void *arg)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    awaitlet_task *t = awaitlet_async_def(loop, late_task, arg);
    if (t)
        awaitlet_join(t);
    ev_loop_destroy(loop);
    return NULL;
}

START_TEST(test_second_thread_after_scope)
{
    struct owner o = {.conn = pqa_connect(PQA_TCP, NULL)}, o2 = {.conn = pqa_connect(PQA_TCP, NULL)};
    struct late_arg la = {.own = pqa_connect(PQA_UNIX, NULL), .in = {.conn = o.conn}};
    struct late_arg lb = {.own = la.own, .in = {.conn = o2.conn}};
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *a = awaitlet_async_def(loop, owner_task_2s, &o); /* inside PQexec, one thread */
    ck_assert_ptr_nonnull(a);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, late_thread, &la), 0);
    pthread_join(th, NULL);
    /* a scope opened after the second thread appeared */
    awaitlet_task *a2 = awaitlet_async_def(loop, owner_task_2s, &o2);
    ck_assert_ptr_nonnull(a2);
    ck_assert_int_eq(pthread_create(&th, NULL, late_thread, &lb), 0);
    pthread_join(th, NULL);
    awaitlet_join(a);
    awaitlet_join(a2);
    ev_loop_destroy(loop);
    ck_assert(la.own_ok && lb.own_ok);
    expect_refused(&la.in, "a second thread's task, the owner's scope older than the thread");
    expect_refused(&lb.in, "a second thread's task, the owner's scope younger than the thread");
    expect_owner_ok(&o);
    expect_owner_ok(&o2);
    PQfinish(o.conn);
    PQfinish(o2.conn);
    PQfinish(la.own);
}
END_TEST

/* The registry on before the owner's scope opens, and that scope the
 * owning thread's only one: owners.c keeps such a scope apart from the
 * thread's hash table (and registers it inline), yet it must be in the
 * registry as well. */
static void *warm_task(void *arg)
{
    PQclear(pqa_exec_ok(arg, "select 1", PGRES_TUPLES_OK));
    return NULL;
}

static void *warm_thread(void *arg)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    awaitlet_task *t = awaitlet_async_def(loop, warm_task, arg);
    if (t)
        awaitlet_join(t);
    ev_loop_destroy(loop);
    return NULL;
}

START_TEST(test_single_scope_after_registry)
{
    struct owner o = {.conn = pqa_connect(PQA_TCP, NULL)};
    PGconn *mine = pqa_connect(PQA_UNIX, NULL), *theirs = pqa_connect(PQA_UNIX, NULL);
    struct late_arg la = {.own = theirs, .in = {.conn = o.conn}};
    struct ev_loop *loop = pqa_loop_new();
    /* this thread owns a connection once, then another thread does: the
     * registry goes on */
    awaitlet_task *w = awaitlet_async_def(loop, warm_task, mine);
    ck_assert_ptr_nonnull(w);
    awaitlet_join(w);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, warm_thread, theirs), 0);
    pthread_join(th, NULL);
    /* the owner's scope, while this thread owns nothing else */
    awaitlet_task *a = awaitlet_async_def(loop, owner_task_2s, &o);
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(pthread_create(&th, NULL, late_thread, &la), 0);
    pthread_join(th, NULL);
    awaitlet_join(a);
    ev_loop_destroy(loop);
    ck_assert(la.own_ok);
    expect_refused(&la.in, "a second thread's task, the owner's only scope opened with the registry on");
    expect_owner_ok(&o);
    PQfinish(o.conn);
    PQfinish(mine);
    PQfinish(theirs);
}
END_TEST

/* ---- awaitlet calls from a signal handler ---- */

static awaitlet_task *volatile victim;
static volatile sig_atomic_t h_marked, h_sleep, h_yield, h_cancel, h_in_scope, h_job, h_ran;

static void handler(int sig)
{
    (void)sig;
    int e = errno;
    h_marked = awaitlet_in_signal_handler();
    h_sleep = awaitlet_sleep(0) == -1 && errno == EPERM;
    h_yield = awaitlet_yield() == -1 && errno == EPERM;
    h_cancel = awaitlet_cancel(victim) == -1 && errno == EPERM;
    h_job = awaitlet_offload_start(ident, NULL) == NULL && errno == EPERM;
    h_in_scope = pqawait_in_scope();
    h_ran = 1;
    errno = e;
}

static int scope_notice_raised;

static void notice_raise(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
    raise(SIGUSR1); /* inside libpq's call: the handler must still be plain */
    scope_notice_raised = 1;
}

static void *signal_task(void *arg)
{
    PGconn *c = arg;
    victim = awaitlet_current();
    raise(SIGUSR1);
    ck_assert_int_eq(h_ran, 1);
    h_ran = 0;
    PQsetNoticeProcessor(c, notice_raise, NULL);
    PGresult *r = PQexec(c, "do $$ begin raise notice 'hi'; end $$");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    /* the task was not cancelled by the refused call */
    ck_assert_int_eq(awaitlet_sleep(0), 0);
    return NULL;
}

START_TEST(test_signal_handler)
{
    struct sigaction sa = {0};
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    ck_assert_int_eq(sigaction(SIGUSR1, &sa, NULL), 0);
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *t = awaitlet_async_def(loop, signal_task, c);
    ck_assert_ptr_nonnull(t);
    awaitlet_join(t);
    ev_loop_destroy(loop);
    ck_assert_int_eq(scope_notice_raised, 1);
    ck_assert_int_eq(h_ran, 1);
    ck_assert_msg(h_marked && h_sleep && h_yield && h_cancel && h_job,
                  "in a handler: marked %d, sleep EPERM %d, yield EPERM %d, cancel EPERM %d, "
                  "offload EPERM %d", (int)h_marked, (int)h_sleep, (int)h_yield, (int)h_cancel,
                  (int)h_job);
    ck_assert_int_eq(h_in_scope, 0);
    PQfinish(c);
}
END_TEST

/* ---- an offload job waited for by a task of another loop ---- */

static void *slow_fn(void *arg)
{
    usleep(50000);
    return arg;
}

struct cross_job {
    awaitlet_job *job;
    int rc, err;
};

static void *other_loop_waiter(void *arg)
{
    struct cross_job *x = arg;
    errno = 0;
    x->rc = awaitlet_offload_wait(x->job, -1, NULL);
    x->err = errno;
    return NULL;
}

static void *job_owner(void *arg)
{
    struct cross_job *x = arg;
    x->job = awaitlet_offload_start(slow_fn, (void *)3);
    ck_assert_ptr_nonnull(x->job);
    struct ev_loop *other = ev_loop_new(EVFLAG_AUTO);
    /* it runs at once and ends, refused; detached, so it is released */
    awaitlet_task *t = awaitlet_async_def_opts(other, other_loop_waiter, x,
                                               &(awaitlet_options){.detached = 1});
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(awaitlet_loop_tasks(other), 0);
    ev_loop_destroy(other);
    void *r = NULL;
    ck_assert_int_eq(awaitlet_offload_wait(x->job, -1, &r), 1);
    ck_assert_ptr_eq(r, (void *)3);
    return NULL;
}

START_TEST(test_job_of_another_loop)
{
    struct cross_job x = {0};
    pqa_run_in_task(job_owner, &x);
    ck_assert_int_eq(x.rc, -1);
    ck_assert_int_eq(x.err, EXDEV);
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("shim-misuse");
    TCase *tc = tcase_create("misuse");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_wait_outside_task);
    tcase_add_test(tc, test_join_twice);
    tcase_add_test(tc, test_two_tasks_one_conn);
    tcase_add_test(tc, test_other_loop_same_thread);
    tcase_add_test(tc, test_other_thread);
    tcase_add_test(tc, test_second_thread_after_scope);
    tcase_add_test(tc, test_single_scope_after_registry);
    tcase_add_test(tc, test_signal_handler);
    tcase_add_test(tc, test_job_of_another_loop);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
