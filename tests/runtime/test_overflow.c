/*
 * test_overflow.c -- stack overflow reporting and running out of stacks.
 *
 * Every test here kills or exhausts a process on purpose, so each runs its
 * scenario in a child made with fork() (not Check's fork: we need the child's
 * stderr and its exact exit status, and CK_FORK=no must not take the test
 * runner down).  An overflow must end the child with SIGABRT after a message
 * naming the task and its stack size -- never a silent SIGSEGV or, worse, a
 * run that continues on corrupted memory.  That covers deep recursion, single
 * huge frames (73,727 bytes, 1 MiB, 8 MiB; built with and without
 * -fstack-clash-protection in overflow_frames.c) next to a neighbour task
 * whose canary must stay intact, faults recognised only by the stack
 * pointer, writes into another stack's guard region, and an application's
 * own SIGSEGV handler calling awaitlet_overflow_report().  Exhausting
 * vm.max_map_count (or RLIMIT_AS) must make awaitlet_async_def fail with
 * EAGAIN while every task already started keeps working.  The overflow
 * tests are not registered under valgrind, the exhaustion tests neither
 * under ASan, where they are too heavy or meaningless.
 */
#include "helpers.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
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

/* The child died by abort(), as after an overflow report. */
static void assert_aborted(int st, const char *out)
{
    ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT,
                  "child status %#x (exit %d, signal %d), stderr: %s", st,
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st) ? WTERMSIG(st) : -1,
                  out);
}

