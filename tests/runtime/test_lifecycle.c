/*
 * test_lifecycle.c -- results and lifecycle of awaitlet tasks.
 *
 * The promises every other feature leans on: awaitlet_async_def runs the task
 * up to its first suspension (so a task that never waits is finished when it
 * returns), awaitlet_join hands back fn's result, awaitlet_run is the two
 * together, the context queries tell a task from the loop side, tasks nest in
 * a predictable order, and ten thousand tasks can be in flight at once with
 * every result accounted for.  Orders are checked with a log string rather
 * than "it didn't crash", so a scheduler that runs things in the wrong order
 * fails here.
 */
#include "helpers.h"

#include <dlfcn.h>
#include <stdio.h>

/* Every ev_run of the runtime binds to this definition (the executable's
 * comes first), so a test can count the loop entries a join makes. */
static unsigned long n_ev_run;

int ev_run(struct ev_loop *loop, int flags)
{
    static int (*real)(struct ev_loop *, int);
    if (!real)
        real = (int (*)(struct ev_loop *, int))dlsym(RTLD_NEXT, "ev_run");
    n_ev_run++;
    return real(loop, flags);
}

/* --- a tiny ordering log -------------------------------------------------- */

static char t_log[256];

static void log_reset(void)
{
    t_log[0] = '\0';
}

static void log_add(const char *s)
{
    size_t n = strlen(t_log);
    snprintf(t_log + n, sizeof t_log - n, "%s%s", n ? " " : "", s);
}

/* --- first suspension ----------------------------------------------------- */

static int stage;

static void *two_stage(void *arg)
{
    stage = 1;
    if (awaitlet_sleep(0.001) != 0)
        return T_PTR(-1);
    stage = 2;
    return arg;
}

START_TEST(async_def_returns_at_first_suspension)
{
    stage = 0;
    awaitlet_task *t = awaitlet_async_def(t_loop, two_stage, T_PTR(42));
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(stage, 1);          /* ran up to the sleep ... */
    ck_assert_int_eq(awaitlet_done(t), 0); /* ... and no further */
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 1);
    T_JOIN_EQ(t, 42);
    ck_assert_int_eq(stage, 2);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
}
END_TEST

static void *no_wait(void *arg)
{
    stage = 7;
    return arg;
}

START_TEST(never_waits_is_done_at_return)
{
    stage = 0;
    awaitlet_task *t = awaitlet_async_def(t_loop, no_wait, T_PTR(5));
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(stage, 7);
    ck_assert_int_eq(awaitlet_done(t), 1);
    /* Ended but not joined still counts as a task of the loop. */
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 1);
    T_JOIN_EQ(t, 5);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
}
END_TEST

static void *ret_null(void *arg)
{
    (void)arg;
    awaitlet_sleep(0);
    return NULL;
}

START_TEST(join_null_result_leaves_errno)
{
    awaitlet_task *t = awaitlet_async_def(t_loop, ret_null, NULL);
    ck_assert_ptr_nonnull(t);
    errno = 0;
    ck_assert_ptr_null(awaitlet_join(t));
    ck_assert_int_eq(errno, 0);
}
END_TEST

static void *echo_after_sleeps(void *arg)
{
    for (int i = 0; i < 3; i++)
        if (awaitlet_sleep(0.001) != 0)
            return T_PTR(-1);
    return arg;
}

START_TEST(run_is_async_def_plus_join)
{
    errno = 0;
    ck_assert_ptr_eq(awaitlet_run(t_loop, echo_after_sleeps, T_PTR(1234)), T_PTR(1234));
    ck_assert_ptr_eq(awaitlet_run(t_loop, no_wait, T_PTR(99)), T_PTR(99));
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
    T_FAILS(awaitlet_run(t_loop, NULL, NULL), NULL, EINVAL);
    T_FAILS(awaitlet_run(NULL, no_wait, NULL), NULL, EINVAL);
    T_FAILS(awaitlet_async_def(NULL, no_wait, NULL), NULL, EINVAL);
    T_FAILS(awaitlet_async_def(t_loop, NULL, NULL), NULL, EINVAL);
    T_FAILS(awaitlet_async_def_opts(t_loop, NULL, NULL, NULL), NULL, EINVAL);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
}
END_TEST

/* --- a top-level join runs the loop once, not once per iteration ---------- */

enum { YIELDS = 200 };

static void *yielder(void *arg)
{
    for (int i = 0; i < YIELDS; i++)
        if (awaitlet_yield() != 0)
            return NULL;
    return arg;
}

