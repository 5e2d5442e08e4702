/*
 * test_threads.c -- loops on several threads, and awaitlet_offload.
 *
 * The header's thread rule: a loop and its tasks belong to one thread, two
 * threads may each run their own loop at the same time, and a handle used
 * from the wrong thread is refused with EXDEV rather than corrupting the
 * owner.  The cross-thread ping-pong below can only finish if both loops
 * really run at once (each side waits for the other's writes).  Offload is
 * checked for its result, for running on another thread, for not blocking
 * the loop meanwhile, for its documented cap of 4 worker threads, and for
 * cancellation taking effect only after the work returned.
 */
#include "helpers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

/* --- two loops, two threads ----------------------------------------------- */

#define XROUNDS 1000

static int read_int(int fd, int *v)
{
    for (;;) {
        ssize_t r = read(fd, v, sizeof *v);
        if (r == (ssize_t)sizeof *v)
            return 0;
        if (r < 0 && errno == EAGAIN) {
            if (awaitlet_io(fd, EV_READ, 10.0) != EV_READ)
                return -1;
            continue;
        }
        return -1; /* ints are written whole to a pipe: no partial reads */
    }
}

static int write_int(int fd, int v)
{
    for (;;) {
        ssize_t r = write(fd, &v, sizeof v);
        if (r == (ssize_t)sizeof v)
            return 0;
        if (r < 0 && errno == EAGAIN) {
            if (awaitlet_io(fd, EV_WRITE, 10.0) != EV_WRITE)
                return -1;
            continue;
        }
        return -1;
    }
}

struct side {
    int xin, xout;         /* pipes to and from the other thread */
    int lin[2], lout[2];   /* a local ping-pong inside this thread */
    int first;
    int cross, local;      /* rounds completed */
    struct ev_loop *loop;
    int loop_ok;
    void *result;
};

static void *cross_task(void *arg)
{
    struct side *s = arg;
    if (awaitlet_current_loop() != s->loop)
        return T_PTR(-1);
    for (int i = 0; i < XROUNDS; i++) {
        int v = -1;
        if (s->first) {
            if (write_int(s->xout, i) || read_int(s->xin, &v))
                return T_PTR(-2);
        } else {
            if (read_int(s->xin, &v) || write_int(s->xout, v))
                return T_PTR(-3);
        }
        if (v != i)
            return T_PTR(-4);
        s->cross++;
    }
    return T_PTR(1);
}

static void *local_ping(void *arg)
{
    struct side *s = arg;
    for (int i = 0; i < XROUNDS; i++) {
        int v = -1;
        if (write_int(s->lout[1], i) || read_int(s->lin[0], &v) || v != i)
            return T_PTR(-1);
    }
    return T_PTR(1);
}

static void *local_pong(void *arg)
{
    struct side *s = arg;
    for (int i = 0; i < XROUNDS; i++) {
        int v = -1;
        if (read_int(s->lout[0], &v) || write_int(s->lin[1], v))
            return T_PTR(-1);
        s->local++;
    }
    return T_PTR(1);
}

static void *side_thread(void *arg)
{
    struct side *s = arg;
    s->loop = ev_loop_new(EVFLAG_AUTO);
    if (!s->loop)
        return NULL;
    awaitlet_task *c = awaitlet_async_def(s->loop, cross_task, s);
    awaitlet_task *a = awaitlet_async_def(s->loop, local_ping, s);
    awaitlet_task *b = awaitlet_async_def(s->loop, local_pong, s);
    void *rc = awaitlet_join(c), *ra = awaitlet_join(a), *rb = awaitlet_join(b);
    s->loop_ok = awaitlet_loop_tasks(s->loop) == 0;
    ev_loop_destroy(s->loop);
    s->result = T_PTR(T_INT(rc) == 1 && T_INT(ra) == 1 && T_INT(rb) == 1);
    return NULL;
}

