/*
 * test_fork.c -- the offload pool across fork(): awaitlet.h's fork rules.
 *
 * A child process has only the thread that called fork.  The pool's
 * workers are gone, so the child must not believe it has idle ones (the
 * first offload would wait forever), its lock must not be left held by a
 * thread that no longer exists, and every offload in flight at the fork
 * must end in the child the way awaitlet_offload's contract says: fork()
 * first waits for jobs running in workers (a worker inside getaddrinfo may
 * hold libc locks), a job queued runs on a new worker, a finished job is
 * delivered, a job of a loop run by another thread is dropped, and when no
 * worker can be started the offload fails with EAGAIN.  Each test forks and has the child report one line through
 * a pipe; a child that does not answer in time is killed and reported as
 * hung, so a regression fails instead of hanging the suite.
 *
 * Two calls the pool makes while holding its lock are interposed here (the
 * executable's definitions win for libawaitlet's calls) to make the races
 * deterministic: a worker's ev_async_send (the post of a finished job) can
 * be held open to fork while that worker holds the pool's lock, and
 * pthread_create can be made to fail.  ev_async_send also tells when a
 * finished job is posted.
 */
#include "helpers.h"
#include "fork_child.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

/* ---- interposed libc / libev calls ---------------------------------------- */

static int (*real_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
static void (*real_send)(struct ev_loop *, ev_async *);

static _Thread_local int hold_my_send;       /* this thread's next wake-up is slow */
static atomic_int holding_send;
static atomic_int fail_create;               /* pthread_create fails with EAGAIN */
static atomic_int sends_done;

int pthread_create(pthread_t *th, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
    if (atomic_load(&fail_create))
        return EAGAIN;
    return real_create(th, attr, fn, arg);
}

void ev_async_send(struct ev_loop *loop, ev_async *w)
{
    if (hold_my_send) {
        hold_my_send = 0;
        atomic_store(&holding_send, 1);
        usleep(RUNNING_ON_VALGRIND ? 1500000 : 300000); /* a worker posts under the pool lock */
        atomic_store(&holding_send, 2);
    }
    real_send(loop, w);
    atomic_fetch_add(&sends_done, 1);
}

/* How long a child may take to answer (see fork_child.h). */
#define CHILD_LIMIT (RUNNING_ON_VALGRIND ? 60.0 : 10.0)

/* ---- jobs ------------------------------------------------------------------- */

static pid_t test_pid;            /* the process that set the test up */
static atomic_int a_running, a_release, a_runs;

/* In the test's process: blocks until released.  Anywhere else (a child,
 * re-running it): returns at once.  Returns the pid it ran in. */
static void *blocker(void *arg)
{
    (void)arg;
    atomic_fetch_add(&a_runs, 1);
    atomic_store(&a_running, 1);
    while (getpid() == test_pid && !atomic_load(&a_release))
        usleep(1000);
    return T_PTR(getpid());
}

static atomic_int quick_runs;

static void *quick(void *arg)
{
    atomic_fetch_add(&quick_runs, 1);
    return arg;
}

struct off {
    awaitlet_fn fn;
    void *arg;
    int rc, err;
    void *res;
    pthread_t ran_on;
};

static void *ran_where(void *arg)
{
    struct off *o = arg;
    o->ran_on = pthread_self();
    return T_PTR(getpid());
}

static void *offload_task(void *arg)
{
    struct off *o = arg;
    o->res = T_PTR(-5);
    errno = 0;
    o->rc = awaitlet_offload(o->fn, o->arg, &o->res);
    o->err = errno;
    return T_PTR(1);
}

static void wait_flag(atomic_int *flag, int value, double seconds)
{
    double t0 = t_now();
    while (atomic_load(flag) < value && t_now() - t0 < seconds)
        usleep(500);
    ck_assert_msg(atomic_load(flag) >= value, "setup: flag not reached in %.0f s", seconds);
}

/* In a child: ev_loop_fork (libev's rule for a loop used across fork; the
 * runtime may have done it already, twice is harmless), then one offload. */
static void child_offload_once(char *msg, size_t cap)
{
    ev_loop_fork(t_loop);
    struct off o = { .fn = ran_where };
    o.arg = &o;
    void *r = awaitlet_run(t_loop, offload_task, &o);
    if (r != T_PTR(1))
        t_say(msg, cap, "awaitlet_run: %p errno %d", r, errno);
    else if (o.rc != 0)
        t_say(msg, cap, "awaitlet_offload: %d errno %s", o.rc, strerror(o.err));
    else if (o.res != T_PTR(getpid()))
        t_say(msg, cap, "offload ran in pid %ld, not in the child", (long)T_INT(o.res));
    else if (pthread_equal(o.ran_on, pthread_self()))
        t_say(msg, cap, "offload ran inline on the loop thread, not on a worker");
}

static void parent_offload_once(void)
{
    struct off o = { .fn = ran_where };
    o.arg = &o;
    ck_assert_ptr_eq(awaitlet_run(t_loop, offload_task, &o), T_PTR(1));
    ck_assert_int_eq(o.rc, 0);
    ck_assert_ptr_eq(o.res, T_PTR(getpid()));
}

static void setup_pid(void)
{
    test_pid = getpid();
    atomic_store(&a_running, 0);
    atomic_store(&a_release, 0);
    atomic_store(&a_runs, 0);
    atomic_store(&quick_runs, 0);
    atomic_store(&fail_create, 0);
}

/* ---- the pre-fork server shape: offload, fork, offload in the child ------- */

static void child_plain(void *arg, char *msg, size_t cap)
{
    (void)arg;
    child_offload_once(msg, cap);
}

START_TEST(fork_after_offload_child_offloads)
{
    setup_pid();
    parent_offload_once(); /* a worker exists now, idle */
    usleep(10000);         /* ... and is waiting for work */
    T_CHILD_OK(t_fork_child(child_plain, NULL), CHILD_LIMIT);
    parent_offload_once(); /* the parent's pool is untouched */
}
END_TEST

/* ---- fork inside a task ------------------------------------------------------ */

/* Runs inside the forking task, in the child. */
static void child_in_task(void *arg, char *msg, size_t cap)
{
    (void)arg;
    ev_loop_fork(awaitlet_current_loop());
    struct off o;
    void *res = NULL;
    if (awaitlet_offload(ran_where, &o, &res) != 0)
        T_CHILD_FAIL("awaitlet_offload in the forked task: %s", strerror(errno));
    if (res != T_PTR(getpid()) || pthread_equal(o.ran_on, pthread_self()))
        T_CHILD_FAIL("the offload did not run on a worker of the child");
}

static struct t_child in_task_child;

static void *forking_task(void *arg)
{
    (void)arg;
    struct off o;
    if (awaitlet_offload(ran_where, &o, NULL) != 0) /* a worker exists now */
        return T_PTR(-1);
    in_task_child = t_fork_child(child_in_task, NULL);
    return T_PTR(1);
}

START_TEST(fork_inside_task)
{
    setup_pid();
    ck_assert_ptr_eq(awaitlet_run(t_loop, forking_task, NULL), T_PTR(1));
    T_CHILD_OK(in_task_child, CHILD_LIMIT);
    parent_offload_once();
}
END_TEST

/* ---- jobs running and queued at the fork ---------------------------------- */

struct two {
    struct off a, b;
    awaitlet_task *ta, *tb;
};

static void child_two(void *arg, char *msg, size_t cap)
{
    struct two *w = arg;
    ev_loop_fork(t_loop);
    void *ra = awaitlet_join(w->ta), *rb = awaitlet_join(w->tb);
    if (ra != T_PTR(1) || rb != T_PTR(1))
        T_CHILD_FAIL("join: %p %p errno %d", ra, rb, errno);
    if (w->a.rc != 0 || w->b.rc != 0)
        T_CHILD_FAIL("offloads failed: %s / %s", strerror(w->a.err), strerror(w->b.err));
    /* fork waited for the running job: it finished in the parent and its
     * result is delivered here, without a second run */
    if (w->a.res != T_PTR(test_pid))
        T_CHILD_FAIL("the job running at the fork: result %ld, want the parent's pid %ld",
                     (long)T_INT(w->a.res), (long)test_pid);
    if (atomic_load(&a_runs) != 1)
        T_CHILD_FAIL("the job running at the fork ran %d times (1 expected)",
                     atomic_load(&a_runs));
    /* the queued job runs here too, on a new worker */
    if (w->b.res != T_PTR(7) || atomic_load(&quick_runs) != 1)
        T_CHILD_FAIL("the queued job: result %p, %d runs", w->b.res, atomic_load(&quick_runs));
    if (awaitlet_loop_tasks(t_loop) != 0)
        T_CHILD_FAIL("%u tasks left", awaitlet_loop_tasks(t_loop));
    child_offload_once(msg, cap); /* and the pool works on */
}

/* How long a job keeps running after fork() was called. */
#define HOLD_S (RUNNING_ON_VALGRIND ? 1.0 : 0.3)

/* One worker; task A's job (blocker) runs on it, task B's (quick(7)) waits
 * in the queue; fork with child_fn while A still runs (a thread releases it
 * HOLD_S later); then the parent's side of both. */
static void fork_with_two(struct two *w, t_child_fn child_fn)
{
    setup_pid();
    ck_assert_int_eq(awaitlet_set_offload_threads(1), 0);
    memset(w, 0, sizeof *w);
    w->a.fn = blocker;
    w->b.fn = quick;
    w->b.arg = T_PTR(7);
    w->ta = awaitlet_async_def(t_loop, offload_task, &w->a);
    ck_assert_ptr_nonnull(w->ta);
    wait_flag(&a_running, 1, 5); /* the only worker runs A ... */
    w->tb = awaitlet_async_def(t_loop, offload_task, &w->b);
    ck_assert_ptr_nonnull(w->tb); /* ... and B waits in the queue */
    ck_assert_int_eq(atomic_load(&quick_runs), 0);

    t_release_after(&a_release, HOLD_S);
    double t0 = t_now();
    struct t_child c = t_fork_child(child_fn, w);
    double waited = t_now() - t0;
    /* fork() waited for the running job (a worker inside getaddrinfo could
     * hold libc locks the child would never see released) */
    ck_assert_msg(waited >= HOLD_S * 0.8, "fork returned after %.3f s, before the running job ended",
                  waited);
    ck_assert_int_eq(atomic_load(&quick_runs) <= 1, 1);
    T_JOIN_EQ(w->ta, 1);
    T_JOIN_EQ(w->tb, 1);
    ck_assert_int_eq(w->a.rc, 0);
    ck_assert_ptr_eq(w->a.res, T_PTR(getpid())); /* the parent's own run */
    ck_assert_int_eq(atomic_load(&a_runs), 1);
    ck_assert_int_eq(w->b.rc, 0);
    ck_assert_ptr_eq(w->b.res, T_PTR(7));
    T_CHILD_OK(c, CHILD_LIMIT);
}

START_TEST(fork_with_jobs_running_and_queued)
{
    struct two w;
    fork_with_two(&w, child_two);
}
END_TEST

/* ---- a job finished but not delivered at the fork -------------------------- */

struct one {
    struct off o;
    awaitlet_task *t;
};

static void child_undelivered(void *arg, char *msg, size_t cap)
{
    struct one *w = arg;
    ev_loop_fork(t_loop);
    if (awaitlet_join(w->t) != T_PTR(1))
        T_CHILD_FAIL("join failed: errno %d", errno);
    if (w->o.rc != 0 || w->o.res != T_PTR(42))
        T_CHILD_FAIL("offload: rc %d result %p", w->o.rc, w->o.res);
    if (atomic_load(&quick_runs) != 1)
        T_CHILD_FAIL("the finished job ran again in the child (%d runs)", atomic_load(&quick_runs));
}

START_TEST(fork_with_result_undelivered)
{
    setup_pid();
    struct one w;
    memset(&w, 0, sizeof w);
    w.o.fn = quick;
    w.o.arg = T_PTR(42);
    atomic_store(&sends_done, 0);
    w.t = awaitlet_async_def(t_loop, offload_task, &w.o);
    ck_assert_ptr_nonnull(w.t);
    wait_flag(&sends_done, 1, 5); /* posted and the wake-up sent; the loop has not run */
    ck_assert_int_eq(awaitlet_done(w.t), 0);
    struct t_child c = t_fork_child(child_undelivered, &w);
    T_JOIN_EQ(w.t, 1);
    ck_assert_ptr_eq(w.o.res, T_PTR(42));
    T_CHILD_OK(c, CHILD_LIMIT);
}
END_TEST

/* ---- the pool's lock held by another thread at the fork ---------------------- */

struct other_loop {
    pthread_barrier_t bar;
    struct off o;
    int hold;
    void *r;
};

static void *other_thread(void *arg)
{
    struct other_loop *x = arg;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    if (!loop)
        return NULL;
    awaitlet_task *t = awaitlet_async_def(loop, offload_task, &x->o);
    pthread_barrier_wait(&x->bar); /* its job is on its way */
    x->r = t ? awaitlet_join(t) : NULL;
    ev_loop_destroy(loop);
    return NULL;
}

/* On a worker: its post of this job (under the pool's lock) will be slow. */
static void *quick_held(void *arg)
{
    hold_my_send = 1;
    return quick(arg);
}

static void *other_thread_held(void *arg)
{
    struct other_loop *x = arg;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    if (!loop)
        return NULL;
    awaitlet_task *t = awaitlet_async_def(loop, offload_task, &x->o);
    x->r = t ? awaitlet_join(t) : NULL;
    ev_loop_destroy(loop);
    return NULL;
}

START_TEST(fork_while_other_thread_holds_pool_lock)
{
    setup_pid();
    struct other_loop x;
    memset(&x, 0, sizeof x);
    x.o.fn = quick_held;
    x.o.arg = T_PTR(3);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, other_thread_held, &x), 0);
    wait_flag(&holding_send, 1, 5); /* a worker is inside the pool's lock */
    struct t_child c = t_fork_child(child_plain, NULL);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_ptr_eq(x.r, T_PTR(1));
    ck_assert_int_eq(x.o.rc, 0);
    ck_assert_ptr_eq(x.o.res, T_PTR(3));
    T_CHILD_OK(c, CHILD_LIMIT);
}
END_TEST