START_TEST(top_join_enters_the_loop_once)
{
    unsigned it0 = ev_iteration(t_loop);
    n_ev_run = 0;
    ck_assert_ptr_eq(awaitlet_run(t_loop, yielder, T_PTR(7)), T_PTR(7));
    unsigned long runs = n_ev_run;
    ck_assert_msg(ev_iteration(t_loop) - it0 >= YIELDS, "only %u iterations for %d yields",
                  ev_iteration(t_loop) - it0, YIELDS);
    ck_assert_msg(runs <= 2, "awaitlet_run entered ev_run %lu times for %u loop iterations "
                  "(one ev_run per iteration)", runs, ev_iteration(t_loop) - it0);
}
END_TEST

/* The joined task ends inside an ev_run that a callback of the join's loop
 * runs (nested): the join must still return as soon as that one does, with
 * another watcher (a long timer) keeping the loop alive. */
static int nested_done, nested_saw_done;

static void *ends_soon(void *arg)
{
    if (awaitlet_sleep(0.002) != 0)
        return NULL;
    nested_done = 1;
    return arg;
}

static void nesting_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    while (!nested_done)
        ev_run(loop, EVRUN_NOWAIT); /* the task ends in here, at depth 2 */
    nested_saw_done = 1;
}

START_TEST(top_join_task_ends_in_nested_run)
{
    ev_timer nest, keep;
    ev_timer_init(&nest, nesting_cb, 0.0005, 0.);
    ev_timer_init(&keep, nesting_cb, 30., 0.); /* never fires in the test */
    ev_timer_start(t_loop, &nest);
    ev_timer_start(t_loop, &keep);
    nested_done = nested_saw_done = 0;
    double t0 = t_now();
    ck_assert_ptr_eq(awaitlet_run(t_loop, ends_soon, T_PTR(8)), T_PTR(8));
    double took = t_now() - t0;
    ck_assert(nested_saw_done);
    ck_assert_msg(took < 2.0, "the join returned after %.3f s: it waited for the loop's next event", took);
    ev_timer_stop(t_loop, &keep);
    ev_timer_stop(t_loop, &nest);
    /* nothing of the join is left on the loop: a plain run ends at once */
    ck_assert_int_eq(ev_run(t_loop, 0), 0);
}
END_TEST

/* --- context queries ------------------------------------------------------ */

struct ctx_seen {
    awaitlet_task *self_before, *self_after;
    struct ev_loop *loop_before, *loop_after;
    int in_before, in_after;
};

static void *ctx_probe(void *arg)
{
    struct ctx_seen *s = arg;
    s->in_before = awaitlet_in_context();
    s->self_before = awaitlet_current();
    s->loop_before = awaitlet_current_loop();
    if (awaitlet_sleep(0) != 0)
        return NULL;
    s->in_after = awaitlet_in_context();
    s->self_after = awaitlet_current();
    s->loop_after = awaitlet_current_loop();
    return s;
}

START_TEST(context_inside_and_outside)
{
    ck_assert_int_eq(awaitlet_in_context(), 0);
    ck_assert_ptr_null(awaitlet_current());
    ck_assert_ptr_null(awaitlet_current_loop());

    struct ctx_seen s;
    memset(&s, 0, sizeof s);
    awaitlet_task *t = awaitlet_async_def(t_loop, ctx_probe, &s);
    ck_assert_ptr_nonnull(t);
    /* Back on the loop side after the task suspended. */
    ck_assert_int_eq(awaitlet_in_context(), 0);
    ck_assert_ptr_null(awaitlet_current());
    ck_assert_ptr_null(awaitlet_current_loop());
    ck_assert_int_eq(s.in_before, 1);
    ck_assert_ptr_eq(s.self_before, t);
    ck_assert_ptr_eq(s.loop_before, t_loop);
    T_JOIN_EQ(t, &s);
    ck_assert_int_eq(s.in_after, 1);
    ck_assert_ptr_eq(s.self_after, t);
    ck_assert_ptr_eq(s.loop_after, t_loop);
    ck_assert_int_eq(awaitlet_in_context(), 0);
    ck_assert_ptr_null(awaitlet_current());
}
END_TEST

START_TEST(done_tracks_end)
{
    awaitlet_task *t = awaitlet_async_def(t_loop, echo_after_sleeps, T_PTR(3));
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(awaitlet_done(t), 0);
    /* Drive the loop by hand until the task ends; join must then not need
     * the loop at all. */
    for (int i = 0; i < 1000 && !awaitlet_done(t); i++)
        ev_run(t_loop, EVRUN_ONCE);
    ck_assert_int_eq(awaitlet_done(t), 1);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 1);
    T_JOIN_EQ(t, 3);
}
END_TEST

/* --- nesting -------------------------------------------------------------- */

static void *inner(void *arg)
{
    log_add("inner-start");
    if (awaitlet_sleep(0.001) != 0)
        return NULL;
    log_add("inner-end");
    return T_PTR(T_INT(arg) * 2);
}

