/*
 * test_cancel.c -- cancellation, deadlines and the shield.
 *
 * These are the paths that end a wait early, the ones most likely to leave a
 * watcher armed, wake a task twice, or lose the errno.  Each test records
 * the return value and errno of every wait a task makes, then checks them
 * all on the loop side: the wait in progress, every later wait, how long the
 * wait really took (a cancel must end a 10 s wait at once), and that the
 * task still returns normally and is joined.  A pipe nobody writes is the
 * standard "blocks forever" wait.
 */
#include "helpers.h"

#include <stdio.h>

enum { W_IO, W_SLEEP, W_JOIN, W_YIELD };

/* What a victim task saw. */
struct victim {
    int mode;             /* W_IO, W_SLEEP or W_JOIN */
    int fd;               /* W_IO: a never-readable fd */
    awaitlet_task *other; /* W_JOIN: the task to join */
    double deadline;      /* > 0: set on itself before waiting */
    double io_timeout;    /* W_IO timeout (0 means -1: none) */
    int shield;           /* 1: shielded around the first wait */

    int started;
    int rc1, err1;        /* the first wait */
    void *join_res;
    int rc2, err2;        /* a later sleep(0) */
    int rc3, err3;        /* a later io with timeout 0 */
    int interrupted;
    double elapsed;       /* of the first wait */
};

static void *victim_fn(void *arg)
{
    struct victim *v = arg;
    v->started = 1;
    if (v->deadline > 0 && awaitlet_set_deadline(awaitlet_current(), v->deadline) != 0)
        return T_PTR(-1);
    if (v->shield && awaitlet_shield(1) != 1)
        return T_PTR(-2);
    double t0 = t_now();
    errno = 0;
    switch (v->mode) {
    case W_IO:
        v->rc1 = awaitlet_io(v->fd, EV_READ, v->io_timeout > 0 ? v->io_timeout : -1.0);
        break;
    case W_SLEEP:
        v->rc1 = awaitlet_sleep(10.0);
        break;
    case W_JOIN:
        v->join_res = awaitlet_join(v->other);
        v->rc1 = v->join_res ? 0 : -1;
        break;
    case W_YIELD:
        v->rc1 = awaitlet_sleep(0);
        break;
    }
    v->err1 = errno;
    v->elapsed = t_now() - t0;
    errno = 0;
    v->rc2 = awaitlet_sleep(0);
    v->err2 = errno;
    errno = 0;
    v->rc3 = awaitlet_io(v->fd >= 0 ? v->fd : 0, EV_READ, 0.0);
    v->err3 = errno;
    v->interrupted = awaitlet_interrupted();
    return T_PTR(77);
}

static int block_pipe[2];

static void pipe_setup(void)
{
    t_loop_setup();
    t_pipe(block_pipe);
}

static void pipe_teardown(void)
{
    t_close2(block_pipe);
    t_loop_teardown();
}

static void victim_init(struct victim *v, int mode)
{
    memset(v, 0, sizeof *v);
    v->mode = mode;
    v->fd = block_pipe[0];
    v->rc1 = v->rc2 = v->rc3 = -5;
}

/* A wait's outcome: -1 must come with the errno; success (>= 0) leaves
 * errno unspecified, so only the value is compared. */
#define ASSERT_WAIT(rc, err, want_rc, want_err)                                 \
    ck_assert_msg((rc) == (want_rc) && ((want_rc) != -1 || (err) == (want_err)), \
                  #rc ": got %d errno %d (%s), want %d errno %d", (rc), (err),  \
                  strerror(err), (want_rc), (want_err))

/* A task that blocks on the pipe until cancelled; returns 88. */
static void *blocker(void *arg)
{
    (void)arg;
    awaitlet_io(block_pipe[0], EV_READ, -1.0);
    return T_PTR(88);
}

/* --- cancel --------------------------------------------------------------- */

