/*
 * test_fpenv.c -- the floating-point control state of tasks.
 *
 * A task must start with its creator's rounding mode and flush-to-zero
 * setting, as a pthread starts with its creator's floating-point
 * environment: code built with -ffast-math (which sets FTZ/DAZ at start-up)
 * or code that calls fesetround() before starting tasks must see the same
 * arithmetic inside them.  And the state is per task: a task changing its
 * rounding mode must not leak it to the loop side or to other tasks.
 *
 * Checked both through the API (fegetround, which reads the x87 control
 * word on x86-64) and through arithmetic (a double division, done with SSE
 * and so governed by MXCSR; a long double one, done by the x87; on aarch64
 * both by FPCR), so neither half of the x86 state can be forgotten.
 * Valgrind emulates neither FTZ/DAZ nor SSE rounding modes: there only
 * the registers and fegetround are compared.
 */
#include <fenv.h>
#include <float.h>

#include "helpers.h"

/* Flush-to-zero and denormals-are-zero, the bits -ffast-math sets. */
#if defined(__x86_64__) || defined(__i386__)
#define HAVE_FTZ 1
static unsigned get_fpcr(void)
{
    unsigned v;
    __asm__ volatile("stmxcsr %0" : "=m"(v));
    return v;
}
static void set_fpcr(unsigned v)
{
    __asm__ volatile("ldmxcsr %0" : : "m"(v));
}
#define FTZ_BITS 0x8040u /* MXCSR FTZ | DAZ */
#elif defined(__aarch64__)
#define HAVE_FTZ 1
static unsigned get_fpcr(void)
{
    unsigned long v;
    __asm__ volatile("mrs %0, fpcr" : "=r"(v));
    return (unsigned)v;
}
static void set_fpcr(unsigned v)
{
    __asm__ volatile("msr fpcr, %0" : : "r"((unsigned long)v));
}
#define FTZ_BITS (1u << 24) /* FPCR.FZ */
#endif

static volatile double v_one = 1.0, v_three = 3.0, v_tiny = DBL_MIN;
static volatile long double vl_one = 1.0L, vl_three = 3.0L;

/* What the arithmetic says about the current state. */
struct fpview {
    int round;          /* fegetround() */
    double third;       /* 1.0 / 3.0 in double (SSE / FPCR) */
    long double lthird; /* the same in long double (x87 / FPCR) */
    double quarter_min; /* DBL_MIN / 4: 0 when flushing to zero */
    unsigned fpcr;      /* MXCSR / FPCR control bits */
};

/* Not inlined: without -frounding-math the compiler may move arithmetic
 * across fesetround() calls, and a call it cannot see into stops that. */
__attribute__((noinline)) static void fp_look(struct fpview *v)
{
    v->round = fegetround();
    v->third = v_one / v_three;
    v->lthird = vl_one / vl_three;
    v->quarter_min = v_tiny / 4.0;
#ifdef HAVE_FTZ
    v->fpcr = get_fpcr() & ~0x3fu; /* without the sticky exception flags */
#else
    v->fpcr = 0;
#endif
}

static void fp_same(const struct fpview *a, const struct fpview *b, const char *what)
{
    ck_assert_msg(a->round == b->round, "%s: rounding mode %#x, want %#x", what, a->round,
                  b->round);
    if (!RUNNING_ON_VALGRIND)
        ck_assert_msg(a->third == b->third, "%s: 1/3 = %a, want %a (MXCSR/FPCR rounding)",
                      what, a->third, b->third);
    if (!RUNNING_ON_VALGRIND)
        ck_assert_msg(a->lthird == b->lthird, "%s: long double 1/3 = %La, want %La (x87 CW)",
                      what, a->lthird, b->lthird);
    if (!RUNNING_ON_VALGRIND)
        ck_assert_msg(a->quarter_min == b->quarter_min, "%s: DBL_MIN/4 = %a, want %a (FTZ)",
                      what, a->quarter_min, b->quarter_min);
    ck_assert_msg(a->fpcr == b->fpcr, "%s: control register %#x, want %#x", what, a->fpcr,
                  b->fpcr);
}

static void *look_fn(void *arg)
{
    fp_look(arg);
    return arg;
}

/* Looks once at start, suspends, looks again after the resume. */
struct two_looks {
    struct fpview at_start, after_wait;
    int set_round; /* if not 0: fesetround(set_round) after the first look */
};

static void *look_twice(void *arg)
{
    struct two_looks *l = arg;
    fp_look(&l->at_start);
    if (l->set_round != 0 && fesetround(l->set_round) != 0)
        return NULL;
    if (awaitlet_sleep(0.001) != 0)
        return NULL;
    fp_look(&l->after_wait);
    return arg;
}

