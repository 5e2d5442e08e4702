/*
 * test_ending.c -- how a task ends, and what joins and runs promise.
 *
 * A task's end is one step of its own, taken on the resumer's stack after
 * the task's last switch: stack reclaimed, on_exit called, and only then the
 * joiner woken and a detached task released -- both read after on_exit, so
 * whatever on_exit did (detach the task, cancel its joiner, start tasks) is
 * honoured exactly once.  The tests below are the misuses that used to
 * corrupt the runtime (a struct released twice, a joiner queued twice, a
 * finished task resumed), each now either working or refused with an errno.
 * Then joins: a join from outside a task is recorded like one from inside,
 * awaitlet_join_ex tells a NULL result from a failure whatever other tasks
 * left in errno, and awaitlet_run never leaves a task nobody can release.
 */
#include "helpers.h"

#include <stdio.h>

static void *quick(void *arg)
{
    return arg;
}

static void *yield_ret(void *arg)
{
    return awaitlet_sleep(0) == 0 ? arg : T_PTR(-1);
}

static void *sleep_ret(void *arg)
{
    return awaitlet_sleep(0.02) == 0 ? arg : T_PTR(-1);
}

/* Busy until cancelled: on_exit_rules' "unfinished task" must stay so
 * however slowly the loop turns (a 20 ms sleep ended first under valgrind
 * on a loaded machine); the test cancels it from on_exit. */
static void *busy_ret(void *arg)
{
    return awaitlet_sleep(30) == 0 ? arg : T_PTR(-1);
}

static awaitlet_options exit_opts(awaitlet_exit_cb cb, void *data)
{
    awaitlet_options o;
    memset(&o, 0, sizeof o);
    o.on_exit = cb;
    o.on_exit_data = data;
    return o;
}

/* --- on_exit detaching its own task --------------------------------------- */

struct det {
    int rc, err, done, again_rc, again_err;
};

static void detach_self(awaitlet_task *t, void *result, void *data)
{
    (void)result;
    struct det *d = data;
    errno = 0;
    d->rc = awaitlet_detach(t);
    d->err = errno;
    d->done = awaitlet_done(t);
    errno = 0;
    d->again_rc = awaitlet_detach(t); /* already detached */
    d->again_err = errno;
}

START_TEST(on_exit_detaches_own_task)
{
    /* once ending on the loop side, once ending inside awaitlet_async_def */
    for (int inside = 0; inside < 2; inside++) {
        struct det d = {5, 5, 5, 5, 5};
        awaitlet_options o = exit_opts(detach_self, &d);
        awaitlet_task *t = awaitlet_async_def_opts(t_loop, inside ? quick : yield_ret, T_PTR(1), &o);
        ck_assert_ptr_nonnull(t);
        for (int i = 0; i < 100 && d.rc == 5; i++)
            ev_run(t_loop, EVRUN_NOWAIT);
        ck_assert_int_eq(d.rc, 0);
        ck_assert_int_eq(d.done, 1);
        ck_assert_int_eq(d.again_rc, -1);
        ck_assert_int_eq(d.again_err, EINVAL);
        /* released exactly once */
        ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
        awaitlet_task *a = awaitlet_async_def(t_loop, yield_ret, T_PTR(2));
        awaitlet_task *b = awaitlet_async_def(t_loop, yield_ret, T_PTR(3));
        ck_assert_ptr_nonnull(a);
        ck_assert_ptr_nonnull(b);
        ck_assert_ptr_ne(a, b); /* one struct was not on the free list twice */
        ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 2);
        T_JOIN_EQ(a, 2);
        T_JOIN_EQ(b, 3);
    }
}
END_TEST

/* --- on_exit cancelling the task that joins it ---------------------------- */

static awaitlet_task *the_joiner;
static int resumed_joins;

static void cancel_joiner(awaitlet_task *t, void *result, void *data)
{
    (void)t, (void)result;
    *(int *)data = awaitlet_cancel(the_joiner);
}

static void *join_arg(void *arg)
{
    void *r = T_PTR(-9);
    errno = 0;
    int rc = awaitlet_join_ex(arg, &r);
    int e = errno;
    resumed_joins++;
    if (rc == -1 && e == ECANCELED && r == T_PTR(-9))
        return T_PTR(1);
    return T_PTR(-100 - e);
}

