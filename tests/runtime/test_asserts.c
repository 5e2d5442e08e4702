/*
 * test_asserts.c -- the runtime's programmer-error assertions fire.
 *
 * Through the public API these states cannot be reached any more (that is
 * what the other suites check); the assertions are there so that a future
 * bug in the runtime aborts at the first wrong step instead of corrupting
 * the free list or the ready list and crashing somewhere else much later.
 * This program links the static library and calls its internal functions
 * directly to make each wrong step once, in a forked child (Check's
 * expected-signal tests), expecting SIGABRT.  Built only with assertions on.
 */
#include <signal.h>

#include "helpers.h"
#include "internal.h"

static void *quick(void *arg)
{
    return arg;
}

static void *yield_ret(void *arg)
{
    return awaitlet_sleep(0) == 0 ? arg : T_PTR(-1);
}

static void *sleep_long(void *arg)
{
    return awaitlet_sleep(10.0) == 0 ? arg : T_PTR(-1);
}

START_TEST(released_twice_aborts)
{
    awaitlet_task *t = awaitlet_async_def(t_loop, quick, NULL);
    ck_assert_ptr_nonnull(t);
    awaitlet__release(t); /* what a join does */
    awaitlet__release(t); /* a second release: must abort here */
}
END_TEST

START_TEST(queued_twice_aborts)
{
    awaitlet_task *t = awaitlet_async_def(t_loop, yield_ret, NULL); /* on the ready list */
    ck_assert_ptr_nonnull(t);
    awaitlet__make_ready(t, 0);
}
END_TEST

START_TEST(finished_task_resumed_aborts)
{
    awaitlet_task *t = awaitlet_async_def(t_loop, quick, NULL);
    ck_assert_ptr_nonnull(t);
    awaitlet__resume(t);
}
END_TEST

START_TEST(wrong_waker_aborts)
{
    awaitlet_task *t = awaitlet_async_def(t_loop, sleep_long, NULL); /* waits in a sleep */
    ck_assert_ptr_nonnull(t);
    awaitlet__wake(t, W_IO);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("asserts");
    TCase *tc = tcase_create("asserts");
    /* no teardown checks: the child dies in the test */
    tcase_add_unchecked_fixture(tc, t_loop_setup, NULL);
#ifndef NDEBUG
    tcase_add_test_raise_signal(tc, released_twice_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, queued_twice_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, finished_task_resumed_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, wrong_waker_aborts, SIGABRT);
#endif
    suite_add_tcase(s, tc);
    return t_run_suite(s);
}