static void check_overflow(struct ovf *o)
{
    char out[4096];
    int st = run_child(overflow_child, o, out, sizeof out);
    assert_aborted(st, out);
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

/* --- frames larger than a guard ------------------------------------------------ */

/* A task with a 64 KiB stack calls one function with a huge frame.  Right
 * below it (mapped next, so at lower addresses) sits a neighbour task whose
 * top frame holds a 16 KiB canary: a frame that jumps over the overflowing
 * task's guard lands there.  Whatever happens, the child must die by
 * SIGABRT after the overflow message -- never exit after a silent write into
 * the neighbour, never die by a bare SIGSEGV. */
int ovf_frame_73727_plain(int seed);
int ovf_frame_1m_plain(int seed);
int ovf_frame_8m_plain(int seed);
#ifdef T_HAVE_CLASH
int ovf_frame_73727_clash(int seed);
int ovf_frame_1m_clash(int seed);
int ovf_frame_8m_clash(int seed);
#endif

void ovf_touch(char *p, unsigned long n, int seed);
void ovf_touch(char *p, unsigned long n, int seed)
{
    for (int i = 0; i < 64; i++)
        ((volatile char *)p)[i] = (char)(0xa5 ^ seed);
    ((volatile char *)p)[n - 1] = 0;
}

#define CANARY (16 * 1024)
#define FR_STACK ((size_t)64 * 1024)

struct frame_case {
    int (*fn)(int);
    size_t guard_size;     /* awaitlet_options.guard_size */
    size_t default_guard;  /* if not 0: awaitlet_set_default_guard_size first */
    int no_guard;          /* unguarded stack, with our own PROT_NONE below */
    int pipe_o[2], pipe_n[2];
    uintptr_t n_top;
};

static uintptr_t top_of(const volatile void *local)
{
    uintptr_t ps = (uintptr_t)sysconf(_SC_PAGESIZE);
    return ((uintptr_t)local & ~(ps - 1)) + ps;
}

static void *neighbour_fn(void *arg)
{
    struct frame_case *fc = arg;
    volatile unsigned char canary[CANARY];
    fc->n_top = top_of(canary + CANARY - 1);
    for (size_t i = 0; i < CANARY; i++)
        canary[i] = 0x5c;
    if (awaitlet_io(fc->pipe_n[0], AWAITLET_READ, -1) <= 0)
        return NULL;
    for (size_t i = 0; i < CANARY; i++)
        if (canary[i] != 0x5c) {
            fprintf(stderr, "neighbour corrupted at canary[%zu]\n", i);
            fflush(stderr);
            _exit(93);
        }
    return arg;
}

/* One task that may run the huge frame; the unguarded cases make several
 * and keep one with free address space below it. */
struct candidate {
    struct frame_case *fc;
    uintptr_t top;
};

static void *big_frame_fn(void *arg)
{
    struct candidate *c = arg;
    volatile char here = 0;
    c->top = top_of(&here);
    if (awaitlet_io(c->fc->pipe_o[0], AWAITLET_READ, -1) <= 0)
        return NULL; /* cancelled: not the chosen one */
    return T_PTR(c->fc->fn(here + 1));
}

#define CANDIDATES 1024
#define RESERVE ((size_t)2 << 20) /* > the 1 MiB frame; clash probes need a page */

static int frame_child(void *arg)
{
    struct frame_case *fc = arg;
    static struct candidate cand[CANDIDATES];
    static awaitlet_task *tasks[CANDIDATES];
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    if (!loop || pipe2(fc->pipe_o, O_NONBLOCK) != 0 || pipe2(fc->pipe_n, O_NONBLOCK) != 0)
        return 90;
    if (fc->default_guard && awaitlet_set_default_guard_size(fc->default_guard) != 0)
        return 94;
    awaitlet_options o;
    memset(&o, 0, sizeof o);
    o.stack_size = FR_STACK;
    o.name = "big-frame";
    o.guard_size = fc->guard_size;
    o.no_guard = fc->no_guard;
    int n = 0, chosen = -1;
    while (chosen < 0 && n < (fc->no_guard ? CANDIDATES : 1)) {
        cand[n].fc = fc;
        tasks[n] = awaitlet_async_def_opts(loop, big_frame_fn, &cand[n], &o);
        if (!tasks[n])
            return 95;
        uintptr_t lo = cand[n].top - FR_STACK;
        n++;
        if (!fc->no_guard) {
            chosen = 0;
            break;
        }
        /* What lies below is ours, not awaitlet's: only the stack pointer
         * can tell that the fault there is an overflow.  Stacks that have
         * something else right below them (a hole they filled) are kept
         * alive so the next one is mapped elsewhere. */
        void *r = mmap((void *)(lo - RESERVE), RESERVE, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
        if (r == (void *)(lo - RESERVE))
            chosen = n - 1;
        else if (r != MAP_FAILED)
            munmap(r, RESERVE); /* an old kernel took the address as a hint */
    }
    if (chosen < 0) {
        fprintf(stderr, "no stack with free space below after %d tries\n", n);
        return 96;
    }
    for (int i = 0; i < n; i++)
        if (i != chosen)
            awaitlet_cancel(tasks[i]);
    for (int i = 0; i < n; i++)
        if (i != chosen && awaitlet_join(tasks[i]) != NULL)
            return 99;
    if (!fc->no_guard) {
        o.name = "neighbour";
        o.guard_size = 0;
        if (!awaitlet_async_def_opts(loop, neighbour_fn, fc, &o))
            return 97;
        uintptr_t lo = cand[chosen].top - FR_STACK;
        fprintf(stderr, "neighbour top %#lx, big-frame stack bottom %#lx: %s\n",
                (unsigned long)fc->n_top, (unsigned long)lo,
                fc->n_top < lo && lo - fc->n_top <= ((size_t)32 << 20) ? "below" : "elsewhere");
    }
    if (write(fc->pipe_o[1], "x", 1) != 1)
        return 98;
    awaitlet_join(tasks[chosen]);
    if (!fc->no_guard && write(fc->pipe_n[1], "x", 1) == 1)
        ev_run(loop, 0);
    fprintf(stderr, "child survived the frame\n");
    return 91;
}

static void check_frame(struct frame_case *fc)
{
    char out[4096];
    int st = run_child(frame_child, fc, out, sizeof out);
    ck_assert_msg(strstr(out, "neighbour corrupted") == NULL, "silent overflow: %s", out);
    assert_aborted(st, out);
    ck_assert_msg(strstr(out, "task #") && strstr(out, "\"big-frame\" overflowed its stack"),
                  "stderr: %s", out);
    ck_assert_msg(has_size(out, FR_STACK), "size missing: %s", out);
}

#define FRAME_TEST(name, ...)                                                  \
    START_TEST(name)                                                           \
    {                                                                          \
        struct frame_case fc = {__VA_ARGS__};                                  \
        check_frame(&fc);                                                      \
    }                                                                          \
    END_TEST

/* Within the default guard region (1 MiB): caught without any help. */
FRAME_TEST(frame_73727_plain, .fn = ovf_frame_73727_plain)
FRAME_TEST(frame_1m_plain, .fn = ovf_frame_1m_plain)
/* Larger than the default guard: a larger guard, per task or process-wide. */
FRAME_TEST(frame_8m_plain_guard_16m, .fn = ovf_frame_8m_plain, .guard_size = (size_t)16 << 20)
FRAME_TEST(frame_8m_plain_default_guard_16m, .fn = ovf_frame_8m_plain,
           .default_guard = (size_t)16 << 20)
/* No awaitlet guard at all: the stack pointer below the stack decides. */
FRAME_TEST(frame_1m_plain_unguarded_sp, .fn = ovf_frame_1m_plain, .no_guard = 1)
#ifdef T_HAVE_CLASH
FRAME_TEST(frame_73727_clash, .fn = ovf_frame_73727_clash)
FRAME_TEST(frame_1m_clash, .fn = ovf_frame_1m_clash)
/* -fstack-clash-protection: any frame size hits the first page of the guard. */
FRAME_TEST(frame_8m_clash, .fn = ovf_frame_8m_clash)
FRAME_TEST(frame_8m_clash_unguarded_sp, .fn = ovf_frame_8m_clash, .no_guard = 1)
#endif

/* --- faults in someone else's guard -------------------------------------------- */

struct guard_hit {
    int where;        /* 0: from another task, 1: outside tasks, 2: idle pooled stack */
    int pipe_v[2];
    uintptr_t v_top;
};

static void *victim_fn(void *arg)
{
    struct guard_hit *g = arg;
    volatile char here = 0;
    g->v_top = top_of(&here);
    if (g->where == 2)
        return arg;
    awaitlet_io(g->pipe_v[0], AWAITLET_READ, -1);
    return arg;
}

static void wild_write(struct guard_hit *g)
{
    /* 100 bytes into the victim's guard region */
    *(volatile char *)(g->v_top - FR_STACK - 100) = 1;
}

static void *wild_fn(void *arg)
{
    wild_write(arg);
    return NULL;
}

static int guard_hit_child(void *arg)
{
    struct guard_hit *g = arg;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    if (!loop || pipe2(g->pipe_v, O_NONBLOCK) != 0)
        return 90;
    awaitlet_options o;
    memset(&o, 0, sizeof o);
    o.stack_size = FR_STACK;
    o.name = "victim";
    awaitlet_task *v = awaitlet_async_def_opts(loop, victim_fn, g, &o);
    if (!v)
        return 95;
    if (g->where == 2 && awaitlet_join(v) != g)
        return 96;
    if (g->where == 0) {
        o.name = "wild";
        o.stack_size = 0;
        awaitlet_async_def_opts(loop, wild_fn, g, &o);
    } else {
        wild_write(g);
    }
    fprintf(stderr, "child survived the write\n");
    return 91;
}

static void check_guard_hit(struct guard_hit *g, const char *who, const char *whose)
{
    char out[4096];
    int st = run_child(guard_hit_child, g, out, sizeof out);
    assert_aborted(st, out);
    ck_assert_msg(strstr(out, who) && strstr(out, whose) && strstr(out, "guard region"),
                  "want \"%s\" ... \"%s\", got: %s", who, whose, out);
    ck_assert_msg(strstr(out, "overflowed its stack") == NULL, "misreported: %s", out);
}

START_TEST(guard_hit_by_other_task)
{
    struct guard_hit g = {.where = 0};
    check_guard_hit(&g, "\"wild\"", "\"victim\"");
}
END_TEST

START_TEST(guard_hit_outside_tasks)
{
    struct guard_hit g = {.where = 1};
    check_guard_hit(&g, "outside any task", "\"victim\"");
}
END_TEST

START_TEST(guard_hit_idle_stack)
{
    struct guard_hit g = {.where = 2};
    check_guard_hit(&g, "outside any task", "idle");
}
END_TEST

/* --- an application's own SIGSEGV handler --------------------------------------- */

static void app_handler(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    if (awaitlet_overflow_report(si, uc)) {
        static const char m[] = "app handler: awaitlet reported it\n";
        if (write(2, m, sizeof m - 1) < 0)
            _exit(80);
        abort();
    }
    static const char m[] = "app handler: not a stack overflow\n";
    if (write(2, m, sizeof m - 1) < 0)
        _exit(80);
    _exit(7);
}

static volatile char *app_trap; /* a PROT_NONE page of the application's */

static void *app_fault_fn(void *arg)
{
    (void)arg;
    app_trap[100] = 1; /* a fault, but not in any stack or guard of awaitlet's */
    return NULL;
}

static void *tiny_fn(void *arg)
{
    return arg;
}

static int app_handler_child(void *arg)
{
    int overflow = *(int *)arg;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    if (!loop)
        return 90;
    /* A first task installs awaitlet's handler; the application's comes
     * later and replaces it, as a crash reporter set up late would. */
    if (awaitlet_run(loop, tiny_fn, T_PTR(1)) != T_PTR(1))
        return 89;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = app_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK; /* the faulting stack is unusable */
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, NULL) != 0 || sigaction(SIGBUS, &sa, NULL) != 0)
        return 88;
    app_trap = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (app_trap == MAP_FAILED)
        return 87;
    awaitlet_options o;
    memset(&o, 0, sizeof o);
    o.stack_size = 32 * 1024;
    o.name = "deep";
    awaitlet_async_def_opts(loop, overflow ? deep_fn : app_fault_fn, NULL, &o);
    fprintf(stderr, "child survived\n");
    return 91;
}

