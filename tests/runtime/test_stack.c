/*
 * test_stack.c -- task stacks: guard regions, the per-thread pool, the
 * release of deep stacks' pages, and valgrind's view of them.
 *
 * Everything here is checked on the real address space, not on the
 * library's own bookkeeping: /proc/self/maps says what protection and
 * extent the guard below a task's stack has, and mincore() says whether a
 * page is mapped at all (ENOMEM when not) and whether it is resident.  A
 * task finds its own stack from the address of a local in its first frame:
 * the stack's top is the end of that page (the frames above it are a few
 * hundred bytes), its bottom is top - stack_size.
 */
#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "helpers.h"

#define KiB ((size_t)1024)
#define MiB (KiB * 1024)

static size_t ps;

static void ps_init(void)
{
    ps = (size_t)sysconf(_SC_PAGESIZE);
}

static uintptr_t page_down(uintptr_t a)
{
    return a & ~(uintptr_t)(ps - 1);
}

/* 1 if the page holding a is mapped, 0 if not (mincore: ENOMEM). */
static int mapped(uintptr_t a)
{
    unsigned char v;
    if (mincore((void *)page_down(a), ps, &v) == 0)
        return 1;
    ck_assert_int_eq(errno, ENOMEM);
    return 0;
}

/* Resident pages in [lo, hi). */
static size_t resident(uintptr_t lo, uintptr_t hi)
{
    lo = page_down(lo);
    size_t n = (hi - lo + ps - 1) / ps, r = 0;
    unsigned char *v = malloc(n);
    ck_assert_ptr_nonnull(v);
    ck_assert_int_eq(mincore((void *)lo, n * ps, v), 0);
    for (size_t i = 0; i < n; i++)
        r += v[i] & 1;
    free(v);
    return r;
}

/* The mapping holding address a, from /proc/self/maps. */
struct vma {
    uintptr_t lo, hi;
    char perms[5];
};

static int vma_of(uintptr_t a, struct vma *out)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;
    ck_assert_ptr_nonnull(f);
    while (!found && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perms[5];
        if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) == 3 && a >= lo && a < hi) {
            out->lo = lo;
            out->hi = hi;
            memcpy(out->perms, perms, sizeof perms);
            found = 1;
        }
    }
    fclose(f);
    return found;
}

/* ---- where a task's stack is ---------------------------------------------- */

struct where {
    uintptr_t top;     /* one past the stack's highest byte */
    uintptr_t deepest; /* lowest address a deep task touched */
    size_t depth;      /* bytes of stack to use, 0: none */
    int hold;          /* 1: suspend once before ending */
};

/* Recurse until `bytes` below top (frame sizes differ, e.g. under ASan). */
__attribute__((noinline)) static int dig(uintptr_t top, size_t bytes, uintptr_t *deepest)
{
    volatile char buf[480];
    buf[0] = 1;
    buf[sizeof buf - 1] = 1;
    if (top - (uintptr_t)buf >= bytes) {
        *deepest = (uintptr_t)buf;
        return buf[0];
    }
    return dig(top, bytes, deepest) + buf[sizeof buf - 1];
}

static void *where_fn(void *arg)
{
    struct where *w = arg;
    volatile char here = 0;
    w->top = page_down((uintptr_t)&here) + ps;
    w->deepest = (uintptr_t)&here;
    if (w->depth > 0)
        dig(w->top, w->depth, &w->deepest);
    if (w->hold && awaitlet_sleep(0) != 0)
        return NULL;
    return arg;
}

static void run_where(struct where *w, const awaitlet_options *o)
{
    T_JOIN_EQ(awaitlet_async_def_opts(t_loop, where_fn, w, o), w);
}

/* ---- guard regions --------------------------------------------------------- */

/* The guard below a stack of `size` bytes with top `top` is PROT_NONE down to
 * at least top - size - guard. */
static void check_guard(const struct where *w, size_t size, size_t guard)
{
    uintptr_t lo = w->top - size;
    struct vma stack, g;
    ck_assert_msg(vma_of(lo, &stack), "stack bottom %#lx not mapped", (unsigned long)lo);
    ck_assert_msg(stack.perms[0] == 'r' && stack.perms[1] == 'w', "stack is %s", stack.perms);
    ck_assert_msg(stack.lo == lo, "stack mapping starts at %#lx, want %#lx",
                  (unsigned long)stack.lo, (unsigned long)lo);
    ck_assert_msg(vma_of(lo - 1, &g), "nothing mapped right below the stack");
    ck_assert_msg(strncmp(g.perms, "---", 3) == 0, "below the stack: %s, want ---", g.perms);
    ck_assert_msg(g.lo <= lo - guard, "guard is %lu bytes, want at least %zu",
                  (unsigned long)(lo - g.lo), guard);
}