static void *outer(void *arg)
{
    log_add("outer-start");
    awaitlet_task *in = awaitlet_async_def(awaitlet_current_loop(), inner, arg);
    if (!in)
        return NULL;
    log_add("outer-resumed");
    ck_assert_int_eq(awaitlet_done(in), 0);
    ck_assert_ptr_eq(awaitlet_current(), awaitlet_current()); /* stable */
    errno = 0;
    void *r = awaitlet_join(in);
    log_add("outer-joined");
    return T_PTR(T_INT(r) + 1);
}

START_TEST(nested_start_and_join)
{
    log_reset();
    awaitlet_task *t = awaitlet_async_def(t_loop, outer, T_PTR(20));
    ck_assert_ptr_nonnull(t);
    log_add("main");
    /* Both tasks exist: the outer is waiting in join. */
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 2);
    T_JOIN_EQ(t, 41);
    ck_assert_str_eq(t_log, "outer-start inner-start outer-resumed main inner-end outer-joined");
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
}
END_TEST

static void *inner_nowait(void *arg)
{
    log_add("inner");
    return arg;
}

static void *outer_nowait(void *arg)
{
    (void)arg;
    log_add("outer-start");
    awaitlet_task *in = awaitlet_async_def(awaitlet_current_loop(), inner_nowait, T_PTR(8));
    if (!in)
        return NULL;
    log_add(awaitlet_done(in) ? "inner-done" : "inner-not-done");
    /* Joining an ended task from inside returns at once. */
    void *r = awaitlet_join(in);
    log_add("outer-end");
    return r;
}

START_TEST(nested_child_never_waits)
{
    log_reset();
    /* Neither task ever suspends, so everything happens inside async_def. */
    awaitlet_task *t = awaitlet_async_def(t_loop, outer_nowait, NULL);
    ck_assert_ptr_nonnull(t);
    ck_assert_str_eq(t_log, "outer-start inner inner-done outer-end");
    ck_assert_int_eq(awaitlet_done(t), 1);
    T_JOIN_EQ(t, 8);
}
END_TEST

/* Three levels deep, each level starting the next and joining it. */
static void *chain(void *arg)
{
    intptr_t depth = T_INT(arg);
    if (awaitlet_sleep(0) != 0)
        return NULL;
    if (depth == 0)
        return T_PTR(1);
    awaitlet_task *t = awaitlet_async_def(awaitlet_current_loop(), chain, T_PTR(depth - 1));
    if (!t)
        return NULL;
    return T_PTR(T_INT(awaitlet_join(t)) + 1);
}

START_TEST(nested_chain)
{
    ck_assert_ptr_eq(awaitlet_run(t_loop, chain, T_PTR(50)), T_PTR(51));
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
}
END_TEST

/* A child started from a task that ends first: the child's later wake-ups
 * come from the loop, not from its (gone) parent. */
static awaitlet_task *orphan;

static void *parent_leaves(void *arg)
{
    orphan = awaitlet_async_def(awaitlet_current_loop(), echo_after_sleeps, arg);
    return T_PTR(orphan ? 1 : -1);
}

START_TEST(child_outlives_parent)
{
    orphan = NULL;
    awaitlet_task *p = awaitlet_async_def(t_loop, parent_leaves, T_PTR(17));
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(awaitlet_done(p), 1);
    ck_assert_ptr_nonnull(orphan);
    ck_assert_int_eq(awaitlet_done(orphan), 0);
    T_JOIN_EQ(p, 1);
    T_JOIN_EQ(orphan, 17);
}
END_TEST

/* A task of loop A starting a task on loop B (same thread). */
static void *start_on_other_loop(void *arg)
{
    struct ev_loop *b = arg;
    awaitlet_task *t = awaitlet_async_def(b, echo_after_sleeps, T_PTR(23));
    if (!t)
        return NULL;
    /* Back in this task, on this loop, after the new one suspended. */
    if (awaitlet_current_loop() != t_loop || awaitlet_sleep(0) != 0)
        return NULL;
    return t;
}

START_TEST(task_starts_task_on_other_loop)
{
    struct ev_loop *b = ev_loop_new(EVFLAG_AUTO);
    ck_assert_ptr_nonnull(b);
    awaitlet_task *t = awaitlet_run(t_loop, start_on_other_loop, b);
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(awaitlet_loop_tasks(b), 1);
    T_JOIN_EQ(t, 23);
    ck_assert_uint_eq(awaitlet_loop_tasks(b), 0);
    ev_loop_destroy(b);
}
END_TEST

/* --- many tasks ----------------------------------------------------------- */

#define MANY_PIPES 16

struct many {
    int pipes[MANY_PIPES][2];
    int woken;
};