START_TEST(app_handler_reports_overflow)
{
    char out[4096];
    int overflow = 1;
    int st = run_child(app_handler_child, &overflow, out, sizeof out);
    assert_aborted(st, out);
    ck_assert_msg(strstr(out, "\"deep\" overflowed its stack (32768 bytes"), "stderr: %s", out);
    ck_assert_msg(strstr(out, "app handler: awaitlet reported it"), "stderr: %s", out);
}
END_TEST

START_TEST(app_handler_other_fault)
{
    char out[4096];
    int overflow = 0;
    int st = run_child(app_handler_child, &overflow, out, sizeof out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 7, "child status %#x, stderr: %s", st,
                  out);
    ck_assert_msg(strstr(out, "app handler: not a stack overflow"), "stderr: %s", out);
    ck_assert_msg(strstr(out, "awaitlet:") == NULL, "awaitlet claimed it: %s", out);
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

        tc = tcase_create("frames");
        tcase_add_test(tc, frame_73727_plain);
        tcase_add_test(tc, frame_1m_plain);
        tcase_add_test(tc, frame_8m_plain_guard_16m);
        tcase_add_test(tc, frame_8m_plain_default_guard_16m);
        tcase_add_test(tc, frame_1m_plain_unguarded_sp);
#ifdef T_HAVE_CLASH
        tcase_add_test(tc, frame_73727_clash);
        tcase_add_test(tc, frame_1m_clash);
        tcase_add_test(tc, frame_8m_clash);
        tcase_add_test(tc, frame_8m_clash_unguarded_sp);
#endif
        suite_add_tcase(s, tc);

        tc = tcase_create("guards");
        tcase_add_test(tc, guard_hit_by_other_task);
        tcase_add_test(tc, guard_hit_outside_tasks);
        tcase_add_test(tc, guard_hit_idle_stack);
        tcase_add_test(tc, app_handler_reports_overflow);
        tcase_add_test(tc, app_handler_other_fault);
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