START_TEST(on_exit_cancels_joiner)
{
    int crc = 5;
    resumed_joins = 0;
    awaitlet_options o = exit_opts(cancel_joiner, &crc);
    awaitlet_task *t = awaitlet_async_def_opts(t_loop, yield_ret, T_PTR(7), &o);
    ck_assert_ptr_nonnull(t);
    the_joiner = awaitlet_async_def(t_loop, join_arg, t);
    ck_assert_ptr_nonnull(the_joiner);
    ck_assert_int_eq(awaitlet_done(the_joiner), 0); /* waiting in the join */
    T_JOIN_EQ(the_joiner, 1); /* woken once, with ECANCELED */
    ck_assert_int_eq(crc, 0);
    ck_assert_int_eq(resumed_joins, 1);
    /* the cancelled join released nothing: t is joined normally */
    ck_assert_int_eq(awaitlet_done(t), 1);
    T_JOIN_EQ(t, 7);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
}
END_TEST

/* --- on_exit joining its own task, then starting another ----------------- */

struct selfjoin {
    void *r;
    int rc, err;
    awaitlet_task *spawned;
};

static void join_self_then_spawn(awaitlet_task *t, void *result, void *data)
{
    (void)result;
    struct selfjoin *s = data;
    s->r = T_PTR(-9);
    errno = 0;
    s->rc = awaitlet_join_ex(t, &s->r);
    s->err = errno;
    /* a detached task that could reuse t's struct if t had been released */
    awaitlet_options o;
    memset(&o, 0, sizeof o);
    o.detached = 1;
    s->spawned = awaitlet_async_def_opts(t_loop, yield_ret, T_PTR(9), &o);
}

START_TEST(on_exit_join_self_edeadlk)
{
    struct selfjoin s;
    memset(&s, 0, sizeof s);
    awaitlet_options o = exit_opts(join_self_then_spawn, &s);
    awaitlet_task *t = awaitlet_async_def_opts(t_loop, yield_ret, T_PTR(8), &o);
    ck_assert_ptr_nonnull(t);
    for (int i = 0; i < 100 && !s.spawned; i++)
        ev_run(t_loop, EVRUN_NOWAIT);
    ck_assert_int_eq(s.rc, -1);
    ck_assert_int_eq(s.err, EDEADLK);
    ck_assert_ptr_eq(s.r, T_PTR(-9)); /* untouched on failure */
    ck_assert_ptr_nonnull(s.spawned);
    ck_assert_ptr_ne(s.spawned, t);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 2);
    T_JOIN_EQ(t, 8); /* still joinable once on_exit returned */
    t_drain(t_loop, 100);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
}
END_TEST

/* --- what else on_exit may and may not do --------------------------------- */

struct rules {
    awaitlet_task *cur;
    int in_ctx;
    int sleep_rc, sleep_err, yield_rc, yield_err;
    int join_busy_rc, join_busy_err;  /* unfinished other task */
    int join_done_rc;                 /* ended other task */
    void *join_done_r;
    int run_rc, run_err;
    int cancel_rc;
    awaitlet_task *joiner;            /* started here, joins the ending task */
    int on_exit_returned;
    int joiner_saw_returned;
    void *joiner_got;
};

static awaitlet_task *busy_other, *done_other;
static struct rules *cur_rules;
static int runs_started;

static void *count_run(void *arg)
{
    runs_started++;
    return arg;
}

static void *join_ending(void *arg)
{
    void *r = NULL;
    if (awaitlet_join_ex(arg, &r) != 0)
        return T_PTR(-1);
    cur_rules->joiner_saw_returned = cur_rules->on_exit_returned;
    cur_rules->joiner_got = r;
    return T_PTR(1);
}

static void probe_rules(awaitlet_task *t, void *result, void *data)
{
    (void)result;
    struct rules *r = data;
    r->cur = awaitlet_current();
    r->in_ctx = awaitlet_in_context();
    errno = 0;
    r->sleep_rc = awaitlet_sleep(0.001);
    r->sleep_err = errno;
    errno = 0;
    r->yield_rc = awaitlet_yield();
    r->yield_err = errno;
    void *x = NULL;
    errno = 0;
    r->join_busy_rc = awaitlet_join_ex(busy_other, &x);
    r->join_busy_err = errno;
    r->join_done_rc = awaitlet_join_ex(done_other, &r->join_done_r);
    errno = 0;
    r->run_rc = awaitlet_run_ex(t_loop, count_run, NULL, NULL);
    r->run_err = errno;
    r->cancel_rc = awaitlet_cancel(busy_other);
    r->joiner = awaitlet_async_def(t_loop, join_ending, t);
    r->on_exit_returned = 1;
}