/* ---- a job of another thread's loop at the fork ------------------------------ */

static void child_other(void *arg, char *msg, size_t cap)
{
    (void)arg;
    /* One worker: had the other thread's finished job been taken for this
     * thread's it would be run or delivered here and count a second run. */
    awaitlet_set_offload_threads(1);
    child_offload_once(msg, cap);
    if (atomic_load(&a_runs) != 1)
        t_say(msg, cap, "the job of a loop whose thread is gone ran in the child (%d runs)",
            atomic_load(&a_runs));
}

START_TEST(fork_drops_jobs_of_other_threads)
{
    setup_pid();
    struct other_loop x;
    memset(&x, 0, sizeof x);
    x.o.fn = blocker;
    ck_assert_int_eq(pthread_barrier_init(&x.bar, NULL, 2), 0);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, other_thread, &x), 0);
    pthread_barrier_wait(&x.bar);
    wait_flag(&a_running, 1, 5);
    t_release_after(&a_release, HOLD_S); /* fork waits for the running job */
    struct t_child c = t_fork_child(child_other, NULL);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    pthread_barrier_destroy(&x.bar);
    ck_assert_ptr_eq(x.r, T_PTR(1));
    ck_assert_ptr_eq(x.o.res, T_PTR(getpid()));
    T_CHILD_OK(c, CHILD_LIMIT);
}
END_TEST

