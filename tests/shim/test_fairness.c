/*
 * test_fairness.c -- the shim's fairness yields cost nothing and take
 * nothing; connections coming and going elsewhere cost a steady session
 * nothing either.
 *
 * When a task has held the loop for more than 2 ms inside libpq without
 * waiting, the shim yields once as the call leaves.  That yield must
 *   - keep the task's io registration: steady-state queries make no
 *     epoll_ctl even when every one of them yields (counted exactly: the
 *     program defines epoll_ctl, which libev's calls bind to, as in
 *     tests/runtime/test_epoll.c), and
 *   - never report the task's cancellation: a shielded application's EINTR
 *     is still there for its own next wait.
 * The yields are forced deterministically: a PGEventProc spins 3 ms when a
 * result is created, which libpq does after the call's last wait.
 */
#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <libpq-events.h>
#include <sys/epoll.h>

#include "common.h"
#include "pqawait.h"

static unsigned long nctl;
static int watch_fd = -1;       /* epoll_ctl on this descriptor counted apart */
static unsigned long nctl_watch;

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    static int (*real)(int, int, int, struct epoll_event *);
    if (!real)
        real = (int (*)(int, int, int, struct epoll_event *))dlsym(RTLD_NEXT, "epoll_ctl");
    nctl++;
    if (fd == watch_fd)
        nctl_watch++;
    return real(epfd, op, fd, ev);
}

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

/* holds the loop 3 ms inside libpq, after the call's last wait */
static int slow_results(PGEventId id, void *info, void *pass)
{
    (void)info;
    (void)pass;
    if (id == PGEVT_RESULTCREATE)
        spin(0.003);
    return 1;
}

enum { QUERIES = 100 };

struct epoll_run {
    unsigned long ctl, iterations;
    int ok;
};

static void *epoll_task(void *arg)
{
    struct epoll_run *er = arg;
    struct ev_loop *loop = awaitlet_current_loop();
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    ck_assert(PQregisterEventProc(c, slow_results, "slow", NULL));
    PQclear(pqa_exec_ok(c, "select 1", PGRES_TUPLES_OK)); /* the first wait registers the fd */
    PQclear(pqa_exec_ok(c, "select 1", PGRES_TUPLES_OK));
    unsigned long ctl0 = nctl;
    unsigned it0 = ev_iteration(loop);
    er->ok = 1;
    for (int i = 0; i < QUERIES; i++) {
        PGresult *r = PQexec(c, "select 1");
        er->ok &= PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
    }
    er->iterations = ev_iteration(loop) - it0;
    er->ctl = nctl - ctl0;
    PQfinish(c);
    return NULL;
}

START_TEST(test_yields_make_no_epoll_ctl)
{
    struct ev_loop *loop = ev_loop_new(EVBACKEND_EPOLL);
    ck_assert_ptr_nonnull(loop);
    struct epoll_run er = {0};
    awaitlet_task *t = awaitlet_async_def(loop, epoll_task, &er);
    ck_assert_ptr_nonnull(t);
    awaitlet_join(t);
    ev_loop_destroy(loop);
    printf("%d queries with a fairness yield each: %lu loop iterations, %lu epoll_ctl\n", QUERIES,
           er.iterations, er.ctl);
    fflush(stdout);
    ck_assert(er.ok);
    /* one iteration for each query's wait, one more for each yield */
    ck_assert_msg(er.iterations >= 2 * QUERIES - 5, "only %lu loop iterations: the fairness yields did "
                  "not happen", er.iterations);
    ck_assert_msg(er.ctl <= 2, "%lu epoll_ctl calls for %d queries", er.ctl, QUERIES);
}
END_TEST

/* ---- a shielded application's EINTR survives the shim's yields ---- */

struct shielded {
    int sleep_rc, sleep_errno;
    int yielded;
    int ok;
};