static void *start_quick_with_rules(void *arg)
{
    awaitlet_options *o = arg;
    awaitlet_task *t = awaitlet_async_def_opts(awaitlet_current_loop(), quick, T_PTR(11), o);
    return t; /* ended inside the call above: on_exit ran in this task's frame */
}

START_TEST(on_exit_rules)
{
    for (int inside = 0; inside < 2; inside++) {
        struct rules r;
        memset(&r, 0, sizeof r);
        cur_rules = &r;
        runs_started = 0;
        busy_other = awaitlet_async_def(t_loop, busy_ret, T_PTR(21));
        done_other = awaitlet_async_def(t_loop, quick, T_PTR(22));
        ck_assert_ptr_nonnull(busy_other);
        ck_assert_ptr_nonnull(done_other);
        awaitlet_options o = exit_opts(probe_rules, &r);
        awaitlet_task *t, *starter = NULL;
        if (inside) {
            starter = awaitlet_async_def(t_loop, start_quick_with_rules, &o);
            ck_assert_ptr_nonnull(starter);
            t = awaitlet_join(starter);
        } else {
            t = awaitlet_async_def_opts(t_loop, yield_ret, T_PTR(11), &o);
            for (int i = 0; i < 100 && !r.on_exit_returned; i++)
                ev_run(t_loop, EVRUN_NOWAIT);
        }
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(r.on_exit_returned, 1);
        ck_assert_ptr_null(r.cur); /* outside any task, even inside the starter */
        ck_assert_int_eq(r.in_ctx, 0);
        ck_assert_int_eq(r.sleep_rc, -1);
        ck_assert_int_eq(r.sleep_err, EPERM);
        ck_assert_int_eq(r.yield_rc, -1);
        ck_assert_int_eq(r.yield_err, EPERM);
        ck_assert_int_eq(r.join_busy_rc, -1);
        ck_assert_int_eq(r.join_busy_err, EPERM);
        ck_assert_int_eq(r.join_done_rc, 0);
        ck_assert_ptr_eq(r.join_done_r, T_PTR(22));
        ck_assert_int_eq(r.run_rc, -1);
        ck_assert_int_eq(r.run_err, EPERM);
        ck_assert_int_eq(runs_started, 0); /* awaitlet_run started nothing */
        ck_assert_int_eq(r.cancel_rc, 0);
        ck_assert_ptr_nonnull(r.joiner);
        /* the join started in on_exit completes after on_exit returned */
        T_JOIN_EQ(r.joiner, 1);
        ck_assert_int_eq(r.joiner_saw_returned, 1);
        ck_assert_ptr_eq(r.joiner_got, T_PTR(11));
        T_JOIN_EQ(busy_other, -1); /* cancelled from on_exit */
        ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
    }
}
END_TEST

/* --- a join from outside a task is recorded ------------------------------- */

static awaitlet_task *target;
static int meddle_det_rc, meddle_det_err, meddle_join_rc, meddle_join_err, meddled;

static void meddle(void)
{
    void *r = NULL;
    errno = 0;
    meddle_det_rc = awaitlet_detach(target);
    meddle_det_err = errno;
    errno = 0;
    meddle_join_rc = awaitlet_join_ex(target, &r);
    meddle_join_err = errno;
    meddled++;
}

static void *meddler_task(void *arg)
{
    (void)arg;
    if (awaitlet_sleep(0.002) != 0)
        return T_PTR(-1);
    meddle();
    return T_PTR(1);
}

static void meddler_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)w, (void)revents;
    meddle();
}