static void cancel_from_outside(int mode)
{
    struct victim v;
    victim_init(&v, mode);
    awaitlet_task *other = NULL;
    if (mode == W_JOIN) {
        other = awaitlet_async_def(t_loop, blocker, NULL);
        ck_assert_ptr_nonnull(other);
        v.other = other;
    }
    awaitlet_task *t = awaitlet_async_def(t_loop, victim_fn, &v);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(v.started, 1);
    ck_assert_int_eq(v.rc1, -5); /* still waiting */
    ck_assert_int_eq(awaitlet_cancel(t), 0);
    /* The woken task runs on the next loop iteration, not inside cancel. */
    ck_assert_int_eq(v.rc1, -5);
    T_JOIN_EQ(t, 77);
    ASSERT_WAIT(v.rc1, v.err1, -1, ECANCELED);
    ASSERT_WAIT(v.rc2, v.err2, -1, ECANCELED);
    ASSERT_WAIT(v.rc3, v.err3, -1, ECANCELED);
    ck_assert_int_eq(v.interrupted, 1);
    ck_assert_double_lt(v.elapsed, 1.0);
    if (other) {
        /* The joined task was not released by the failed join. */
        ck_assert_ptr_null(v.join_res);
        ck_assert_int_eq(awaitlet_done(other), 0);
        ck_assert_int_eq(awaitlet_cancel(other), 0);
        T_JOIN_EQ(other, 88);
    }
}

START_TEST(cancel_task_in_io)
{
    cancel_from_outside(W_IO);
}
END_TEST

START_TEST(cancel_task_in_sleep)
{
    cancel_from_outside(W_SLEEP);
}
END_TEST

START_TEST(cancel_task_in_join)
{
    cancel_from_outside(W_JOIN);
}
END_TEST

START_TEST(cancel_task_in_yield)
{
    /* Queued to run again, not parked on a watcher: still cancelled. */
    cancel_from_outside(W_YIELD);
}
END_TEST

START_TEST(cancel_io_with_timeout_is_not_a_timeout)
{
    struct victim v;
    victim_init(&v, W_IO);
    v.io_timeout = 5.0;
    awaitlet_task *t = awaitlet_async_def(t_loop, victim_fn, &v);
    ck_assert_int_eq(awaitlet_cancel(t), 0);
    T_JOIN_EQ(t, 77);
    ASSERT_WAIT(v.rc1, v.err1, -1, ECANCELED);
}
END_TEST

static void *self_cancel(void *arg)
{
    struct victim *v = arg;
    v->rc1 = awaitlet_cancel(awaitlet_current());
    v->interrupted = awaitlet_interrupted();
    errno = 0;
    v->rc2 = awaitlet_io(block_pipe[1], EV_WRITE, 0.0); /* ready, yet cancelled */
    v->err2 = errno;
    errno = 0;
    v->rc3 = awaitlet_sleep(0);
    v->err3 = errno;
    return T_PTR(5);
}

START_TEST(cancel_before_first_wait)
{
    struct victim v;
    victim_init(&v, W_IO);
    ck_assert_ptr_eq(awaitlet_run(t_loop, self_cancel, &v), T_PTR(5));
    ck_assert_int_eq(v.rc1, 0);
    ck_assert_int_eq(v.interrupted, 1);
    ASSERT_WAIT(v.rc2, v.err2, -1, ECANCELED);
    ASSERT_WAIT(v.rc3, v.err3, -1, ECANCELED);
}
END_TEST

struct canceller {
    awaitlet_task *target;
    struct victim *v;
    int rc, err;
    int target_rc_right_after;
};

static void *canceller_fn(void *arg)
{
    struct canceller *c = arg;
    if (awaitlet_sleep(0.01) != 0)
        return T_PTR(-1);
    errno = 0;
    c->rc = awaitlet_cancel(c->target);
    c->err = errno;
    c->target_rc_right_after = c->v->rc1;
    return T_PTR(1);
}