static void *shielded_task(void *arg)
{
    struct shielded *sh = arg;
    struct ev_loop *loop = awaitlet_current_loop();
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    ck_assert(PQregisterEventProc(c, slow_results, "slow", NULL));
    ck_assert_int_eq(awaitlet_shield(1), 1);
    ck_assert_int_eq(PQsendQuery(c, "select 42"), 1); /* the send never waits here */
    /* the application waits itself, then learns it was cancelled */
    ck_assert_int_eq(awaitlet_io(PQsocket(c), AWAITLET_READ, 5.0), AWAITLET_READ);
    ck_assert_int_eq(awaitlet_cancel(awaitlet_current()), 0);
    ck_assert_int_eq(PQconsumeInput(c), 1);
    unsigned it0 = ev_iteration(loop);
    PGresult *r = PQgetResult(c); /* builds the result: 3 ms in libpq, then a yield */
    sh->ok = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "42") == 0;
    PQclear(r);
    r = PQgetResult(c);
    sh->ok &= r == NULL;
    sh->yielded = ev_iteration(loop) != it0;
    /* the shielded application's own next wait reports the cancellation */
    errno = 0;
    sh->sleep_rc = awaitlet_sleep(0);
    sh->sleep_errno = errno;
    ck_assert_int_eq(awaitlet_shield(0), 0);
    PQfinish(c);
    return NULL;
}

START_TEST(test_yields_keep_the_shield_eintr)
{
    struct shielded sh = {0};
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *t = awaitlet_async_def(loop, shielded_task, &sh);
    ck_assert_ptr_nonnull(t);
    errno = 0;
    awaitlet_join(t);
    ev_loop_destroy(loop);
    ck_assert(sh.ok);
    ck_assert_msg(sh.sleep_rc == -1 && sh.sleep_errno == EINTR,
                  "the application's own wait gave %d/%s: the shim's yield consumed its EINTR",
                  sh.sleep_rc, strerror(sh.sleep_errno));
    ck_assert_msg(sh.yielded, "no fairness yield happened: the test proves nothing");
}
END_TEST

/* ---- connection churn elsewhere: 0 epoll_ctl on a steady session ---- */

enum { CHURN_MIN = 10, STEADY_MIN = 200 };

struct churn {
    int steady_done, churned, ok;
    unsigned long steady_queries, ctl_steady;
};

static void *steady_task(void *arg)
{
    struct churn *ch = arg;
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    PQclear(pqa_exec_ok(c, "select 1", PGRES_TUPLES_OK)); /* the first wait registers the fd */
    watch_fd = PQsocket(c);
    nctl_watch = 0;
    ch->ok = 1;
    while (ch->steady_queries < STEADY_MIN || ch->churned < CHURN_MIN) {
        PGresult *r = PQexec(c, "select 1");
        ch->ok &= PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
        ch->steady_queries++;
    }
    ch->ctl_steady = nctl_watch;
    watch_fd = -1;
    ch->steady_done = 1;
    PQfinish(c);
    return NULL;
}

static void *churn_task(void *arg)
{
    struct churn *ch = arg;
    while (!ch->steady_done) {
        PGconn *c = pqa_connect(PQA_UNIX, NULL);
        PQclear(pqa_exec_ok(c, "select 1", PGRES_TUPLES_OK));
        PQfinish(c);
        ch->churned++;
    }
    return NULL;
}

START_TEST(test_churn_elsewhere_makes_no_epoll_ctl)
{
    struct ev_loop *loop = pqa_loop_new();
    struct churn ch = {0};
    awaitlet_task *a = awaitlet_async_def(loop, steady_task, &ch);
    awaitlet_task *b = awaitlet_async_def(loop, churn_task, &ch);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    awaitlet_join(a);
    awaitlet_join(b);
    ev_loop_destroy(loop);
    printf("%lu steady queries while %d connections came and went: %lu epoll_ctl on the steady socket\n",
           ch.steady_queries, ch.churned, ch.ctl_steady);
    fflush(stdout);
    ck_assert(ch.ok);
    ck_assert_msg(ch.ctl_steady == 0, "%lu epoll_ctl on the steady session's socket for %lu queries "
                  "while %d connections came and went elsewhere", ch.ctl_steady, ch.steady_queries,
                  ch.churned);
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("shim-fairness");
    TCase *tc = tcase_create("fairness");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_yields_make_no_epoll_ctl);
    tcase_add_test(tc, test_yields_keep_the_shield_eintr);
    tcase_add_test(tc, test_churn_elsewhere_makes_no_epoll_ctl);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