static struct many many;

static void *many_task(void *arg)
{
    intptr_t i = T_INT(arg);
    if (i % 4 == 0) {
        /* Many tasks on the same fd: all of them must see it readable. */
        int r = awaitlet_io(many.pipes[i % MANY_PIPES][0], EV_READ, 10.0);
        if (r != EV_READ)
            return T_PTR(-1);
        many.woken++;
    } else {
        double s = (double)(rand() % 20) / 1000.0; /* 0..19 ms */
        if (awaitlet_sleep(s) != 0)
            return T_PTR(-1);
    }
    return T_PTR(i);
}

static void *many_writer(void *arg)
{
    (void)arg;
    if (awaitlet_sleep(0.02) != 0)
        return T_PTR(-1);
    for (int p = 0; p < MANY_PIPES; p++)
        if (write(many.pipes[p][1], "x", 1) != 1)
            return T_PTR(-1);
    return T_PTR(0);
}

START_TEST(ten_thousand_tasks)
{
    int n = RUNNING_ON_VALGRIND ? 1000 : 10000;
    memset(&many, 0, sizeof many);
    for (int p = 0; p < MANY_PIPES; p++)
        t_pipe(many.pipes[p]);
    srand(12345);
    awaitlet_task **tasks = calloc((size_t)n, sizeof *tasks);
    ck_assert_ptr_nonnull(tasks);
    awaitlet_options o;
    memset(&o, 0, sizeof o);
    o.stack_size = 32 * 1024;
    for (int i = 0; i < n; i++) {
        tasks[i] = awaitlet_async_def_opts(t_loop, many_task, T_PTR(i), &o);
        ck_assert_msg(tasks[i] != NULL, "task %d: errno %d", i, errno);
    }
    awaitlet_task *w = awaitlet_async_def(t_loop, many_writer, NULL);
    ck_assert_ptr_nonnull(w);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), (unsigned)n + 1);
    long long sum = 0;
    for (int i = 0; i < n; i++) {
        errno = 0;
        void *r = awaitlet_join(tasks[i]);
        ck_assert_msg(T_INT(r) == i, "task %d returned %ld errno %d", i, (long)T_INT(r), errno);
        sum += T_INT(r);
    }
    T_JOIN_EQ(w, 0);
    ck_assert_int_eq(sum, (long long)n * (n - 1) / 2);
    ck_assert_int_eq(many.woken, n / 4);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
    free(tasks);
    for (int p = 0; p < MANY_PIPES; p++)
        t_close2(many.pipes[p]);
}
END_TEST

/* Tasks started from inside a task, many at once, joined in reverse. */
static void *spawner(void *arg)
{
    int n = (int)T_INT(arg);
    awaitlet_task **ts = calloc((size_t)n, sizeof *ts);
    if (!ts)
        return NULL;
    for (int i = 0; i < n; i++) {
        ts[i] = awaitlet_async_def(awaitlet_current_loop(), echo_after_sleeps, T_PTR(i + 1));
        if (!ts[i])
            return NULL;
    }
    intptr_t sum = 0;
    for (int i = n - 1; i >= 0; i--)
        sum += T_INT(awaitlet_join(ts[i]));
    free(ts);
    return T_PTR(sum);
}

START_TEST(spawn_many_from_task)
{
    ck_assert_ptr_eq(awaitlet_run(t_loop, spawner, T_PTR(200)), T_PTR(200 * 201 / 2));
}
END_TEST

static Suite *lifecycle_suite(void)
{
    Suite *s = suite_create("lifecycle");
    TCase *tc = t_tcase("results");
    tcase_add_test(tc, async_def_returns_at_first_suspension);
    tcase_add_test(tc, never_waits_is_done_at_return);
    tcase_add_test(tc, join_null_result_leaves_errno);
    tcase_add_test(tc, run_is_async_def_plus_join);
    tcase_add_test(tc, context_inside_and_outside);
    tcase_add_test(tc, done_tracks_end);
    suite_add_tcase(s, tc);

    tc = t_tcase("nesting");
    tcase_add_test(tc, nested_start_and_join);
    tcase_add_test(tc, nested_child_never_waits);
    tcase_add_test(tc, nested_chain);
    tcase_add_test(tc, spawn_many_from_task);
    tcase_add_test(tc, child_outlives_parent);
    tcase_add_test(tc, top_join_enters_the_loop_once);
    tcase_add_test(tc, top_join_task_ends_in_nested_run);
    tcase_add_test(tc, task_starts_task_on_other_loop);
    suite_add_tcase(s, tc);

    tc = t_tcase("many");
    tcase_add_test(tc, ten_thousand_tasks);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return t_run_suite(lifecycle_suite());
}
