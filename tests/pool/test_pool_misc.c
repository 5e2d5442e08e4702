/*
 * test_pool_misc.c -- the pool's edges: misuse gets EINVAL/EPERM/EXDEV and
 * changes nothing; two threads run a loop and a pool each at the same time;
 * checking a connection out and in costs no epoll_ctl (counted exactly: the
 * program defines epoll_ctl, which libev's calls bind to).
 */
#include "pool_common.h"

#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#define PTR(i) ((void *)(intptr_t)(i))

/* libev's epoll_ctl calls bind to this one: counted exactly.  two_threads
 * runs two loops at once, so the pointer and the count are atomic. */
static unsigned long nctl;

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    typedef int ctl_fn(int, int, int, struct epoll_event *);
    static ctl_fn *real;
    ctl_fn *f = __atomic_load_n(&real, __ATOMIC_ACQUIRE);
    if (!f) { /* two threads may both look it up: the same answer */
        f = (ctl_fn *)dlsym(RTLD_NEXT, "epoll_ctl");
        __atomic_store_n(&real, f, __ATOMIC_RELEASE);
    }
    __atomic_add_fetch(&nctl, 1, __ATOMIC_RELAXED);
    return f(epfd, op, fd, ev);
}

static pqawait_pool *new_pool(const char *app, pqawait_pool_options *o)
{
    char *ci = pt_conninfo(app, NULL);
    pqawait_pool *p = pqawait_pool_new(awaitlet_current_loop(), ci, o);
    ck_assert_msg(p != NULL, "pqawait_pool_new: %s", strerror(errno));
    free(ci);
    return p;
}


/* ---- misuse ------------------------------------------------------------------------ */

struct xthread {
    pqawait_pool *p;
    PGconn *c;
    int acq_err, rel_err, close_err, stats_ok;
};

static void *other_thread(void *arg)
{
    struct xthread *x = arg;
    errno = 0;
    if (!pqawait_pool_acquire(x->p))
        x->acq_err = errno;
    errno = 0;
    if (pqawait_pool_release(x->p, x->c) < 0)
        x->rel_err = errno;
    errno = 0;
    if (pqawait_pool_close(x->p) < 0)
        x->close_err = errno;
    struct pqawait_pool_stats s;
    x->stats_ok = pqawait_pool_stats(x->p, &s) == 0 && s.in_use == 1;
    return NULL;
}

static void *misuse_task(void *arg)
{
    (void)arg;
    struct ev_loop *loop = awaitlet_current_loop();
    char *ci = pt_conninfo(pt_app(), NULL);
    pqawait_pool_options o = pt_options(0, 2), bad = o;
    errno = 0;
    ck_assert_ptr_null(pqawait_pool_new(NULL, ci, &o));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(pqawait_pool_new(loop, "this is = not a 'conninfo", &o));
    ck_assert_int_eq(errno, EINVAL);
    bad.min_size = 3;
    errno = 0;
    ck_assert_ptr_null(pqawait_pool_new(loop, ci, &bad));
    ck_assert_int_eq(errno, EINVAL);
    bad = o;
    bad.timeout = NAN;
    ck_assert_ptr_null(pqawait_pool_new(loop, ci, &bad));
    bad = o;
    bad.connect_parallel = 0;
    ck_assert_ptr_null(pqawait_pool_new(loop, ci, &bad));
    bad = o;
    bad.reset = 0x10;
    ck_assert_ptr_null(pqawait_pool_new(loop, ci, &bad));

    pqawait_pool *p = pqawait_pool_new(loop, ci, &o);
    ck_assert_ptr_nonnull(p);
    PGconn *c = pqawait_pool_acquire(p);
    ck_assert_ptr_nonnull(c);
    /* a connection that is not the pool's, NULL, a released one */
    PGconn *mine = pqa_connect(PQA_UNIX, NULL);
    errno = 0;
    ck_assert_int_eq(pqawait_pool_release(p, mine), -1);
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_int_eq(pqawait_pool_release(p, NULL), -1);
    PQfinish(mine);
    errno = 0;
    ck_assert_ptr_null(pqawait_pool_acquire_timeout(p, NAN));
    ck_assert_int_eq(errno, EINVAL);
    /* another thread */
    struct xthread x = { .p = p, .c = c };
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, other_thread, &x), 0);
    pthread_join(th, NULL);
    ck_assert_int_eq(x.acq_err, EXDEV);
    ck_assert_int_eq(x.rel_err, EXDEV);
    ck_assert_int_eq(x.close_err, EXDEV);
    ck_assert(x.stats_ok);
    ck_assert_int_eq(pqawait_pool_release(p, c), 0);
    errno = 0;
    ck_assert_int_eq(pqawait_pool_release(p, c), -1); /* twice */
    ck_assert_int_eq(errno, EINVAL);
    /* in a marked signal handler */
    awaitlet_signal_enter();
    errno = 0;
    ck_assert_ptr_null(pqawait_pool_acquire(p));
    ck_assert_int_eq(errno, EPERM);
    awaitlet_signal_leave();
    ck_assert_int_eq(pqawait_pool_close(p), 0);
    free(ci);
    return PTR(1);
}

