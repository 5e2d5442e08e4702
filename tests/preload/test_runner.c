/*
 * test_runner.c -- awaitlet_runner: functions that never suspend share one
 * parked task (two switches each); one that suspends keeps the task and
 * the runner starts another; nested calls get tasks of their own; what a
 * job does to its task (cancel, shield) is cleared before the next; a
 * runner freed from inside its own job goes when the job is over.
 */
#include "../runtime/helpers.h"

static awaitlet_task *seen[4];
static int ran;

static void *quick(void *arg)
{
    seen[T_INT(arg)] = awaitlet_current();
    ran++;
    return NULL;
}

static void *slow(void *arg)
{
    (void)arg;
    ck_assert_int_eq(awaitlet_sleep(0.01), 0);
    ran++;
    return NULL;
}

START_TEST(test_basic)
{
    ran = 0;
    T_FAILS(awaitlet_runner_new(NULL, NULL), NULL, EINVAL);
    awaitlet_options bad = {.detached = 1};
    T_FAILS(awaitlet_runner_new(t_loop, &bad), NULL, EINVAL);
    awaitlet_runner *r = awaitlet_runner_new(t_loop, NULL);
    ck_assert_ptr_nonnull(r);
    T_FAILS(awaitlet_runner_call(r, NULL, NULL), -1, EINVAL);
    ck_assert_int_eq(awaitlet_runner_call(r, quick, T_PTR(0)), 0);
    ck_assert_int_eq(awaitlet_runner_call(r, quick, T_PTR(1)), 0);
    ck_assert_ptr_eq(seen[0], seen[1]); /* one task for both */
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 1); /* parked */
    ck_assert_int_eq(awaitlet_runner_call(r, slow, NULL), 1); /* keeps that task */
    ck_assert_int_eq(awaitlet_runner_call(r, quick, T_PTR(2)), 0);
    ck_assert_ptr_ne(seen[2], seen[1]); /* a new one */
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 2);
    t_drain(t_loop, 100000);
    ck_assert_int_eq(ran, 4);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 1);
    awaitlet_runner_free(r);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
}
END_TEST

static awaitlet_runner *shared;
static int nested_rc = -7;

static void *nests(void *arg)
{
    (void)arg;
    nested_rc = awaitlet_runner_call(shared, quick, T_PTR(3)); /* runner busy: own task */
    seen[0] = awaitlet_current();
    return NULL;
}

static void *hurts(void *arg)
{
    (void)arg;
    awaitlet_shield(1);
    awaitlet_cancel(awaitlet_current());
    return NULL;
}

static void *sleeps_ok(void *arg)
{
    (void)arg;
    ck_assert_int_eq(awaitlet_sleep(0.001), 0); /* not cancelled: cleared */
    return NULL;
}

static void *frees(void *arg)
{
    (void)arg;
    awaitlet_runner_free(shared);
    return NULL;
}

START_TEST(test_nested_hygiene_free)
{
    shared = awaitlet_runner_new(t_loop, NULL);
    ck_assert_int_eq(awaitlet_runner_call(shared, nests, NULL), 0);
    ck_assert_int_eq(nested_rc, 0);
    ck_assert_ptr_ne(seen[3], seen[0]);
    ck_assert_int_eq(awaitlet_runner_call(shared, hurts, NULL), 0);
    ck_assert_int_eq(awaitlet_runner_call(shared, sleeps_ok, NULL), 1);
    t_drain(t_loop, 100000);
    ck_assert_int_eq(awaitlet_runner_call(shared, frees, NULL), 0);
    t_drain(t_loop, 100000);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("runner");
    TCase *tc = t_tcase("runner");
    tcase_add_test(tc, test_basic);
    tcase_add_test(tc, test_nested_hygiene_free);
    suite_add_tcase(s, tc);
    return t_run_suite(s);
}
