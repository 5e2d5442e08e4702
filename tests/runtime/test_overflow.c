/*
 * test_overflow.c -- stack overflow reporting and running out of stacks.
 *
 * Both tests here kill or exhaust a process on purpose, so each runs its
 * scenario in a child made with fork() (not Check's fork: we need the child's
 * stderr and its exact exit status, and CK_FORK=no must not take the test
 * runner down).  An overflow must end the child with SIGABRT after a message
 * naming the task and its stack size -- never a silent SIGSEGV or, worse, a
 * run that continues on corrupted memory.  Exhausting vm.max_map_count (or
 * RLIMIT_AS) must make awaitlet_async_def fail with EAGAIN while every task
 * already started keeps working.  Both are skipped (not registered) under
 * valgrind, and the exhaustion tests under ASan, where they are too heavy or
 * meaningless.
 */
#include "helpers.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>

/* Run body(arg) in a forked child whose stderr is captured into out.
 * Returns the wait status. */
static int run_child(int (*body)(void *), void *arg, char *out, size_t cap)
{
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(p[0]);
        dup2(p[1], 2);
        close(p[1]);
        int rc = body(arg);
        fflush(stderr);
        _exit(rc);
    }
    close(p[1]);
    size_t n = 0;
    for (;;) {
        ssize_t r = read(p[0], out + n, cap - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
        if (n == cap - 1)
            break;
    }
    out[n] = '\0';
    close(p[0]);
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    if (getenv("T_VERBOSE")) /* show what the child said, for debugging */
        printf("child status %#x, stderr:\n%s\n", status, out);
    return status;
}

/* --- stack overflow -------------------------------------------------------- */

static volatile int depth_limit = 1 << 30; /* never reached; defeats
                                              "infinite recursion" analysis */

__attribute__((noinline)) static int recurse(int depth)
{
    volatile char buf[512];
    buf[0] = (char)depth;
    buf[sizeof buf - 1] = (char)(depth >> 8);
    if (depth >= depth_limit)
        return buf[0];
    int r = recurse(depth + 1); /* not a tail call: buf is used after */
    return r + buf[depth % (int)sizeof buf];
}

static void *deep_fn(void *arg)
{
    (void)arg;
    return T_PTR(recurse(0));
}

struct ovf {
    size_t size;
    const char *name;
    int on_thread; /* overflow on a second thread (its own sigaltstack) */
};

static int overflow_in_loop(struct ovf *o)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    if (!loop)
        return 90;
    awaitlet_options opts;
    memset(&opts, 0, sizeof opts);
    opts.stack_size = o->size;
    opts.name = o->name;
    awaitlet_task *t = awaitlet_async_def_opts(loop, deep_fn, NULL, &opts);
    /* Reaching this line means the overflow went unnoticed. */
    fprintf(stderr, "child survived: task %p errno %d\n", (void *)t, errno);
    return 91;
}

static void *overflow_thread(void *arg)
{
    return T_PTR(overflow_in_loop(arg));
}

static int overflow_child(void *arg)
{
    struct ovf *o = arg;
    if (!o->on_thread)
        return overflow_in_loop(o);
    pthread_t th;
    void *r = NULL;
    if (pthread_create(&th, NULL, overflow_thread, o) != 0)
        return 92;
    pthread_join(th, &r);
    return (int)T_INT(r);
}

static int has_size(const char *msg, size_t size)
{
    char a[32], b[32], c[32];
    snprintf(a, sizeof a, "%zu", size);
    snprintf(b, sizeof b, "%zu KiB", size / 1024);
    snprintf(c, sizeof c, "%zuKiB", size / 1024);
    return strstr(msg, a) || strstr(msg, b) || strstr(msg, c);
}

static void check_overflow(struct ovf *o)
{
    char out[4096];
    int st = run_child(overflow_child, o, out, sizeof out);
    ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT,
                  "child status %#x (exit %d, signal %d), stderr: %s", st,
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st) ? WTERMSIG(st) : -1,
                  out);
    ck_assert_msg(strstr(out, "overflowed its stack") != NULL, "stderr: %s", out);
    if (o->name)
        ck_assert_msg(strstr(out, o->name) != NULL, "name missing: %s", out);
    ck_assert_msg(has_size(out, o->size), "size %zu missing: %s", o->size, out);
}

START_TEST(overflow_16k_named)
{
    struct ovf o = {16 * 1024, "deep", 0};
    check_overflow(&o);
}
END_TEST

START_TEST(overflow_64k_named)
{
    struct ovf o = {64 * 1024, "deep", 0};
    check_overflow(&o);
}
END_TEST

START_TEST(overflow_unnamed_on_thread)
{
    struct ovf o = {32 * 1024, NULL, 1};
    check_overflow(&o);
}
END_TEST

/* --- running out of mappings ----------------------------------------------- */

#define EXH_PIPES 64

static void *wait_forever(void *arg)
{
    int fd = (int)T_INT(arg);
    int rc = awaitlet_io(fd, EV_READ, -1.0);
    return T_PTR(rc == -1 && errno == ECANCELED ? 1 : 2);
}

static void *tiny(void *arg)
{
    if (awaitlet_sleep(0) != 0)
        return NULL;
    return arg;
}

/* Start 16 KiB-stack tasks until awaitlet_async_def fails, check the
 * failure, then prove the process healthy: cancel and join every task.
 * Exit code 0 on success; otherwise the reason is on stderr. */