START_TEST(cancel_from_another_task)
{
    struct victim v;
    victim_init(&v, W_SLEEP);
    awaitlet_task *t = awaitlet_async_def(t_loop, victim_fn, &v);
    struct canceller c = {t, &v, -5, 0, 0};
    awaitlet_task *k = awaitlet_async_def(t_loop, canceller_fn, &c);
    ck_assert_ptr_nonnull(t);
    ck_assert_ptr_nonnull(k);
    T_JOIN_EQ(k, 1);
    T_JOIN_EQ(t, 77);
    ck_assert_int_eq(c.rc, 0);
    ck_assert_int_eq(c.target_rc_right_after, -5); /* not run inside cancel */
    ASSERT_WAIT(v.rc1, v.err1, -1, ECANCELED);
    ASSERT_WAIT(v.rc2, v.err2, -1, ECANCELED);
    ck_assert_double_lt(v.elapsed, 1.0);
}
END_TEST

static void *quick(void *arg)
{
    return arg;
}

START_TEST(cancel_errors)
{
    T_FAILS(awaitlet_cancel(NULL), -1, EINVAL);
    T_FAILS(awaitlet_set_deadline(NULL, 1.0), -1, EINVAL);
    awaitlet_task *t = awaitlet_async_def(t_loop, quick, T_PTR(3));
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(awaitlet_done(t), 1);
    T_FAILS(awaitlet_cancel(t), -1, ESRCH);
    T_FAILS(awaitlet_set_deadline(t, 1.0), -1, ESRCH);
    T_JOIN_EQ(t, 3); /* a failed cancel changes nothing */
}
END_TEST

START_TEST(cancelled_task_result_still_joined)
{
    /* A cancelled task that ignores the error and returns normally. */
    awaitlet_task *t = awaitlet_async_def(t_loop, blocker, NULL);
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 1);
    ck_assert_int_eq(awaitlet_cancel(t), 0);
    T_JOIN_EQ(t, 88);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
}
END_TEST

/* --- deadlines ------------------------------------------------------------ */

START_TEST(deadline_fails_io)
{
    struct victim v;
    victim_init(&v, W_IO);
    v.deadline = 0.05;
    awaitlet_task *t = awaitlet_async_def(t_loop, victim_fn, &v);
    T_JOIN_EQ(t, 77);
    ASSERT_WAIT(v.rc1, v.err1, -1, ETIMEDOUT);
    ASSERT_WAIT(v.rc2, v.err2, -1, ETIMEDOUT);
    ASSERT_WAIT(v.rc3, v.err3, -1, ETIMEDOUT);
    ck_assert_int_eq(v.interrupted, 1);
    ck_assert_double_ge(v.elapsed, 0.045);
    ck_assert_double_lt(v.elapsed, 0.6);
}
END_TEST

START_TEST(deadline_shorter_than_io_timeout_wins)
{
    struct victim v;
    victim_init(&v, W_IO);
    v.deadline = 0.04;
    v.io_timeout = 3.0;
    awaitlet_task *t = awaitlet_async_def(t_loop, victim_fn, &v);
    T_JOIN_EQ(t, 77);
    ASSERT_WAIT(v.rc1, v.err1, -1, ETIMEDOUT);
    ck_assert_double_lt(v.elapsed, 1.0);
}
END_TEST

START_TEST(io_timeout_shorter_than_deadline_wins)
{
    struct victim v;
    victim_init(&v, W_IO);
    v.deadline = 3.0;
    v.io_timeout = 0.03;
    awaitlet_task *t = awaitlet_async_def(t_loop, victim_fn, &v);
    T_JOIN_EQ(t, 77);
    ASSERT_WAIT(v.rc1, v.err1, 0, 0);  /* plain timeout */
    ASSERT_WAIT(v.rc2, v.err2, 0, 0);  /* deadline still ahead */
    ck_assert_int_eq(v.interrupted, 0);
}
END_TEST

struct clear {
    int rc, err, interrupted;
};

static void *clear_deadline(void *arg)
{
    struct clear *c = arg;
    awaitlet_task *self = awaitlet_current();
    if (awaitlet_set_deadline(self, 0.02) != 0 || awaitlet_set_deadline(self, 0) != 0)
        return T_PTR(-1);
    errno = 0;
    c->rc = awaitlet_io(block_pipe[0], EV_READ, 0.08); /* outlives the old deadline */
    c->err = errno;
    c->interrupted = awaitlet_interrupted();
    /* Negative clears too. */
    if (awaitlet_set_deadline(self, 0.02) != 0 || awaitlet_set_deadline(self, -1.0) != 0)
        return T_PTR(-1);
    if (awaitlet_sleep(0.05) != 0)
        return T_PTR(-2);
    return T_PTR(1);
}