START_TEST(outside_join_is_recorded)
{
    /* once a task meddles, once a plain libev callback does */
    for (int from_cb = 0; from_cb < 2; from_cb++) {
        meddled = 0;
        meddle_det_rc = meddle_join_rc = 5;
        target = awaitlet_async_def(t_loop, sleep_ret, T_PTR(5));
        ck_assert_ptr_nonnull(target);
        awaitlet_task *m = NULL;
        ev_timer tm;
        if (from_cb) {
            ev_timer_init(&tm, meddler_timer, 0.002, 0.);
            ev_timer_start(t_loop, &tm);
        } else {
            m = awaitlet_async_def(t_loop, meddler_task, NULL);
            ck_assert_ptr_nonnull(m);
        }
        T_JOIN_EQ(target, 5);
        ck_assert_int_eq(meddled, 1);
        ck_assert_int_eq(meddle_det_rc, -1);
        ck_assert_int_eq(meddle_det_err, EINVAL);
        ck_assert_int_eq(meddle_join_rc, -1);
        ck_assert_int_eq(meddle_join_err, EINVAL);
        if (m)
            T_JOIN_EQ(m, 1);
        ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
    }
}
END_TEST

/* --- join results: NULL is not a failure ---------------------------------- */

static int eagain_pipe[2];

static void *leaves_eagain(void *arg)
{
    (void)arg;
    if (awaitlet_sleep(0) != 0)
        return T_PTR(-1);
    char c;
    if (read(eagain_pipe[0], &c, 1) != -1 || errno != EAGAIN)
        return T_PTR(-2);
    /* errno stays EAGAIN: the thread's errno, seen by whoever runs next */
    if (awaitlet_sleep(0.05) != 0)
        return T_PTR(-3);
    return T_PTR(1);
}

static void *ret_null(void *arg)
{
    (void)arg;
    if (awaitlet_sleep(0) != 0)
        return T_PTR(-1);
    return NULL;
}

START_TEST(join_null_result_despite_other_tasks_errno)
{
    t_pipe(eagain_pipe);
    /* old convenience: errno = 0 before the call works, errno is kept */
    awaitlet_task *o = awaitlet_async_def(t_loop, leaves_eagain, NULL);
    awaitlet_task *t = awaitlet_async_def(t_loop, ret_null, NULL);
    ck_assert_ptr_nonnull(o);
    ck_assert_ptr_nonnull(t);
    errno = 0;
    void *r = awaitlet_join(t);
    ck_assert_ptr_null(r);
    ck_assert_msg(errno == 0, "a NULL result read as a failure: errno %d", errno);
    T_JOIN_EQ(o, 1);
    /* awaitlet_join_ex: the status says it */
    o = awaitlet_async_def(t_loop, leaves_eagain, NULL);
    t = awaitlet_async_def(t_loop, ret_null, NULL);
    r = T_PTR(-9);
    ck_assert_int_eq(awaitlet_join_ex(t, &r), 0);
    ck_assert_ptr_null(r);
    T_JOINX_EQ(o, 1);
    /* result may be NULL; failures leave *result alone */
    t = awaitlet_async_def(t_loop, quick, T_PTR(3));
    ck_assert_int_eq(awaitlet_join_ex(t, NULL), 0);
    r = T_PTR(-9);
    T_FAILS(awaitlet_join_ex(NULL, &r), -1, EINVAL);
    ck_assert_ptr_eq(r, T_PTR(-9));
    /* awaitlet_run_ex */
    r = T_PTR(-9);
    ck_assert_int_eq(awaitlet_run_ex(t_loop, ret_null, NULL, &r), 0);
    ck_assert_ptr_null(r);
    ck_assert_int_eq(awaitlet_run_ex(t_loop, quick, T_PTR(4), &r), 0);
    ck_assert_ptr_eq(r, T_PTR(4));
    T_FAILS(awaitlet_run_ex(t_loop, NULL, NULL, &r), -1, EINVAL);
    ck_assert_ptr_eq(r, T_PTR(4));
    t_close2(eagain_pipe);
}
END_TEST

/* Inside a task, too. */
static void *joins_null_inside(void *arg)
{
    (void)arg;
    awaitlet_task *o = awaitlet_async_def(awaitlet_current_loop(), leaves_eagain, NULL);
    awaitlet_task *t = awaitlet_async_def(awaitlet_current_loop(), ret_null, NULL);
    if (!o || !t)
        return T_PTR(-1);
    errno = 0;
    void *r = awaitlet_join(t);
    if (r != NULL || errno != 0)
        return T_PTR(-2);
    r = T_PTR(-9);
    if (awaitlet_join_ex(o, &r) != 0 || r != T_PTR(1))
        return T_PTR(-3);
    return T_PTR(1);
}