/* ---- no worker can be started in the child ---------------------------------- */

static void child_no_workers(void *arg, char *msg, size_t cap)
{
    struct two *w = arg;
    atomic_store(&fail_create, 1);
    ev_loop_fork(t_loop);
    void *ra = awaitlet_join(w->ta), *rb = awaitlet_join(w->tb);
    if (ra != T_PTR(1) || rb != T_PTR(1))
        T_CHILD_FAIL("join: %p %p errno %d", ra, rb, errno);
    /* A finished before the fork (fork waited for it): delivered; B was
     * queued and has no worker to run on */
    if (w->a.rc != 0 || w->b.rc != -1 || w->b.err != EAGAIN)
        T_CHILD_FAIL("expected success and EAGAIN, got %d/%s and %d/%s", w->a.rc,
                     strerror(w->a.err), w->b.rc, strerror(w->b.err));
    if (atomic_load(&quick_runs) != 0)
        T_CHILD_FAIL("the queued job ran without a worker");
    struct off o = { .fn = quick, .arg = T_PTR(1) };
    if (awaitlet_run(t_loop, offload_task, &o) != T_PTR(1) || o.rc != -1 || o.err != EAGAIN)
        T_CHILD_FAIL("a new offload without workers: %d/%s", o.rc, strerror(o.err));
    atomic_store(&fail_create, 0); /* workers can be had again */
    child_offload_once(msg, cap);
}