START_TEST(deadline_cleared)
{
    struct clear c = {-5, 0, -5};
    ck_assert_ptr_eq(awaitlet_run(t_loop, clear_deadline, &c), T_PTR(1));
    ASSERT_WAIT(c.rc, c.err, 0, 0);
    ck_assert_int_eq(c.interrupted, 0);
}
END_TEST

START_TEST(deadline_set_from_outside)
{
    struct victim v;
    victim_init(&v, W_IO);
    awaitlet_task *t = awaitlet_async_def(t_loop, victim_fn, &v);
    double t0 = t_now();
    ck_assert_int_eq(awaitlet_set_deadline(t, 0.05), 0);
    T_JOIN_EQ(t, 77);
    ASSERT_WAIT(v.rc1, v.err1, -1, ETIMEDOUT);
    double took = t_now() - t0;
    ck_assert_double_ge(took, 0.045);
    ck_assert_double_lt(took, 0.6);
}
END_TEST

START_TEST(deadline_while_joining)
{
    awaitlet_task *other = awaitlet_async_def(t_loop, blocker, NULL);
    ck_assert_ptr_nonnull(other);
    struct victim v;
    victim_init(&v, W_JOIN);
    v.other = other;
    v.deadline = 0.04;
    awaitlet_task *t = awaitlet_async_def(t_loop, victim_fn, &v);
    T_JOIN_EQ(t, 77);
    ASSERT_WAIT(v.rc1, v.err1, -1, ETIMEDOUT);
    ck_assert_ptr_null(v.join_res);
    ck_assert_double_lt(v.elapsed, 1.0);
    /* The joined task is intact: end it and join it. */
    ck_assert_int_eq(awaitlet_done(other), 0);
    ck_assert_int_eq(awaitlet_cancel(other), 0);
    T_JOIN_EQ(other, 88);
}
END_TEST

static void *past_deadline(void *arg)
{
    (void)arg;
    if (awaitlet_set_deadline(awaitlet_current(), 0.01) != 0)
        return T_PTR(-1);
    double t0 = t_now();
    while (t_now() - t0 < 0.03)
        ; /* burn past the deadline without waiting */
    errno = 0;
    int rc = awaitlet_io(block_pipe[0], EV_READ, 2.0);
    if (rc != -1 || errno != ETIMEDOUT)
        return T_PTR(-2);
    if (t_now() - t0 > 1.0)
        return T_PTR(-3);
    return T_PTR(1);
}

START_TEST(deadline_already_passed_at_wait)
{
    ck_assert_ptr_eq(awaitlet_run(t_loop, past_deadline, NULL), T_PTR(1));
}
END_TEST

/* A new deadline replaces one that has passed: waits work again until the
 * new one passes (set from inside, then from outside the task). */
static int renew_stage;

static void *renews_deadline(void *arg)
{
    int from_outside = (int)T_INT(arg);
    awaitlet_task *self = awaitlet_current();
    if (awaitlet_set_deadline(self, 0.01) != 0)
        return T_PTR(-1);
    errno = 0;
    if (awaitlet_sleep(0.5) != -1 || errno != ETIMEDOUT)
        return T_PTR(-2);
    renew_stage = 1;
    if (from_outside) {
        while (renew_stage == 1) /* the test renews it meanwhile */
            if (awaitlet_yield() != 0)
                return T_PTR(-3);
    } else if (awaitlet_set_deadline(self, 10.0) != 0) {
        return T_PTR(-4);
    }
    errno = 0;
    if (awaitlet_sleep(0.001) != 0)
        return T_PTR(-100 - errno);
    if (awaitlet_interrupted())
        return T_PTR(-5);
    /* and the new deadline works in its turn */
    if (awaitlet_set_deadline(self, 0.01) != 0)
        return T_PTR(-6);
    if (awaitlet_io(block_pipe[0], EV_READ, 0.5) != -1 || errno != ETIMEDOUT)
        return T_PTR(-7);
    return T_PTR(1);
}