START_TEST(default_guard_is_a_region)
{
    struct where w = {0};
    awaitlet_options o;
    memset(&o, 0, sizeof o);
    o.stack_size = 64 * KiB;
    run_where(&w, &o);
    check_guard(&w, 64 * KiB, 1 * MiB);
}
END_TEST

START_TEST(guard_size_per_task_and_default)
{
    struct where w = {0};
    awaitlet_options o;
    memset(&o, 0, sizeof o);
    o.stack_size = 32 * KiB;
    o.guard_size = 3 * MiB + 1; /* rounded up to pages */
    run_where(&w, &o);
    check_guard(&w, 32 * KiB, 3 * MiB + ps);

    /* process-wide default; a pooled stack with another guard is not reused */
    ck_assert_int_eq(awaitlet_set_default_guard_size(2 * MiB), 0);
    o.guard_size = 0;
    memset(&w, 0, sizeof w);
    run_where(&w, &o);
    ck_assert_int_eq(awaitlet_set_default_guard_size(1 * MiB), 0);
    check_guard(&w, 32 * KiB, 2 * MiB);

    /* no_guard: nothing PROT_NONE below */
    o.no_guard = 1;
    memset(&w, 0, sizeof w);
    run_where(&w, &o);
    struct vma g;
    if (vma_of(w.top - 32 * KiB - 1, &g))
        ck_assert_msg(strncmp(g.perms, "---", 3) != 0, "unguarded stack has a guard");
}
END_TEST

START_TEST(guard_size_errors)
{
    awaitlet_options o;
    memset(&o, 0, sizeof o);
    o.guard_size = ((size_t)1 << 30) + 1;
    T_FAILS(awaitlet_async_def_opts(t_loop, where_fn, NULL, &o), NULL, EINVAL);
    o.guard_size = 4096;
    o.no_guard = 1; /* contradictory */
    T_FAILS(awaitlet_async_def_opts(t_loop, where_fn, NULL, &o), NULL, EINVAL);
    T_FAILS(awaitlet_set_default_guard_size(0), -1, EINVAL);
    T_FAILS(awaitlet_set_default_guard_size(((size_t)1 << 30) + 1), -1, EINVAL);
    ck_assert_int_eq(awaitlet_set_default_guard_size(1), 0); /* one page */
    ck_assert_int_eq(awaitlet_set_default_guard_size((size_t)1 << 30), 0);
    ck_assert_int_eq(awaitlet_set_default_guard_size(1 * MiB), 0);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 0);
}
END_TEST

/* ---- the pool ---------------------------------------------------------------- */

START_TEST(pool_zero_unmaps_at_once)
{
    enum { N = 3 };
    struct where w[N];
    awaitlet_task *t[N];
    ck_assert_int_eq(awaitlet_set_stack_pool(64), 0);
    memset(w, 0, sizeof w);
    /* N stacks at once (each task suspends), then all back in the pool */
    for (int i = 0; i < N; i++) {
        w[i].hold = 1;
        t[i] = awaitlet_async_def(t_loop, where_fn, &w[i]);
        ck_assert_ptr_nonnull(t[i]);
    }
    for (int i = 0; i < N; i++)
        T_JOIN_EQ(t[i], &w[i]);
    for (int i = 0; i < N; i++)
        ck_assert_msg(mapped(w[i].top - 1), "stack %d unmapped while pooled", i);

    /* lowering the limit trims this thread's pool at once */
    ck_assert_int_eq(awaitlet_set_stack_pool(1), 0);
    int still = 0;
    for (int i = 0; i < N; i++)
        still += mapped(w[i].top - 1);
    ck_assert_int_eq(still, 1);
    ck_assert_int_eq(awaitlet_set_stack_pool(0), 0);
    for (int i = 0; i < N; i++)
        ck_assert_msg(!mapped(w[i].top - 1), "stack %d still mapped after pool 0", i);
    ck_assert_int_eq(awaitlet_set_stack_pool(64), 0);
}
END_TEST

/* A task that used ~200 KiB of its 256 KiB stack: once it ended, its pooled
 * stack keeps only the pages above the watermark (64 KiB below the top). */
