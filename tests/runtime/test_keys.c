/*
 * test_keys.c -- task-local keys with libpqawait loaded.
 *
 * The header promises an application at least 8 keys of its own even when
 * libpqawait (which takes one for its per-task state) is in the process.
 * This program links libpqawait, so its constructor has taken the shim's
 * key before main runs; then it asks for 8 and uses them all in a task.
 */
#include <pqawait.h>

#include "helpers.h"

#define USER_KEYS 8

static awaitlet_key keys[USER_KEYS];

static void *use_keys(void *arg)
{
    (void)arg;
    for (int i = 0; i < USER_KEYS; i++)
        if (awaitlet_setspecific(keys[i], &keys[i]) != 0)
            return T_PTR(-1 - i);
    if (awaitlet_sleep(0) != 0)
        return T_PTR(-20);
    for (int i = 0; i < USER_KEYS; i++)
        if (awaitlet_getspecific(keys[i]) != &keys[i])
            return T_PTR(-30 - i);
    return T_PTR(1);
}

START_TEST(eight_user_keys_with_shim_loaded)
{
    /* the shim is really in the process (a call keeps the link) */
    ck_assert_ptr_nonnull(pqawait_version());
    awaitlet_key k;
    for (int i = 0; i < USER_KEYS; i++)
        ck_assert_msg(awaitlet_key_create(&keys[i]) == 0, "key %d of %d: errno %d", i + 1,
                      USER_KEYS, errno);
    ck_assert_ptr_eq(awaitlet_run(t_loop, use_keys, NULL), T_PTR(1));
    /* 16 in all: the shim's, these 8, and 7 more */
    int more = 0;
    while (more < 100 && awaitlet_key_create(&k) == 0)
        more++;
    ck_assert_int_eq(more, 16 - 1 - USER_KEYS);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("keys");
    TCase *tc = t_tcase("keys");
    tcase_add_test(tc, eight_user_keys_with_shim_loaded);
    suite_add_tcase(s, tc);
    return t_run_suite(s);
}