START_TEST(rounding_mode_inherited)
{
    static const int modes[] = {FE_UPWARD, FE_DOWNWARD, FE_TOWARDZERO, FE_TONEAREST};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        struct fpview creator, inside;
        ck_assert_int_eq(fesetround(modes[i]), 0);
        fp_look(&creator);
        T_JOIN_EQ(awaitlet_async_def(t_loop, look_fn, &inside), &inside);
        fp_same(&inside, &creator, "task started after fesetround");
    }
    /* The rounding mode really changes both results: the test can fail. */
    struct fpview up, down;
    fesetround(FE_UPWARD);
    fp_look(&up);
    fesetround(FE_DOWNWARD);
    fp_look(&down);
    fesetround(FE_TONEAREST);
    ck_assert(up.round != down.round);
    if (!RUNNING_ON_VALGRIND)
        ck_assert(up.third != down.third && up.lthird != down.lthird && up.fpcr != down.fpcr);
}
END_TEST

#ifdef HAVE_FTZ
START_TEST(flush_to_zero_inherited)
{
    unsigned saved = get_fpcr();
    struct fpview creator, inside;
    set_fpcr(saved | FTZ_BITS);
    fp_look(&creator);
    T_JOIN_EQ(awaitlet_async_def(t_loop, look_fn, &inside), &inside);
    set_fpcr(saved);
    ck_assert_msg(creator.quarter_min == 0.0, "FTZ not effective on the loop side");
    ck_assert_msg((inside.fpcr & FTZ_BITS) == FTZ_BITS, "task control register %#x lacks %#x",
                  inside.fpcr, FTZ_BITS);
    fp_same(&inside, &creator, "task started with FTZ/DAZ");
}
END_TEST
#endif

START_TEST(task_rounding_does_not_leak)
{
    struct fpview loop_before, loop_between, loop_after;
    struct two_looks a = {.set_round = FE_UPWARD}, b = {.set_round = 0};
    fesetround(FE_TONEAREST);
    fp_look(&loop_before);

    awaitlet_task *ta = awaitlet_async_def(t_loop, look_twice, &a);
    ck_assert_ptr_nonnull(ta);
    /* a set round-upward and suspended: the loop side is unaffected */
    fp_look(&loop_between);
    fp_same(&loop_between, &loop_before, "loop side after a task changed its mode");
    /* a task started now inherits the loop side's mode, not a's */
    awaitlet_task *tb = awaitlet_async_def(t_loop, look_twice, &b);
    ck_assert_ptr_nonnull(tb);
    fp_same(&b.at_start, &loop_before, "second task at start");

    T_JOIN_EQ(ta, &a);
    T_JOIN_EQ(tb, &b);
    fp_look(&loop_after);
    fp_same(&loop_after, &loop_before, "loop side after both tasks");
    /* each task kept its own mode across its suspension */
    ck_assert_int_eq(a.after_wait.round, FE_UPWARD);
    ck_assert_int_eq(a.at_start.round, FE_TONEAREST);
    if (!RUNNING_ON_VALGRIND)
        ck_assert(a.after_wait.third != loop_before.third && a.after_wait.fpcr != loop_before.fpcr);
    fp_same(&b.after_wait, &loop_before, "second task after its wait");
}
END_TEST

/* A task started from inside a task inherits that task's state. */
struct nested {
    struct fpview creator, creator_after; /* before / after the child ran */
    struct two_looks child;
};

static void *nested_creator(void *arg)
{
    struct nested *n = arg;
    fesetround(FE_DOWNWARD);
    fp_look(&n->creator);
    awaitlet_task *child = awaitlet_async_def(awaitlet_current_loop(), look_twice, &n->child);
    if (!child)
        return NULL;
    /* the child suspended: we still have our own mode */
    fp_look(&n->creator_after);
    if (awaitlet_join(child) != &n->child)
        return NULL;
    return arg;
}

START_TEST(nested_task_inherits_creator_task)
{
    struct nested n;
    memset(&n, 0, sizeof n);
    fesetround(FE_TONEAREST);
    T_JOIN_EQ(awaitlet_async_def(t_loop, nested_creator, &n), &n);
    ck_assert_int_eq(n.creator.round, FE_DOWNWARD);
    fp_same(&n.child.at_start, &n.creator, "child of a task at start");
    fp_same(&n.child.after_wait, &n.creator, "child of a task after its wait");
    fp_same(&n.creator_after, &n.creator, "creator task after its child ran");
    ck_assert_int_eq(fegetround(), FE_TONEAREST);
}
END_TEST

static Suite *fpenv_suite(void)
{
    Suite *s = suite_create("fpenv");
    TCase *tc = t_tcase("fpenv");
    tcase_add_test(tc, rounding_mode_inherited);
    tcase_add_test(tc, task_rounding_does_not_leak);
    tcase_add_test(tc, nested_task_inherits_creator_task);
#ifdef HAVE_FTZ
    if (!RUNNING_ON_VALGRIND) /* valgrind does not emulate FTZ/DAZ */
        tcase_add_test(tc, flush_to_zero_inherited);
#endif
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return t_run_suite(fpenv_suite());
}