START_TEST(deep_stack_pages_released)
{
    struct where w = {0}, shallow = {0};
    ck_assert_int_eq(awaitlet_set_stack_pool(64), 0);
    w.depth = 200 * KiB;
    run_where(&w, NULL);
    ck_assert_msg(w.top - w.deepest > 150 * KiB, "only %lu bytes deep",
                  (unsigned long)(w.top - w.deepest));
    ck_assert(mapped(w.deepest)); /* still pooled, not unmapped */
    uintptr_t mark = w.top - 64 * KiB;
    size_t below = resident(w.deepest, mark);
    ck_assert_msg(below == 0, "%zu pages below the watermark still resident", below);
    ck_assert_msg(resident(w.top - ps, w.top) == 1, "the hot top page was dropped too");

    /* the stack is reused (same top) and works at depth again */
    run_where(&shallow, NULL);
    ck_assert(shallow.top == w.top);
    w.deepest = 0;
    run_where(&w, NULL);
    ck_assert_uint_eq(resident(w.deepest, mark), 0);

    /* a shallow task costs no madvise: its pages stay */
    shallow.depth = 16 * KiB;
    run_where(&shallow, NULL);
    ck_assert_uint_gt(resident(shallow.deepest, w.top), 4);
}
END_TEST

/* ---- valgrind's stack registration ------------------------------------------- */

/* VALGRIND_STACK_REGISTER(start, end): "start is the lowest addressable
 * stack byte, end is the highest addressable stack byte" (valgrind.h).  Run
 * this program under valgrind -d -d, which logs every registration, and
 * compare with the stack's real extent. */
static int vg_child(void)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct where w = {0};
    awaitlet_options o;
    memset(&o, 0, sizeof o);
    o.stack_size = 64 * KiB;
    /* no Check macros here: this runs outside the test runner */
    if (!loop || awaitlet_join(awaitlet_async_def_opts(loop, where_fn, &w, &o)) != &w)
        return 1;
    printf("stack %#lx %#lx\n", (unsigned long)(w.top - 64 * KiB), (unsigned long)w.top);
    ev_loop_destroy(loop);
    return 0;
}

START_TEST(valgrind_stack_register_bounds)
{
    char cmd[2048], line[1024];
    unsigned long lo = 0, hi = 0, rlo, rhi, reg_hi = 0;
    int found = 0;
    ssize_t n = readlink("/proc/self/exe", line, sizeof line - 1);
    ck_assert_int_gt(n, 0);
    line[n] = '\0';
    snprintf(cmd, sizeof cmd,
             "T_STACK_VG_CHILD=1 valgrind --tool=none -d -d '%s' 2>&1", line);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    char *regs = calloc(1, 1 << 16);
    size_t rn = 0;
    while (fgets(line, sizeof line, p)) {
        char *r = strstr(line, "register [start-end] [");
        if (r && sscanf(r, "register [start-end] [%lx-%lx]", &rlo, &rhi) == 2 &&
            rn + 64 < (1 << 16))
            rn += (size_t)snprintf(regs + rn, 64, "%lx %lx\n", rlo, rhi);
        sscanf(line, "stack %lx %lx", &lo, &hi);
    }
    ck_assert_int_eq(pclose(p), 0);
    ck_assert_msg(lo != 0, "child printed no stack");
    for (char *s = regs; *s;) {
        if (sscanf(s, "%lx %lx", &rlo, &rhi) == 2 && rlo == lo) {
            found = 1;
            reg_hi = rhi;
        }
        s = strchr(s, '\n') + 1;
    }
    free(regs);
    ck_assert_msg(found, "no registration starting at %#lx", lo);
    ck_assert_msg(reg_hi == hi - 1, "registered end %#lx, stack's highest byte %#lx", reg_hi,
                  hi - 1);
}
END_TEST

static int have_valgrind(void)
{
    return system("valgrind --version >/dev/null 2>&1") == 0;
}

static Suite *stack_suite(void)
{
    Suite *s = suite_create("stack");
    TCase *tc = t_tcase("guard");
    tcase_add_checked_fixture(tc, ps_init, NULL);
    tcase_add_test(tc, default_guard_is_a_region);
    tcase_add_test(tc, guard_size_per_task_and_default);
    tcase_add_test(tc, guard_size_errors);
    suite_add_tcase(s, tc);

    tc = t_tcase("pool");
    tcase_add_checked_fixture(tc, ps_init, NULL);
    tcase_add_test(tc, pool_zero_unmaps_at_once);
    tcase_add_test(tc, deep_stack_pages_released);
    suite_add_tcase(s, tc);

#ifdef T_HAVE_VALGRIND
    if (!RUNNING_ON_VALGRIND && !T_ASAN && have_valgrind()) {
        tc = t_tcase("valgrind");
        tcase_add_checked_fixture(tc, ps_init, NULL);
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, valgrind_stack_register_bounds);
        suite_add_tcase(s, tc);
    }
#endif
    return s;
}

int main(void)
{
    if (getenv("T_STACK_VG_CHILD")) {
        ps_init();
        return vg_child();
    }
    return t_run_suite(stack_suite());
}