START_TEST(two_loops_two_threads)
{
    int ab[2], ba[2];
    t_pipe(ab);
    t_pipe(ba);
    struct side sa, sb;
    memset(&sa, 0, sizeof sa);
    memset(&sb, 0, sizeof sb);
    sa.xout = ab[1];
    sa.xin = ba[0];
    sa.first = 1;
    sb.xout = ba[1];
    sb.xin = ab[0];
    t_pipe(sa.lin);
    t_pipe(sa.lout);
    t_pipe(sb.lin);
    t_pipe(sb.lout);
    pthread_t ta, tb;
    ck_assert_int_eq(pthread_create(&ta, NULL, side_thread, &sa), 0);
    ck_assert_int_eq(pthread_create(&tb, NULL, side_thread, &sb), 0);
    ck_assert_int_eq(pthread_join(ta, NULL), 0);
    ck_assert_int_eq(pthread_join(tb, NULL), 0);
    ck_assert_ptr_eq(sa.result, T_PTR(1));
    ck_assert_ptr_eq(sb.result, T_PTR(1));
    ck_assert_int_eq(sa.cross, XROUNDS);
    ck_assert_int_eq(sb.cross, XROUNDS);
    ck_assert_int_eq(sa.local, XROUNDS);
    ck_assert_int_eq(sb.local, XROUNDS);
    ck_assert_int_eq(sa.loop_ok, 1);
    ck_assert_int_eq(sb.loop_ok, 1);
    ck_assert_int_eq(awaitlet_in_context(), 0);
    t_close2(ab);
    t_close2(ba);
    t_close2(sa.lin);
    t_close2(sa.lout);
    t_close2(sb.lin);
    t_close2(sb.lout);
}
END_TEST

/* --- a handle used from the wrong thread ---------------------------------- */

struct foreign {
    pthread_barrier_t bar;
    awaitlet_task *task;       /* owned by the main test thread */
    struct ev_loop *loop;      /* the main test thread's loop */
    int rc_cancel, e_cancel, rc_detach, e_detach, rc_dl, e_dl;
    void *r_join, *r_join_in, *r_def;
    int e_join, e_join_in, e_def;
};

static void *foreign_join_inside(void *arg)
{
    struct foreign *f = arg;
    errno = 0;
    f->r_join_in = awaitlet_join(f->task);
    f->e_join_in = errno;
    return T_PTR(1);
}

static void *quick(void *arg)
{
    return arg;
}

static void *foreign_thread(void *arg)
{
    struct foreign *f = arg;
    pthread_barrier_wait(&f->bar); /* the task exists and waits */
    errno = 0;
    f->r_join = awaitlet_join(f->task);
    f->e_join = errno;
    errno = 0;
    f->rc_cancel = awaitlet_cancel(f->task);
    f->e_cancel = errno;
    errno = 0;
    f->rc_detach = awaitlet_detach(f->task);
    f->e_detach = errno;
    errno = 0;
    f->rc_dl = awaitlet_set_deadline(f->task, 0.001);
    f->e_dl = errno;
    errno = 0;
    f->r_def = awaitlet_async_def(f->loop, quick, T_PTR(1));
    f->e_def = errno;
    struct ev_loop *mine = ev_loop_new(EVFLAG_AUTO);
    if (mine) {
        awaitlet_run(mine, foreign_join_inside, f);
        ev_loop_destroy(mine);
    }
    pthread_barrier_wait(&f->bar); /* done poking */
    return NULL;
}

static int fpipe[2];

static void *wait_fpipe(void *arg)
{
    (void)arg;
    int rc = awaitlet_io(fpipe[0], EV_READ, 10.0);
    return T_PTR(rc == EV_READ ? 55 : -1);
}

START_TEST(handle_from_other_thread_exdev)
{
    struct foreign f;
    memset(&f, 0, sizeof f);
    f.r_join = f.r_join_in = f.r_def = T_PTR(-5);
    t_pipe(fpipe);
    ck_assert_int_eq(pthread_barrier_init(&f.bar, NULL, 2), 0);
    f.loop = t_loop;
    f.task = awaitlet_async_def(t_loop, wait_fpipe, NULL);
    ck_assert_ptr_nonnull(f.task);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, foreign_thread, &f), 0);
    pthread_barrier_wait(&f.bar);
    pthread_barrier_wait(&f.bar);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    pthread_barrier_destroy(&f.bar);

    ck_assert_ptr_null(f.r_join);
    ck_assert_int_eq(f.e_join, EXDEV);
    ck_assert_ptr_null(f.r_join_in);
    ck_assert_int_eq(f.e_join_in, EXDEV);
    ck_assert_int_eq(f.rc_cancel, -1);
    ck_assert_int_eq(f.e_cancel, EXDEV);
    ck_assert_int_eq(f.rc_detach, -1);
    ck_assert_int_eq(f.e_detach, EXDEV);
    ck_assert_int_eq(f.rc_dl, -1);
    ck_assert_int_eq(f.e_dl, EXDEV);
    ck_assert_ptr_null(f.r_def);
    ck_assert_int_eq(f.e_def, EXDEV);
    /* None of it touched the task: it is still waiting, not cancelled, with
     * no deadline, and joins normally. */
    ck_assert_int_eq(awaitlet_done(f.task), 0);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 1);
    ck_assert_int_eq(write(fpipe[1], "x", 1), 1);
    T_JOIN_EQ(f.task, 55);
    t_close2(fpipe);
}
END_TEST

