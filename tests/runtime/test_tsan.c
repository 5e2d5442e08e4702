/*
 * test_tsan.c -- the context switch's ThreadSanitizer fiber annotations
 * (built and run only in a -Db_sanitize=thread build; script/test's TSan
 * phase).
 *
 * Every task is a TSan fiber (lib/task.c): TSan then keeps a call stack and
 * a clock per task, and orders each switch as the handoff it is.  Without
 * the annotations TSan sees one thread whose stack pointer jumps between
 * stacks: its shadow call stack interleaves the frames of every task on the
 * thread, so a report names frames the racing code never had -- other
 * tasks' functions, frames of earlier suspensions.
 *   - race_report_names_the_task: a child process (this program again,
 *     under TSan) has a task on one thread's loop write a global after
 *     suspending at depth while another task of that loop suspends at other
 *     depths, and the main thread write it with no ordering: TSan must
 *     report the race, with the task's stack exactly racy_write <-
 *     racer_task <- task_main, and nothing of the other task.
 *   - switches_order_tasks: tasks of one thread hand plain (non-atomic)
 *     data to each other across switches, and through an offload worker:
 *     no report (the test process itself runs under TSan, whose report
 *     would fail it with exit code 66).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

extern char **environ;

/* ---- the racing child ---- */

int pqa_tsan_shared; /* not static: its stores must stay */
static int flag; /* relaxed atomics only: they order nothing for TSan */

__attribute__((noinline)) static void racy_write(int v)
{
    pqa_tsan_shared = v;
}

__attribute__((noinline)) static int deep(int d)
{
    if (!d) {
        awaitlet_sleep(0.001);
        return 0;
    }
    return deep(d - 1) + 1;
}

static void *other_task(void *arg)
{
    (void)arg;
    for (int i = 0; i < 20; i++)
        deep(3 + i % 4);
    return NULL;
}

static void *racer_task(void *arg)
{
    (void)arg;
    for (int i = 0; i < 5; i++)
        deep(5 + i);
    racy_write(1);
    __atomic_store_n(&flag, 1, __ATOMIC_RELAXED);
    /* stay alive (a live fiber) until the main thread has written too */
    while (__atomic_load_n(&flag, __ATOMIC_RELAXED) != 2)
        awaitlet_sleep(0.001);
    return NULL;
}

static void *loop_thread(void *arg)
{
    (void)arg;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    awaitlet_task *a = awaitlet_async_def(loop, other_task, NULL);
    awaitlet_task *b = awaitlet_async_def(loop, racer_task, NULL);
    awaitlet_join(a);
    awaitlet_join(b);
    awaitlet_loop_close(loop);
    ev_loop_destroy(loop);
    return NULL;
}

static int race_child(void)
{
    pthread_t t;
    pthread_create(&t, NULL, loop_thread, NULL);
    while (!__atomic_load_n(&flag, __ATOMIC_RELAXED))
        sched_yield();
    racy_write(2); /* after the task's write in time, unordered for TSan */
    __atomic_store_n(&flag, 2, __ATOMIC_RELAXED);
    pthread_join(t, NULL);
    return 0;
}

/* ---- the tests ---- */

/* The lines of the stack TSan printed for the task's ("Previous") write. */
static char *previous_write_stack(char *report)
{
    char *p = strstr(report, "Previous write of size 4");
    if (!p)
        return NULL;
    char *end = strstr(p, "\n\n");
    if (end)
        *end = '\0';
    return p;
}

START_TEST(race_report_names_the_task)
{
    char out[] = "/tmp/pqa-tsan-XXXXXX";
    int fd = mkstemp(out);
    ck_assert_int_ge(fd, 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd, 2);
    char *argv[] = {"/proc/self/exe", "race-child", NULL};
    char *envp[] = {"TSAN_OPTIONS=exitcode=0 halt_on_error=0", NULL};
    pid_t pid;
    ck_assert_int_eq(posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, envp), 0);
    posix_spawn_file_actions_destroy(&fa);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status 0x%x", st);
    static char report[65536];
    ssize_t n = pread(fd, report, sizeof report - 1, 0);
    close(fd);
    unlink(out);
    ck_assert_int_gt(n, 0);
    report[n] = '\0';
    ck_assert_msg(strstr(report, "WARNING: ThreadSanitizer: data race"), "no race reported:\n%s", report);
    char *stack = previous_write_stack(report);
    ck_assert_msg(stack, "no second access in the report:\n%s", report);
    printf("%s\n", stack);
    /* exactly the task's own frames, innermost first */
    char *w = strstr(stack, "#0 racy_write"), *r = strstr(stack, "#1 racer_task"),
         *m = strstr(stack, "#2 task_main");
    ck_assert_msg(w && r && m && w < r && r < m, "the task's stack is not racy_write <- racer_task <- "
                                                 "task_main:\n%s", stack);
    ck_assert_msg(!strstr(stack, "other_task") && !strstr(stack, "deep"),
                  "frames of other tasks or earlier suspensions in the task's stack:\n%s", stack);
}
END_TEST

/* Plain data passed between tasks of one thread and an offload worker. */
struct relay {
    int value;
    int seen[3];
};

static void *bump(void *arg)
{
    struct relay *r = arg;
    r->value *= 10; /* on a worker thread: ordered by the pool's lock */
    return NULL;
}

static void *relay_a(void *arg)
{
    struct relay *r = arg;
    r->value = 1;
    ck_assert_int_eq(awaitlet_sleep(0.002), 0);
    r->seen[0] = r->value; /* relay_b's write */
    ck_assert_int_eq(awaitlet_offload(bump, r, NULL), 0);
    r->seen[2] = r->value;
    return NULL;
}

static void *relay_b(void *arg)
{
    struct relay *r = arg;
    r->seen[1] = r->value;
    r->value = 7;
    return NULL;
}

START_TEST(switches_order_tasks)
{
    for (int round = 0; round < 50; round++) {
        struct relay r = {0};
        awaitlet_task *a = awaitlet_async_def(t_loop, relay_a, &r);
        awaitlet_task *b = awaitlet_async_def(t_loop, relay_b, &r);
        ck_assert_ptr_nonnull(a);
        ck_assert_ptr_nonnull(b);
        ck_assert_int_eq(awaitlet_join_ex(a, NULL), 0);
        ck_assert_int_eq(awaitlet_join_ex(b, NULL), 0);
        ck_assert_int_eq(r.seen[1], 1);
        ck_assert_int_eq(r.seen[0], 7);
        ck_assert_int_eq(r.seen[2], 70);
    }
}
END_TEST

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "race-child") == 0)
        return race_child();
    Suite *s = suite_create("tsan");
    TCase *tc = tcase_create("fibers");
    tcase_add_checked_fixture(tc, t_loop_setup, t_loop_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, race_report_names_the_task);
    tcase_add_test(tc, switches_order_tasks);
    suite_add_tcase(s, tc);
    return t_run_suite(s);
}