START_TEST(join_null_result_inside_task)
{
    t_pipe(eagain_pipe);
    ck_assert_ptr_eq(awaitlet_run(t_loop, joins_null_inside, NULL), T_PTR(1));
    t_close2(eagain_pipe);
}
END_TEST

/* --- awaitlet_run never leaks its task ------------------------------------ */

static int child_ran, child_err;

static void *child(void *arg)
{
    child_ran++;
    errno = 0;
    if (awaitlet_sleep(0.05) != 0) {
        child_err = errno;
        return T_PTR(-1);
    }
    return arg;
}

static void *runs_while_cancelled(void *arg)
{
    (void)arg;
    awaitlet_cancel(awaitlet_current());
    errno = 0;
    void *r = awaitlet_run(awaitlet_current_loop(), child, T_PTR(3));
    if (r != NULL || errno != ECANCELED)
        return T_PTR(-1);
    errno = 0;
    if (awaitlet_run_ex(awaitlet_current_loop(), child, T_PTR(3), &r) != -1 || errno != ECANCELED)
        return T_PTR(-2);
    return T_PTR(1);
}

START_TEST(run_in_cancelled_task_starts_nothing)
{
    child_ran = 0;
    awaitlet_task *t = awaitlet_async_def(t_loop, runs_while_cancelled, NULL);
    ck_assert_ptr_nonnull(t);
    T_JOIN_EQ(t, 1);
    ck_assert_int_eq(child_ran, 0);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
}
END_TEST

static void *runs_on_other_loop(void *arg)
{
    errno = 0;
    void *r = awaitlet_run(arg, child, T_PTR(4));
    return r == NULL && errno == EXDEV ? T_PTR(1) : T_PTR(-1);
}

START_TEST(run_on_other_loop_from_task_starts_nothing)
{
    struct ev_loop *b = ev_loop_new(EVFLAG_AUTO);
    ck_assert_ptr_nonnull(b);
    child_ran = 0;
    awaitlet_task *t = awaitlet_async_def(t_loop, runs_on_other_loop, b);
    ck_assert_ptr_nonnull(t);
    T_JOIN_EQ(t, 1);
    ck_assert_int_eq(child_ran, 0);
    ck_assert_uint_eq(awaitlet_loop_tasks(b), 0);
    ck_assert_int_eq(awaitlet_loop_close(b), 0);
    ev_loop_destroy(b);
}
END_TEST

static void *runs_then_cancelled(void *arg)
{
    (void)arg;
    errno = 0;
    void *r = awaitlet_run(awaitlet_current_loop(), child, T_PTR(5));
    return r == NULL && errno == ECANCELED ? T_PTR(1) : T_PTR(-1);
}

START_TEST(run_interrupted_during_join_cleans_up)
{
    child_ran = 0;
    child_err = 0;
    awaitlet_task *t = awaitlet_async_def(t_loop, runs_then_cancelled, NULL);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(child_ran, 1);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 2); /* t waits in the join */
    ck_assert_int_eq(awaitlet_cancel(t), 0);
    T_JOIN_EQ(t, 1);
    /* the child was cancelled with its runner and released when it ended */
    t_drain(t_loop, 1000);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
    ck_assert_int_eq(child_err, ECANCELED);
}
END_TEST

static Suite *ending_suite(void)
{
    Suite *s = suite_create("ending");
    TCase *tc = t_tcase("on_exit");
    tcase_add_test(tc, on_exit_detaches_own_task);
    tcase_add_test(tc, on_exit_cancels_joiner);
    tcase_add_test(tc, on_exit_join_self_edeadlk);
    tcase_add_test(tc, on_exit_rules);
    suite_add_tcase(s, tc);

    tc = t_tcase("join");
    tcase_add_test(tc, outside_join_is_recorded);
    tcase_add_test(tc, join_null_result_despite_other_tasks_errno);
    tcase_add_test(tc, join_null_result_inside_task);
    suite_add_tcase(s, tc);

    tc = t_tcase("run");
    tcase_add_test(tc, run_in_cancelled_task_starts_nothing);
    tcase_add_test(tc, run_on_other_loop_from_task_starts_nothing);
    tcase_add_test(tc, run_interrupted_during_join_cleans_up);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return t_run_suite(ending_suite());
}