START_TEST(deadline_renewed_after_passing)
{
    for (int from_outside = 0; from_outside < 2; from_outside++) {
        renew_stage = 0;
        awaitlet_task *t = awaitlet_async_def(t_loop, renews_deadline, T_PTR(from_outside));
        ck_assert_ptr_nonnull(t);
        if (from_outside) {
            for (int i = 0; i < 1000 && renew_stage == 0; i++)
                ev_run(t_loop, EVRUN_ONCE);
            ck_assert_int_eq(renew_stage, 1);
            ck_assert_int_eq(awaitlet_set_deadline(t, 10.0), 0);
            renew_stage = 2;
        }
        T_JOIN_EQ(t, 1);
    }
}
END_TEST

/* --- shield --------------------------------------------------------------- */

struct shielded {
    int depth[6];
    int rc_first, err_first;   /* the wait interrupted */
    int rc_sleep, err_sleep;   /* later waits, still shielded */
    int rc_io, err_io;
    int interrupted;
    int rc_after, err_after;   /* after lifting the shield */
    int bad_lift, bad_lift_err;
    int self_deadline;
    int rc_outer, err_outer;   /* first wait back at depth 1: its own EINTR */
};

static void *shield_fn(void *arg)
{
    struct shielded *s = arg;
    if (s->self_deadline && awaitlet_set_deadline(awaitlet_current(), 0.04) != 0)
        return T_PTR(-1);
    s->depth[0] = awaitlet_shield(1);
    s->depth[1] = awaitlet_shield(1);
    errno = 0;
    s->rc_first = awaitlet_io(block_pipe[0], EV_READ, -1.0);
    s->err_first = errno;
    /* Reported once: these waits work normally. */
    errno = 0;
    s->rc_sleep = awaitlet_sleep(0.01);
    s->err_sleep = errno;
    errno = 0;
    s->rc_io = awaitlet_io(block_pipe[0], EV_READ, 0.02);
    s->err_io = errno;
    s->interrupted = awaitlet_interrupted();
    s->depth[2] = awaitlet_shield(0); /* still shielded at depth 1 */
    /* The inner level took its EINTR; the outer level (a caller around a
     * library that shields itself) is owed its own, once. */
    errno = 0;
    s->rc_outer = awaitlet_sleep(0);
    s->err_outer = errno;
    if (awaitlet_sleep(0) != 0)
        return T_PTR(-3);
    s->depth[3] = awaitlet_shield(0);
    errno = 0;
    s->rc_after = awaitlet_sleep(0);
    s->err_after = errno;
    errno = 0;
    s->bad_lift = awaitlet_shield(0);
    s->bad_lift_err = errno;
    return T_PTR(9);
}

static void check_shield(struct shielded *s, int err)
{
    ck_assert_int_eq(s->depth[0], 1);
    ck_assert_int_eq(s->depth[1], 2);
    ASSERT_WAIT(s->rc_first, s->err_first, -1, EINTR);
    ASSERT_WAIT(s->rc_sleep, s->err_sleep, 0, 0);
    ASSERT_WAIT(s->rc_io, s->err_io, 0, 0); /* a plain timeout */
    ck_assert_int_eq(s->interrupted, 1);
    ck_assert_int_eq(s->depth[2], 1);
    ASSERT_WAIT(s->rc_outer, s->err_outer, -1, EINTR);
    ck_assert_int_eq(s->depth[3], 0);
    ASSERT_WAIT(s->rc_after, s->err_after, -1, err);
    ASSERT_WAIT(s->bad_lift, s->bad_lift_err, -1, EINVAL);
}

START_TEST(shield_cancel_eintr_once)
{
    struct shielded s;
    memset(&s, 0, sizeof s);
    awaitlet_task *t = awaitlet_async_def(t_loop, shield_fn, &s);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(awaitlet_cancel(t), 0);
    T_JOIN_EQ(t, 9);
    check_shield(&s, ECANCELED);
}
END_TEST

