/*
 * test_pool_fork.c -- a forked child never uses or closes the parent's
 * pooled connections.
 *
 * The parent has a pool with connections idle, one checked out, and a
 * second pool whose first connect is in progress at the moment of the fork.
 * The child (forked inside the parent's task, so it goes on with the same
 * loop and pools) uses the checked-out connection -- which must fail, not
 * reach the parent's backend --, acquires from the inherited pool -- which
 * must give it a backend of its own, never one of the parent's --, releases
 * everything and closes both pools, which would send Terminate on every
 * idle connection if they were still the parent's sockets.  Afterwards the
 * parent's connections must all still work, on the same backends, and the
 * server must still see them.
 */
#include "pool_common.h"
#include "../runtime/fork_child.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PTR(i) ((void *)(intptr_t)(i))

static pqawait_pool *pool, *pool2;
static PGconn *held;
static int parent_pids[4], nparent;

static int is_parent_pid(int pid)
{
    for (int i = 0; i < nparent; i++)
        if (parent_pids[i] == pid)
            return 1;
    return 0;
}

static void child(void *arg, char *msg, size_t cap)
{
    (void)arg;
    /* the parent's checked-out connection: cut off, it cannot reach the
     * parent's backend */
    PGresult *r = PQexec(held, "select 1");
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        T_CHILD_FAIL("a query on the parent's connection worked in the child");
    PQclear(r);
    PGconn *c = pqawait_pool_acquire_timeout(pool, 10);
    if (!c)
        T_CHILD_FAIL("child acquire: %s (%s)", strerror(errno),
                     pqawait_pool_error(pool) ? pqawait_pool_error(pool) : "");
    int pid = pt_pid(c);
    if (pid <= 0 || is_parent_pid(pid))
        T_CHILD_FAIL("the child got backend %d, one of the parent's", pid);
    if (pt_int(c, "select 41 + 1") != 42)
        T_CHILD_FAIL("query on the child's own connection failed");
    if (pqawait_pool_release(pool, c) || pqawait_pool_release(pool, held))
        T_CHILD_FAIL("release in the child: %s", strerror(errno));
    PGconn *c2 = pqawait_pool_acquire_timeout(pool2, 10);
    if (!c2 || is_parent_pid(pt_pid(c2)))
        T_CHILD_FAIL("second pool in the child: %s", c2 ? "a parent's backend" : strerror(errno));
    pqawait_pool_release(pool2, c2);
    if (pqawait_pool_close(pool) || pqawait_pool_close(pool2))
        T_CHILD_FAIL("close in the child: %s", strerror(errno));
    /* let the child's pools finish closing (Terminate on its own sockets) */
    for (int i = 0; i < 20; i++)
        awaitlet_sleep(0.01);
}

static void *fork_task(void *arg)
{
    (void)arg;
    PT_APP(app);
    char *ci = pt_conninfo(app, NULL);
    pqawait_pool_options o = pt_options(3, 4);
    pool = pqawait_pool_new(awaitlet_current_loop(), ci, &o);
    ck_assert_ptr_nonnull(pool);
    ck_assert_int_eq(pqawait_pool_wait(pool, 10), 0);
    PGconn *all[3];
    for (int i = 0; i < 3; i++) {
        all[i] = pqawait_pool_acquire(pool);
        parent_pids[nparent++] = pt_pid(all[i]);
    }
    held = all[0];
    pqawait_pool_release(pool, all[1]);
    pqawait_pool_release(pool, all[2]); /* two idle, one held */
    pt_monitor();
    /* a second pool, its first connect in progress right now */
    pqawait_pool_options o2 = pt_options(1, 1);
    pool2 = pqawait_pool_new(awaitlet_current_loop(), ci, &o2);
    ck_assert_ptr_nonnull(pool2);
    ck_assert_uint_eq(awaitlet_loop_tasks(awaitlet_current_loop()) > 0, 1);

    struct t_child k = t_fork_child(child, NULL);
    T_CHILD_OK(k, 30);

    /* the parent's connections: all alive, same backends */
    ck_assert_int_eq(pt_pid(held), parent_pids[0]);
    ck_assert_int_eq(pt_int(held, "select 7"), 7);
    PGconn *a = pqawait_pool_acquire(pool), *b = pqawait_pool_acquire(pool);
    ck_assert(a && b);
    int pa = pt_pid(a), pb = pt_pid(b);
    ck_assert_msg(is_parent_pid(pa) && is_parent_pid(pb) && pa != pb,
                  "idle connections %d %d are not the parent's (%d %d %d): they died", pa, pb,
                  parent_pids[0], parent_pids[1], parent_pids[2]);
    struct pqawait_pool_stats s;
    pqawait_pool_stats(pool, &s);
    ck_assert_uint_eq(s.lost, 0);
    ck_assert_uint_eq(s.opened, 3);
    for (int i = 0; i < 3; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "select count(*) from pg_stat_activity where pid = %d",
                 parent_pids[i]);
        ck_assert_int_eq(atoi(pt_sql(sql)), 1);
    }
    PGconn *c2 = pqawait_pool_acquire(pool2); /* its connect was not disturbed */
    ck_assert_ptr_nonnull(c2);
    ck_assert_int_eq(pt_int(c2, "select 3"), 3);
    pqawait_pool_stats(pool2, &s);
    ck_assert_uint_eq(s.connect_failures, 0);
    pqawait_pool_release(pool2, c2);
    pqawait_pool_release(pool, a);
    pqawait_pool_release(pool, b);
    pqawait_pool_release(pool, held);
    pqawait_pool_close(pool);
    pqawait_pool_close(pool2);
    free(ci);
    return PTR(1);
}

START_TEST(child_never_touches_parent_connections)
{
    ck_assert_ptr_eq(pt_run(fork_task, NULL, 5), PTR(1));
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("pool-fork");
    TCase *tc = tcase_create("fork");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, child_never_touches_parent_connections, 0, 3);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