START_TEST(misuse)
{
    ck_assert_ptr_eq(pt_run(misuse_task, NULL, 5), PTR(1));
    /* outside a task */
    struct ev_loop *loop = pqa_loop_new();
    char *ci = pt_conninfo(pt_app(), NULL);
    pqawait_pool_options o = pt_options(0, 1);
    pqawait_pool *p = pqawait_pool_new(loop, ci, &o);
    ck_assert_ptr_nonnull(p);
    errno = 0;
    ck_assert_ptr_null(pqawait_pool_acquire(p));
    ck_assert_int_eq(errno, EPERM);
    errno = 0;
    ck_assert_int_eq(pqawait_pool_wait(p, 1), -1);
    ck_assert_int_eq(errno, EPERM);
    ck_assert_int_eq(pqawait_pool_close(p), 0); /* from outside a task: fine */
    for (int i = 0; i < 100 && awaitlet_loop_tasks(loop); i++)
        ev_run(loop, EVRUN_ONCE);
    ck_assert_uint_eq(awaitlet_loop_tasks(loop), 0);
    awaitlet_loop_close(loop);
    ev_loop_destroy(loop);
    free(ci);
}
END_TEST

/* ---- two threads, a loop and a pool each -------------------------------------------- */

struct side {
    char app[64];
    pqawait_pool *p;
    int ok;
    int max_seen;
};

static void *side_worker(void *arg)
{
    struct side *s = arg;
    PGconn *c = pqawait_pool_acquire(s->p);
    if (!c)
        return PTR(-1);
    long v = pt_int(c, "select count(*) from generate_series(1, 100), pg_sleep(0.002)");
    pqawait_pool_release(s->p, c);
    s->ok += v == 100;
    return PTR(1);
}

static void *side_main(void *arg)
{
    struct side *s = arg;
    pqawait_pool_options o = pt_options(0, 3);
    char *ci = pt_conninfo(s->app, NULL);
    s->p = pqawait_pool_new(awaitlet_current_loop(), ci, &o);
    free(ci);
    if (!s->p)
        return PTR(-1);
    awaitlet_task *t[40];
    for (int i = 0; i < 40; i++)
        t[i] = awaitlet_async_def(awaitlet_current_loop(), side_worker, s);
    for (int i = 0; i < 40; i++)
        awaitlet_join(t[i]);
    struct pqawait_pool_stats st;
    pqawait_pool_stats(s->p, &st);
    s->max_seen = (int)st.opened;
    pqawait_pool_close(s->p);
    return PTR(1);
}

static void *side_thread(void *arg)
{
    return pt_run(side_main, arg, 5);
}

START_TEST(two_threads)
{
    struct side a = { 0 }, b = { 0 };
    snprintf(a.app, sizeof a.app, "%s", pt_app());
    snprintf(b.app, sizeof b.app, "%s", pt_app());
    pthread_t ta, tb;
    ck_assert_int_eq(pthread_create(&ta, NULL, side_thread, &a), 0);
    ck_assert_int_eq(pthread_create(&tb, NULL, side_thread, &b), 0);
    void *ra, *rb;
    pthread_join(ta, &ra);
    pthread_join(tb, &rb);
    ck_assert_ptr_eq(ra, PTR(1));
    ck_assert_ptr_eq(rb, PTR(1));
    ck_assert_int_eq(a.ok, 40);
    ck_assert_int_eq(b.ok, 40);
    ck_assert_int_le(a.max_seen, 3);
    ck_assert_int_le(b.max_seen, 3);
}
END_TEST

/* ---- the cost of checking out and in ------------------------------------------------ */

#define CYCLES 200
static pqawait_pool *cost_pool;
static int cost_ok;

static void *cost_request(void *arg)
{
    (void)arg;
    PGconn *c = pqawait_pool_acquire(cost_pool);
    if (!c)
        return PTR(-1);
    cost_ok += pt_int(c, "select 1") == 1;
    pqawait_pool_release(cost_pool, c);
    return PTR(1);
}

/* The idle connection's watcher and the tasks' waits share the fd's epoll
 * registration: checking out and in makes no epoll_ctl.  One task doing
 * the cycles: none at all.  A task per request, as a server runs them: one
 * per request -- the runtime registers a new task's first wait on an fd
 * (lib/wait.c) -- and none more from the pool. */
static void *cost_task(void *arg)
{
    (void)arg;
    pqawait_pool_options o = pt_options(1, 1);
    cost_pool = new_pool(pt_app(), &o);
    ck_assert_int_eq(pqawait_pool_wait(cost_pool, 10), 0);
    for (int i = 0; i < 3; i++) /* warm: the fd is registered by now */
        cost_request(NULL);
    unsigned long ctl0 = nctl;
    for (int i = 0; i < CYCLES; i++)
        ck_assert_ptr_eq(cost_request(NULL), PTR(1));
    unsigned long same_task = nctl - ctl0;
    ctl0 = nctl;
    for (int i = 0; i < CYCLES; i++) {
        awaitlet_task *t = awaitlet_async_def(awaitlet_current_loop(), cost_request, NULL);
        ck_assert_ptr_eq(awaitlet_join(t), PTR(1));
    }
    unsigned long task_each = nctl - ctl0;
    printf("%d acquire-query-release cycles: %lu epoll_ctl in one task, %lu with a task each\n",
           CYCLES, same_task, task_each);
    fflush(stdout);
    ck_assert_int_eq(cost_ok, 2 * CYCLES + 3);
    ck_assert_msg(same_task <= 2, "%lu epoll_ctl calls for %d checkouts", same_task, CYCLES);
    ck_assert_msg(task_each <= CYCLES + 2, "%lu epoll_ctl calls for %d tasks", task_each, CYCLES);
    pqawait_pool_close(cost_pool);
    return PTR(1);
}

START_TEST(checkout_costs_no_epoll_ctl)
{
    ck_assert_ptr_eq(pt_run(cost_task, NULL, 5), PTR(1));
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("pool-misc");
    TCase *tc = tcase_create("misc");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, misuse);
    tcase_add_test(tc, two_threads);
    tcase_add_test(tc, checkout_costs_no_epoll_ctl);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