static int exhaust(size_t stack, size_t max_tasks, int want_eagain_only)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    int pipes[EXH_PIPES][2];
    awaitlet_task **tasks = calloc(max_tasks, sizeof *tasks);
    if (!loop || !tasks)
        return 80;
    for (int i = 0; i < EXH_PIPES; i++)
        if (pipe2(pipes[i], O_NONBLOCK) != 0)
            return 81;
    awaitlet_options o;
    memset(&o, 0, sizeof o);
    o.stack_size = stack;
    size_t n = 0;
    int err = 0;
    double t0 = t_now();
    for (;;) {
        if (n == max_tasks) {
            fprintf(stderr, "no failure after %zu tasks\n", n);
            return 82;
        }
        errno = 0;
        tasks[n] = awaitlet_async_def_opts(loop, wait_forever,
                                           T_PTR(pipes[n % EXH_PIPES][0]), &o);
        if (!tasks[n]) {
            err = errno;
            break;
        }
        n++;
    }
    fprintf(stderr, "started %zu tasks in %.2f s, then errno %d (%s)\n", n, t_now() - t0,
            err, strerror(err));
    if (err != EAGAIN && (want_eagain_only || err != ENOMEM))
        return 83;
    if (awaitlet_loop_tasks(loop) != n) {
        fprintf(stderr, "loop_tasks %u, want %zu\n", awaitlet_loop_tasks(loop), n);
        return 84;
    }
    for (size_t i = 0; i < n; i++)
        if (awaitlet_cancel(tasks[i]) != 0)
            return 85;
    for (size_t i = 0; i < n; i++) {
        void *r = awaitlet_join(tasks[i]);
        if (r != T_PTR(1)) {
            fprintf(stderr, "task %zu: join %p errno %d\n", i, r, errno);
            return 86;
        }
    }
    if (awaitlet_loop_tasks(loop) != 0)
        return 87;
    /* Stacks are back: new tasks start again. */
    for (int i = 0; i < 100; i++)
        if (awaitlet_run(loop, tiny, T_PTR(i + 1)) != T_PTR(i + 1)) {
            fprintf(stderr, "run after recovery: errno %d\n", errno);
            return 88;
        }
    for (int i = 0; i < EXH_PIPES; i++) {
        close(pipes[i][0]);
        close(pipes[i][1]);
    }
    free(tasks);
    ev_loop_destroy(loop);
    fprintf(stderr, "healthy\n");
    return 0;
}

static long max_map_count(void)
{
    FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
    long v = -1;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

static int map_count_child(void *arg)
{
    long maps = *(long *)arg;
    return exhaust(16 * 1024, (size_t)maps, 1);
}

START_TEST(guarded_stacks_past_max_map_count)
{
    long maps = max_map_count();
    ck_assert_int_gt(maps, 0);
    char out[4096];
    int st = run_child(map_count_child, &maps, out, sizeof out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x, stderr: %s", st,
                  out);
    /* Each guarded stack costs two mappings, so the cap is about half. */
    unsigned long started = 0;
    ck_assert_int_eq(sscanf(out, "started %lu", &started), 1);
    ck_assert_uint_lt(started, (unsigned long)maps);
    ck_assert_uint_gt(started, (unsigned long)maps / 4);
}
END_TEST

static int rlimit_child(void *arg)
{
    (void)arg;
    /* Allow about 64 MiB beyond what the process maps now. */
    FILE *f = fopen("/proc/self/status", "r");
    unsigned long vm_kb = 0;
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %lu kB", &vm_kb) == 1)
            break;
    if (f)
        fclose(f);
    if (!vm_kb)
        return 70;
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = (vm_kb + 64 * 1024) * 1024;
    if (setrlimit(RLIMIT_AS, &rl) != 0)
        return 71;
    /* 1 MiB stacks: the limit is reached after a few dozen tasks.  ENOMEM
     * is accepted too, in case the task's own allocation fails first. */
    return exhaust(1024 * 1024, 100000, 0);
}

START_TEST(stacks_past_rlimit_as)
{
    char out[4096];
    int st = run_child(rlimit_child, NULL, out, sizeof out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x, stderr: %s", st,
                  out);
}
END_TEST

static int harness_body(void *arg)
{
    fprintf(stderr, "hello %s", (const char *)arg);
    return 3;
}

START_TEST(child_harness)
{
    char out[64];
    int st = run_child(harness_body, "child", out, sizeof out);
    ck_assert(WIFEXITED(st));
    ck_assert_int_eq(WEXITSTATUS(st), 3);
    ck_assert_str_eq(out, "hello child");
}
END_TEST

static Suite *overflow_suite(void)
{
    Suite *s = suite_create("overflow");
    if (!RUNNING_ON_VALGRIND) {
        TCase *tc = tcase_create("overflow");
        tcase_add_test(tc, overflow_16k_named);
        tcase_add_test(tc, overflow_64k_named);
        tcase_add_test(tc, overflow_unnamed_on_thread);
        suite_add_tcase(s, tc);
    }
    if (!RUNNING_ON_VALGRIND && !T_ASAN) {
        TCase *tc = tcase_create("exhaustion");
        tcase_add_test(tc, guarded_stacks_past_max_map_count);
        tcase_add_test(tc, stacks_past_rlimit_as);
        suite_add_tcase(s, tc);
    }
    /* Always: the child harness the other tests rely on. */
    TCase *tc = tcase_create("harness");
    tcase_add_test(tc, child_harness);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return t_run_suite(overflow_suite());
}