/* --- offload --------------------------------------------------------------- */

struct work {
    pthread_t ran_on;
    int in, out;
    unsigned delay_us;
};

static atomic_int running, max_running;

static void *work_fn(void *arg)
{
    struct work *w = arg;
    w->ran_on = pthread_self();
    int now = atomic_fetch_add(&running, 1) + 1;
    int m = atomic_load(&max_running);
    while (now > m && !atomic_compare_exchange_weak(&max_running, &m, now))
        ;
    if (w->delay_us)
        usleep(w->delay_us);
    atomic_fetch_sub(&running, 1);
    w->out = w->in * 3;
    return T_PTR(w->in + 1);
}

struct off_call {
    struct work w;
    int rc, err;
    void *res;
    int after_rc, after_err;
    pthread_t task_thread;
    int done;
    int null_res; /* pass NULL for the result pointer */
};

static void *offloader(void *arg)
{
    struct off_call *c = arg;
    c->task_thread = pthread_self();
    c->res = T_PTR(-5);
    errno = 0;
    c->rc = awaitlet_offload(work_fn, &c->w, c->null_res ? NULL : &c->res);
    c->err = errno;
    c->done = 1;
    errno = 0;
    c->after_rc = awaitlet_sleep(0);
    c->after_err = errno;
    return T_PTR(1);
}

START_TEST(offload_result_and_thread)
{
    struct off_call c;
    memset(&c, 0, sizeof c);
    c.w.in = 20;
    ck_assert_ptr_eq(awaitlet_run(t_loop, offloader, &c), T_PTR(1));
    ck_assert_int_eq(c.rc, 0);
    ck_assert_ptr_eq(c.res, T_PTR(21));
    ck_assert_int_eq(c.w.out, 60);
    ck_assert(pthread_equal(c.task_thread, pthread_self()));
    ck_assert(!pthread_equal(c.w.ran_on, pthread_self()));
    ck_assert_int_eq(c.after_rc, 0);
    /* A NULL result pointer is allowed. */
    memset(&c, 0, sizeof c);
    c.w.in = 2;
    c.null_res = 1;
    ck_assert_ptr_eq(awaitlet_run(t_loop, offloader, &c), T_PTR(1));
    ck_assert_int_eq(c.rc, 0);
    ck_assert_int_eq(c.w.out, 6);
    ck_assert_ptr_eq(c.res, T_PTR(-5));
}
END_TEST

START_TEST(offload_outside_task_runs_inline)
{
    struct work w;
    memset(&w, 0, sizeof w);
    w.in = 4;
    void *res = NULL;
    ck_assert_int_eq(awaitlet_offload(work_fn, &w, &res), 0);
    ck_assert_ptr_eq(res, T_PTR(5));
    ck_assert(pthread_equal(w.ran_on, pthread_self()));
}
END_TEST

struct ticker {
    struct off_call *c;
    int ticks;
};

static void *ticker_fn(void *arg)
{
    struct ticker *t = arg;
    while (!t->c->done) {
        if (awaitlet_sleep(0.01) != 0)
            return T_PTR(-1);
        t->ticks++;
    }
    return T_PTR(1);
}

START_TEST(offload_does_not_block_loop)
{
    struct off_call c;
    memset(&c, 0, sizeof c);
    c.w.in = 1;
    c.w.delay_us = 200000;
    struct ticker tk = {&c, 0};
    awaitlet_task *o = awaitlet_async_def(t_loop, offloader, &c);
    awaitlet_task *t = awaitlet_async_def(t_loop, ticker_fn, &tk);
    ck_assert_ptr_nonnull(o);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(c.done, 0); /* suspended while the worker sleeps */
    T_JOIN_EQ(o, 1);
    T_JOIN_EQ(t, 1);
    ck_assert_int_eq(c.rc, 0);
    ck_assert_ptr_eq(c.res, T_PTR(2));
    /* 200 ms of work, 10 ms ticks: the loop kept running meanwhile. */
    ck_assert_int_ge(tk.ticks, 8);
}
END_TEST