START_TEST(shield_deadline_eintr_once)
{
    struct shielded s;
    memset(&s, 0, sizeof s);
    s.self_deadline = 1;
    awaitlet_task *t = awaitlet_async_def(t_loop, shield_fn, &s);
    ck_assert_ptr_nonnull(t);
    T_JOIN_EQ(t, 9);
    check_shield(&s, ETIMEDOUT);
}
END_TEST

static void *lift_absent(void *arg)
{
    (void)arg;
    errno = 0;
    int rc = awaitlet_shield(0);
    return T_PTR(rc == -1 && errno == EINVAL ? 1 : -1);
}

START_TEST(shield_lift_absent_einval)
{
    ck_assert_ptr_eq(awaitlet_run(t_loop, lift_absent, NULL), T_PTR(1));
}
END_TEST

struct shield_join {
    awaitlet_task *other;
    void *first, *second;
    int err_first;
};

static void *shielded_joiner(void *arg)
{
    struct shield_join *j = arg;
    if (awaitlet_shield(1) != 1)
        return T_PTR(-1);
    errno = 0;
    j->first = awaitlet_join(j->other);
    j->err_first = errno;
    /* Wind down: wake the other task and join it for real. */
    if (write(block_pipe[1], "x", 1) != 1)
        return T_PTR(-2);
    j->second = awaitlet_join(j->other);
    awaitlet_shield(0);
    return T_PTR(1);
}

START_TEST(shield_join_eintr_then_join_again)
{
    struct shield_join j = {NULL, T_PTR(-5), T_PTR(-5), 0};
    j.other = awaitlet_async_def(t_loop, blocker, NULL);
    ck_assert_ptr_nonnull(j.other);
    awaitlet_task *t = awaitlet_async_def(t_loop, shielded_joiner, &j);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(awaitlet_cancel(t), 0);
    T_JOIN_EQ(t, 1);
    ck_assert_ptr_null(j.first);
    ck_assert_int_eq(j.err_first, EINTR);
    ck_assert_ptr_eq(j.second, T_PTR(88));
}
END_TEST

START_TEST(interrupted_outside_is_zero)
{
    ck_assert_int_eq(awaitlet_interrupted(), 0);
}
END_TEST

static Suite *cancel_suite(void)
{
    Suite *s = suite_create("cancel");
    TCase *tc = tcase_create("cancel");
    tcase_add_checked_fixture(tc, pipe_setup, pipe_teardown);
    tcase_add_test(tc, cancel_task_in_io);
    tcase_add_test(tc, cancel_task_in_sleep);
    tcase_add_test(tc, cancel_task_in_join);
    tcase_add_test(tc, cancel_task_in_yield);
    tcase_add_test(tc, cancel_io_with_timeout_is_not_a_timeout);
    tcase_add_test(tc, cancel_before_first_wait);
    tcase_add_test(tc, cancel_from_another_task);
    tcase_add_test(tc, cancel_errors);
    tcase_add_test(tc, cancelled_task_result_still_joined);
    tcase_add_test(tc, interrupted_outside_is_zero);
    suite_add_tcase(s, tc);

    tc = tcase_create("deadline");
    tcase_add_checked_fixture(tc, pipe_setup, pipe_teardown);
    tcase_add_test(tc, deadline_fails_io);
    tcase_add_test(tc, deadline_shorter_than_io_timeout_wins);
    tcase_add_test(tc, io_timeout_shorter_than_deadline_wins);
    tcase_add_test(tc, deadline_cleared);
    tcase_add_test(tc, deadline_set_from_outside);
    tcase_add_test(tc, deadline_while_joining);
    tcase_add_test(tc, deadline_already_passed_at_wait);
    tcase_add_test(tc, deadline_renewed_after_passing);
    suite_add_tcase(s, tc);

    tc = tcase_create("shield");
    tcase_add_checked_fixture(tc, pipe_setup, pipe_teardown);
    tcase_add_test(tc, shield_cancel_eintr_once);
    tcase_add_test(tc, shield_deadline_eintr_once);
    tcase_add_test(tc, shield_lift_absent_einval);
    tcase_add_test(tc, shield_join_eintr_then_join_again);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return t_run_suite(cancel_suite());
}