START_TEST(fork_child_without_workers_fails_eagain)
{
    struct two w;
    fork_with_two(&w, child_no_workers);
}
END_TEST

/* ---- fork inside an offloaded function --------------------------------------- */

static void *fork_and_exit(void *arg)
{
    (void)arg;
    pid_t pid = fork();
    if (pid == 0)
        _exit(33); /* the usual: exec or _exit */
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid)
        return T_PTR(-1);
    return T_PTR(WIFEXITED(st) ? WEXITSTATUS(st) : -2);
}

static atomic_int forked_pid;

static void *fork_and_return(void *arg)
{
    (void)arg;
    pid_t pid = fork();
    if (pid == 0)
        return T_PTR(99); /* the child of a worker returns from fn */
    atomic_store(&forked_pid, pid);
    return T_PTR(pid > 0 ? 1 : -1);
}

START_TEST(fork_inside_offloaded_fn)
{
    setup_pid();
    struct off o = { .fn = fork_and_exit };
    ck_assert_ptr_eq(awaitlet_run(t_loop, offload_task, &o), T_PTR(1));
    ck_assert_int_eq(o.rc, 0);
    ck_assert_ptr_eq(o.res, T_PTR(33));
    /* A child that returns from fn has nothing to return to: it ends as
     * after a failed exec, _exit(127), instead of hanging. */
    o.fn = fork_and_return;
    ck_assert_ptr_eq(awaitlet_run(t_loop, offload_task, &o), T_PTR(1));
    ck_assert_ptr_eq(o.res, T_PTR(1));
    pid_t pid = atomic_load(&forked_pid);
    int st = -1;
    double t0 = t_now(), limit = RUNNING_ON_VALGRIND ? 60 : 10;
    while (waitpid(pid, &st, WNOHANG) == 0 && t_now() - t0 < limit)
        usleep(2000);
    if (t_now() - t0 >= limit) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        ck_abort_msg("the child of a worker that returned from fn hung");
    }
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 127, "child status %#x", st);
    parent_offload_once();
}
END_TEST

static Suite *fork_suite(void)
{
    Suite *s = suite_create("fork");
    TCase *tc = t_tcase("offload");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, fork_after_offload_child_offloads);
    tcase_add_test(tc, fork_inside_task);
    tcase_add_test(tc, fork_with_jobs_running_and_queued);
    tcase_add_test(tc, fork_with_result_undelivered);
    tcase_add_test(tc, fork_while_other_thread_holds_pool_lock);
    tcase_add_test(tc, fork_drops_jobs_of_other_threads);
    tcase_add_test(tc, fork_child_without_workers_fails_eagain);
    tcase_add_test(tc, fork_inside_offloaded_fn);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    real_create = (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))
        dlsym(RTLD_NEXT, "pthread_create");
    real_send = (void (*)(struct ev_loop *, ev_async *))dlsym(RTLD_NEXT, "ev_async_send");
    if (!real_create || !real_send) {
        fprintf(stderr, "dlsym(RTLD_NEXT): %s\n", dlerror());
        return EXIT_FAILURE;
    }
    return t_run_suite(fork_suite());
}