START_TEST(offload_many_capped_at_four)
{
    enum { N = 10 };
    struct off_call c[N];
    awaitlet_task *t[N];
    /* Warm up: one worker exists and sits idle, as in any program that
     * offloaded before.  An idle worker must not stop the pool growing
     * when several jobs arrive at once. */
    memset(c, 0, sizeof c);
    ck_assert_ptr_eq(awaitlet_run(t_loop, offloader, &c[0]), T_PTR(1));
    usleep(20000);
    atomic_store(&running, 0);
    atomic_store(&max_running, 0);
    memset(c, 0, sizeof c);
    for (int i = 0; i < N; i++) {
        c[i].w.in = i;
        c[i].w.delay_us = 40000;
        t[i] = awaitlet_async_def(t_loop, offloader, &c[i]);
        ck_assert_ptr_nonnull(t[i]);
    }
    for (int i = 0; i < N; i++) {
        T_JOIN_EQ(t[i], 1);
        ck_assert_int_eq(c[i].rc, 0);
        ck_assert_ptr_eq(c[i].res, T_PTR(i + 1));
        ck_assert_int_eq(c[i].w.out, 3 * i);
    }
    int max_par = atomic_load(&max_running);
    ck_assert_int_le(max_par, 4);
    ck_assert_int_ge(max_par, 2); /* really in parallel */
}
END_TEST

START_TEST(offload_cancel_takes_effect_after)
{
    struct off_call c;
    memset(&c, 0, sizeof c);
    c.w.in = 7;
    c.w.delay_us = 50000;
    awaitlet_task *t = awaitlet_async_def(t_loop, offloader, &c);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(awaitlet_cancel(t), 0);
    T_JOIN_EQ(t, 1);
    /* The work completed and its result was delivered ... */
    ck_assert_int_eq(c.rc, 0);
    ck_assert_ptr_eq(c.res, T_PTR(8));
    ck_assert_int_eq(c.w.out, 21);
    /* ... and the cancellation hit the next wait. */
    ck_assert_int_eq(c.after_rc, -1);
    ck_assert_int_eq(c.after_err, ECANCELED);
}
END_TEST

/* awaitlet_loop_tasks may be asked from any thread while the owner starts
 * and releases tasks (the count is written and read atomically; under TSan a
 * plain counter shows here as a race).  Every answer is a count that really
 * existed: never above the most tasks alive at once, never wrapped. */
struct poll_count {
    struct ev_loop *loop;
    atomic_int stop;
    unsigned max_seen, reads;
};

static void *count_poller(void *arg)
{
    struct poll_count *pc = arg;
    while (!atomic_load(&pc->stop)) {
        unsigned n = awaitlet_loop_tasks(pc->loop);
        if (n > pc->max_seen)
            pc->max_seen = n;
        pc->reads++;
    }
    return NULL;
}

static void *yield_once(void *arg)
{
    return awaitlet_sleep(0) == 0 ? arg : NULL;
}

START_TEST(loop_tasks_read_from_other_thread)
{
    struct poll_count pc;
    memset(&pc, 0, sizeof pc);
    pc.loop = t_loop;
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, count_poller, &pc), 0);
    int rounds = RUNNING_ON_VALGRIND || T_TSAN ? 200 : 3000;
    for (int i = 0; i < rounds; i++) {
        awaitlet_task *a = awaitlet_async_def(t_loop, yield_once, T_PTR(1));
        awaitlet_task *b = awaitlet_async_def(t_loop, yield_once, T_PTR(2));
        ck_assert_ptr_nonnull(a);
        ck_assert_ptr_nonnull(b);
        T_JOIN_EQ(a, 1);
        T_JOIN_EQ(b, 2);
    }
    atomic_store(&pc.stop, 1);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_uint_le(pc.max_seen, 2);
    ck_assert_uint_gt(pc.reads, 0);
}
END_TEST

static Suite *threads_suite(void)
{
    Suite *s = suite_create("threads");
    TCase *tc = tcase_create("loops");
    tcase_add_test(tc, two_loops_two_threads);
    suite_add_tcase(s, tc);
    tc = t_tcase("foreign");
    tcase_add_test(tc, handle_from_other_thread_exdev);
    tcase_add_test(tc, loop_tasks_read_from_other_thread);
    suite_add_tcase(s, tc);
    tc = t_tcase("offload");
    tcase_add_test(tc, offload_result_and_thread);
    tcase_add_test(tc, offload_outside_task_runs_inline);
    tcase_add_test(tc, offload_does_not_block_loop);
    tcase_add_test(tc, offload_many_capped_at_four);
    tcase_add_test(tc, offload_cancel_takes_effect_after);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return t_run_suite(threads_suite());
}
